"""Alignment of captions with their images, as pure functions over embedding arrays.

- ``clip_score`` = 2.5 * max(cos(image, caption), 0): Hessel et al.'s CLIPScore, without the
  "A photo depicts" prefix (the demo model was trained on bare captions);
- ``cycle``: SynC-style cycle consistency, see :func:`cycle_scores`;
- :func:`row_cosines`: cosine of aligned (image, caption) id pairs, in blocks.
"""
from __future__ import annotations

import numpy as np

from indexer.vectors import build_index, search

CYCLE_K = 15


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
    _, top2 = search(caption_index, image_vecs, min(2, len(pool_ids)), cross_modal=True, vectors=text_vecs)
    own = pool_samples[np.clip(top2, 0, None)] == ok_ids[:, None]
    rows, ranks = np.nonzero(own & (top2 >= 0))
    if not len(rows):
        return out
    candidates = top2[rows, ranks]
    image_index = build_index(image_vecs, ok_ids)
    _, back = search(image_index, text_vecs[candidates], min(k, len(ok_ids)), cross_modal=True, vectors=images)
    returned = (back == ok_ids[rows][:, None]).any(1)
    out[candidates[returned]] = np.where(ranks[returned] == 0, 1.0, 0.5)
    return out
