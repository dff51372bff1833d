"""``altlens import datacomp`` at pool scale: rows/s and peak memory, 512-d and 768-d, one run.

    python bench/import_throughput.py [--rows 1000000[,250000...]] [--per-file 250000] [--dims 512,768] [--keep DIR]

Writes a synthetic DataComp-layout pool per dimension (float16 npz with l14_img/l14_txt and b32_img/b32_txt,
parquet with the DataComp columns; clustered unit vectors, 1% near-copies; no images), then imports each in
its own process (so peak RSS is that process's alone) with a random model of the same dimension (the
vectors are the pool's; the model only gives the workspace its text tower). Prints wall time split into
rows (read, check, commit), compaction and the FAISS build, rows/s, peak RSS and the pool's size on disk,
with the CPU it ran on. Goal (issue 28): >= 20,000 rows/s on 2 cores, memory that does not grow with the pool.
Prints; never fails on time.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name"))
        flags = next(l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags"))
        wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
        return f"{model} ({', '.join(wanted) or 'no avx2'})"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def clustered(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray) -> np.ndarray:
    v = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.35, size=(n, dim)).astype(np.float32)
    copies = rng.random(n) < 0.01
    v[copies] = np.roll(v, 1, axis=0)[copies] + rng.normal(scale=0.01, size=(int(copies.sum()), dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def write_pool(root: Path, rows: int, per_file: int, dim: int, seed: int = 0, keys=("l14", "b32")) -> None:
    """DataComp-layout parquet + npz files; the npz holds ``{key}_img`` and ``{key}_txt`` for each of ``keys``
    (the same vectors under each: only the layout matters here)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(300, dim)).astype(np.float32)
    (root / "metadata").mkdir(parents=True)
    for number, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        ids = np.arange(start, start + n, dtype=np.uint64)
        hi, lo = (ids * np.uint64(0x9E3779B97F4A7C15)), ids
        uids = [f"{a:016x}{b:016x}" for a, b in zip(hi.tolist(), lo.tolist())]
        meta = pa.table({"uid": uids, "url": [f"https://example.com/{i}.jpg" for i in range(start, start + n)],
                         "text": [f"photo {i} of a dog on a beach" for i in range(start, start + n)],
                         "original_width": rng.integers(64, 2000, n), "original_height": rng.integers(64, 2000, n),
                         "clip_b32_similarity_score": rng.uniform(0.1, 0.4, n).astype(np.float32),
                         "clip_l14_similarity_score": rng.uniform(0.1, 0.4, n).astype(np.float32),
                         "sha256": [f"{i:064x}" for i in range(start, start + n)]})
        pq.write_table(meta, root / "metadata" / f"{number:08d}.parquet")
        image = clustered(rng, n, dim, centres)
        text = clustered(rng, n, dim, centres)
        np.savez(root / "metadata" / f"{number:08d}.npz",
                 **{f"{key}_{kind}": v for key in keys for kind, v in (("img", image), ("txt", text))})


def tiny_config(folder: Path, dim: int) -> Path:
    config = folder / f"bench-{dim}d.json"
    config.write_text(json.dumps({
        "embed_dim": dim, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    return config


IMPORT = """
import json, resource, sys
from curation.pipeline import run_stage
from indexer import importer
from indexer.importer import ImportConfig
from indexer.models import ModelSpec
peaks = {}
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
compact, rebuild = importer.EmbeddingStore.compact, importer.rebuild_index_if_stale
def compact_after_rows(self):
    peaks.setdefault("rows", peak())
    return compact(self)
def rebuild_after_compaction(*args, **kw):
    peaks["compaction"] = peak()
    return rebuild(*args, **kw)
importer.EmbeddingStore.compact, importer.rebuild_index_if_stale = compact_after_rows, rebuild_after_compaction
report = run_stage("import", sys.argv[2], ImportConfig("datacomp", sys.argv[1], ModelSpec(name=sys.argv[3],
                   pretrained="none"), progress=False))
report["peak_rss_gb"] = peak()
report["peaks"] = peaks
print(json.dumps(report))
"""


def size_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1000000", help="rows of the pool; several (250000,1000000) show growth")
    ap.add_argument("--per-file", type=int, default=250_000)
    ap.add_argument("--dims", default="512,768")
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temp folder, removed)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="altlens-import-bench-"))
    sizes = [int(n) for n in str(args.rows).split(",")]
    print(f"CPU: {cpu()}; {', '.join(f'{n:,}' for n in sizes)} rows in files of {args.per_file:,}")
    try:
        for dim, rows in [(int(d), n) for d in args.dims.split(",") for n in sizes]:
            pool, ws = work / f"pool-{dim}-{rows}", work / f"ws-{dim}-{rows}"
            shutil.rmtree(ws, ignore_errors=True)
            if not pool.exists():
                write_pool(pool, rows, args.per_file, dim)
            proc = subprocess.run([sys.executable, "-c", IMPORT, str(pool), str(ws), str(tiny_config(work, dim))],
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{dim}-d: {r['rows']:,} rows in {r['wall_s']:.1f} s (rows {r['rows_s']:.1f} s, compaction "
                  f"{r['compact_s']:.1f} s, FAISS {r['index_s']:.1f} s): {r['rows'] / r['wall_s']:,.0f} rows/s overall, "
                  f"{r['rows'] / r['rows_s']:,.0f} rows/s before compaction and index; peak RSS {r['peak_rss_gb']:.2f} GB "
                  f"(after the rows {r['peaks'].get('rows', 0):.2f} GB, after compaction "
                  f"{r['peaks'].get('compaction', 0):.2f} GB, the rest is the FAISS build); "
                  f"pool {size_gb(pool):.2f} GB, workspace {size_gb(ws):.2f} GB; statuses {r['statuses']}")
            if not args.keep:
                shutil.rmtree(pool)
                shutil.rmtree(ws)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
