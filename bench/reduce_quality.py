"""Reducing a pool at 1 M rows: the time of semantic dedup (and its eps curve) and of a budgeted selection.

    python bench/reduce_quality.py [--n 1000000] [--keep DIR]

Builds (or reuses, with --keep) the synthetic 1 M-row workspace of bench/ui_latency.py: clustered random
embeddings, clusters, rewards. Times ``altlens semdedup --keep caption`` and prints its eps curve; then
times ``budget_pick`` for a 30% budget with every ``--allocate`` and ``--pick``, and checks the budget
(kept within 1% of 30%, every cluster kept). Goal: under 2 min each on 2 cores. Prints; never fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ui_latency import build  # noqa: E402

from curation.export.budget import ALLOCATE, PICK, budget_pick  # noqa: E402
from curation.structure.semdedup import SemDedupConfig, semdedup  # noqa: E402
from indexer.store import Workspace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--keep", help="build the workspace here (or reuse it) instead of a temp folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp) / "ws"
        if not (root / "altlens.duckdb").exists():
            build(root, args.n)
        with Workspace(root) as ws:
            t0 = time.perf_counter()
            report = semdedup(ws, SemDedupConfig(keep="caption"))
            semdedup_s = time.perf_counter() - t0
        with Workspace(root, read_only=True) as ws:
            ids = [r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok' ORDER BY id")]
            clusters = int(ws.scalar("SELECT count(DISTINCT cluster) FROM clusters"))
            results = {}
            for allocate in ALLOCATE:
                for pick in PICK:
                    t0 = time.perf_counter()
                    kept, table = budget_pick(ws, ids, 0.3, allocate, pick)
                    took = time.perf_counter() - t0
                    results[f"{allocate}/{pick}"] = {
                        "seconds": round(took, 1), "kept_share": round(len(kept) / len(ids), 4),
                        "clusters_kept": sum(r["kept"] > 0 for r in table), "clusters": clusters}
    print(json.dumps({"n": len(ids), "semdedup_s": round(semdedup_s, 1), "eps_curve": report["curve"], **results},
                     indent=1))
    print(f"semdedup (keep caption)            {semdedup_s:>7.1f} s  {'ok' if semdedup_s <= 120 else 'MISSED'}")
    for name, r in results.items():
        ok = r["seconds"] <= 120 and abs(r["kept_share"] - 0.3) <= 0.01 and r["clusters_kept"] == r["clusters"]
        print(f"budget 30% {name:<20} {r['seconds']:>7.1f} s  kept {r['kept_share']:.2%}  "
              f"clusters {r['clusters_kept']}/{r['clusters']}  {'ok' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
