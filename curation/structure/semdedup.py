"""Semantic deduplication (SemDeDup): different pictures of the same thing, found inside each k-means cluster,
and which member of each group to keep, decided by the caption.

Every sample gets a place in one keep order, set by a policy:

* ``caption``: highest active reward first (the pair whose caption fits best), ties
  broken by centrality (distance to its cluster's centre);
* ``central``: nearest its cluster's centre first;
* ``random``: a seeded shuffle.

Each sample is compared with the members of its own cluster (as SemDeDup
does) and, with ``probes``, of its nearest clusters by centroid, for pairs that
k-means put on two sides of a border. On a 600-image demo world with 50 planted
pairs, 2 such pairs at eps 0.05 were found only when every cluster was probed
(on an 800-image one, --probes 2 raised recall at eps 0.06 from 0.92 to 0.95),
so the default stays 0. It gets ``max_sim``: its highest
cosine to any of them *earlier* in the keep order, and ``duplicate_of``: that
sample. A sample is a semantic duplicate at ``eps`` when ``max_sim >= 1 - eps``;
the earliest member of a group is never one, so every group keeps exactly the
member the policy prefers. Because
``max_sim`` does not depend on ``eps``, one run answers every ``eps``: the curve
of how much each would remove costs a histogram, and ``altlens select
--semdedup EPS`` applies any of them.

A map cluster larger than ``cell`` members (the map keeps at most 512 clusters,
so on a 12.8 M-row pool they hold 25,000 each) is first split by a small
spherical k-means into cells of about ``cell`` members, and each cell is
compared with itself and its ``cell_probes`` nearest cells of the same cluster.
Without the split the pass grows with the square of the pool (300 k -> 1 M
rows: 5.6 -> 37.8 s, about 36 min at 12.8 M by that slope); with it, linearly.
Pairs that cells part are missed: on a 1 M-row clustered pool with 1% planted
near-copies (bench/semdedup_cells.py), cells of 1,024 with one probed kept
99.8% of the whole-cluster pass's removals at eps 0.06 (no probe: 99.5%).

Similarities are computed block by block (at most ``memory_mb`` for one block).
The cost is that of SemDeDup on cells times ``1 + probes``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curation.scores.rewards import active_reward
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore

KEEP = ("caption", "central", "random")
EPS_GRID = (0.01, 0.02, 0.03, 0.05, 0.06, 0.075, 0.1, 0.15, 0.2)
# The eps the browser starts at and the tests judge. What cosine two shots of one thing reach depends on the
# model, so a curator reads the eps curve of their own workspace; 0.06 is where the demo model's planted
# redraws are found without merging different scenes: precision / recall 0.93 / 0.90 on the test world
# (600 samples, seed 11) and 0.94 / 0.92 on a held-out one (800, seed 21); 0.05 found 0.84 / 0.89.
DEFAULT_EPS = 0.06
CELL = 1024
CELL_PROBES = 1


@dataclass(frozen=True)
class SemDedupConfig:
    """``altlens semdedup`` settings."""

    keep: str = "caption"
    seed: int = 0
    memory_mb: int = 256
    probes: int = 0  # neighbouring clusters each cluster is also compared with
    cell: int = CELL  # a larger cluster is split into cells of about this many members
    cell_probes: int = CELL_PROBES  # the nearest cells of the same cluster each cell is also compared with

    def __post_init__(self):
        if self.keep not in KEEP:
            raise ValueError(f"unknown --keep {self.keep!r}; allowed: {', '.join(KEEP)}")
        if self.memory_mb < 1:
            raise ValueError("--memory-mb must be at least 1")
        if self.probes < 0:
            raise ValueError("--probes must be 0 or more")
        if self.cell < 2 or self.cell_probes < 0:
            raise ValueError("--cell must be at least 2 and --cell-probes 0 or more")


def keep_order(policy: str, distance: np.ndarray, reward: np.ndarray, seed: int) -> np.ndarray:
    """Indexes of one cluster's members, the one to keep first."""
    if policy == "caption":
        return np.lexsort((distance, -np.nan_to_num(reward, nan=-np.inf)))
    if policy == "central":
        return np.argsort(distance, kind="stable")
    return np.random.default_rng(seed).permutation(len(distance))


def earlier_max(vectors: np.ndarray, memory_mb: float = 256) -> tuple[np.ndarray, np.ndarray]:
    """For rows in keep order: each row's highest cosine to an earlier row, and which row (-1 for the first)."""
    order = np.arange(len(vectors))
    return earlier_among(vectors, order, vectors, order, memory_mb)


def earlier_among(queries: np.ndarray, query_rank: np.ndarray, others: np.ndarray, other_rank: np.ndarray,
                  memory_mb: float = 256) -> tuple[np.ndarray, np.ndarray]:
    """Each query's highest cosine to a row of ``others`` that comes earlier in the keep order (a lower rank),
    and which row (-1 where none does). At most ``memory_mb`` of similarities at a time."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    which = np.full(len(queries), -1, dtype=np.int64)
    block = max(1, int(memory_mb * 2**20 // (4 * max(len(queries), 1))))
    for start in range(0, len(others), block):
        sims = others[start:start + block] @ queries.T  # [b, q]
        sims[other_rank[start:start + block, None] >= query_rank[None, :]] = -np.inf
        top = sims.argmax(0)
        value = sims[top, np.arange(len(queries))]
        better = value > best
        best[better], which[better] = value[better], start + top[better]
    return best, which


def neighbour_clusters(centres: np.ndarray, probes: int) -> np.ndarray:
    """Each cluster's ``probes`` most similar other clusters ([k, probes], by centroid cosine)."""
    probes = min(probes, len(centres) - 1)
    sims = centres @ centres.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :probes]


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
    order = keep_order(cfg.keep, distance, reward, cfg.seed)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(order))
    max_sim = np.full(len(ids), np.nan)
    duplicate_of = np.full(len(ids), -1, dtype=np.int64)
    bounds = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1], True])
    spans = list(zip(bounds[:-1], bounds[1:]))
    def unit(c: int) -> np.ndarray:  # one cluster's unit vectors, read when needed (all of them may not fit)
        return _unit(images[ids[spans[c][0]:spans[c][1]]])
    if cfg.probes and spans:  # one more pass over the pool, only to find each cluster's neighbours
        near = neighbour_clusters(_unit(np.stack([unit(c).mean(0) for c in range(len(spans))])), cfg.probes)
    else:
        near = np.zeros((len(spans), 0), dtype=np.int64)
    for c, (a, b) in enumerate(tqdm(spans, desc="semantic dedup", unit="cluster", disable=not progress)):
        own = unit(c)
        beside = np.concatenate([np.arange(*spans[m]) for m in near[c]]) if near.shape[1] else np.zeros(0, np.int64)
        extra = np.concatenate([unit(m) for m in near[c]]) if len(beside) else own[:0]
        for cell, compared in cells(own, cfg.cell, cfg.cell_probes, cfg.seed + c):
            rows = np.r_[a + compared, beside]
            best, which = earlier_among(own[cell], rank[a + cell], np.concatenate([own[compared], extra]),
                                        rank[rows], cfg.memory_mb)
            max_sim[a + cell] = np.where(np.isfinite(best), best, np.nan)
            duplicate_of[a + cell] = np.where(which >= 0, ids[rows[np.maximum(which, 0)]], -1)
    table = pa.table({"sample_id": ids, "cluster": clusters.astype(np.int32), "rank": rank.astype(np.int32),
                      # NULL, not NaN, for a group's first: DuckDB sorts NaN above every number
                      "max_sim": pa.array(max_sim, mask=np.isnan(max_sim)),
                      "duplicate_of": pa.array(duplicate_of, mask=duplicate_of < 0),
                      "keep": pa.repeat(pa.scalar(cfg.keep), len(ids)),
                      "computed_at": pa.repeat(pa.scalar(now()), len(ids))})
    with ws.transaction() as cur:
        cur.execute("DELETE FROM semdedup")
        ws.insert_arrow("semdedup", table, cur=cur)
        ws.set_meta("semdedup", {"keep": cfg.keep, "seed": cfg.seed, "probes": cfg.probes, "samples": int(len(ids))},
                    cur=cur)
    return {"keep": cfg.keep, "samples": int(len(ids)), "curve": eps_curve(max_sim, clusters)}


def cells(own: np.ndarray, size: int, probes: int, seed: int):
    """One cluster's cells: (members of the cell, members it is compared with: itself and its ``probes`` nearest
    cells by centre), as row numbers within the cluster. A cluster of at most ``size`` members is one cell;
    a larger one is split by spherical k-means into about ``size`` members a cell."""
    whole = np.arange(len(own))
    parts = -(-len(own) // size)
    if parts <= 1:
        yield whole, whole
        return
    import faiss
    kmeans = faiss.Kmeans(own.shape[1], parts, niter=10, spherical=True, seed=seed, max_points_per_centroid=256)
    kmeans.train(own)
    label = kmeans.index.search(own, 1)[1][:, 0]
    members = [np.flatnonzero(label == j) for j in range(parts)]
    near = neighbour_clusters(_unit(kmeans.centroids), probes)
    for j in range(parts):
        if len(members[j]):
            yield members[j], np.concatenate([members[j]] + [members[m] for m in near[j]])


def run(ws: Workspace, cfg: SemDedupConfig = SemDedupConfig()) -> dict:
    """The pipeline's ``semdedup`` stage (a progress bar on the terminal)."""
    return semdedup(ws, cfg)


def _unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


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


def per_cluster(ws: Workspace, eps: float, limit: int = 100) -> list[dict]:
    """The clusters a stored run's ``eps`` hits hardest: size, samples removed and their share."""
    return ws.dicts("""SELECT cluster, count(*) AS size, count(*) FILTER (WHERE max_sim >= ?) AS removed,
                              round(count(*) FILTER (WHERE max_sim >= ?) / count(*), 4) AS share
                       FROM semdedup GROUP BY cluster ORDER BY share DESC, cluster LIMIT ?""",
                    [1 - eps, 1 - eps, int(limit)])


def require_run(ws: Workspace, keep: str) -> None:
    """A selection with ``--semdedup`` needs a stored run of the same keep policy."""
    meta = ws.get_meta("semdedup")
    if meta is None:
        raise ValueError(f"no semantic dedup yet; run 'altlens semdedup --keep {keep}' first")
    if keep is not None and meta["keep"] != keep:
        raise ValueError(f"the stored semantic dedup keeps by {meta['keep']!r}, not {keep!r}; run "
                         f"'altlens semdedup --keep {keep}' first")


class Groups:
    """The semantic-duplicate groups at one eps, as arrays (no Python object per member): ``members`` (every
    removed sample, sorted) and ``roots`` (the kept root each one's ``duplicate_of`` chain ends at), plus
    ``chosen``, the curator's overrides that apply (root -> the member kept instead; a few, from the UI)."""

    def __init__(self, members: np.ndarray, roots: np.ndarray, chosen: dict[int, int]):
        self.members, self.roots, self.chosen = members, roots, chosen

    def root_of(self, sample: int) -> int | None:
        """The root of the group ``sample`` is in (itself for a root), None when it is in none."""
        at = int(np.searchsorted(self.members, sample))
        if at < len(self.members) and self.members[at] == sample:
            return int(self.roots[at])
        return sample if len(self.roots) and bool((self.roots == sample).any()) else None


def _at_eps(ws: Workspace, eps: float) -> Groups:
    """At ``eps``: each removed sample and the kept root of its group (following ``duplicate_of`` by pointer
    doubling: log2 of the longest chain passes over the arrays), and the overrides that apply (the latest per
    group)."""
    rows = ws.numpy("SELECT sample_id, duplicate_of FROM semdedup WHERE max_sim >= ? ORDER BY sample_id",
                    [1 - float(eps)])
    members = np.asarray(rows["sample_id"], dtype=np.int64)
    roots = np.asarray(rows["duplicate_of"], dtype=np.int64)
    at = np.searchsorted(members, roots)
    inside = at < len(members)
    inside[inside] = members[at[inside]] == roots[inside]
    up = np.where(inside, at, -1)  # where each member's pointer lands among the members (-1: on a root)
    for _ in range(int(np.log2(max(len(members), 1))) + 2):  # a cycle (never written) stops here
        moving = up >= 0
        if not moving.any():
            break
        roots = np.where(moving, roots[np.where(moving, up, 0)], roots)
        up = np.where(moving, up[np.where(moving, up, 0)], -1)
    groups = Groups(members, roots, {})
    for keep, _ in ws.rows("SELECT keep_id, id FROM semdedup_overrides ORDER BY id"):
        at = int(np.searchsorted(members, int(keep)))
        if at < len(members) and members[at] == int(keep):
            groups.chosen[int(roots[at])] = int(keep)  # later rows win
        elif int(keep) in groups.chosen:
            del groups.chosen[int(keep)]  # the policy's own choice again
    return groups


def removed_ids(ws: Workspace, eps: float) -> np.ndarray:
    """The samples a selection at ``eps`` drops, sorted: every group member but the kept one, where the kept one
    is the policy's choice unless a curator overruled it."""
    g = _at_eps(ws, eps)
    if not g.chosen:
        return g.members
    instead = np.array(sorted(g.chosen.items()), dtype=np.int64).reshape(-1, 2)
    at = np.searchsorted(instead[:, 0], g.roots).clip(0, len(instead) - 1)
    kept_instead = (instead[at, 0] == g.roots) & (instead[at, 1] == g.members)
    return np.union1d(g.members[~kept_instead], instead[:, 0])  # the policy's choice gives way


def groups(ws: Workspace, eps: float, limit: int = 20, offset: int = 0, only: int | None = None) -> dict:
    """Groups at ``eps``, largest first: each with its kept member (marked ``overruled`` when a curator chose
    it), the others, and every member's alt-text, reward and cosine to the member kept now (``max_sim`` is to
    the member it was found a duplicate of, which a chain or an overrule can make another). ``only``: just
    the group of that root."""
    g = _at_eps(ws, eps)
    names, sizes = np.unique(g.roots, return_counts=True)
    order = names[np.lexsort((names, -sizes))]
    page = ([only] if only in set(names.tolist()) else []) if only is not None else \
        [int(r) for r in order[offset:offset + limit]]
    members = {r: [r] + g.members[g.roots == r].tolist() for r in page}
    ids = [i for r in page for i in members[r]]
    version = active_reward(ws)
    info = {r["id"]: r for r in ws.dicts("""SELECT s.id, s.uid, s.thumb, c.text AS alt, w.value AS reward, d.max_sim
                        FROM samples s LEFT JOIN semdedup d ON d.sample_id = s.id
                        LEFT JOIN rewards w ON w.sample_id = s.id AND w.version = ?
                        LEFT JOIN (SELECT sample_id, arg_min(text, id) AS text FROM captions WHERE source_kind = 'alt'
                                   GROUP BY sample_id) c ON c.sample_id = s.id
                        WHERE list_contains(?, s.id)""", [version if version is not None else -1, ids])}
    images = EmbeddingStore(ws, "image").load() if ids else None
    out = []
    for r in page:
        kept = g.chosen.get(r, r)
        rows = sorted(members[r], key=lambda i: (i != kept, -(info.get(i, {}).get("reward") or -1e9), i))
        unit = _unit(images[np.asarray(rows)])
        to_kept = unit @ unit[0]  # rows[0] is the member kept now: the policy's, or the curator's choice
        out.append({"group": r, "size": len(rows), "kept": kept, "overruled": r in g.chosen,
                    "members": [{**info.get(i, {"id": i}), "kept": i == kept, "cos_to_kept": round(float(c), 4)}
                                for i, c in zip(rows, to_kept)]})
    meta = ws.get_meta("semdedup") or {}
    return {"eps": eps, "keep": meta.get("keep"), "groups": len(names), "in_groups": int(len(g.members) + len(names)),
            "page": out}


def overrule(ws: Workspace, keep_id: int, eps: float, who: str = "local") -> dict:
    """Keep ``keep_id`` instead of the member its group's policy kept (at ``eps``); recorded with history, and
    applied by every selection whose eps puts ``keep_id`` in a group."""
    g = _at_eps(ws, eps)
    keep_id = int(keep_id)
    group = g.root_of(keep_id)
    if group is None:
        raise ValueError(f"sample {keep_id} is in no semantic-duplicate group at eps {eps:g}")
    ws.execute("INSERT INTO semdedup_overrides VALUES (nextval('semdedup_override_ids'), ?, ?, ?, ?, ?)",
               [keep_id, group, float(eps), who[:64], now()])
    return {"group": group, "kept": keep_id, "instead_of": g.chosen.get(group, group)}
