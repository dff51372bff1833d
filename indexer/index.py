"""``altlens index``: wires read -> decode -> embed -> write, resumable, and times each step.

Decoding (file reads, Pillow, preprocessing, thumbnails) runs in a thread pool
a few batches ahead of the model, so the end-to-end rate stays close to the
model-only rate. Rows, embedding chunks and finished shards are committed
together in one DuckDB transaction every ``commit_rows`` samples: a kill -9 at
any moment loses at most the uncommitted tail, which the next run redoes.
"""
from __future__ import annotations

import itertools
import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import torch
from tqdm import tqdm

from indexer.decode import DecodeConfig
from indexer.models import ModelSpec, open_workspace_model
from indexer.sources import Source, count_inputs, resolve_source
from indexer.stages import decode_batch, embed_batch, keyed
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore
from indexer.writer import SampleWriter, rebuild_index_if_stale

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class IndexConfig:
    """Everything ``altlens index`` needs; validated on creation."""

    sources: tuple[str, ...]
    model: ModelSpec | None = None
    batch_size: int = 64
    workers: int = 2
    prefetch: int = 4
    commit_rows: int = 1024
    index_type: str = "auto"
    image_column: str | None = None
    caption_column: str | None = None
    allow_roots: tuple[str, ...] = ()  # folders besides each source's own that table rows and links may point into
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    progress: bool = True
    engine: str = "local"  # "ray": decode in Ray tasks, embed in a pool of model actors (indexer/engine_ray.py)
    ray_address: str | None = None  # an existing cluster ("auto", "ray://HOST:10001"); None starts a local Ray
    ray_workers: int = 1  # model actors (one GPU each where there are GPUs)
    block_rows: int = 512  # samples per Ray block of a folder or table source (tar sources: one shard a block)

    def __post_init__(self):
        if not self.sources:
            raise ValueError("give at least one source (a folder, a table file or tar shards)")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; allowed: {', '.join(ENGINES)}")
        if self.ray_address and self.engine != "ray":
            raise ValueError("--ray-address needs --engine ray")
        for name in ("ray_workers", "block_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_size", "workers", "prefetch", "commit_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class StageTimes:
    """Seconds spent per stage, for the progress line and the benchmark."""

    wait_decode: float = 0.0
    embed: float = 0.0
    write: float = 0.0
    samples: int = 0
    ok: int = 0
    duplicates: int = 0  # samples kept as duplicate_key: their key was read before in this run
    already: list = field(default_factory=lambda: [0])  # inputs skipped: their key is in the workspace already
    started: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict:
        wall = time.perf_counter() - self.started
        return {"samples": self.samples, "ok": self.ok, "duplicate_key": self.duplicates,
                "already_indexed": self.already[0], "wall_s": round(wall, 3),
                "wait_decode_s": round(self.wait_decode, 3), "embed_s": round(self.embed, 3),
                "write_s": round(self.write, 3), "samples_per_s": round(self.samples / wall, 2) if wall else 0.0}


def resolve_sources(cfg: IndexConfig) -> list[Source]:
    """The sources ``cfg`` names, checked (a missing file or an unknown kind raises SourceError)."""
    return [resolve_source(s, cfg.image_column, cfg.caption_column, cfg.allow_roots) for s in cfg.sources]


def run(ws: Workspace, cfg: IndexConfig) -> dict:
    """Index ``cfg.sources`` into the open workspace ``ws``; return step times and counts."""
    sources = resolve_sources(cfg)
    model = open_workspace_model(ws, cfg.model)
    writer = SampleWriter(ws, model.dim, commit_rows=cfg.commit_rows)
    run_id = _start_run(ws, cfg)
    times = StageTimes()
    decode_cfg = DecodeConfig(cfg.decode.max_pixels, cfg.decode.thumb_size, str(ws.thumbs_dir))
    bar = tqdm(desc="index", unit="img", disable=not cfg.progress, total=_estimate_total(ws, sources))
    if cfg.engine == "ray":
        from indexer.engine_ray import ray_results
        results = ray_results(ws, sources, cfg, decode_cfg, model, writer, run_id, times)
    else:
        results = _local_results(_new_samples(ws, sources, writer, times.already), cfg, decode_cfg, model, times)
    for batch, images, texts in results:
        t0 = time.perf_counter()
        writer.add(batch, images, texts)
        times.write += time.perf_counter() - t0
        n = sum(1 for s in batch if "__key__" in s)
        times.samples += n
        times.ok += sum(1 for s in batch if s.get("status") == "ok")
        times.duplicates += sum(1 for s in batch if s.get("status") == "duplicate_key")
        bar.update(n)
    writer.flush()
    bar.close()
    for kind in ("image", "text"):
        EmbeddingStore(ws, kind).compact()
    rebuild_index_if_stale(ws, cfg.index_type)
    report = times.as_dict() | {"precision": model.precision}
    _warn_if_fewer(report)
    _finish_run(ws, run_id, report)
    return report


def _warn_if_fewer(report: dict) -> None:
    """Say so whenever a run adds fewer new samples than it read: keys already in the workspace (a resumed
    run) are skipped, keys read twice are kept only as duplicate_key records."""
    if report["duplicate_key"]:
        log.warning("%d input(s) reused a key read earlier in this run and were recorded as duplicate_key, not "
                    "indexed ('altlens stats' lists them; each names its file)", report["duplicate_key"])
    if report["already_indexed"]:
        log.warning("%d input(s) were skipped: a sample with the same source and key is in the workspace already "
                    "(a resumed run, or a second input under a name seen before)", report["already_indexed"])


def _estimate_total(ws: Workspace, sources: list[Source]) -> int | None:
    """Inputs still to process, for the progress bar's ETA (None when counting would cost a full read)."""
    total = 0
    for src in sources:
        count = count_inputs(src)
        if count is None:
            return None
        total += count - int(ws.scalar("SELECT count(*) FROM samples WHERE source = ?", [src.name]))
    return max(total, 0)


def _local_results(stream, cfg: IndexConfig, decode_cfg: DecodeConfig, model, times: StageTimes):
    """(batch, image vectors, text vectors) in input order, decoded in threads and embedded here."""
    for batch in _decoded_batches(stream, cfg, decode_cfg, model.preprocess, times):
        t0 = time.perf_counter()
        images, texts = embed_batch(model, batch)
        times.embed += time.perf_counter() - t0
        yield batch, images, texts


def _new_samples(ws: Workspace, sources: list[Source], writer: SampleWriter, skipped: list[int]) -> Iterator[dict]:
    """Raw samples not yet in the workspace, each with its ``__uid__``; shard markers pass through; how many
    were already there is counted in ``skipped[0]``."""
    for src in sources:
        writer.register_source(src)
        known = {row[0] for row in ws.rows("SELECT key FROM samples WHERE source = ?", [src.name])}
        yield from keyed(src.read(skip_shard=writer.shard_done), src.name, known, {}, skipped)


def _decoded_batches(stream, cfg: IndexConfig, decode_cfg: DecodeConfig, preprocess, times: StageTimes):
    """Batches of decoded samples, decoded ``prefetch`` batches ahead in a thread pool, in order."""
    with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        raw_batches = iter(lambda: list(itertools.islice(stream, cfg.batch_size)), [])
        for raws in raw_batches:
            pending.append(pool.submit(decode_batch, raws, decode_cfg, preprocess))
            if len(pending) >= cfg.prefetch:
                yield _take(pending, times)
        while pending:
            yield _take(pending, times)


def _take(pending: deque, times: StageTimes) -> list[dict]:
    t0 = time.perf_counter()
    batch = pending.popleft().result()
    times.wait_decode += time.perf_counter() - t0
    return batch


def _start_run(ws: Workspace, cfg: IndexConfig) -> int:
    run_id = ws.next_id("runs")
    ws.execute("INSERT INTO runs VALUES (?, 'index', ?, ?, NULL, NULL)",
               [run_id, str(list(cfg.sources)), now()])
    return run_id


def _finish_run(ws: Workspace, run_id: int, report: dict) -> None:
    ws.execute("UPDATE runs SET finished_at = ?, counts = ? WHERE id = ?", [now(), json.dumps(report), run_id])


def model_only_rate(model, pixels: list[torch.Tensor], batch_size: int, captions: list[str] | None = None) -> float:
    """Samples per second of the model work alone on already-preprocessed batches (benchmark baseline):
    the image tower, plus the text tower on the alt captions when ``captions`` are given (as indexing does)."""
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        model.encode_images(torch.stack(pixels[i:i + batch_size]))
        if captions is not None:
            model.encode_texts(captions[i:i + batch_size])
    return len(pixels) / (time.perf_counter() - t0)

