"""Reduce a selection to a budget: a share of its samples, spread over clusters by a visible rule, with the
picks inside each cluster made by another.

* ``allocate`` decides how many each cluster keeps: in proportion to its size
  (``size``), to √size (``sqrt``: small clusters keep relatively more, the rare
  keeps its voice), or to its image diversity (``diversity``: the Vendi score of
  the cluster's images, so a cluster of near-copies gives up more). Every
  cluster keeps at least one sample, never more than it has, and the counts add
  up to the budget exactly (largest remainders), unless there are more clusters
  than the budget allows, which the table says.
* ``pick`` decides which: ``central`` (nearest the cluster centre first),
  ``reward`` (highest active reward first), or ``diverse`` (greedy k-center on
  the image embeddings, starting from the most central: each next pick is the
  sample farthest from everything picked so far; run in a 32-d PCA space).
"""
from __future__ import annotations

import numpy as np

from curation.scores.rewards import active_reward
from curation.structure.summaries import cluster_table
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore

ALLOCATE = ("size", "sqrt", "diversity")
PICK = ("central", "diverse", "reward")
PCA_DIM = 32


def quotas(sizes: np.ndarray, total: int, weights: np.ndarray) -> np.ndarray:
    """How many of each cluster to keep: ``total`` split in proportion to ``weights`` (largest remainders),
    at least 1 and at most ``sizes`` per non-empty cluster."""
    sizes = np.asarray(sizes, dtype=np.int64)
    out = np.minimum(sizes, 1)
    total = int(min(max(total, out.sum()), sizes.sum()))
    weights = np.where(sizes > 0, np.maximum(np.asarray(weights, dtype=np.float64), 1e-12), 0.0)
    while out.sum() < total:  # water-filling: clusters that hit their size hand the rest to the others
        room = sizes - out
        open_ = room > 0
        share = weights * open_
        left = total - out.sum()
        ideal = left * share / share.sum()
        add = np.minimum(np.floor(ideal).astype(np.int64), room)
        if add.sum() == 0:  # what is left is less than one per open cluster: the largest shares get one each
            order = np.argsort(-ideal, kind="stable")
            for i in order[:left]:
                if room[i] > 0:
                    out[i] += 1
            continue
        out += add
    return out


def _weights(ws: Workspace, clusters: np.ndarray, sizes: np.ndarray, allocate: str) -> np.ndarray:
    if allocate == "size":
        return sizes.astype(np.float64)
    if allocate == "sqrt":
        return np.sqrt(sizes)
    diversity = {row["cluster"]: (row["diversity"] or {}).get("image") for row in cluster_table(ws)}
    known = [v for v in diversity.values() if v]
    fallback = float(np.median(known)) if known else 1.0
    return np.array([min(float(diversity.get(int(c)) or fallback), float(n)) for c, n in zip(clusters, sizes)])


def _k_center(vectors: np.ndarray, k: int) -> list[int]:
    """Greedy farthest-point picks (row 0 first: the caller puts the most central there)."""
    picked = [0]
    nearest = 1.0 - vectors @ vectors[0]
    while len(picked) < k:
        nxt = int(np.argmax(nearest))
        picked.append(nxt)
        nearest = np.minimum(nearest, 1.0 - vectors @ vectors[nxt])
        nearest[picked] = -1.0
    return picked


def _projection(images: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """A PCA basis fitted on up to 20,000 of the candidates (None when the embeddings are already small)."""
    if images.shape[1] <= PCA_DIM or len(ids) <= PCA_DIM:
        return None
    sample = np.asarray(images[np.sort(np.random.default_rng(0).choice(ids, min(len(ids), 20000), replace=False))],
                        dtype=np.float32)
    _, _, vt = np.linalg.svd(sample - sample.mean(0), full_matrices=False)
    return vt[:PCA_DIM].T


def budget_pick(ws: Workspace, ids: list[int], budget: float, allocate: str = "sqrt", pick: str = "central",
                ) -> tuple[list[int], list[dict]]:
    """Keep ``budget`` (a share, 0-1) of ``ids``; returns the kept ids (sorted) and a row per cluster
    (cluster, candidates, kept). Samples without a cluster count as one more cluster, ``-1``."""
    if not 0 < budget <= 1:
        raise ValueError(f"--budget is a share of the selection, above 0 and at most 1, got {budget}")
    if allocate not in ALLOCATE:
        raise ValueError(f"unknown --allocate {allocate!r}; allowed: {', '.join(ALLOCATE)}")
    if pick not in PICK:
        raise ValueError(f"unknown --pick {pick!r}; allowed: {', '.join(PICK)}")
    if not ids:
        return [], []
    version = active_reward(ws)
    frame = ws.numpy("""SELECT q.id, coalesce(k.cluster, -1) AS cluster, coalesce(k.distance, 0) AS distance,
                               r.value AS reward
                        FROM (SELECT unnest(?) AS id) q LEFT JOIN clusters k ON k.sample_id = q.id
                        LEFT JOIN rewards r ON r.sample_id = q.id AND r.version = ? ORDER BY q.id""",
                     [[int(i) for i in ids], version if version is not None else -1])
    sid = np.asarray(frame["id"], dtype=np.int64)
    cluster = np.asarray(frame["cluster"], dtype=np.int64)
    distance = np.asarray(frame["distance"], dtype=np.float64)
    reward = frame["reward"]
    reward = np.asarray(reward.filled(np.nan) if hasattr(reward, "filled") else reward, dtype=np.float64)
    clusters, inverse, sizes = np.unique(cluster, return_inverse=True, return_counts=True)
    want = quotas(sizes, round(budget * len(sid)), _weights(ws, clusters, sizes, allocate))
    images = EmbeddingStore(ws, "image").load() if pick == "diverse" else None
    basis = _projection(images, sid) if images is not None else None
    kept, table = [], []
    for c, (name, k) in enumerate(zip(clusters.tolist(), want.tolist())):
        rows = np.flatnonzero(inverse == c)
        if pick == "reward":
            order = rows[np.lexsort((distance[rows], -np.nan_to_num(reward[rows], nan=-np.inf)))]
        else:
            order = rows[np.argsort(distance[rows], kind="stable")]
        if pick == "diverse" and k < len(order):
            vectors = np.asarray(images[sid[order]], dtype=np.float32)
            if basis is not None:
                vectors = vectors @ basis
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            order = order[_k_center(vectors, k)]
        kept += sid[order[:k]].tolist()
        table.append({"cluster": int(name), "candidates": int(len(rows)), "kept": int(k)})
    return sorted(kept), table
