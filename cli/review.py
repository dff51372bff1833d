"""``altlens label``, ``altlens reward train|apply`` and ``altlens concept ...``: curator labels, the reward
learned from them, and concept scores (zero-shot, trained on tags, imported heads)."""
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


def _ids(text: str | None) -> list[int]:
    """'3,5,9' or '@FILE' (one id per line) -> ids."""
    if not text:
        return []
    if text.startswith("@"):
        from pathlib import Path
        text = Path(text[1:]).read_text().replace("\n", ",")
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"sample ids are whole numbers separated by commas (or @FILE, one per line), got {text[:60]!r}")


def concept_add(name: str = typer.Argument(..., help="Concept name (lowercase letters, digits, _ -)."),
                workspace: str = WORKSPACE,
                prompt: str = typer.Option(None, help="A text prompt ('a photo with a watermark'): writes zero-shot "
                                                      "scores to start from.")):
    """Create a concept; with --prompt, score every sample zero-shot (the prompt against 'a photo')."""
    from curation.review import concepts
    from indexer.models import open_workspace_model
    from indexer.store import Workspace

    with Workspace(workspace) as ws:
        model = open_workspace_model(ws, None) if prompt else None
        echo_json(concepts.add(ws, name, prompt, model))


def concept_tag(name: str = typer.Argument(...), workspace: str = WORKSPACE,
                with_: str = typer.Option(None, "--with", help="Ids of samples that show the concept: 3,5,9 or @FILE."),
                without: str = typer.Option(None, help="Ids of samples that do not show it."),
                who: str = typer.Option("local")):
    """Tag samples with or without the concept (labels of kind concept:NAME, history kept)."""
    from curation.review import concepts
    from indexer.store import Workspace

    yes, no = _ids(with_), _ids(without)
    if not yes and not no:
        raise ValueError("give --with and/or --without sample ids")
    with Workspace(workspace) as ws:
        echo_json({"with": concepts.tag(ws, name, yes, True, who) if yes else 0,
                   "without": concepts.tag(ws, name, no, False, who) if no else 0})


def concept_train(name: str = typer.Argument(...), workspace: str = WORKSPACE):
    """Fit the concept on its tags (cross-validated AUROC beside the zero-shot one) and score every sample."""
    from curation.review import concepts
    from indexer.store import Workspace

    with Workspace(workspace) as ws:
        echo_json(concepts.train(ws, name))


def concept_import(name: str = typer.Argument(...), workspace: str = WORKSPACE,
                   head: str = typer.Option(..., help="A linear or MLP head: .safetensors or a torch state dict."),
                   activation: str = typer.Option("relu", help="Between the head's layers: relu or none (LAION's "
                                                                "aesthetic predictor has none)."),
                   model: str = typer.Option(None, help="The model the head was made for (checked against the "
                                                        "workspace's; a 'model' entry in safetensors metadata too).")):
    """Apply an external head to every sample's stored image embedding as a new version of the concept."""
    from curation.review import concepts
    from indexer.store import Workspace

    with Workspace(workspace) as ws:
        echo_json(concepts.import_head(ws, name, head, activation, model))


def concept_queue(name: str = typer.Argument(...), workspace: str = WORKSPACE,
                  n: int = typer.Option(20, "-n", min=1, help="How many samples.")):
    """Samples to tag next: the ones the concept's latest score is least sure of, mixed with random ones."""
    from curation.review import concepts
    from indexer.store import Workspace

    with Workspace(workspace, read_only=True) as ws:
        echo_json(concepts.queue(ws, name, n))


def concept_list(workspace: str = WORKSPACE):
    """Every concept: prompt, tag counts, and its score versions with their provenance (AUROC, head)."""
    from curation.review import concepts
    from indexer.store import Workspace

    with Workspace(workspace, read_only=True) as ws:
        echo_json(concepts.listing(ws))
