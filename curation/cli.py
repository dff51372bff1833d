"""``altlens`` commands for curation and the demo, registered on the indexer's Typer app."""
from __future__ import annotations

import json
from typing import List

import typer

from indexer.cli import app


@app.command()
def demo(
    workspace: str = typer.Option("demo-workspace", "--workspace", "-w"),
    n: int = typer.Option(3000, min=1, help="Samples in the demo dataset."),
    seed: int = typer.Option(0),
    precision: str = typer.Option("fp32"),
    no_serve: bool = typer.Option(False, "--no-serve", help="Build the workspace, do not start the UI."),
):
    """Build the demo world offline: shards -> index with the shipped model -> curation -> UI."""
    from demo.build import DemoConfig, build_demo

    summary = build_demo(DemoConfig(workspace=workspace, n=n, seed=seed, precision=precision))
    typer.echo(json.dumps(summary["index"]))
    typer.echo(f"demo workspace ready: {summary['workspace']}")
    if not no_serve:
        serve_or_explain(summary["workspace"])


def serve_or_explain(workspace: str) -> None:
    try:
        from app.server import serve
    except ModuleNotFoundError:
        typer.echo(f"explore it with: altlens stats -w {workspace}; altlens search -w {workspace} --text 'a yellow star'")
        return
    serve(workspace)


@app.command("demo-train")
def demo_train(
    out_dir: str = typer.Option(None, help="Where to write the checkpoint (default: the shipped location)."),
    steps: int = typer.Option(1200, min=1, help="CLIP training steps."),
    captioner_steps: int = typer.Option(800, min=0, help="Captioner training steps (0: CLIP only)."),
    n_train: int = typer.Option(40000, min=100),
    seed: int = typer.Option(20261128),
):
    """Train the demo CLIP and captioner from scratch on CPU (about 45 minutes on 2 cores); write the model card."""
    from demo.train import MODEL_DIR, TrainConfig, train

    cfg = TrainConfig(out_dir=out_dir or str(MODEL_DIR), steps=steps, n_train=n_train, seed=seed,
                      captioner_steps=captioner_steps)
    numbers = train(cfg)
    typer.echo(json.dumps({k: v for k, v in numbers.items() if k != "caption_examples"}))


@app.command()
def caption(
    workspace: str = typer.Option(..., "--workspace", "-w"),
    captioner: str = typer.Option(None, help="openclip:MODEL[:TAG], checkpoint:PATH or hf:PATH_OR_ID "
                                             "(default: the workspace's own CoCa; 'demo' for the demo captioner)."),
    num: int = typer.Option(5, min=1, max=64, help="Captions per image (DataCompDR stores 5)."),
    sampling: str = typer.Option("top_p", help="top_p (p=0.9), beam or diverse_beam."),
    batch_size: int = typer.Option(32, min=1),
    seed: int = typer.Option(0),
    precision: str = typer.Option("fp32"),
    device: str = typer.Option("auto"),
    limit: int = typer.Option(None, min=1, help="Caption at most this many pending images."),
):
    """Add synthetic captions (incremental: images that already have NUM from this captioner are skipped)."""
    from curation.captions.caption import CaptionConfig, run_captioning

    typer.echo(json.dumps(run_captioning(CaptionConfig(
        workspace=workspace, captioner=captioner, num=num, sampling=sampling, batch_size=batch_size,
        seed=seed, precision=precision, device=device, limit=limit))))


@app.command()
def fuse(
    workspace: str = typer.Option(..., "--workspace", "-w"),
    fuser: str = typer.Option("rules", help="rules (offline default) or llm:PATH_OR_ID (a local causal LM)."),
    syn: str = typer.Option(None, help="Synthetic producer to fuse from (default: the most used)."),
    batch_size: int = typer.Option(256, min=1),
    limit: int = typer.Option(None, min=1),
):
    """Fuse alt-text knowledge with synthetic captions into one caption per image."""
    from curation.captions.fuse import FuseConfig, run_fusion

    typer.echo(json.dumps(run_fusion(FuseConfig(workspace=workspace, fuser=fuser, syn=syn,
                                                batch_size=batch_size, limit=limit))))


@app.command()
def score(
    workspace: str = typer.Option(..., "--workspace", "-w"),
    recompute: bool = typer.Option(False, help="Recompute every score, not only missing ones."),
    contrast: bool = typer.Option(True, help="Also score each alt-text against its one-claim variants "
                                             "(loads the workspace's model; the costliest score)."),
):
    """clip_score and cycle for every caption, alt/synthetic agreement, alt-text contrast, and the default
    per-sample reward."""
    from curation.scores.score import score_workspace
    from indexer.models import open_workspace_model
    from indexer.store import Workspace

    with Workspace(workspace) as ws:
        model = open_workspace_model(ws, None) if contrast else None
        typer.echo(json.dumps(score_workspace(ws, recompute=recompute, model=model)))


@app.command("map")
def map_(
    workspace: str = typer.Option(..., "--workspace", "-w"),
    clusters: int = typer.Option(None, min=2, help="K for k-means (default: about sqrt(N/4))."),
    fit_max: int = typer.Option(50_000, min=100, help="UMAP is fitted on at most this many samples."),
    dup_threshold: float = typer.Option(
        0.85, help="Cosine above which two images are checked pixel by pixel as near-duplicates."),
):
    """Clusters, 2-D map, cluster summaries, near-duplicate groups and the map pictures."""
    from curation.structure.map import build_structure
    from indexer.store import Workspace

    with Workspace(workspace) as ws:
        typer.echo(json.dumps(build_structure(ws, clusters=clusters, fit_max=fit_max, dup_threshold=dup_threshold)))


@app.command()
def defaults(
    workspace: str = typer.Option(..., "--workspace", "-w"),
    concept: str = typer.Option(None, help="What to check, e.g. star (omit with --suggest)."),
    axis: str = typer.Option(None, help="NAME=VALUE1,VALUE2,... e.g. colour=yellow,red,blue"),
    source: str = typer.Option("syn", help="Caption source to read: alt, syn or fused."),
    images: str = typer.Option("captions", help="Pick the concept's images by captions or retrieval."),
    suggest_pairs: bool = typer.Option(False, "--suggest", help="Propose concept/axis pairs worth checking."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Caption default behaviours: what captions say about a concept vs what the images show."""
    from curation.structure.defaults import DefaultsQuery, find_default, parse_axis, suggest
    from indexer.models import open_workspace_model
    from indexer.store import Workspace

    with Workspace(workspace, read_only=True) as ws:
        model = open_workspace_model(ws, None)
        if suggest_pairs:
            result = suggest(ws, model, source=source)
        else:
            if not concept or not axis:
                raise ValueError("give --concept and --axis NAME=V1,V2,... (or --suggest)")
            name, values = parse_axis(axis)
            result = find_default(ws, DefaultsQuery(concept, name, values, source=source, images=images), model)
    if as_json:
        typer.echo(json.dumps(result))
    elif suggest_pairs:
        for row in result:
            typer.echo(f"{row['concept']:>12} / {row['axis']:<8} captions H={row['caption_entropy']:.2f} "
                       f"images H={row['image_entropy']:.2f} drop {row['entropy_drop']:+.2f}"
                       f"{'  DEFAULT' if row['flag'] else ''}")
    else:
        typer.echo(result["finding"])
        for side in ("captions", "images"):
            d = result[side]
            typer.echo(f"  {side:<8} n={d['n']:<5} H={d['entropy']} default={d['default']} " +
                       ", ".join(f"{v} {s:.0%}" for v, s in d["shares"].items()))


reward_app = typer.Typer(help="Learn a reward from curator labels and apply it.", no_args_is_help=True)
app.add_typer(reward_app, name="reward")


@reward_app.command("train")
def reward_train(workspace: str = typer.Option(..., "--workspace", "-w")):
    """Fit the reward on the current good/bad labels (prints label counts and cross-validated AUROC), and the
    caption chooser on the best-caption preferences when there are enough (the ``best`` export policy uses it)."""
    from curation.review.chooser import train_from_labels
    from indexer.store import Workspace

    with Workspace(workspace) as ws:
        result = train_from_labels(ws)
    reward, chooser = result["reward"], result["chooser"]
    out = {k: reward[k] for k in ("labels", "good", "bad", "cv_auroc", "folds")} | {"model": result["reward_file"]}
    if chooser is None:
        out["chooser"] = f"not trained: {result['chooser_skipped']}"
    else:
        out["chooser"] = {k: chooser[k] for k in ("preferences", "counts", "cv_accuracy", "majority_share")}
        out["chooser"]["model"] = result["chooser_file"]
    typer.echo(json.dumps(out))


@reward_app.command("apply")
def reward_apply(workspace: str = typer.Option(..., "--workspace", "-w"),
                 activate: bool = typer.Option(True, help="Make it the reward the UI filters by.")):
    """Write the learned reward for every sample as a new reward version."""
    from curation.review.reward import apply_reward, load_model
    from indexer.store import Workspace

    with Workspace(workspace) as ws:
        model = load_model(ws)
        if model is None:
            raise ValueError("no trained reward yet; run 'altlens reward train' first")
        typer.echo(json.dumps(apply_reward(ws, model, activate=activate)))


@app.command()
def label(
    workspace: str = typer.Option(..., "--workspace", "-w"),
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
    typer.echo(json.dumps({"labels": ids}))


@app.command()
def select(
    workspace: str = typer.Option(..., "--workspace", "-w"),
    name: str = typer.Option(..., help="Selection name (letters, digits, - _ .)."),
    min_reward: float = typer.Option(None, help="Keep samples whose reward is at least this."),
    reward_version: int = typer.Option(None, help="Which reward version (default: the active one)."),
    min_alt: float = typer.Option(None, help="Minimum clip_score of the alt caption."),
    min_syn: float = typer.Option(None, help="Minimum best clip_score of the synthetic captions."),
    min_fused: float = typer.Option(None, help="Minimum clip_score of the fused caption."),
    cluster: List[int] = typer.Option(None, help="Keep only these clusters (repeatable)."),
    exclude_cluster: List[int] = typer.Option(None, help="Drop these clusters (repeatable)."),
    keep_duplicates: bool = typer.Option(False, help="Keep near-duplicates (default: keep one per group)."),
    labels: str = typer.Option("exclude_bad", help="any, good_only or exclude_bad."),
    per_cluster: int = typer.Option(None, help="Keep at most K samples per cluster, nearest the centroid."),
    caption_policy: str = typer.Option("hybrid", help="alt, best, fused or hybrid (alt + synthetic)."),
):
    """Save a named selection (a rule set) and materialise its sample list."""
    from curation.export.select import SelectionRule, save_selection
    from indexer.store import Workspace

    source_min = {k: v for k, v in (("alt", min_alt), ("syn", min_syn), ("fused", min_fused)) if v is not None}
    rule = SelectionRule(name=name, min_reward=min_reward, reward_version=reward_version, source_min=source_min,
                         clusters_in=tuple(cluster or ()), clusters_out=tuple(exclude_cluster or ()),
                         drop_duplicates=not keep_duplicates, labels=labels, per_cluster_k=per_cluster,
                         caption_policy=caption_policy)
    with Workspace(workspace) as ws:
        typer.echo(json.dumps(save_selection(ws, rule)))


@app.command()
def export(
    workspace: str = typer.Option(..., "--workspace", "-w"),
    selection: str = typer.Option(..., help="A saved selection."),
    out: str = typer.Option(..., help="Output folder."),
    format: str = typer.Option("datacompdr", "--format", help="datacompdr, webdataset, parquet or uids."),
    shard_size: int = typer.Option(10_000, min=1),
    augmentations: int = typer.Option(0, min=0, help="Embed N random augmentations per image (datacompdr)."),
):
    """Export a selection as shards a trainer reads (deterministic, atomic, resumable)."""
    from curation.export.export import ExportConfig, run_export

    manifest = run_export(ExportConfig(workspace=workspace, selection=selection, out=out, format=format,
                                       shard_size=shard_size, augmentations=augmentations))
    typer.echo(json.dumps({"files": len(manifest["files"]), "samples": manifest["samples"], "out": out}))


@app.command("verify-export")
def verify_export_cmd(out: str = typer.Argument(..., help="An export folder.")):
    """Re-read an export: checksums, counts and members; exits non-zero naming the bad shard."""
    from curation.export.export import ExportError, verify_export

    try:
        typer.echo(json.dumps(verify_export(out)))
    except ExportError as exc:
        typer.echo(f"altlens: export is bad: {exc}", err=True)
        raise typer.Exit(1)
