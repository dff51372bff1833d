"""Alignment scores: captions + image embeddings -> clip_score, cycle, agreement and the per-sample reward.

Stored, and computed only where missing (``recompute=True`` redoes them):

- ``caption_scores.clip_score`` = 2.5 * max(cos(image, caption), 0) (Hessel et al.'s CLIPScore, without
  the "A photo depicts" prefix: altlens' demo model was trained on bare captions);
- ``caption_scores.cycle``: see :func:`cycle_scores`;
- ``sample_scores.agreement`` = cos(alt-text embedding, mean of the sample's synthetic-caption embeddings);
- ``alt_contrast.contrast``: the alt-text against its one-claim variants, see :mod:`curation.scores.contrast`
  (needs the text encoder, so only when a model is passed);
- ``rewards``: one value per sample and reward version; version 1 is the alt caption's clip_score,
  later versions (learned rewards) are added beside it. ``meta.active_reward`` names the one the UI uses.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore, build_index, search

log = logging.getLogger(__name__)

CYCLE_K = 15
ALT_CLIP_REWARD = "clip_score:alt"


def clip_score(cosine: np.ndarray) -> np.ndarray:
    return 2.5 * np.maximum(cosine, 0.0)


def row_cosines(images: np.ndarray, texts: np.ndarray, sample_ids: np.ndarray, caption_ids: np.ndarray,
                block: int = 65536) -> np.ndarray:
    """cos(image[sample_id], text[caption_id]) for aligned id arrays, in blocks (float16 stays on disk)."""
    out = np.empty(len(caption_ids), dtype=np.float32)
    for i in range(0, len(caption_ids), block):
        a = np.asarray(images[sample_ids[i:i + block]], dtype=np.float32)
        b = np.asarray(texts[caption_ids[i:i + block]], dtype=np.float32)
        out[i:i + block] = (a * b).sum(1)
    return out


def cycle_scores(images: np.ndarray, texts: np.ndarray, ok_ids: np.ndarray, pool_ids: np.ndarray,
                 pool_samples: np.ndarray, k: int = CYCLE_K) -> np.ndarray:
    """Cycle consistency (SynC) for every caption of one pool (one caption source kind).

    For image i, retrieve its top-2 captions from the pool. A caption c of image i
    that is among them scores 1 (first) or 0.5 (second) if, retrieving the top-``k``
    images for c, image i comes back among them; every other caption scores 0.
    Only the captions an image retrieves can score, so the cost is one image query
    per image plus at most two caption queries per image, not one per caption.
    """
    out = np.zeros(len(pool_ids), dtype=np.float32)
    if not len(pool_ids) or not len(ok_ids):
        return out
    text_vecs = np.asarray(texts[pool_ids], dtype=np.float32)
    image_vecs = np.asarray(images[ok_ids], dtype=np.float32)
    caption_index = build_index(text_vecs, np.arange(len(pool_ids)))
    _, top2 = search(caption_index, image_vecs, min(2, len(pool_ids)))
    own = pool_samples[np.clip(top2, 0, None)] == ok_ids[:, None]
    rows, ranks = np.nonzero(own & (top2 >= 0))
    if not len(rows):
        return out
    candidates = top2[rows, ranks]
    image_index = build_index(image_vecs, ok_ids)
    _, back = search(image_index, text_vecs[candidates], min(k, len(ok_ids)))
    returned = (back == ok_ids[rows][:, None]).any(1)
    out[candidates[returned]] = np.where(ranks[returned] == 0, 1.0, 0.5)
    return out


def score_workspace(ws: Workspace, recompute: bool = False, model=None, progress: bool = True) -> dict:
    """Fill clip_score, cycle, agreement, the default reward and (with ``model``, the workspace's
    embedding model) the alt-text contrast for everything missing them."""
    images = EmbeddingStore(ws, "image").load()
    texts = EmbeddingStore(ws, "text").load()
    if recompute:
        ws.execute("DELETE FROM caption_scores")
        ws.execute("DELETE FROM sample_scores")
        if model is not None:  # without a model it could not be refilled
            ws.execute("DELETE FROM alt_contrast")
    scored = _score_captions(ws, images, texts)
    agreements = _score_agreement(ws, texts)
    rewarded = _default_reward(ws)
    materialise_source_scores(ws)
    out = {"captions_scored": scored, "samples_with_agreement": agreements, "rewards_written": rewarded}
    if model is not None:
        from curation.scores.contrast import score_contrast
        out["alt_contrast_scored"] = score_contrast(ws, model, progress=progress)
    return out


def _score_captions(ws: Workspace, images, texts) -> int:
    rows = ws.rows("""SELECT c.id, c.sample_id, c.source_kind FROM captions c
                      JOIN samples s ON s.id = c.sample_id AND s.status = 'ok'
                      WHERE c.id NOT IN (SELECT caption_id FROM caption_scores) ORDER BY c.id""")
    if not rows:
        return 0
    caption_ids = np.array([r[0] for r in rows], dtype=np.int64)
    sample_ids = np.array([r[1] for r in rows], dtype=np.int64)
    cosine = row_cosines(images, texts, sample_ids, caption_ids)
    cycle = np.zeros(len(rows), dtype=np.float32)
    ok_ids = np.array([r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok' ORDER BY id")])
    kinds = np.array([r[2] for r in rows])
    for kind in np.unique(kinds):
        pool = ws.rows("""SELECT c.id, c.sample_id FROM captions c JOIN samples s ON s.id = c.sample_id
                          WHERE s.status = 'ok' AND c.source_kind = ? ORDER BY c.id""", [kind])
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


def _score_agreement(ws: Workspace, texts) -> int:
    rows = ws.rows("""SELECT a.sample_id, a.id, list(s.id ORDER BY s.id) FROM captions a
                      JOIN captions s ON s.sample_id = a.sample_id AND s.source_kind = 'syn'
                      WHERE a.source_kind = 'alt' AND a.sample_id NOT IN (SELECT sample_id FROM sample_scores)
                      GROUP BY a.sample_id, a.id ORDER BY a.sample_id""")
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


def reward_version(ws: Workspace, kind: str, provenance: dict | None = None, create: bool = True) -> int | None:
    """The version number of a reward kind, created on first use."""
    found = ws.scalar("SELECT max(version) FROM reward_versions WHERE kind = ?", [kind])
    if found is not None or not create:
        return found
    version = int(ws.scalar("SELECT coalesce(max(version), 0) + 1 FROM reward_versions"))
    ws.execute("INSERT INTO reward_versions VALUES (?, ?, ?, ?)", [version, kind, json.dumps(provenance or {}), now()])
    return version


def active_reward(ws: Workspace) -> int | None:
    return ws.get_meta("active_reward")


def _default_reward(ws: Workspace) -> int:
    version = reward_version(ws, ALT_CLIP_REWARD, {"definition": "clip_score of the sample's alt caption"})
    if ws.get_meta("active_reward") is None:
        ws.set_meta("active_reward", version)
    before = ws.scalar("SELECT count(*) FROM rewards WHERE version = ?", [version])
    ws.execute("""INSERT INTO rewards SELECT c.sample_id, ?, cs.clip_score FROM captions c
                  JOIN caption_scores cs ON cs.caption_id = c.id
                  WHERE c.source_kind = 'alt' ON CONFLICT DO NOTHING""", [version])
    return int(ws.scalar("SELECT count(*) FROM rewards WHERE version = ?", [version])) - int(before)
