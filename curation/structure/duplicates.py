"""Near-duplicates: image embeddings + thumbnails -> duplicate groups with one representative each.

Two images are duplicates when their bytes are identical (sha256), or when
their embeddings are closer than ``threshold`` (an exact range search up to 100k images; above that,
within the map's clusters and the cells nearest each image, see :class:`DupConfig`) and their
thumbnails agree locally: on
32x32 grey images normalised for brightness and contrast, no 4x4 block differs
by more than ``max_local_diff`` on average. This keeps "the same picture
re-encoded, resized or brightened" apart from "another picture of the same
thing", which an embedding alone cannot tell. A global hash cannot do that
either: on a patterned background a small object changes too few pixels.
The embedding threshold only proposes candidates (a brightened copy can fall to
cosine 0.87 under a small model); the pixel test decides. On the demo world,
planted near-duplicates scored at most 0.36 (3,000 samples) and the closest different picture the demo CLIP
proposes (a blue cross at the top, with and without a small one on the right, cosine 0.87) 0.47. Pairs are grouped by
union-find; the representative is the group's best-rewarded sample (lowest id on ties).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from curation.scores.rewards import active_reward
from curation.structure.clusters import as_f32, ok_embeddings
from indexer.store import Workspace, now

log = logging.getLogger(__name__)

RANGE_SEARCH_MAX = 100_000
# a row's candidates are its most similar rows above the threshold, at most this many in each cell it searches:
# copies of one picture still join through union-find, and a pool whose rows sit close together (one product
# shot many times, or bench/growth.py's synthetic clusters at cosine ~0.89) cannot make the pair list grow with
# the square of a cell (300 k such rows ran a 24 GB machine out of memory)
MAX_CANDIDATES = 16
NEAR_CLUSTERS = 8  # clusters whose cells a row may probe: its own and the 7 nearest


SEARCHES = ("auto", "global", "clusters")


@dataclass(frozen=True)
class DupConfig:
    """Near-duplicate settings; ``threshold`` is a cosine similarity.

    ``search``: where candidates are looked for. ``global`` compares every image with every other (exact; the
    default up to 100k images); ``clusters`` compares each image only with the images of the cells nearest to
    it: the map's k-means clusters, split by k-means into cells of about ``cell_size`` images, each image
    against its own cell and the ``probes`` other cells nearest to it among those of its cluster and the
    clusters nearest to it (SemDeDup's within-cluster search, with IVF-style probing across cell borders, so a
    copy that fell into the next cluster is still found). Cells keep their size as the workspace grows, so
    each image is compared with about (probes + 1) x cell_size others and the cost grows linearly with the
    number of images."""

    threshold: float = 0.85
    max_local_diff: float = 0.42
    search: str = "auto"
    cell_size: int = 1024
    probes: int = 3

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError(f"duplicate threshold must be in (0, 1], got {self.threshold}")
        if self.search not in SEARCHES:
            raise ValueError(f"unknown duplicate search {self.search!r}; allowed: {', '.join(SEARCHES)}")
        for name in ("cell_size", "probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def candidate_pairs(ids: np.ndarray, vectors: np.ndarray, cfg: DupConfig, labels: np.ndarray | None = None,
                    centroids: np.ndarray | None = None, progress: bool = True) -> list[tuple[int, int, float]]:
    """(id_a, id_b, cosine) with a < b and cosine >= threshold; ``labels``/``centroids`` are the map's clusters
    (needed by the cluster-local search)."""
    local = cfg.search == "clusters" or (cfg.search == "auto" and len(ids) > RANGE_SEARCH_MAX)
    if local and labels is None:
        raise ValueError("the cluster-local duplicate search needs the map's clusters: run 'altlens map' first")
    rows = _cluster_local(vectors, labels, cfg, progress) if local else _global(vectors, cfg)
    return [(int(ids[i]), int(ids[j]), float(s)) for i, j, s in rows]


def _global(vectors: np.ndarray, cfg: DupConfig) -> list[tuple[int, int, float]]:
    vectors = as_f32(vectors)  # up to 100 k rows
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    sims, nbrs = index.search(vectors, min(MAX_CANDIDATES + 1, len(vectors)))  # the row itself comes back too
    rows, cols = np.nonzero((sims >= cfg.threshold) & (nbrs >= 0) & (nbrs != np.arange(len(vectors))[:, None]))
    a, b = np.minimum(rows, nbrs[rows, cols]), np.maximum(rows, nbrs[rows, cols])
    _, first = np.unique(a * len(vectors) + b, return_index=True)
    return [(int(a[k]), int(b[k]), float(sims[rows[k], cols[k]])) for k in np.sort(first)]


def cells_of(vectors: np.ndarray, labels: np.ndarray, cfg: DupConfig,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's cell (its map cluster, split by k-means into parts of about ``cell_size``: a cluster of
    ``m`` rows gets ``round(m / cell_size)`` parts, so cells keep their size as the workspace grows), each cell's
    unit centroid, and the cluster each cell belongs to."""
    cell = np.empty(len(vectors), dtype=np.int64)
    centres, owner = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rows = as_f32(vectors[members])  # one cluster at a time
        parts = max(1, round(len(members) / cfg.cell_size))
        if parts > 1:
            km = faiss.Kmeans(vectors.shape[1], parts, niter=10, seed=seed + int(c), spherical=True,
                              max_points_per_centroid=256)
            km.train(rows)
            sub = km.index.search(rows, 1)[1][:, 0]
        else:
            sub = np.zeros(len(members), dtype=np.int64)
        for s in np.unique(sub):
            cell[members[sub == s]] = len(centres)
            centre = rows[sub == s].mean(0)
            centres.append(centre / max(float(np.linalg.norm(centre)), 1e-12))
            owner.append(int(c))
    return cell, np.asarray(centres, dtype=np.float32), np.asarray(owner, dtype=np.int64)


def nearest_cells(vectors: np.ndarray, labels: np.ndarray, cell: np.ndarray, centres: np.ndarray,
                  owner: np.ndarray, k: int, near: int = NEAR_CLUSTERS) -> np.ndarray:
    """Each row's ``k`` most similar cell centres other than its own ``cell``, among the cells of its cluster and
    the ``near`` - 1 clusters nearest to it (by the mean of their cells' centres). A row is compared with a
    bounded number of centres however many cells there are, so this stays linear in rows (an exact scan of every
    centre grew with rows x cells: about 1,500 cells at 3 M rows)."""
    clusters = np.unique(owner)
    slot = np.searchsorted(clusters, owner)
    means = np.zeros((len(clusters), centres.shape[1]), dtype=np.float32)
    np.add.at(means, slot, centres)
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    neighbours = np.argsort(-(means @ means.T), axis=1, kind="stable")[:, :near]
    cells_in = [np.flatnonzero(slot == i) for i in range(len(clusters))]
    out = np.empty((len(vectors), k), dtype=np.int64)
    row_slot = np.searchsorted(clusters, labels)
    order = np.argsort(row_slot, kind="stable")
    starts = np.searchsorted(row_slot[order], np.arange(len(clusters) + 1))
    for i in range(len(clusters)):
        rows = order[starts[i]:starts[i + 1]]
        if not len(rows):
            continue
        candidates = np.concatenate([cells_in[j] for j in neighbours[i]])
        for begin in range(0, len(rows), 65_536):
            part = rows[begin:begin + 65_536]
            sims = as_f32(vectors[part]) @ centres[candidates].T
            sims[cell[part][:, None] == candidates[None, :]] = -np.inf  # the own cell is searched anyway
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            picked = candidates[top]
            if picked.shape[1] < k:  # fewer candidate cells than probes: repeat the best (deduplicated later)
                picked = np.concatenate([picked, np.repeat(picked[:, :1], k - picked.shape[1], axis=1)], axis=1)
            out[part] = picked
    return out


def _cluster_local(vectors, labels, cfg: DupConfig, progress: bool) -> list[tuple[int, int, float]]:
    cell, centres, owner = cells_of(vectors, labels, cfg)
    probed = np.concatenate([nearest_cells(vectors, labels, cell, centres, owner, cfg.probes), cell[:, None]], axis=1)
    n = len(vectors)
    keys = np.unique(probed.ravel() * n + np.repeat(np.arange(n), probed.shape[1]))  # (cell, row) once, by cell
    probe_cell, probe_row = keys // n, keys % n
    starts = np.searchsorted(probe_cell, np.arange(len(centres) + 1))
    by_cell = np.argsort(cell, kind="stable")
    cell_starts = np.searchsorted(cell[by_cell], np.arange(len(centres) + 1))
    found = []
    bar = tqdm(range(len(centres)), desc="duplicate candidates", unit="cell", disable=not progress)
    for j in bar:
        q = probe_row[starts[j]:starts[j + 1]]
        if not len(q):
            continue
        m = by_cell[cell_starts[j]:cell_starts[j + 1]]
        sims = as_f32(vectors[q]) @ as_f32(vectors[m]).T
        np.putmask(sims, q[:, None] == m[None, :], -np.inf)  # a row is not its own candidate
        hit = np.flatnonzero(sims.max(axis=1) >= cfg.threshold)  # candidates are rare: scan only their rows
        qi, mi = _best_above(sims[hit], cfg.threshold)
        qi = hit[qi]
        a, b = q[qi], m[mi]
        found.append(np.stack([np.minimum(a, b), np.maximum(a, b), sims[qi, mi]], axis=1))
    if not found:
        return []
    rows = np.concatenate(found)
    _, first = np.unique(rows[:, 0] * n + rows[:, 1], return_index=True)
    return [(int(a), int(b), float(s)) for a, b, s in rows[np.sort(first)]]


def _best_above(sims: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each row's at most MAX_CANDIDATES highest entries that reach ``threshold``."""
    if sims.shape[1] > MAX_CANDIDATES:
        top = np.argpartition(-sims, MAX_CANDIDATES - 1, axis=1)[:, :MAX_CANDIDATES]
        rows, k = np.nonzero(np.take_along_axis(sims, top, axis=1) >= threshold)
        return rows, top[rows, k]
    return np.nonzero(sims >= threshold)


def fingerprint(path) -> np.ndarray | None:
    """32x32 grey thumbnail, zero mean and unit variance (None if it cannot be read)."""
    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32)
    except OSError:
        return None
    return (grey - grey.mean()) / (grey.std() + 1e-6)


def local_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest mean absolute difference over the 8x8 grid of 4x4 blocks."""
    return float(np.abs(a - b).reshape(8, 4, 8, 4).mean(axis=(1, 3)).max())


def find_duplicates(ws: Workspace, cfg: DupConfig = DupConfig()) -> dict:
    """Compute and store duplicate groups; return counts. Per row it holds numpy arrays only (ids, vectors,
    cluster labels); Python objects exist for the pairs found and the samples in them."""
    ids, vectors = ok_embeddings(ws)
    labels, centroids = map_clusters(ws, ids)
    same = ws.numpy("""SELECT first_id, id FROM (
                           SELECT id, min(id) OVER (PARTITION BY sha256) AS first_id FROM samples
                           WHERE status = 'ok' AND sha256 IS NOT NULL)
                       WHERE id <> first_id ORDER BY id""")
    # the pixel test decides, so only samples with a thumbnail can be embedding candidates (an imported pool's
    # rows without images have none: their copies are found by sha256 and by semdedup)
    pictured = np.isin(ids, ws.numpy("SELECT id FROM samples WHERE status = 'ok' AND thumb IS NOT NULL")["id"])
    ws.release()  # the candidate search is the long part
    pairs = [(int(a), int(b), 1.0, "sha256") for a, b in zip(same["first_id"], same["id"])]
    if not pictured.all():
        ids, vectors = ids[pictured], vectors[pictured]
        labels = None if labels is None else labels[pictured]
    candidates = list(candidate_pairs(ids, vectors, cfg, labels, centroids)) if len(ids) > 1 else []
    thumbs = _thumbs(ws, {x for a, b, _ in candidates for x in (a, b)})
    prints: dict[int, np.ndarray | None] = {}
    for a, b, sim in candidates:
        fa = prints.setdefault(a, fingerprint(ws.thumbs_dir / thumbs[a]) if thumbs.get(a) else None)
        fb = prints.setdefault(b, fingerprint(ws.thumbs_dir / thumbs[b]) if thumbs.get(b) else None)
        if fa is not None and fb is not None and local_difference(fa, fb) <= cfg.max_local_diff:
            pairs.append((a, b, sim, "embedding+pixels"))
    groups = _union_find(pairs)
    rows = _group_rows(ws, groups, pairs)
    with ws.transaction() as cur:
        cur.execute("DELETE FROM dup_groups")
        if rows["sample_id"]:
            ws.insert_arrow("dup_groups", pa.table(rows), cur=cur)
        ws.set_meta("duplicates", {"threshold": cfg.threshold, "max_local_diff": cfg.max_local_diff,
                                   "built_at": now().isoformat()}, cur=cur)
    n_groups = len(set(rows["group_id"]))
    return {"pairs": len(pairs), "groups": n_groups, "duplicates_to_drop": len(rows["sample_id"]) - n_groups}


def _thumbs(ws: Workspace, ids: set[int]) -> dict[int, str | None]:
    """The thumbnail of each of ``ids`` (the samples in candidate pairs, not the pool)."""
    if not ids:
        return {}
    return dict(ws.rows("SELECT id, thumb FROM samples WHERE id IN (SELECT unnest(?::BIGINT[]))", [sorted(ids)]))


def map_clusters(ws: Workspace, ids: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The map's cluster of each of ``ids`` and its centroids (None, None before ``altlens map``, or when the map
    does not cover every id). Read as two arrays and matched by a sorted search, not a dict per row."""
    got = ws.numpy("SELECT sample_id, cluster FROM clusters ORDER BY sample_id")
    known = np.asarray(got["sample_id"], dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if not len(known):
        return None, None
    at = np.minimum(np.searchsorted(known, ids), len(known) - 1)
    if not np.array_equal(known[at], ids):
        return None, None
    path = ws.root / "index" / "centroids.npy"
    centroids = np.load(path) if path.is_file() else None
    return np.asarray(got["cluster"], dtype=np.int64)[at], centroids


def _union_find(pairs) -> dict[int, list[int]]:
    parent: dict[int, int] = {}

    def root(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for a, b, *_ in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return groups


def _rewards_of(ws: Workspace, ids: list[int]) -> dict[int, float]:
    """The active reward of each of ``ids`` (the samples in duplicate groups; empty before any reward)."""
    version = active_reward(ws)
    if version is None or not ids:
        return {}
    return dict(ws.rows("SELECT sample_id, value FROM rewards WHERE version = ? AND sample_id IN "
                        "(SELECT unnest(?::BIGINT[]))", [version, sorted(ids)]))


def _group_rows(ws: Workspace, groups: dict[int, list[int]], pairs) -> dict[str, list]:
    best_sim: dict[int, tuple[float, str]] = {}
    for a, b, sim, method in pairs:
        for x in (a, b):
            if sim > best_sim.get(x, (-1.0, ""))[0]:
                best_sim[x] = (sim, method)
    reward = _rewards_of(ws, [m for members in groups.values() for m in members])
    rows: dict[str, list] = {"sample_id": [], "group_id": [], "representative": [], "similarity": [], "method": []}
    for gid, members in groups.items():
        rep = max(members, key=lambda m: (reward.get(m) or 0.0, -m))
        for m in sorted(members):
            rows["sample_id"].append(m)
            rows["group_id"].append(gid)
            rows["representative"].append(m == rep)
            rows["similarity"].append(best_sim[m][0])
            rows["method"].append(best_sim[m][1])
    return rows
