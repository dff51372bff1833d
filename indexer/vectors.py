"""The one module that owns FAISS and the embedding files: atomic chunk writes, compaction, index build and search.

Embeddings are float16 ``.npy`` chunks, each covering a contiguous id range
that DuckDB's ``emb_chunks`` table records in the same transaction as the rows
they belong to. A chunk file without a row (a run killed between the two) is an
orphan and is deleted on the next write; DuckDB is the source of truth, so the
FAISS index can always be rebuilt from it.
"""
from __future__ import annotations

import logging
import secrets
from pathlib import Path

import faiss
import numpy as np

from indexer.files import atomic_write
from indexer.store import Workspace, write_lock

log = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
HNSW_EF_SEARCH = 256
# A text query lands away from every image (CLIP's modality gap). A graph search then needs a far wider beam
# (bench/growth.py's 300k clustered 512-d rows: HNSW recall@10 0.23 at efSearch 256, 0.87 at 4096, 24 ms a
# query); an inverted file ranks its cells by the query itself, so scanning more of them is enough. At 1 M rows
# with 256 of 4,000 cells (3-4 ms): 0.99 for text-like queries (images moved by a shared gap), 0.87 for the
# random directions of a random text tower (their true neighbours are outliers scattered over every cell;
# 512 cells gave 0.88); image queries 0.99 at 32 cells.
TEXT_EF_SEARCH = 4096
IVF_NPROBE = 32
TEXT_NPROBE = 256
IVF_POINTS_PER_CELL = 40  # k-means trains on this many rows per cell
ADD_BLOCK = 200_000  # rows converted to float32 at a time while building
FLAT_MAX = 100_000
# Above this many rows the inverted file keeps product-quantised codes (dim/4 bytes a row: 128 at 512-d, against
# 1,024 for fp16) and every search re-ranks its candidates exactly from the workspace's memory-mapped float16
# store, so neither the index's memory nor its file grows by a copy of the vectors (12.8 M rows at 512-d: 1.6 GB
# instead of 13). On 300 k clustered 512-d rows (bench/growth.py's kind) re-ranking 400 candidates gave recall@10
# 0.998 for image queries and 1.0 for text-like ones. At 3 M rows of bench/growth_datacomp.py's flat pool, 400 gave
# image recall 0.90, 1,000 0.972, 2,000 0.998 (12 / 26 ms a query); nprobe 64 instead of 32 changed nothing.
IVFPQ_MIN = 2_000_000
PQ_BYTES_PER_DIM = 0.25
PQ_TRAIN_ROWS = 65_536
RERANK_MIN = 1000  # candidates re-ranked per query: at least this many, and 8 per neighbour asked for
RERANK_PER_HIT = 8


class EmbeddingStore:
    """Row-aligned float16 embeddings of one kind (``image``: samples.id, ``text``: captions.id)."""

    def __init__(self, ws: Workspace, kind: str):
        self.ws, self.kind = ws, kind
        self.dir = ws.emb_dir(kind)

    def chunks(self) -> list[tuple[int, int, str]]:
        return self.ws.rows("SELECT start_id, n, file FROM emb_chunks WHERE kind = ? ORDER BY start_id", [self.kind])

    def write_chunk(self, start: int, vectors: np.ndarray) -> str:
        """Write rows [start, start + len) atomically; return the file name to record in DuckDB."""
        name = _chunk_name(start, start + len(vectors))
        atomic_write(self.dir / name, lambda fh: np.save(fh, np.asarray(vectors, np.float16)))
        return name

    def record_chunk(self, cur, start: int, n: int, name: str) -> None:
        cur.execute("INSERT INTO emb_chunks VALUES (?, ?, ?, ?)", [self.kind, start, n, name])

    def count(self) -> int:
        return int(self.ws.scalar("SELECT coalesce(sum(n), 0) FROM emb_chunks WHERE kind = ?", [self.kind]))

    def load(self, mmap: bool = True) -> np.ndarray:
        """All rows as one float16 array [N, D] (memory-mapped when there is a single chunk)."""
        parts = []
        expected = 0
        for start, n, name in self.chunks():
            if start != expected:
                raise RuntimeError(f"{self.kind} embeddings have a gap at id {expected} (next chunk starts {start})")
            arr = np.load(self.dir / name, mmap_mode="r" if mmap else None)
            if len(arr) != n:
                raise RuntimeError(f"{self.dir / name} holds {len(arr)} rows, DuckDB says {n}")
            parts.append(arr)
            expected = start + n
        if not parts:
            return np.zeros((0, 0), dtype=np.float16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def remove_orphans(self) -> int:
        """Delete chunk files DuckDB does not reference and leftover temp files; return how many. Holds the
        workspace's write lock: a file another thread is about to commit is not an orphan."""
        if not self.dir.exists():
            return 0
        with write_lock(self.ws.db_path):
            known = {name for _, _, name in self.chunks()}
            removed = 0
            for path in self.dir.iterdir():
                if path.name not in known:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def compact(self) -> None:
        """Merge all chunks into one file: write it, swap the rows in one transaction, delete the old files."""
        with write_lock(self.ws.db_path):  # no rows may be added between the read and the swap
            chunks = self.chunks()
            if len(chunks) <= 1:
                return
            for (start, n, _), (following, _, part) in zip(chunks, chunks[1:]):
                if start + n != following:
                    raise RuntimeError(f"{self.kind} embeddings have a gap at id {start + n} ({part} starts {following})")
            total, dim = sum(n for _, n, _ in chunks), np.load(self.dir / chunks[0][2], mmap_mode="r").shape[1]
            name = _chunk_name(0, total)

            write_npy_blocks(self.dir / name, (total, dim),
                             (np.load(self.dir / part, mmap_mode="r") for _, _, part in chunks))
            with self.ws.transaction() as cur:
                cur.execute("DELETE FROM emb_chunks WHERE kind = ?", [self.kind])
                self.record_chunk(cur, 0, total, name)
            self.remove_orphans()


def write_npy_blocks(path: Path, shape: tuple[int, int], blocks) -> None:
    """An .npy of float16 ``shape`` written atomically from row blocks in order, one block in memory at a time
    (compaction, exports); the blocks must add up to the shape."""
    def write(fh):
        np.lib.format.write_array_header_1_0(fh, {"descr": np.dtype(np.float16).str, "fortran_order": False,
                                                  "shape": tuple(int(x) for x in shape)})
        rows = 0
        for block in blocks:
            block = np.ascontiguousarray(block, np.float16).reshape(-1, shape[1])
            fh.write(block.tobytes())
            rows += len(block)
        if rows != shape[0]:
            raise ValueError(f"{path.name}: {rows} rows written, {shape[0]} promised")
    atomic_write(path, write)


def _chunk_name(start: int, stop: int) -> str:
    """A chunk file's name: its id range and a random tag, so no other writer's file, committed or not, is ever
    replaced by this one."""
    return f"{start:012d}-{stop:012d}-{secrets.token_hex(4)}.npy"


# ---------------------------------------------------------------- FAISS

def choose_index_kind(n: int, requested: str = "auto") -> str:
    if requested not in INDEX_KINDS:
        raise ValueError(f"unknown index type {requested!r}; allowed: {', '.join(INDEX_KINDS)}")
    if requested != "auto":
        return requested
    return "flat" if n <= FLAT_MAX else "ivf" if n <= IVFPQ_MIN else "ivfpq"


def build_index(vectors: np.ndarray, ids: np.ndarray, kind: str = "auto", progress: bool = False) -> faiss.Index:
    """Inner-product index over L2-normalised ``vectors`` (float16 or float32, possibly memory-mapped) keyed by
    ``ids``: exact up to 100k rows, an inverted file above (with product-quantised codes above 2 M rows, whose
    searches re-rank from the stored vectors: see ``search``)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    dim = vectors.shape[1]
    kind = choose_index_kind(len(vectors), kind)
    route = None
    if kind in ("ivf", "ivfpq"):
        index, route = _ivf(vectors, dim, compact=kind == "ivfpq")
    elif kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:  # the store holds fp16 vectors, so fp16 in the graph loses nothing and halves its memory
        inner = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, 32, faiss.METRIC_INNER_PRODUCT)
        inner.train(_block(vectors, 0, 1024))
        index = faiss.IndexIDMap2(inner)
    from tqdm import tqdm
    for start in tqdm(range(0, len(vectors), ADD_BLOCK), desc=f"{kind} index", unit="block",
                      disable=not progress or len(vectors) <= ADD_BLOCK):
        block = _block(vectors, start, start + ADD_BLOCK)
        if route is None:
            index.add_with_ids(block, ids[start:start + ADD_BLOCK])
        else:
            from faiss.contrib.ivf_tools import add_preassigned
            add_preassigned(index, block, route(block), np.ascontiguousarray(ids[start:start + ADD_BLOCK]))
    return tune(index)


EXACT_CENTROIDS = 4096  # up to this many centres are searched exactly; above, through an HNSW graph over them
CENTROID_EF_SEARCH = 128


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray, block: int = ADD_BLOCK, progress: bool = False
                     ) -> np.ndarray:
    """The number of each row's nearest centre by inner product (how DataComp assigns its pool to centres),
    int32, read a block at a time from ``vectors`` (float16 or float32, possibly memory-mapped). Exact up to
    4,096 centres; above, an HNSW graph over the centres (DataComp's 100 K) answers each row in microseconds,
    nearly always exactly."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if len(centroids) <= EXACT_CENTROIDS:
        index = faiss.IndexFlatIP(centroids.shape[1])
    else:
        index = faiss.IndexHNSWFlat(centroids.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = CENTROID_EF_SEARCH
    index.add(centroids)
    out = np.empty(len(vectors), dtype=np.int32)
    from tqdm import tqdm
    for start in tqdm(range(0, len(vectors), block), desc="nearest centre", unit="block",
                      disable=not progress or len(vectors) <= block):
        out[start:start + block] = index.search(_block(vectors, start, start + block), 1)[1][:, 0]
    return out


def _block(vectors: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(vectors[start:stop], dtype=np.float32)


def _ivf(vectors: np.ndarray, dim: int, compact: bool = False):
    """An empty, trained inverted file and the function that files rows into its cells (None: the quantizer
    does): about 4 sqrt(n) cells from spherical k-means on a sample (so building costs grow linearly with the
    rows), vectors kept as fp16 (``compact``: as product-quantised codes of dim/4 bytes), the cell centres
    searched exactly by queries."""
    n = len(vectors)
    nlist = max(1, min(int(4 * np.sqrt(n)), n // IVF_POINTS_PER_CELL))
    rows = np.sort(np.random.default_rng(0).permutation(n)[: nlist * IVF_POINTS_PER_CELL])
    sample = np.asarray(vectors[rows], dtype=np.float32)
    centroids, coarse, group_of = _cells(sample, nlist)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids)
    if compact:
        index = faiss.IndexIVFPQ(quantizer, dim, len(centroids), _pq_subspaces(dim), 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, len(centroids), faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT, False)
    index.own_fields = True
    quantizer.this.disown()
    # the cells are set; this only readies the codec (fp16 needs no data; the product quantiser's 256 codes per
    # subspace train on up to 65,536 rows)
    index.train(sample[:PQ_TRAIN_ROWS if compact else 1024])
    return index, (None if coarse is None else _router(centroids, coarse, group_of))


# a row is filed into the best cell of its 6 nearest coarse groups. On 250 k 512-d rows (2,000 cells, 2-core
# EPYC) the whole build took 5.1 s against 8.9 s with an HNSW graph over the centres filing rows (clustered rows,
# recall@10 0.910 both; a diffuser set 0.798 against 0.807; 3 groups: 3.9 s, 0.784)
ROUTE_GROUPS = 6


def _pq_subspaces(dim: int) -> int:
    """Subspaces of the product quantiser: dim/4 (one byte each) or the nearest count that divides ``dim``."""
    want = max(1, int(dim * PQ_BYTES_PER_DIM))
    return next(m for m in range(want, 0, -1) if dim % m == 0)


def _router(centroids: np.ndarray, coarse: np.ndarray, group_of: np.ndarray):
    """Rows -> their cell, through the two levels the cells were trained in: the ROUTE_GROUPS nearest coarse
    groups of a row, then the nearest cell among theirs (about 4 sqrt(nlist) dot products a row instead of
    nlist; exact whenever the nearest cell lies in one of those groups)."""
    groups = faiss.IndexFlatIP(coarse.shape[1])
    groups.add(coarse)
    cells_of = [np.flatnonzero(group_of == g) for g in range(len(coarse))]

    def route(x: np.ndarray) -> np.ndarray:
        _, near = groups.search(x, min(ROUTE_GROUPS, len(coarse)))
        best = np.full(len(x), -np.inf, dtype=np.float32)
        cell = np.zeros(len(x), dtype=np.int64)
        for g, cells in enumerate(cells_of):
            rows = np.flatnonzero((near == g).any(axis=1))
            if not len(rows) or not len(cells):
                continue
            sims = x[rows] @ centroids[cells].T
            pick = sims.argmax(axis=1)
            value = sims[np.arange(len(rows)), pick]
            better = value > best[rows]
            best[rows[better]], cell[rows[better]] = value[better], cells[pick[better]]
        return cell
    return route


def _cells(sample: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """About ``nlist`` cell centres by spherical k-means on ``sample``, with the coarse centres and each
    cell's coarse group when trained in two levels (else None, None). Up to 256 cells in one k-means; above,
    in two levels (FAISS's advice for large inverted files): sqrt(nlist) coarse groups, then each group split
    into cells in proportion to its rows. Each pass then compares a row with ~2 sqrt(nlist) centres instead of
    nlist, so 20 iterations cost less than one did. On 250 k clustered 512-d rows (2,000 cells, 2-core EPYC):
    training 11.2 s -> 1.0 s, recall@10 at the same nprobe 0.918 -> 0.910 (a diffuser set: 0.828 -> 0.805)."""
    def kmeans(points: np.ndarray, k: int) -> np.ndarray:
        km = faiss.Kmeans(sample.shape[1], k, niter=20, seed=0, spherical=True, min_points_per_centroid=1,
                          max_points_per_centroid=max(IVF_POINTS_PER_CELL, -(-len(points) // k)))
        km.train(points)
        return km.centroids
    if nlist <= 256:
        return kmeans(sample, nlist), None, None
    groups = int(np.sqrt(nlist))
    coarse = faiss.IndexFlatIP(sample.shape[1])
    coarse_centres = kmeans(sample, groups)
    coarse.add(coarse_centres)
    assign = coarse.search(sample, 1)[1][:, 0]
    sizes = np.bincount(assign, minlength=groups)
    out, group_of = [], []
    for group, k in zip(np.flatnonzero(sizes), _shares(nlist, sizes[sizes > 0])):
        out.append(kmeans(sample[assign == group], int(k)))
        group_of.append(np.full(int(k), group))
    return (np.ascontiguousarray(np.vstack(out), dtype=np.float32), coarse_centres,
            np.concatenate(group_of))


def _shares(total: int, sizes: np.ndarray) -> np.ndarray:
    """``total`` cells split over groups of ``sizes`` rows in proportion (largest remainders), each group at
    least one cell and at most one per row; exactly ``total`` when the rows allow it."""
    raw = total * sizes / sizes.sum()
    k = np.clip(np.floor(raw).astype(np.int64), 1, sizes)
    order = np.argsort(-(raw - np.floor(raw)))
    while k.sum() < min(total, sizes.sum()):
        grow = [g for g in order if k[g] < sizes[g]]
        for g in grow[: min(total, sizes.sum()) - k.sum()]:
            k[g] += 1
    while k.sum() > total and (k > 1).any():
        k[np.argmax(k)] -= 1
    return k


def tune(index: faiss.Index) -> faiss.Index:
    """Search-time settings for image queries: HNSW explores ``HNSW_EF_SEARCH`` candidates (recall@10 0.90 at
    64, 0.96 at 256 on bench/growth.py's 300k clustered rows); an inverted file scans ``IVF_NPROBE`` cells."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = max(inner.hnsw.efSearch, HNSW_EF_SEARCH)
    if hasattr(inner, "nprobe"):
        inner.nprobe = min(inner.nlist, IVF_NPROBE)
    return index


def write_index(index: faiss.Index, path: Path) -> None:
    """Write ``index`` atomically, streamed to the file (no copy of it in memory)."""
    atomic_write(path, lambda fh: faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write)))


def read_index(path: Path, mmap: bool = True) -> faiss.Index:
    """The index at ``path``, tuned for search. ``mmap``: its inverted lists stay in the file, mapped into
    memory, so a server's own memory does not grow with the rows (the OS keeps the cells queries touch in its
    page cache and may drop them); the file is replaced by rename, so a mapped index is never rewritten under
    a reader."""
    if not path.exists():
        raise FileNotFoundError(f"no FAISS index at {path}; run 'altlens index' on the workspace first")
    return tune(faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0))


def reranks(index: faiss.Index) -> bool:
    """Whether ``index`` holds lossy codes whose searches re-rank from the stored vectors (``search``)."""
    try:
        return isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFPQ)
    except RuntimeError:  # not an inverted file
        return False


def index_ids(index: faiss.Index) -> np.ndarray:
    """The ids stored in an index built by ``build_index``."""
    if isinstance(index, faiss.IndexIDMap2) or hasattr(index, "id_map"):
        return faiss.vector_to_array(faiss.downcast_index(index).id_map)
    invlists = faiss.extract_index_ivf(index).invlists
    return np.concatenate([faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                           for i in range(invlists.nlist)] or [np.zeros(0, np.int64)])


def search(index: faiss.Index, queries: np.ndarray, k: int, cross_modal: bool = False,
           vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query row; missing neighbours have id -1. ``cross_modal``: the queries come
    from the other tower (text against images, or images against captions) and sit away from every row, so
    the search is wider (HNSW's beam, the inverted file's cells). ``vectors``: the rows the index was built
    from, ``vectors[id]`` each id's (the workspace's memory-mapped store); an index of product-quantised codes
    needs them, and its answer is the exact top ``k`` of its wider candidate list."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if reranks(index):
        if vectors is None:
            raise ValueError("this index holds compressed codes; searching it needs the stored vectors to re-rank")
        wide = max(RERANK_MIN, RERANK_PER_HIT * k)
        return rerank(vectors, queries, _search(index, queries, wide, cross_modal)[1], k)
    return _search(index, queries, k, cross_modal)


def rerank(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` (scores, ids) of each query among its ``candidates`` (ids, -1 for none), scored
    against ``vectors[id]`` read in id order (a few hundred rows of a memory-mapped store)."""
    scores = np.full((len(queries), k), -np.finfo(np.float32).max, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates)):
        found = np.unique(found[found >= 0])
        if not len(found):
            continue
        exact = np.asarray(vectors[found], dtype=np.float32) @ query
        best = np.argsort(-exact, kind="stable")[:k]
        scores[row, :len(best)], ids[row, :len(best)] = exact[best], found[best]
    return scores, ids


def _search(index: faiss.Index, queries: np.ndarray, k: int, cross_modal: bool) -> tuple[np.ndarray, np.ndarray]:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if cross_modal and hasattr(inner, "hnsw"):
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(TEXT_EF_SEARCH, k)
        return index.search(queries, k, params=params)
    if cross_modal and hasattr(inner, "nprobe"):
        params = faiss.SearchParametersIVF()
        params.nprobe = min(inner.nlist, TEXT_NPROBE)
        return index.search(queries, k, params=params)
    return index.search(queries, k)
