"""``altlens label`` and ``altlens reward train|apply``: curator labels and the reward learned from them."""
from __future__ import annotations

import typer

from cli.options import WORKSPACE, echo_json


def label(
    workspace: str = WORKSPACE,
    sample: int = typer.Option(..., help="Sample id."),
    alignment: str = typer.Option(None, help="good or bad"),
    tag: str = typer.Option(None, help="A free tag."),
    prefer: str = typer.Option(None, help="Best caption source: alt, syn or fused."),
    who: str = typer.Option("local"),
):
    """Label a sample (history is kept; the latest label counts)."""
    from curation.review.labels import add_label
    from indexer.store import Workspace

    given = [(k, v) for k, v in (("alignment", alignment), ("tag", tag), ("preference", prefer)) if v]
    if not given:
        raise ValueError("give --alignment, --tag or --prefer")
    with Workspace(workspace) as ws:
        ids = [add_label(ws, sample, kind, value, who=who, view="cli") for kind, value in given]
    echo_json({"labels": ids})


def reward_train(workspace: str = WORKSPACE):
    """Fit the reward on the current good/bad labels (prints label counts and cross-validated AUROC), and the
    caption chooser on the best-caption preferences when there are enough (the ``best`` export policy uses it)."""
    from curation.review.reward import train_from_labels
    from indexer.store import Workspace

    with Workspace(workspace) as ws:
        result = train_from_labels(ws)
    reward, chooser = result["reward"], result["chooser"]
    out = {k: reward[k] for k in ("labels", "good", "bad", "cv_auroc", "cv_auroc_interval", "warning", "folds")} | {"model": result["reward_file"]}
    if chooser is None:
        out["chooser"] = f"not trained: {result['chooser_skipped']}"
    else:
        out["chooser"] = {k: chooser[k] for k in ("preferences", "counts", "cv_accuracy", "majority_share")}
        out["chooser"]["model"] = result["chooser_file"]
    echo_json(out)


def reward_apply(workspace: str = WORKSPACE,
                 activate: bool = typer.Option(True, help="Make it the reward the UI filters by.")):
    """Write the learned reward for every sample as a new reward version."""
    from curation.review.reward import apply_reward, load_model
    from indexer.store import Workspace

    with Workspace(workspace) as ws:
        model = load_model(ws)
        if model is None:
            raise ValueError("no trained reward yet; run 'altlens reward train' first")
        echo_json(apply_reward(ws, model, activate=activate))
