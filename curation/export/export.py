"""``altlens export``: (workspace, selection) -> the files of an export format, deterministic, atomic, resumable.

Samples are sorted by uid and cut into fixed shards, so the same workspace and
selection give byte-identical files. Each shard is written under a staging name,
fsynced and renamed, and its stats file follows. A re-run skips shards whose
stats match their bytes. ``manifest.json`` is written last; only files it lists count.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from curation.export.formats import ExportFormat, add_member, canonical_json, export_format
from curation.export.policy import ExportError, SampleSource
from curation.export.select import load_rule
from indexer.files import atomic_write, file_sha256, sweep_temp
from indexer.store import Workspace, now


@dataclass(frozen=True)
class ExportConfig:
    """``altlens export`` settings: which saved selection, where to, in which format."""

    selection: str
    out: str
    format: str = "datacompdr"
    shard_size: int = 10_000
    augmentations: int = 0
    # keep a captioner's identical captions of one image (default: each distinct text once, in caption order)
    keep_repeats: bool = False
    progress: bool = True

    def __post_init__(self):
        export_format(self.format)
        if self.shard_size < 1 or self.augmentations < 0:
            raise ValueError("--shard-size must be >= 1 and --augmentations >= 0")


def run(ws: Workspace, cfg: ExportConfig) -> dict:
    """Write (or finish writing) the export of a saved selection of ``ws`` (read only); returns the manifest."""
    out = Path(cfg.out)
    fmt = export_format(cfg.format)
    rule = load_rule(ws, cfg.selection)
    ordered = members_by_uid(ws, cfg.selection)
    if not len(ordered):
        raise ExportError(f"selection {cfg.selection!r} holds no samples; nothing to export")
    if fmt.sharded:
        _require_images(ws, cfg.selection)
    source = SampleSource(ws, rule.caption_policy, cfg.augmentations, cfg.keep_repeats)
    plan = {"selection": cfg.selection, "rule": asdict(rule), "format": cfg.format,
            "shard_size": cfg.shard_size, "augmentations": cfg.augmentations, "keep_repeats": cfg.keep_repeats,
            "samples": len(ordered),
            "workspace": str(ws.root), "embedding_model": (ws.get_meta("model") or {}).get("model_id")}
    out.mkdir(parents=True, exist_ok=True)  # everything above is checked before anything is written
    sweep_temp(out)
    _check_plan(out, plan)
    files = _write_shards(out, source, ordered, cfg, fmt) if fmt.sharded else fmt.write_files(out, source, ordered)
    manifest = {**plan, "files": files, "written_at": now().isoformat()}
    atomic_write(out / "manifest.json", lambda fh: fh.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))
    return manifest


def members_by_uid(ws: Workspace, selection: str) -> np.ndarray:
    """A saved selection's sample ids in the order exports write them (by uid), as one int64 array."""
    return np.asarray(ws.numpy("""SELECT s.id FROM selection_members m JOIN samples s ON s.id = m.sample_id
                                  WHERE m.name = ? ORDER BY s.uid""", [selection])["id"], dtype=np.int64)


def _require_images(ws: Workspace, selection: str) -> None:
    """Shards carry each sample's image: a selection with imported rows never downloaded cannot be written."""
    missing = int(ws.scalar("""SELECT count(*) FROM samples WHERE image_state IS NOT NULL
                               AND id IN (SELECT sample_id FROM selection_members WHERE name = ?)""", [selection]))
    if missing:
        raise ExportError(f"{missing} samples of selection {selection!r} have no image at hand (imported, not "
                          "downloaded): export it as datacomp-subset, uids or parquet, or download the images "
                          "(img2dataset) and index them")


def _check_plan(out: Path, plan: dict) -> None:
    path = out / "export-plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(plan, sort_keys=True, default=str)):
            raise ExportError(f"{out} holds an export of a different plan; use a new --out folder")
        return
    atomic_write(path, lambda fh: fh.write(canonical_json(plan)))


def _write_shards(out: Path, source: SampleSource, ordered: np.ndarray, cfg: ExportConfig,
                  fmt: ExportFormat) -> list[dict]:
    files = []
    bar = tqdm(total=len(ordered), desc=f"export {cfg.format}", unit="sample", disable=not cfg.progress)
    for number, start in enumerate(range(0, len(ordered), cfg.shard_size)):
        chunk = ordered[start:start + cfg.shard_size]
        name = f"{number:05d}.tar"
        stats_path = out / f"{number:05d}.stats.json"
        if stats_path.exists() and (out / name).exists():
            stats = json.loads(stats_path.read_text())
            if stats["sha256"] == file_sha256(out / name) and stats["samples"] == len(chunk):
                files.append(stats)
                bar.update(len(chunk))
                continue
        stats = _write_shard(out / name, source, chunk, fmt)
        atomic_write(stats_path, lambda fh, st=stats: fh.write(canonical_json(st)))
        files.append(stats)
        bar.update(len(chunk))
    bar.close()
    return files


def _write_shard(path: Path, source: SampleSource, chunk: np.ndarray, fmt: ExportFormat) -> dict:
    members = 0

    def write(fh) -> None:
        nonlocal members
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for start in range(0, len(chunk), 256):
                items = source.rows(chunk[start:start + 256])
                source.ws.release()  # reading image bytes and writing the shard needs no workspace
                for item in items:
                    for name, data in fmt.members(source, item):
                        add_member(tar, name, data)
                        members += 1
                    if source.augmentations:  # a sample's augmented views take a model pass: let writers in
                        source.ws.release()
    atomic_write(path, write)
    return {"file": path.name, "sha256": file_sha256(path), "samples": len(chunk), "members": members,
            "bytes": path.stat().st_size}
