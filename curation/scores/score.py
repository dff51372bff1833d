"""``altlens score``: captions + image embeddings -> stored clip_score, cycle, agreement, contrast, default reward.

Stored, and computed only where missing (``recompute`` redoes them):

- ``caption_scores``: clip_score and cycle of every caption (:mod:`curation.scores.alignment`);
- ``sample_scores.agreement`` = cos(alt-text embedding, mean of the sample's synthetic-caption embeddings);
- ``sample_source_scores``: the best clip_score per caption source and sample, what filters read;
- ``contrast_sets``: mined from the workspace's captions, images and model when missing or stale
  (:mod:`curation.claims.mining`);
- ``caption_contrast``: the alt, best synthetic and fused captions against their variants
  (:mod:`curation.scores.contrast`);
- reward version 1, the alt caption's clip_score (:mod:`curation.scores.rewards`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curation.claims.mining import MiningConfig, ensure_contrast_sets
from curation.scores.alignment import clip_score, cycle_scores, row_cosines
from curation.scores.contrast import score_contrast
from curation.scores.rewards import write_default
from indexer.models import open_workspace_model, run_spec
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreConfig:
    """``altlens score`` settings. ``contrast`` loads the workspace's model for the text encoder."""

    recompute: bool = False
    contrast: bool = True  # mine contrast sets if needed, and score captions against their variants
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = True
    engine: str = "local"  # "ray": the contrast variants are encoded by a pool of model actors
    ray_address: str | None = None
    ray_workers: int = 1

    def __post_init__(self):
        if self.engine not in ("local", "ray"):
            raise ValueError(f"unknown engine {self.engine!r}; allowed: local, ray")


def run(ws: Workspace, cfg: ScoreConfig = ScoreConfig()) -> dict:
    """Fill clip_score, cycle, agreement, the default reward and (``cfg.contrast``) the alt-text contrast
    for everything in ``ws`` missing them; ``cfg.recompute`` redoes them all."""
    model = open_workspace_model(ws, run_spec(cfg.device, cfg.precision)) if cfg.contrast else None
    ray = {"address": cfg.ray_address, "workers": cfg.ray_workers} if cfg.engine == "ray" else None
    return score_workspace(ws, cfg.recompute, model, cfg.progress, ray)


def score_workspace(ws: Workspace, recompute: bool = False, model=None, progress: bool = True,
                    ray: dict | None = None) -> dict:
    """The work of :func:`run` with an already loaded model (None: no contrast)."""
    images = EmbeddingStore(ws, "image").load()
    texts = EmbeddingStore(ws, "text").load()
    # recompute replaces every row in one transaction per table: a failure (a full disk) keeps the old scores
    scored = _score_captions(ws, images, texts, recompute)
    agreements = _score_agreement(ws, texts, recompute)
    rewarded = write_default(ws)
    materialise_source_scores(ws)
    out = {"captions_scored": scored, "samples_with_agreement": agreements, "rewards_written": rewarded}
    if model is not None:
        sets = ensure_contrast_sets(ws, model, MiningConfig(progress=progress), force=recompute)
        out["contrast_sets"] = len(sets)
        out["contrast"] = score_contrast(ws, model, sets, progress=progress, recompute=recompute, ray=ray)
    return out


def _score_captions(ws: Workspace, images, texts, recompute: bool = False) -> int:
    rows = ws.rows("""SELECT c.id, c.sample_id, c.source_kind FROM captions c
                      JOIN samples s ON s.id = c.sample_id AND s.status = 'ok'
                      WHERE (? OR c.id NOT IN (SELECT caption_id FROM caption_scores)) AND c.id < ? ORDER BY c.id""",
                   [recompute, len(texts)])
    if not rows:
        return 0
    caption_ids = np.array([r[0] for r in rows], dtype=np.int64)
    sample_ids = np.array([r[1] for r in rows], dtype=np.int64)
    kinds = np.array([r[2] for r in rows])
    ok_ids = np.array([r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok' AND id < ? ORDER BY id",
                                             [len(images)])])
    pools = {kind: ws.rows("""SELECT c.id, c.sample_id FROM captions c JOIN samples s ON s.id = c.sample_id
                              WHERE s.status = 'ok' AND c.source_kind = ? AND c.id < ? ORDER BY c.id""",
                           [kind, len(texts)]) for kind in np.unique(kinds).tolist()}
    ws.release()  # everything is read: compute without holding the workspace
    cosine = row_cosines(images, texts, sample_ids, caption_ids)
    cycle = np.zeros(len(rows), dtype=np.float32)
    for kind, pool in pools.items():
        pool_ids = np.array([p[0] for p in pool], dtype=np.int64)
        pool_cycle = cycle_scores(images, texts, ok_ids, pool_ids, np.array([p[1] for p in pool], dtype=np.int64))
        lookup = dict(zip(pool_ids.tolist(), pool_cycle.tolist()))
        mask = kinds == kind
        cycle[mask] = [lookup[c] for c in caption_ids[mask].tolist()]
    table = pa.table({"caption_id": caption_ids, "clip_score": clip_score(cosine).astype(np.float64),
                      "cosine": cosine.astype(np.float64), "cycle": cycle.astype(np.float64),
                      "computed_at": [now()] * len(rows)})
    with ws.transaction() as cur:
        ws.insert_arrow("caption_scores", table, replace=True, cur=cur)
    return len(rows)


def _score_agreement(ws: Workspace, texts, recompute: bool = False) -> int:
    rows = ws.rows("""SELECT a.sample_id, a.id, list(s.id ORDER BY s.id) FROM captions a
                      JOIN captions s ON s.sample_id = a.sample_id AND s.source_kind = 'syn' AND s.id < ?
                      WHERE a.source_kind = 'alt' AND (? OR a.sample_id NOT IN (SELECT sample_id FROM sample_scores))
                      GROUP BY a.sample_id, a.id ORDER BY a.sample_id""", [len(texts), recompute])
    if not rows:
        return 0
    values = []
    for sample_id, alt_id, syn_ids in rows:
        mean = np.asarray(texts[syn_ids], dtype=np.float32).mean(0)
        norm = np.linalg.norm(mean)
        alt = np.asarray(texts[alt_id], dtype=np.float32)
        values.append(float(alt @ mean / norm) if norm > 0 else None)
    table = pa.table({"sample_id": [r[0] for r in rows], "agreement": values, "computed_at": [now()] * len(rows)})
    with ws.transaction() as cur:
        ws.insert_arrow("sample_scores", table, replace=True, cur=cur)
    return len(rows)


def materialise_source_scores(ws: Workspace) -> None:
    """One row per sample with the best clip_score of each caption source: what filters read at 1 M rows."""
    with ws.transaction() as cur:
        cur.execute("DELETE FROM sample_source_scores")
        cur.execute("""INSERT INTO sample_source_scores
            SELECT c.sample_id,
                   max(cs.clip_score) FILTER (WHERE c.source_kind = 'alt') AS alt,
                   max(cs.clip_score) FILTER (WHERE c.source_kind = 'syn') AS syn,
                   max(cs.clip_score) FILTER (WHERE c.source_kind = 'fused') AS fused
            FROM captions c JOIN caption_scores cs ON cs.caption_id = c.id GROUP BY c.sample_id""")
        ws.set_meta("scored", now().isoformat(), cur=cur)  # servers holding scores in memory reload them
