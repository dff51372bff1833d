"""Near-duplicates: image embeddings + thumbnails -> duplicate groups with one representative each.

Two images are duplicates when their bytes are identical (sha256), or when
their embeddings are closer than ``threshold`` (FAISS range search; k-NN with
the same threshold above 100k images) and their thumbnails' 64-bit difference
hashes differ in at most ``max_hamming`` bits. The hash check keeps "the same
picture re-encoded, resized or brightened" apart from "another picture of the
same thing", which an embedding alone cannot tell. Pairs are grouped by
union-find; the representative is the group's best-rewarded sample (lowest id on ties).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
from PIL import Image

from curation.clusters import ok_embeddings
from indexer.store import Workspace, now
from indexer.vectors import build_index

log = logging.getLogger(__name__)

SCHEMA = """CREATE TABLE IF NOT EXISTS dup_groups (
    sample_id BIGINT PRIMARY KEY, group_id BIGINT NOT NULL, representative BOOLEAN NOT NULL,
    similarity DOUBLE, method VARCHAR)"""
RANGE_SEARCH_MAX = 100_000


@dataclass(frozen=True)
class DupConfig:
    """Near-duplicate settings; ``threshold`` is a cosine similarity."""

    threshold: float = 0.95
    max_hamming: int = 10
    knn: int = 16

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError(f"duplicate threshold must be in (0, 1], got {self.threshold}")


def candidate_pairs(ids: np.ndarray, vectors: np.ndarray, cfg: DupConfig) -> list[tuple[int, int, float]]:
    """(id_a, id_b, cosine) with a < b and cosine >= threshold."""
    pairs = []
    if len(ids) <= RANGE_SEARCH_MAX:
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        lims, sims, nbrs = index.range_search(vectors, cfg.threshold)
        for i in range(len(ids)):
            for j, s in zip(nbrs[lims[i]:lims[i + 1]], sims[lims[i]:lims[i + 1]]):
                if j > i:
                    pairs.append((int(ids[i]), int(ids[j]), float(s)))
        return pairs
    index = build_index(vectors, np.arange(len(ids)), "ivf")  # builds far faster than HNSW at 1 M x 512
    sims, nbrs = index.search(vectors, cfg.knn)
    for i, (row_s, row_n) in enumerate(zip(sims, nbrs)):
        for s, j in zip(row_s, row_n):
            if j > i and s >= cfg.threshold:
                pairs.append((int(ids[i]), int(ids[j]), float(s)))
    return pairs


def dhash(path) -> int | None:
    """64-bit difference hash of an image file (None if it cannot be read)."""
    try:
        with Image.open(path) as img:
            small = np.asarray(img.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    except OSError:
        return None
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def find_duplicates(ws: Workspace, cfg: DupConfig = DupConfig()) -> dict:
    """Compute and store duplicate groups; return counts."""
    ids, vectors = ok_embeddings(ws)
    meta = {r[0]: (r[1], r[2]) for r in ws.rows("SELECT id, sha256, thumb FROM samples WHERE status = 'ok'")}
    pairs = [(a, b, 1.0, "sha256") for a, b in _same_bytes(meta)]
    hashes: dict[int, int | None] = {}
    for a, b, sim in candidate_pairs(ids, vectors, cfg):
        ha = hashes.setdefault(a, dhash(ws.thumbs_dir / meta[a][1]) if meta[a][1] else None)
        hb = hashes.setdefault(b, dhash(ws.thumbs_dir / meta[b][1]) if meta[b][1] else None)
        if ha is not None and hb is not None and bin(ha ^ hb).count("1") <= cfg.max_hamming:
            pairs.append((a, b, sim, "embedding+dhash"))
    groups = _union_find(pairs)
    rows = _group_rows(ws, groups, pairs)
    with ws.transaction() as cur:
        cur.execute(SCHEMA)
        cur.execute("DELETE FROM dup_groups")
        if rows["sample_id"]:
            ws.insert_arrow("dup_groups", pa.table(rows), cur=cur)
        ws.set_meta("duplicates", {"threshold": cfg.threshold, "max_hamming": cfg.max_hamming,
                                   "built_at": now().isoformat()}, cur=cur)
    n_groups = len(set(rows["group_id"]))
    return {"pairs": len(pairs), "groups": n_groups, "duplicates_to_drop": len(rows["sample_id"]) - n_groups}


def _same_bytes(meta: dict) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    pairs = []
    for sid in sorted(meta):
        digest = meta[sid][0]
        if digest in first:
            pairs.append((first[digest], sid))
        else:
            first[digest] = sid
    return pairs


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


def _group_rows(ws: Workspace, groups: dict[int, list[int]], pairs) -> dict[str, list]:
    best_sim: dict[int, tuple[float, str]] = {}
    for a, b, sim, method in pairs:
        for x in (a, b):
            if sim > best_sim.get(x, (-1.0, ""))[0]:
                best_sim[x] = (sim, method)
    version = ws.get_meta("active_reward")
    reward = dict(ws.rows("SELECT sample_id, value FROM rewards WHERE version = ?", [version])) if version else {}
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
