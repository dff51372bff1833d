"""``altlens caption``: images of a workspace -> N synthetic captions each from a captioner, stored with provenance.

The captioner comes from the registry in :mod:`curation.captions.captioners`.

Every caption is embedded with the workspace's embedding model (the image
embeddings' space) and inserted with its text embedding in one atomic commit
per batch. Samples that already have ``num`` captions from the producer are
skipped; a batch the captioner fails on is recorded with its reason and the run goes on.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from tqdm import tqdm

from curation.captions.captioners import SAMPLINGS, Captioner, make_captioner
from indexer.decode import open_image
from indexer.models import open_workspace_model, run_spec
from indexer.paths import read_member
from indexer.schema import SYN
from indexer.store import Workspace, now
from indexer.writer import insert_captions

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class CaptionConfig:
    """``altlens caption`` settings."""

    captioner: str | None = None
    num: int = 5
    sampling: str = "top_p"
    top_p: float = 0.9
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    workers: int = 2
    limit: int | None = None
    progress: bool = True

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {self.sampling!r}; allowed: {', '.join(SAMPLINGS)}")
        if not 1 <= self.num <= 64:
            raise ValueError(f"--num must be between 1 and 64, got {self.num}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")


def load_sample_image(row: dict):
    """The sample's image, read back from its file or tar member (None if it no longer decodes)."""
    try:
        data = read_member(row["path"], row["member_offset"], row["member_size"])
    except OSError:
        return None
    image, problem = open_image(data, 1 << 31)
    return None if problem else image.convert("RGB")


def pending_samples(ws: Workspace, producer: str, num: int, limit: int | None) -> list[dict]:
    """Ok samples with fewer than ``num`` captions from ``producer``, in id order."""
    sql = """SELECT s.id, s.uid, s.path, s.member_offset, s.member_size, count(c.id) AS have
             FROM samples s LEFT JOIN captions c ON c.sample_id = s.id AND c.producer = ?
             WHERE s.status = 'ok' GROUP BY ALL HAVING count(c.id) < ? ORDER BY s.id"""
    rows = ws.dicts(sql + (" LIMIT ?" if limit else ""), [producer, num] + ([limit] if limit else []))
    return rows


def run(ws: Workspace, cfg: CaptionConfig) -> dict:
    """Caption every pending sample of ``ws``; return counts."""
    embedder = open_workspace_model(ws, run_spec(cfg.device, cfg.precision))
    captioner = make_captioner(cfg.captioner, embedder, cfg)
    todo = pending_samples(ws, captioner.producer, cfg.num, cfg.limit)
    ws.release()  # captioning takes long; commits below take the workspace back per batch
    done = failed = 0
    bar = tqdm(total=len(todo), desc=f"caption ({captioner.producer})", unit="img", disable=not cfg.progress)
    for rows, pixels in _decoded(todo, captioner, cfg):
        try:
            texts = captioner.caption(pixels, cfg.num, seed=cfg.seed + rows[0]["id"]) if rows else []
        except Exception as exc:  # a failing captioner batch is recorded, the run goes on
            _record_failure(ws, rows, captioner.producer, f"{type(exc).__name__}: {exc}")
            ws.release()
            failed += len(rows)
            bar.update(len(rows))
            continue
        _store(ws, rows, texts, captioner, embedder, cfg)
        ws.release()
        done += len(rows)
        bar.update(len(rows))
    bar.close()
    return {"producer": captioner.producer, "captioned": done, "failed": failed,
            "skipped_already_done": int(ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok'")) - len(todo)}


def _decoded(todo: list[dict], captioner: Captioner, cfg: CaptionConfig):
    """(rows, pixels) batches, decoded a few batches ahead in a thread pool; undecodable images dropped."""
    def decode(batch: list[dict]):
        kept, pixels = [], []
        for row in batch:
            image = load_sample_image(row)
            if image is not None:
                kept.append(row)
                pixels.append(captioner.preprocess(image))
        return kept, torch.stack(pixels) if pixels else torch.zeros(0)

    batches = [todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        pending = deque(pool.submit(decode, b) for b in batches[:3])
        for nxt in batches[3:] + [None] * 3:
            if not pending:
                break
            kept, pixels = pending.popleft().result()
            if nxt is not None:
                pending.append(pool.submit(decode, nxt))
            if kept:
                yield kept, pixels


def _store(ws: Workspace, rows: list[dict], texts: list[list[str]], captioner, embedder, cfg) -> None:
    records, flat = [], []
    params = json.dumps(captioner.params)
    for row, captions in zip(rows, texts):
        for idx in range(row["have"], cfg.num):
            text = captions[idx] if idx < len(captions) else ""
            records.append({"sample_id": row["id"], "uid": row["uid"], "source_kind": SYN,
                            "producer": captioner.producer, "params": params, "idx": idx, "text": text})
            flat.append(text)
    if records:
        insert_captions(ws, records, embedder.encode_texts(flat))


def _record_failure(ws: Workspace, rows: list[dict], producer: str, reason: str) -> None:
    log.warning("captioner %s failed on %d samples: %s", producer, len(rows), reason, exc_info=True)
    ws.executemany("INSERT INTO producer_failures VALUES (?, ?, ?, ?)",
                            [(r["id"], producer, reason[:2000], now()) for r in rows])
