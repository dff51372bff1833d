"""``altlens caption``: images of a workspace -> N synthetic captions each from a captioner, stored with provenance.

The captioner comes from the registry in :mod:`curation.captions.captioners`.

Every caption is embedded with the workspace's embedding model (the image
embeddings' space) and inserted with its text embedding in one atomic commit
per batch. Samples that already have ``num`` captions from the producer are
skipped; a batch the captioner fails on is recorded with its reason and the run goes on.
With ``engine="ray"`` the same batches are decoded in Ray tasks and captioned by a
pool of model actors (:mod:`indexer.engine_ray`), and committed here in order.
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
from indexer.engine_ray import BlockActor
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
    engine: str = "local"  # "ray": decode in Ray tasks, caption in a pool of model actors
    ray_address: str | None = None
    ray_workers: int = 1
    block_batches: int = 8  # captioner batches per Ray block

    def __post_init__(self):
        if self.engine not in ("local", "ray"):
            raise ValueError(f"unknown engine {self.engine!r}; allowed: local, ray")
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
             WHERE s.status = 'ok' AND s.image_state IS NULL GROUP BY ALL HAVING count(c.id) < ? ORDER BY s.id"""
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
    results = _ray_results(ws, todo, captioner, embedder, cfg) if cfg.engine == "ray" else \
        _local_results(todo, captioner, embedder, cfg)
    for rows, records, vectors, problem in results:
        if problem:
            _record_failure(ws, rows, captioner.producer, problem)
            failed += len(rows)
        else:
            if records:
                insert_captions(ws, records, vectors)
            done += len(rows)
        ws.release()
        bar.update(len(rows))
    bar.close()
    return {"producer": captioner.producer, "captioned": done, "failed": failed,
            "skipped_already_done": int(ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok' "
                                                  "AND image_state IS NULL")) - len(todo),
            "no_image_at_hand": int(ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok' "
                                              "AND image_state IS NOT NULL"))}


def caption_batch(rows: list[dict], pixels, captioner, embedder, cfg: CaptionConfig):
    """(rows, caption records, their text embeddings, None) for one batch, or (rows, [], None, reason) when the
    captioner fails on it; both engines' model step."""
    try:
        texts = captioner.caption(pixels, cfg.num, seed=cfg.seed + rows[0]["id"]) if rows else []
    except Exception as exc:  # a failing captioner batch is recorded, the run goes on
        return rows, [], None, f"{type(exc).__name__}: {exc}"
    records = caption_records(rows, texts, captioner, cfg)
    return rows, records, embedder.encode_texts([r["text"] for r in records]) if records else None, None


def _local_results(todo: list[dict], captioner, embedder, cfg: CaptionConfig):
    for rows, pixels in _decoded(todo, captioner, cfg):
        yield caption_batch(rows, pixels, captioner, embedder, cfg)


def _batches(todo: list[dict], cfg: CaptionConfig) -> list[list[dict]]:
    return [todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]


def decode_rows(batch: list[dict], preprocess):
    """The batch's rows whose image still decodes, and their pixels; both engines' decode step."""
    kept, pixels = [], []
    for row in batch:
        image = load_sample_image(row)
        if image is not None:
            kept.append(row)
            pixels.append(preprocess(image))
    return kept, torch.stack(pixels) if pixels else torch.zeros(0)


def _ray_results(ws: Workspace, todo: list[dict], captioner, embedder, cfg: CaptionConfig):
    """The local engine's batches, decoded in Ray tasks and captioned by model actors, committed in order."""
    from indexer.engine_ray import check_ray, new_staging, stream_blocks
    check_ray(embedder)
    batches = _batches(todo, cfg)
    blocks = [batches[i:i + cfg.block_batches] for i in range(0, len(batches), cfg.block_batches)]
    if not blocks:
        return
    staging = new_staging(ws, f"caption-{captioner.producer.replace('/', '_').replace(':', '_')}")
    for _, results in stream_blocks(ws, blocks, _decode_block, {"preprocess": captioner.preprocess},
                                    CaptionBlock, {"cfg": cfg}, embedder, cfg.ray_address, cfg.ray_workers, staging):
        yield from results


def _decode_block(row: dict, preprocess) -> dict:
    import pickle
    decoded = [decode_rows(batch, preprocess) for batch in pickle.loads(row["block"])]
    return {"number": row["number"], "decoded": pickle.dumps([(k, p.numpy()) for k, p in decoded], protocol=5)}


class CaptionBlock(BlockActor):
    """Ray actor: the workspace's model and the captioner, loaded once; each block's batches captioned."""

    def __init__(self, cfg: CaptionConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.captioner = make_captioner(cfg.captioner, self.model, cfg)

    def process(self, number: int, payload: bytes) -> list:
        import pickle
        return [caption_batch(rows, torch.from_numpy(pixels), self.captioner, self.model, self.cfg)
                for rows, pixels in pickle.loads(payload) if rows]


def _decoded(todo: list[dict], captioner: Captioner, cfg: CaptionConfig):
    """(rows, pixels) batches, decoded a few batches ahead in a thread pool; undecodable images dropped."""
    batches = _batches(todo, cfg)
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        pending = deque(pool.submit(decode_rows, b, captioner.preprocess) for b in batches[:3])
        for nxt in batches[3:] + [None] * 3:
            if not pending:
                break
            kept, pixels = pending.popleft().result()
            if nxt is not None:
                pending.append(pool.submit(decode_rows, nxt, captioner.preprocess))
            if kept:
                yield kept, pixels


def caption_records(rows: list[dict], texts: list[list[str]], captioner, cfg: CaptionConfig) -> list[dict]:
    """The caption rows to add: each sample's missing indices up to ``num`` (an empty text where the captioner
    gave fewer)."""
    records = []
    params = json.dumps(captioner.params)
    for row, captions in zip(rows, texts):
        for idx in range(row["have"], cfg.num):
            text = captions[idx] if idx < len(captions) else ""
            records.append({"sample_id": row["id"], "uid": row["uid"], "source_kind": SYN,
                            "producer": captioner.producer, "params": params, "idx": idx, "text": text})
    return records


def _record_failure(ws: Workspace, rows: list[dict], producer: str, reason: str) -> None:
    log.warning("captioner %s failed on %d samples: %s", producer, len(rows), reason, exc_info=True)
    ws.executemany("INSERT INTO producer_failures VALUES (?, ?, ?, ?)",
                            [(r["id"], producer, reason[:2000], now()) for r in rows])
