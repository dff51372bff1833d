"""``altlens caption``, ``fuse``, ``score``, ``map`` and ``defaults``: the pipeline's stages, and checking defaults."""
from __future__ import annotations

from typing import Optional

import typer

from cli.options import DEVICE, ENGINE, PRECISION, RAY_ADDRESS, RAY_WORKERS, WORKSPACE, echo_json


def caption(
    workspace: str = WORKSPACE,
    captioner: str = typer.Option(None, help="openclip:MODEL[:TAG], checkpoint:PATH, hf:PATH_OR_ID or a plugin's "
                                             "name such as demo (default: the workspace's own CoCa)."),
    num: int = typer.Option(5, min=1, max=64, help="Captions per image (DataCompDR stores 5)."),
    sampling: str = typer.Option("top_p", help="top_p (p=0.9), beam or diverse_beam."),
    batch_size: int = typer.Option(32, min=1),
    seed: int = typer.Option(0),
    precision: str = PRECISION,
    device: str = DEVICE,
    limit: int = typer.Option(None, min=1, help="Caption at most this many pending images."),
    engine: str = ENGINE,
    ray_address: Optional[str] = RAY_ADDRESS,
    ray_workers: int = RAY_WORKERS,
):
    """Add synthetic captions (incremental: images that already have NUM from this captioner are skipped)."""
    from curation.captions.caption import CaptionConfig
    from curation.pipeline import run_stage

    echo_json(run_stage("caption", workspace, CaptionConfig(
        captioner=captioner, num=num, sampling=sampling, batch_size=batch_size, seed=seed, precision=precision,
        device=device, limit=limit, engine=engine, ray_address=ray_address, ray_workers=ray_workers)))


def fuse(
    workspace: str = WORKSPACE,
    fuser: str = typer.Option("rules", help="rules (offline default), llm:PATH_OR_ID (a local causal LM) or a "
                                            "plugin's name."),
    syn: str = typer.Option(None, help="Synthetic producer to fuse from (default: the most used)."),
    batch_size: int = typer.Option(256, min=1),
    limit: int = typer.Option(None, min=1),
):
    """Fuse alt-text knowledge with synthetic captions into one caption per image."""
    from curation.captions.fuse import FuseConfig
    from curation.pipeline import run_stage

    echo_json(run_stage("fuse", workspace, FuseConfig(fuser=fuser, syn=syn, batch_size=batch_size, limit=limit)))


def score(
    workspace: str = WORKSPACE,
    recompute: bool = typer.Option(False, help="Recompute every score, not only missing ones."),
    contrast: bool = typer.Option(True, help="Also score each alt-text against its one-claim variants "
                                             "(loads the workspace's model; the costliest score)."),
    engine: str = ENGINE,
    ray_address: Optional[str] = RAY_ADDRESS,
    ray_workers: int = RAY_WORKERS,
):
    """clip_score and cycle for every caption, alt/synthetic agreement, alt-text contrast, and the default
    per-sample reward."""
    from curation.pipeline import run_stage
    from curation.scores.score import ScoreConfig

    echo_json(run_stage("score", workspace, ScoreConfig(recompute=recompute, contrast=contrast, engine=engine,
                                                          ray_address=ray_address, ray_workers=ray_workers)))


def map_(
    workspace: str = WORKSPACE,
    clusters: int = typer.Option(None, min=2, help="K for k-means (default: about sqrt(N/4))."),
    fit_max: int = typer.Option(50_000, min=100, help="UMAP is fitted on at most this many samples."),
    dup_threshold: float = typer.Option(
        0.85, help="Cosine above which two images are checked pixel by pixel as near-duplicates."),
):
    """Clusters, 2-D map, cluster summaries, near-duplicate groups and the map pictures."""
    from curation.pipeline import run_stage
    from curation.structure.clusters import ClusterConfig
    from curation.structure.duplicates import DupConfig
    from curation.structure.map import MapConfig

    cfg = MapConfig(layout=ClusterConfig(clusters=clusters, fit_max=fit_max), duplicates=DupConfig(dup_threshold))
    echo_json(run_stage("map", workspace, cfg))


def semdedup(
    workspace: str = WORKSPACE,
    keep: str = typer.Option("caption", help="Which member of a group stays: caption (best reward), central or "
                                             "random."),
    seed: int = typer.Option(0, help="Seed of --keep random."),
    memory_mb: int = typer.Option(256, min=1, help="Most memory one block of similarities may take."),
    probes: int = typer.Option(0, min=0, help="Also compare each cluster with its nearest N clusters (pairs split "
                                              "by a cluster border; costs 1 + N times as much)."),
    cell: int = typer.Option(1024, min=2, help="Split a cluster larger than this into cells of about this many "
                                               "members (keeps the pass linear in the pool)."),
    cell_probes: int = typer.Option(1, min=0, help="Also compare each cell with its nearest N cells of the same "
                                                   "cluster."),
):
    """Semantic duplicates inside each cluster: stores, for every sample, its highest cosine to a member the keep
    policy prefers, and prints how many each eps would remove ('altlens select --semdedup EPS' applies one)."""
    from curation.pipeline import run_stage
    from curation.structure.semdedup import SemDedupConfig

    echo_json(run_stage("semdedup", workspace, SemDedupConfig(keep=keep, seed=seed, memory_mb=memory_mb,
                                                              probes=probes, cell=cell, cell_probes=cell_probes)))


def defaults(
    workspace: str = WORKSPACE,
    concept: str = typer.Option(None, help="What to check, e.g. dog (omit with --suggest)."),
    axis: str = typer.Option(None, help="NAME=VALUE1,VALUE2,... e.g. breed=labrador,poodle,beagle"),
    source: str = typer.Option("syn", help="Caption source to read: alt, syn or fused."),
    images: str = typer.Option("captions", help="Pick the concept's images by captions or retrieval."),
    suggest_pairs: bool = typer.Option(False, "--suggest", help="Propose concept/axis pairs worth checking."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Caption default behaviours: what captions say about a concept vs what the images show."""
    from curation.structure.defaults import DefaultsQuery, find_default, parse_axis, suggest
    from indexer.models import open_workspace_model
    from indexer.store import Workspace

    if not suggest_pairs and (not concept or not axis):
        raise ValueError("give --concept and --axis NAME=V1,V2,... (or --suggest)")
    with Workspace(workspace, read_only=True) as ws:
        model = open_workspace_model(ws, None)
        if suggest_pairs:
            result = suggest(ws, model, source=source)
        else:
            name, values = parse_axis(axis)
            result = find_default(ws, DefaultsQuery(concept, name, values, source=source, images=images), model)
    if as_json:
        echo_json(result)
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
