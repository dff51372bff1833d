"""Semantic dedup with large clusters split into cells, against the whole-cluster pass (issue 29).

    python bench/semdedup_cells.py WORKSPACE [--cells 512,1024] [--eps 0.06]

WORKSPACE is a mapped one, such as bench/growth.py --input datacomp --keep DIR leaves (DIR/datacomp-N/ws).
The whole-cluster pass (``cell`` larger than any cluster) is the truth: every pair of a cluster compared.
For each cell size, with 0 and 1 neighbouring cells probed, it prints the wall time and, at ``eps``, how
many of the whole pass's semantic duplicates the celled pass also removes (recall), and how many it removes
that the whole pass keeps (a check: a celled pass compares a subset of the same pairs, so this must be 0).
The runs interleave: whole, then
each setting, then whole again; the two whole runs bracket the machine's drift.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def run(root: Path, cell: int, probes: int) -> tuple[float, np.ndarray, np.ndarray]:
    from curation.structure.semdedup import SemDedupConfig, semdedup
    from indexer.store import Workspace
    with Workspace(root) as ws:
        t0 = time.perf_counter()
        semdedup(ws, SemDedupConfig(cell=cell, cell_probes=probes), progress=False)
        wall = time.perf_counter() - t0
        frame = ws.numpy("SELECT sample_id, max_sim FROM semdedup ORDER BY sample_id")
    values = frame["max_sim"]
    values = np.asarray(values.filled(np.nan) if hasattr(values, "filled") else values, dtype=np.float64)
    return wall, np.asarray(frame["sample_id"]), values


def main() -> None:
    from bench.import_throughput import cpu
    from indexer.store import Workspace
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace")
    ap.add_argument("--cells", default="512,1024")
    ap.add_argument("--eps", type=float, default=0.06)
    args = ap.parse_args()
    root = Path(args.workspace)
    with Workspace(root, read_only=True) as ws:
        sizes = ws.numpy("SELECT count(*) AS n FROM clusters GROUP BY cluster")["n"]
    print(f"CPU: {cpu()}\n{int(sizes.sum()):,} clustered rows in {len(sizes)} clusters "
          f"(median {int(np.median(sizes)):,}, largest {int(sizes.max()):,}); eps {args.eps}")
    whole = 1 << 40
    settings = [(whole, 0)] + [(int(c), p) for c in args.cells.split(",") for p in (0, 1)] + [(whole, 0)]
    truth = None
    for cell, probes in settings:
        wall, ids, max_sim = run(root, cell, probes)
        removed = np.nan_to_num(max_sim, nan=-np.inf) >= 1 - args.eps
        name = "whole clusters" if cell == whole else f"cells of {cell:,}, {probes} probed"
        if truth is None:
            truth = removed
        hit = int((removed & truth).sum())
        print(f"{name:<26} {wall:7.1f} s   removes {int(removed.sum()):>8,}   recall {hit / max(int(truth.sum()), 1):.4f}"
              f"   beyond the whole pass {int((removed & ~truth).sum()):,}", flush=True)


if __name__ == "__main__":
    main()
