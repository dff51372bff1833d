"""Clusters and the 2-D map: image embeddings -> k-means clusters, UMAP coordinates for every sample.

UMAP is fitted on at most ``fit_max`` samples. Every other sample is placed at
the similarity-weighted mean of its nearest fitted neighbours, found with FAISS
in a PCA-reduced space, so a million points cost minutes instead of hours.
Stage times are returned so the benchmark can print them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from indexer.files import atomic_write
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    """Clustering and 2-D layout settings of ``altlens map``."""

    clusters: int | None = None
    fit_max: int = 50_000
    neighbours: int = 8
    pca_dim: int = 32
    seed: int = 0
    kmeans_iters: int = 20
    kmeans_restarts: int = 5

    def __post_init__(self):
        if self.clusters is not None and self.clusters < 2:
            raise ValueError(f"--clusters must be >= 2, got {self.clusters}")


def default_k(n: int) -> int:
    """K from N: about sqrt(N / 4), between 2 and 512 (27 for 3,000 samples, 500 for 1 M)."""
    return int(np.clip(round(np.sqrt(n / 4)), 2, 512))


def ok_embeddings(ws: Workspace) -> tuple[np.ndarray, np.ndarray]:
    """The ok samples' ids and image vectors, still float16: the memory-mapped store itself when every row up to
    the last is ok (an imported pool), else a float16 copy of the ok rows. Callers convert a block at a time, so
    a 12.8 M-row pool is never held as float32 (26 GB at 512-d)."""
    ids = np.asarray(ws.numpy("SELECT id FROM samples WHERE status = 'ok' ORDER BY id")["id"], dtype=np.int64)
    stored = EmbeddingStore(ws, "image").load()
    if len(ids) and ids[-1] == len(ids) - 1:
        return ids, stored[:len(ids)]
    return ids, stored[ids]


BLOCK = 200_000  # rows converted to float32 at a time


def as_f32(rows) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def kmeans(vectors: np.ndarray, k: int, seed: int, iters: int,
           restarts: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical k-means (inner product on unit vectors): (centroids, labels, distance = 1 - cosine).

    The best of ``restarts`` runs is kept (as scikit-learn's ``n_init``): on the n=400 demo world a single
    run's NMI against the truth ranged 0.54-0.60 over seeds, the best of 5 0.60-0.65; at 1 M x 512 it took
    33 s instead of 9 s (training is subsampled to 256 points per centroid)."""
    n = len(vectors)
    k = min(k, n)
    km = faiss.Kmeans(vectors.shape[1], k, niter=iters, nredo=restarts, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=256, min_points_per_centroid=1)
    if n > 256 * k:  # train on the sample FAISS would draw, read from the store alone
        km.train(as_f32(vectors[np.sort(np.random.default_rng(seed).choice(n, 256 * k, replace=False))]))
    else:
        km.train(as_f32(vectors))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(km.centroids)
    labels, distance = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.float64)
    for start in range(0, n, BLOCK):
        sims, nearest = index.search(as_f32(vectors[start:start + BLOCK]), 1)
        labels[start:start + BLOCK], distance[start:start + BLOCK] = nearest[:, 0], 1.0 - sims[:, 0]
    return km.centroids, labels, distance


def umap_coords(vectors: np.ndarray, cfg: ClusterConfig, times: dict) -> np.ndarray:
    """2-D coordinates: UMAP on a sample of at most ``fit_max`` rows, the rest placed from neighbours."""
    n = len(vectors)
    rng = np.random.default_rng(cfg.seed)
    fit = np.sort(rng.choice(n, size=min(n, cfg.fit_max), replace=False))
    t0 = time.perf_counter()
    fitted = _umap(as_f32(vectors[fit]), cfg.seed)
    times["umap_fit_s"] = round(time.perf_counter() - t0, 2)
    coords = np.empty((n, 2), dtype=np.float32)
    coords[fit] = fitted
    rest = np.setdiff1d(np.arange(n), fit)
    t0 = time.perf_counter()
    if len(rest):
        coords[rest] = place_from_neighbours(vectors, fit, fitted, rest, cfg)
    times["place_rest_s"] = round(time.perf_counter() - t0, 2)
    return coords


def _umap(vectors: np.ndarray, seed: int) -> np.ndarray:
    if len(vectors) < 16:  # UMAP needs a neighbourhood; a tiny set gets a PCA layout
        return _pca(vectors, 2)
    import umap
    reducer = umap.UMAP(n_neighbors=min(15, len(vectors) - 1), min_dist=0.1, metric="cosine",
                        random_state=seed, n_jobs=1, low_memory=True)
    return reducer.fit_transform(vectors).astype(np.float32)


def _pca(vectors: np.ndarray, dim: int) -> np.ndarray:
    centred = vectors - vectors.mean(0)
    _, _, vt = np.linalg.svd(centred[: min(len(centred), 20000)], full_matrices=False)
    out = centred @ vt[:dim].T
    if out.shape[1] < dim:
        out = np.pad(out, ((0, 0), (0, dim - out.shape[1])))
    return out.astype(np.float32)


def place_from_neighbours(vectors, fit, fitted, rest, cfg: ClusterConfig, block: int = 100_000) -> np.ndarray:
    """Similarity-weighted mean of the ``neighbours`` nearest fitted points, searched after PCA."""
    dim = cfg.pca_dim
    if dim >= vectors.shape[1] or len(fit) <= dim:  # nothing to gain (or too few points to fit a PCA)
        reduce = lambda x: np.array(x, dtype=np.float32)  # noqa: E731
        dim = vectors.shape[1]
    else:
        pca = faiss.PCAMatrix(vectors.shape[1], dim)
        pca.train(as_f32(vectors[fit]))
        reduce = pca.apply
    reduced_fit = reduce(as_f32(vectors[fit]))
    faiss.normalize_L2(reduced_fit)
    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 64
    index.add(reduced_fit)
    out = np.empty((len(rest), 2), dtype=np.float32)
    for start in range(0, len(rest), block):
        chunk = reduce(as_f32(vectors[rest[start:start + block]]))
        faiss.normalize_L2(chunk)
        sims, nbrs = index.search(chunk, cfg.neighbours)
        weights = np.maximum(sims, 1e-6) ** 4  # sharpen: the nearest neighbours dominate
        weights /= weights.sum(1, keepdims=True)
        out[start:start + block] = np.einsum("nk,nkd->nd", weights, fitted[nbrs])
    return out


def cluster_and_layout(ws: Workspace, cfg: ClusterConfig = ClusterConfig()) -> dict:
    """Cluster and lay out the workspace's ok images, store both; return counts and per-step wall times."""
    times: dict = {}
    t0 = time.perf_counter()
    ids, vectors = ok_embeddings(ws)
    ws.release()  # k-means and UMAP take minutes at a million rows
    times["load_s"] = round(time.perf_counter() - t0, 2)
    if len(ids) < 2:
        raise ValueError("the workspace needs at least 2 ok samples to cluster; index more data first")
    k = cfg.clusters or default_k(len(ids))
    t0 = time.perf_counter()
    centroids, labels, distance = kmeans(vectors, k, cfg.seed, cfg.kmeans_iters, cfg.kmeans_restarts)
    times["kmeans_s"] = round(time.perf_counter() - t0, 2)
    coords = umap_coords(vectors, cfg, times)
    t0 = time.perf_counter()
    with ws.transaction() as cur:
        cur.execute("DELETE FROM clusters")
        cur.execute("DELETE FROM map_coords")
        ws.insert_arrow("clusters", pa.table({"sample_id": ids, "cluster": labels, "distance": distance}), cur=cur)
        ws.insert_arrow("map_coords", pa.table({"sample_id": ids, "x": coords[:, 0].astype(np.float64),
                                                "y": coords[:, 1].astype(np.float64)}), cur=cur)
        ws.set_meta("map", {"k": int(len(centroids)), "n": int(len(ids)), "fit_max": cfg.fit_max,
                            "built_at": now().isoformat()}, cur=cur)
    atomic_write(ws.root / "index" / "centroids.npy", lambda fh: np.save(fh, centroids))
    times["store_s"] = round(time.perf_counter() - t0, 2)
    return {"samples": int(len(ids)), "clusters": int(len(centroids)), "times": times}
