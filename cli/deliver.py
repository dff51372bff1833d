"""``altlens select``, ``export`` and ``verify-export``: save a selection and write it as shards a trainer reads."""
from __future__ import annotations

from typing import List

import typer

from cli.options import WORKSPACE, echo_json


def select(
    workspace: str = WORKSPACE,
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
    semdedup: float = typer.Option(None, help="Drop semantic duplicates at this eps (run 'altlens semdedup' first)."),
    keep: str = typer.Option("caption", help="The keep policy of --semdedup: caption, central or random."),
    budget: float = typer.Option(None, help="Keep this share (0-1) of what the other rules keep, over clusters."),
    allocate: str = typer.Option("sqrt", help="How --budget spreads over clusters: size, sqrt or diversity."),
    pick: str = typer.Option("central", help="Which samples a cluster keeps under --budget: central, diverse or "
                                             "reward."),
    concept: List[str] = typer.Option(None, help="A concept rule such as 'watermark<0.5' (repeatable; the "
                                                 "concept's latest scores, see 'altlens concept')."),
    preset: str = typer.Option(None, help="A DataComp baseline applied first: datacomp-clip-score, datacomp-basic, "
                                          "laion2b or image-based (with --centroids and --targets)."),
    fraction: float = typer.Option(0.3, help="datacomp-clip-score: the share of the whole pool it keeps."),
    score: str = typer.Option(None, help="The score a preset uses (an imported score such as "
                                         "datacomp.clip_l14_similarity_score, or altlens.alt_cosine)."),
    centroids: str = typer.Option(None, help="image-based: a .npy of cluster centres of the pool, one per row."),
    targets: str = typer.Option(None, help="image-based: a .npy of embeddings of the images to find more of "
                                           "(DataComp: ImageNet-1k's training set), or of centre numbers."),
    min_score: List[str] = typer.Option(None, help="NAME=VALUE: keep samples whose imported score NAME is at "
                                                   "least VALUE (repeatable; names as 'altlens stats' lists)."),
):
    """Save a named selection (a rule set) and materialise its sample list; prints what each rule removed and,
    when a selection of that name existed, how many it held ("replaced")."""
    from curation.export.select import SelectionRule, preview_selection, save_selection
    from indexer.store import Workspace

    source_min = {k: v for k, v in (("alt", min_alt), ("syn", min_syn), ("fused", min_fused)) if v is not None}
    rule = SelectionRule(name=name, min_reward=min_reward, reward_version=reward_version, source_min=source_min,
                         clusters_in=tuple(cluster or ()), clusters_out=tuple(exclude_cluster or ()),
                         drop_duplicates=not keep_duplicates, labels=labels, per_cluster_k=per_cluster,
                         caption_policy=caption_policy, semdedup_eps=semdedup, semdedup_keep=keep,
                         budget=budget, allocate=allocate, pick=pick, concepts=tuple(concept or ()),
                         preset=preset, fraction=fraction, preset_score=score,
                         centroids=_absolute(centroids), targets=_absolute(targets),
                         imported_min=_pairs(min_score or (), "--min-score"))
    with Workspace(workspace) as ws:
        preview = preview_selection(ws, rule)
        extra = {"steps": preview["steps"]} | ({"per_cluster": preview["per_cluster"]} if budget is not None else {})
        echo_json(save_selection(ws, rule) | extra)


def _absolute(path: str | None) -> str | None:
    """A file the saved rule names, made absolute so the rule reads the same from any folder."""
    from pathlib import Path

    return str(Path(path).expanduser().resolve()) if path else None


def _pairs(items, flag: str) -> dict[str, float]:
    """NAME=VALUE options as a dict; a malformed one is refused in one line."""
    out = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"{flag} takes NAME=VALUE, such as datacomp.clip_b32_similarity_score=0.28; "
                                     f"got {item!r}")
    return out


def export(
    workspace: str = WORKSPACE,
    selection: str = typer.Option(..., help="A saved selection."),
    out: str = typer.Option(..., help="Output folder."),
    format: str = typer.Option("datacompdr", "--format", help="datacompdr, webdataset, parquet, uids (uids.npy "
                                                            "of uid strings), datacomp-subset (the sorted u8,u8 array "
                                                            "DataComp's resharder.py --subset-file reads)."),
    shard_size: int = typer.Option(10_000, min=1),
    augmentations: int = typer.Option(0, min=0, help="Embed N random augmentations per image (datacompdr)."),
    keep_repeats: bool = typer.Option(False, help="Keep a captioner's identical captions of one image (default: "
                                                  "each distinct synthetic caption once)."),
):
    """Export a selection as shards a trainer reads (deterministic, atomic, resumable)."""
    from curation.export.export import ExportConfig, run
    from indexer.store import Workspace

    cfg = ExportConfig(selection=selection, out=out, format=format, shard_size=shard_size,
                       augmentations=augmentations, keep_repeats=keep_repeats)
    with Workspace(workspace, read_only=True) as ws:
        manifest = run(ws, cfg)
    echo_json({"files": len(manifest["files"]), "samples": manifest["samples"], "out": out})


def verify_export(out: str = typer.Argument(..., help="An export folder."),
                  workspace: str = typer.Option(None, "--workspace", "-w", help="The workspace it was exported "
                                                "from: also re-embed a few captions with its model and check "
                                                "each exported text vector is its own caption's.")):
    """Re-read an export: checksums, counts and members; exits non-zero naming the bad shard."""
    from curation.export.policy import ExportError
    from curation.export.verify import verify_export

    try:
        if workspace is None:
            echo_json(verify_export(out))
        else:
            from indexer.models import open_workspace_model
            from indexer.store import Workspace
            with Workspace(workspace, read_only=True) as ws:
                if ws.get_meta("model") is None:
                    raise ExportError(f"workspace {workspace} holds no model to check the text vectors with")
                model = open_workspace_model(ws, None)
            echo_json(verify_export(out, model))
    except ExportError as exc:
        typer.echo(f"altlens: export is bad: {exc}", err=True)
        raise typer.Exit(1)
