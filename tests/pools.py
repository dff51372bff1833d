"""Pools in the layouts the field ships (DataComp parquet + npz), written small for the tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def datacomp_rows(rng: np.random.Generator, n: int, start: int) -> dict:
    """DataComp metadata columns for ``n`` rows (uids are 32 hex digits, unique across calls by ``start``)."""
    uids = [f"{(start + i) * 2654435761 % (1 << 128):032x}" for i in range(n)]
    return {"uid": uids, "url": [f"https://example.com/{start + i}.jpg" for i in range(n)],
            "text": [f"a photo number {start + i} of a dog on a beach" for i in range(n)],
            "original_width": rng.integers(100, 900, n).astype(np.int64),
            "original_height": rng.integers(100, 900, n).astype(np.int64),
            "clip_b32_similarity_score": rng.uniform(0.1, 0.4, n), "clip_l14_similarity_score": rng.uniform(0.1, 0.4, n),
            "face_bboxes": [[] for _ in range(n)], "sha256": [f"{start + i:064x}" for i in range(n)]}


def write_datacomp(root: Path, sizes=(7, 5), dim: int = 32, seed: int = 0, dtype=np.float16) -> dict:
    """A DataComp-layout pool under ``root/metadata``: one parquet + npz per size; returns the rows and vectors
    written, in pool order."""
    rng = np.random.default_rng(seed)
    meta_dir = root / "metadata"
    meta_dir.mkdir(parents=True, exist_ok=True)
    out = {"uids": [], "l14_img": [], "l14_txt": [], "rows": []}
    start = 0
    for number, n in enumerate(sizes):
        rows = datacomp_rows(rng, n, start)
        arrays = {f"{k}_{m}": unit(rng, n, dim).astype(dtype) for k in ("b32", "l14") for m in ("img", "txt")}
        pq.write_table(pa.table(rows), meta_dir / f"{number:08d}.parquet")
        np.savez(meta_dir / f"{number:08d}.npz", **arrays)
        out["uids"] += rows["uid"]
        out["l14_img"].append(arrays["l14_img"])
        out["l14_txt"].append(arrays["l14_txt"])
        out["rows"].append(rows)
        start += n
    out["l14_img"], out["l14_txt"] = np.concatenate(out["l14_img"]), np.concatenate(out["l14_txt"])
    return out
