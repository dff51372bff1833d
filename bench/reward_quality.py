"""Learned-reward and caption-chooser quality vs label count on the demo world (simulated curator).

    python bench/reward_quality.py [--n 1500] [--budgets 25,50,100,200,400]

Builds a demo workspace with the shipped model and holds out a random 40% of it.
For each budget, a curator simulated from the truth labels that many samples as
the review queue proposes them (correct/partial = good; unrelated/junk/swapped/
empty = bad) and marks the best caption of each; the reward and the caption
chooser are trained on those. Printed, on the held-out samples: AUROC (correct
vs misaligned + swapped) of the learned reward and of clip_score alone, and how
often the chooser, the top clip_score and the fixed policies pick the caption the
curator prefers. Prints; never fails.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.review.chooser import train_chooser  # noqa: E402
from curation.review.labels import current  # noqa: E402
from demo.build import DemoConfig, build_demo  # noqa: E402
from demo.reward_sim import chooser_quality, held_out_auroc, held_out_split, simulate_labels, simulate_preferences  # noqa: E402
from indexer.store import Workspace  # noqa: E402


def run_budget(base: Path, ws_dir: Path, budget: int) -> dict:
    shutil.copytree(base, ws_dir)
    with Workspace(ws_dir) as ws:
        held = held_out_split(ws)
        model = simulate_labels(ws, budget, held_out=held)
        if model is None:
            return {"labels": budget, "error": "one class only"}
        row = {"labels": budget, **held_out_auroc(ws, model, held)}
        simulate_preferences(ws, sorted(current(ws, "alignment")))
        try:
            row["chooser"] = chooser_quality(ws, train_chooser(ws), held)
        except ValueError as exc:
            row["chooser"] = {"error": str(exc)}
    shutil.rmtree(ws_dir)
    return row


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
            rows.append(run_budget(base, Path(tmp) / f"ws{budget}", budget))
            print(json.dumps(rows[-1]), flush=True)
    print("labels  learned AUROC  clip_score AUROC  CV AUROC | chooser acc  top-clip acc  best fixed acc")
    for r in rows:
        if "learned_auroc" not in r:
            continue
        c = r["chooser"]
        fixed = max((c.get(f"{k}_accuracy", 0.0) for k in ("alt", "fused", "syn")), default=0.0)
        chooser = f"{c['chooser_accuracy']:>11.3f}  {c['top_clip_score_accuracy']:>12.3f}  {fixed:>14.3f}" \
            if "chooser_accuracy" in c else "  (chooser: too few preferences)"
        print(f"{r['labels']:>6}  {r['learned_auroc']:>13.4f}  {r['clip_score_auroc']:>16.4f}  {r['cv_auroc']:>8.4f} | "
              f"{chooser}")


if __name__ == "__main__":
    main()
