"""Map quality on the demo world, and `altlens map` stage times on 1 M synthetic embeddings.

    python bench/map_quality.py [--n 2000] [--big 1000000] [--dim 512] [--skip-demo] [--skip-big]

Demo part: builds a demo workspace with the shipped model (planted exact and
near duplicates included), runs the map, and prints NMI of clusters vs the
true main shape and background, duplicate precision/recall, and whether the
planted default (yellow stars) is found and suggested.
Big part: a workspace of ``--big`` random clustered unit vectors (no images)
goes through the same clusters + UMAP + summaries + duplicates + render stages;
prints wall time per stage. Prints; never fails on time.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from indexer.store import Workspace, now  # noqa: E402
from indexer.vectors import EmbeddingStore  # noqa: E402


def synthetic_workspace(root: Path, n: int, dim: int, centres: int = 300, seed: int = 0) -> Workspace:
    """``n`` ok samples whose image embeddings are noisy copies of ``centres`` random directions."""
    rng = np.random.default_rng(seed)
    ws = Workspace(root, create=True)
    means = rng.normal(size=(centres, dim)).astype(np.float32)
    vectors = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = means[rng.integers(0, centres, m)] + 0.6 * rng.normal(size=(m, dim)).astype(np.float32)
        vectors[start:start + m] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    store = EmbeddingStore(ws, "image")
    name = store.write_chunk(0, vectors)
    ids = np.arange(n)
    table = pa.table({"id": ids, "uid": [f"{i:032x}" for i in ids], "source": ["synthetic"] * n,
                      "key": [str(i) for i in ids], "status": ["ok"] * n, "caption_status": ["missing"] * n,
                      "ingested_at": [now()] * n})
    with ws.transaction() as cur:
        ws.insert_arrow("samples", table, cur=cur)
        store.record_chunk(cur, 0, n, name)
    return ws


def big_run(n: int, dim: int) -> dict:
    from curation.structure.map import run as run_map
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ws = synthetic_workspace(Path(tmp) / "ws", n, dim)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = run_map(ws)
        report["total_map_s"] = round(time.perf_counter() - t0, 1)
        report["setup_s"] = round(setup, 1)
        ws.close()
    return report


def demo_run(n: int) -> dict:
    from demo.build import DemoConfig, build_demo
    from demo.map_quality import map_quality
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        build_demo(DemoConfig(workspace=str(root), n=n, seed=2718))
        with Workspace(root, read_only=True) as ws:
            return map_quality(ws)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    args = ap.parse_args()
    if not args.skip_demo:
        print(json.dumps({"demo": demo_run(args.n)}, indent=1))
    if not args.skip_big:
        report = big_run(args.big, args.dim)
        print(json.dumps({"big": report}, indent=1))
        print(f"{args.big} points: " + ", ".join(f"{k} {v}" for k, v in report["times"].items()) +
              f"; total {report['total_map_s']} s")


if __name__ == "__main__":
    main()
