"""Learned-reward quality vs label count on the demo world (simulated curator, queue-chosen labels).

    python bench/reward_quality.py [--n 1500] [--budgets 25,50,100,200,400]

Builds a demo workspace with the shipped model, then for each budget labels
that many samples as the review queue proposes them (truth: correct/partial =
good; unrelated/junk/swapped/empty = bad), trains the reward, and prints the
held-out AUROC (correct vs misaligned + swapped) of the learned reward and of
clip_score alone. Prints; never fails.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.demo import DemoConfig, build_demo  # noqa: E402
from curation.reward_sim import held_out_auroc, simulate_labels  # noqa: E402
from indexer.store import Workspace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--budgets", default="25,50,100,200,400")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        build_demo(DemoConfig(workspace=str(base), n=args.n, seed=1618))
        rows = []
        for budget in (int(b) for b in args.budgets.split(",")):
            ws_dir = Path(tmp) / f"ws{budget}"
            shutil.copytree(base, ws_dir)
            with Workspace(ws_dir) as ws:
                model = simulate_labels(ws, budget)
                rows.append({"labels": budget, **(held_out_auroc(ws, model) if model else {"error": "one class only"})})
            print(json.dumps(rows[-1]))
    print("labels  learned AUROC  clip_score AUROC  CV AUROC")
    for r in rows:
        if "learned_auroc" in r:
            print(f"{r['labels']:>6}  {r['learned_auroc']:>13.4f}  {r['clip_score_auroc']:>16.4f}  {r['cv_auroc']:>8.4f}")


if __name__ == "__main__":
    main()
