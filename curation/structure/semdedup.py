"""Semantic deduplication (SemDeDup): different pictures of the same thing, found inside each k-means cluster,
and which member of each group to keep, decided by the caption.

Inside a cluster, members are put in keep order by a policy:

* ``caption``: highest active reward first (the pair whose caption fits best), ties
  broken by centrality;
* ``central``: nearest the cluster centre first;
* ``random``: a seeded shuffle.

Each member gets ``max_sim``: its highest cosine to any member *earlier* in that
order, and ``duplicate_of``: that member. A member is a semantic duplicate at
``eps`` when ``max_sim >= 1 - eps``; the earliest member of a group is never
one, so every group keeps exactly the member the policy prefers. Because
``max_sim`` does not depend on ``eps``, one run answers every ``eps``: the curve
of how much each would remove costs a histogram, and ``altlens select
--semdedup EPS`` applies any of them.

Similarities are computed block by block (at most ``memory_mb`` for one block),
so a 100,000-member cluster does not need a 40 GB matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curation.scores.rewards import active_reward
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore

KEEP = ("caption", "central", "random")
EPS_GRID = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
DEFAULT_EPS = 0.05


@dataclass(frozen=True)
class SemDedupConfig:
    """``altlens semdedup`` settings."""

    keep: str = "caption"
    seed: int = 0
    memory_mb: int = 256

    def __post_init__(self):
        if self.keep not in KEEP:
            raise ValueError(f"unknown --keep {self.keep!r}; allowed: {', '.join(KEEP)}")
        if self.memory_mb < 1:
            raise ValueError("--memory-mb must be at least 1")


def keep_order(policy: str, distance: np.ndarray, reward: np.ndarray, seed: int) -> np.ndarray:
    """Indexes of one cluster's members, the one to keep first."""
    if policy == "caption":
        return np.lexsort((distance, -np.nan_to_num(reward, nan=-np.inf)))
    if policy == "central":
        return np.argsort(distance, kind="stable")
    return np.random.default_rng(seed).permutation(len(distance))


def earlier_max(vectors: np.ndarray, memory_mb: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For rows in keep order: each row's highest cosine to an earlier row, and which row (-1 for the first)."""
    m = len(vectors)
    best = np.full(m, -np.inf, dtype=np.float32)
    which = np.full(m, -1, dtype=np.int64)
    block = max(1, int(memory_mb * 2**20 // (4 * max(m, 1))))
    columns = np.arange(m)
    for start in range(0, m, block):
        rows = vectors[start:start + block]
        sims = rows @ vectors.T  # [b, m]: row j (earlier) against every column i
        sims[(start + np.arange(len(rows)))[:, None] >= columns[None, :]] = -np.inf  # only j < i counts
        top = sims.argmax(0)
        value = sims[top, columns]
        better = value > best
        best[better], which[better] = value[better], start + top[better]
    return best, which


def semdedup(ws: Workspace, cfg: SemDedupConfig = SemDedupConfig(), progress: bool = True) -> dict:
    """Compute ``max_sim`` and ``duplicate_of`` for every clustered sample under ``cfg.keep``; store them (one
    run at a time: a new run replaces the table) and return the ``eps`` curve."""
    from tqdm import tqdm
    ws.require("clusters", "clusters")
    version = active_reward(ws)
    frame = ws.numpy("""SELECT k.sample_id, k.cluster, k.distance, r.value FROM clusters k
                        JOIN samples s ON s.id = k.sample_id AND s.status = 'ok'
                        LEFT JOIN rewards r ON r.sample_id = k.sample_id AND r.version = ?
                        ORDER BY k.cluster, k.sample_id""", [version if version is not None else -1])
    ids = np.asarray(frame["sample_id"], dtype=np.int64)
    clusters = np.asarray(frame["cluster"], dtype=np.int64)
    distance = np.asarray(frame["distance"], dtype=np.float64)
    reward = frame["value"]
    reward = np.asarray(reward.filled(np.nan) if hasattr(reward, "filled") else reward, dtype=np.float64)
    images = EmbeddingStore(ws, "image").load()
    ws.release()
    rank = np.zeros(len(ids), dtype=np.int64)
    max_sim = np.full(len(ids), np.nan)
    duplicate_of = np.full(len(ids), -1, dtype=np.int64)
    bounds = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1], True])
    for a, b in tqdm(list(zip(bounds[:-1], bounds[1:])), desc="semantic dedup", unit="cluster", disable=not progress):
        order = a + keep_order(cfg.keep, distance[a:b], reward[a:b], cfg.seed + int(clusters[a]))
        vectors = np.asarray(images[ids[order]], dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        best, which = earlier_max(vectors, cfg.memory_mb)
        rank[order] = np.arange(len(order))
        max_sim[order] = np.where(np.isfinite(best), best, np.nan)
        duplicate_of[order] = np.where(which >= 0, ids[order][np.maximum(which, 0)], -1)
    table = pa.table({"sample_id": ids, "cluster": clusters.astype(np.int32), "rank": rank.astype(np.int32),
                      "max_sim": max_sim, "duplicate_of": pa.array(duplicate_of, mask=duplicate_of < 0),
                      "keep": [cfg.keep] * len(ids), "computed_at": [now()] * len(ids)})
    with ws.transaction() as cur:
        cur.execute("DELETE FROM semdedup")
        ws.insert_arrow("semdedup", table, cur=cur)
        ws.set_meta("semdedup", {"keep": cfg.keep, "seed": cfg.seed, "samples": int(len(ids))}, cur=cur)
    return {"keep": cfg.keep, "samples": int(len(ids)), "curve": eps_curve(max_sim, clusters)}


def eps_curve(max_sim: np.ndarray, clusters: np.ndarray, grid=EPS_GRID) -> list[dict]:
    """How many samples each ``eps`` removes, overall and in the cluster it hits hardest."""
    out = []
    for eps in grid:
        drop = np.nan_to_num(max_sim, nan=-np.inf) >= 1 - eps
        per = np.bincount(clusters[drop], minlength=int(clusters.max(initial=0)) + 1)
        sizes = np.bincount(clusters, minlength=len(per))
        share = np.divide(per, sizes, out=np.zeros(len(per)), where=sizes > 0)
        worst = int(share.argmax()) if len(share) else -1
        out.append({"eps": eps, "removed": int(drop.sum()), "share": round(float(drop.mean()), 4) if len(drop) else 0,
                    "worst_cluster": worst, "worst_cluster_share": round(float(share.max(initial=0)), 4)})
    return out


def stored_curve(ws: Workspace, grid=EPS_GRID) -> list[dict]:
    """The eps curve of the stored run."""
    frame = ws.numpy("SELECT cluster, max_sim FROM semdedup")
    values = frame["max_sim"]
    values = np.asarray(values.filled(np.nan) if hasattr(values, "filled") else values, dtype=np.float64)
    return eps_curve(values, np.asarray(frame["cluster"], dtype=np.int64), grid)


def require_run(ws: Workspace, keep: str) -> None:
    """A selection with ``--semdedup`` needs a stored run of the same keep policy."""
    meta = ws.get_meta("semdedup")
    if meta is None:
        raise ValueError(f"no semantic dedup yet; run 'altlens semdedup --keep {keep}' first")
    if meta["keep"] != keep:
        raise ValueError(f"the stored semantic dedup keeps by {meta['keep']!r}, not {keep!r}; run "
                         f"'altlens semdedup --keep {keep}' first")
