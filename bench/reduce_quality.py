"""Reducing a pool: semantic dedup against planted truth on the demo world, and its cost at 1 M rows.

    python bench/reduce_quality.py [--demo 600] [--n 1000000] [--keep DIR]

Demo world (``--demo N`` samples, 0 to skip): scenes drawn again as semantic duplicates, with alt-texts of
their own quality (demo/build.py's reduce world). For each keep policy and eps it prints how many samples
are removed, the precision (the removed sample's kept look-alike shows the same thing) and recall of the
planted pairs, the share of groups where the best alt-text was kept, and for the default eps how many
members of planted groups were kept and dropped by the noise kind of their alt-text.

Scale (``--n``, 0 to skip): builds (or reuses, with --keep) the synthetic 1 M-row workspace of bench/ui_latency.py: clustered random
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


def demo_world(n: int) -> None:
    from curation.structure.semdedup import DEFAULT_EPS, EPS_GRID, KEEP
    from demo.build import build_reduce_world
    from demo.map_quality import semdedup_quality
    with tempfile.TemporaryDirectory() as tmp:
        root = build_reduce_world(Path(tmp) / "ws", n=n, watermarked=0.0)
        with Workspace(root) as ws:
            print(f"\ndemo world: {n} samples; precision / recall of planted pairs / best alt-text kept")
            print(f"{'keep':>8} " + " ".join(f"{eps:>18g}" for eps in EPS_GRID))
            fates = {}
            for keep in KEEP:
                semdedup(ws, SemDedupConfig(keep=keep), progress=False)
                cells = []
                for eps in EPS_GRID:
                    q = semdedup_quality(ws, eps)
                    cells.append(f"{q['precision'] or 0:.2f}/{q['recall'] or 0:.2f}/{q['best_caption_kept'] or 0:.2f}"
                                 f" -{q['removed']}")
                    if eps == DEFAULT_EPS:
                        fates[keep] = q
                print(f"{keep:>8} " + " ".join(f"{c:>18}" for c in cells))
            print(f"\nat eps {DEFAULT_EPS}: planted pairs {fates['caption']['planted_pairs']}; members of planted "
                  "groups kept/dropped by alt-text noise kind")
            for keep, q in fates.items():
                print(f"{keep:>8} " + "  ".join(f"{k} {v['kept']}/{v['dropped']}"
                                                for k, v in q["planted_members_by_alt_noise"].items()))
            q = fates["caption"]
            print(f"goals at eps {DEFAULT_EPS}: precision {q['precision']:.2f} (>= 0.9 "
                  f"{'ok' if q['precision'] >= 0.9 else 'MISSED'}), recall {q['recall']:.2f} (>= 0.9 "
                  f"{'ok' if q['recall'] >= 0.9 else 'MISSED'}), best caption kept {q['best_caption_kept']:.2f} "
                  f"(>= 0.9 {'ok' if q['best_caption_kept'] >= 0.9 else 'MISSED'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=int, default=600, help="demo-world samples (0: skip)")
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic rows for the timing (0: skip)")
    ap.add_argument("--keep", help="build the workspace here (or reuse it) instead of a temp folder")
    args = ap.parse_args()
    if args.demo:
        demo_world(args.demo)
    if not args.n:
        return
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
