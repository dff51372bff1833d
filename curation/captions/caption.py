"""Synthetic captions: images of a workspace -> N captions each from a captioner, stored with provenance.

Captioners register by prefix and share one interface (``producer``, ``params``,
``preprocess``, ``caption(pixels, num, seed)``):

- ``openclip:MODEL[:TAG]`` / ``checkpoint:PATH`` / omitted (the workspace's own model, if it is a CoCa):
  open_clip CoCa, DataCompDR recipe (top-p 0.9, text up to the first period);
- ``hf:PATH_OR_ID``: a Hugging Face image-to-text model (BLIP, GIT, ...) from a local path or cache;
- anything a plugin registers under the ``altlens.captioners`` entry point (the demo's ``demo``).

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
from typing import Callable, Protocol

import torch
from tqdm import tqdm

from curation.registry import Registry
from indexer.decode import open_image
from indexer.models import ModelError, ModelSpec, load_model, open_workspace_model, run_spec
from indexer.schema import SYN
from indexer.sources import read_member
from indexer.store import Workspace, now
from indexer.writer import insert_captions

log = logging.getLogger(__name__)

SAMPLINGS = ("top_p", "beam", "diverse_beam")


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


class Captioner(Protocol):
    producer: str
    params: dict

    def preprocess(self, image): ...

    def caption(self, pixels: torch.Tensor, num: int, seed: int) -> list[list[str]]: ...


class GenerativeCaptioner:
    """A model with ``generate`` / ``generate_diverse`` (open_clip CoCa, or a plugin's model): ``num``
    captions per image by top-p sampling, beam search or diverse beam search."""

    def __init__(self, model, cfg: CaptionConfig, model_id: str, preprocess, seq_len: int | None):
        self.model, self.cfg = model, cfg
        tag = f"top_p{cfg.top_p}" if cfg.sampling == "top_p" else cfg.sampling
        self.producer = f"{model_id}/{tag}"
        self.params = {"sampling": cfg.sampling, "top_p": cfg.top_p if cfg.sampling == "top_p" else None,
                       "seq_len": seq_len, "seed": cfg.seed, "postprocess": "text before the first period"}
        self.preprocess = preprocess

    def caption(self, pixels: torch.Tensor, num: int, seed: int) -> list[list[str]]:
        if self.cfg.sampling == "diverse_beam":
            return self.model.generate_diverse(pixels, num)
        if self.cfg.sampling == "beam":
            best = self.model.generate(pixels, sampling="beam")
            return [[text] * num for text in best] if num == 1 else self._beam_then_sample(pixels, best, num, seed)
        flat = self.model.generate(pixels.repeat_interleave(num, dim=0), top_p=self.cfg.top_p, seed=seed)
        return [flat[i * num:(i + 1) * num] for i in range(len(pixels))]

    def _beam_then_sample(self, pixels, best, num, seed):
        """Beam search yields one caption per image; fill the other slots by top-p so none repeat it."""
        extra = self.model.generate(pixels.repeat_interleave(num - 1, dim=0), top_p=self.cfg.top_p, seed=seed)
        return [[best[i]] + extra[i * (num - 1):(i + 1) * (num - 1)] for i in range(len(pixels))]


def open_clip_captioner(model, cfg: CaptionConfig) -> GenerativeCaptioner:
    if not model.can_caption:
        raise ModelError(f"{model.name} is not a CoCa model and cannot caption; pass --captioner "
                         "(a separate captioner, e.g. hf:PATH)")
    return GenerativeCaptioner(model, cfg, model.model_id, model.preprocess,
                               getattr(model.model, "context_length", None))


def _openclip_factory(arg: str | None, ws_model, cfg: CaptionConfig) -> Captioner:
    if arg is None:
        return open_clip_captioner(ws_model, cfg)
    kind, _, rest = arg.partition(":")
    if not rest:
        raise ModelError(f"captioner {arg!r} needs a value: openclip:MODEL[:TAG] or checkpoint:PATH")
    if kind == "checkpoint":
        spec = ModelSpec(checkpoint=rest, device=cfg.device, precision=cfg.precision)
    else:
        name, _, tag = rest.partition(":")
        spec = ModelSpec(name=name, pretrained=tag or None, device=cfg.device, precision=cfg.precision)
    return open_clip_captioner(load_model(spec), cfg)


def _hf_factory(arg: str, ws_model, cfg: CaptionConfig) -> Captioner:
    from curation.captions.hf import HFCaptioner
    return HFCaptioner(arg.partition(":")[2], cfg)


# A factory takes (the --captioner value, the workspace's embedding model, the CaptionConfig) and returns a
# Captioner. Plugins add theirs under the ``altlens.captioners`` entry point (the demo's is ``demo``).
CAPTIONERS: Registry[Callable] = Registry("captioner", "altlens.captioners")
for _name, _factory in (("openclip", _openclip_factory), ("checkpoint", _openclip_factory), ("hf", _hf_factory)):
    CAPTIONERS.register(_name, _factory)


def make_captioner(arg: str | None, ws_model, cfg: CaptionConfig) -> Captioner:
    """The captioner named by ``--captioner`` (``PREFIX:VALUE`` or a plugin's name), or the workspace's CoCa."""
    if arg is None:
        return _openclip_factory(None, ws_model, cfg)
    factory = CAPTIONERS.find(arg.partition(":")[0])
    if factory is None:
        raise ModelError(f"unknown captioner {arg!r}; use one of: " + ", ".join(CAPTIONERS.names()) +
                         " (as NAME:VALUE; or leave it out for the workspace's CoCa)")
    return factory(arg, ws_model, cfg)


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
    done = failed = 0
    bar = tqdm(total=len(todo), desc=f"caption ({captioner.producer})", unit="img", disable=not cfg.progress)
    for rows, pixels in _decoded(todo, captioner, cfg):
        try:
            texts = captioner.caption(pixels, cfg.num, seed=cfg.seed + rows[0]["id"]) if rows else []
        except Exception as exc:  # a failing captioner batch is recorded, the run goes on
            _record_failure(ws, rows, captioner.producer, f"{type(exc).__name__}: {exc}")
            failed += len(rows)
            bar.update(len(rows))
            continue
        _store(ws, rows, texts, captioner, embedder, cfg)
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
    ws.cursor().executemany("INSERT INTO producer_failures VALUES (?, ?, ?, ?)",
                            [(r["id"], producer, reason[:2000], now()) for r in rows])
