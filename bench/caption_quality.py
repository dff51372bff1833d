"""Caption and score quality on a freshly built demo world, measured against its truth.

    python bench/caption_quality.py [--n 1000] [--seed 31337] [--workspace DIR]

Builds a demo workspace with the shipped checkpoint (shards -> index -> caption
-> fuse -> score, as ``altlens demo`` does) and prints: misaligned-vs-correct and
swapped-vs-correct AUROC by reward, whether cycle/agreement help when combined,
fact recall per caption source, and how strongly the captions repeat the
planted default (yellow stars). Prints; never fails on a threshold.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.build import DemoConfig, build_demo  # noqa: E402
from demo.quality import caption_quality  # noqa: E402
from indexer.store import Workspace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=31337)
    ap.add_argument("--workspace", default=None, help="Keep the workspace here (default: a temp dir).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workspace or Path(tmp) / "ws")
        build_demo(DemoConfig(workspace=str(root), n=args.n, seed=args.seed))
        with Workspace(root, read_only=True) as ws:
            quality = caption_quality(ws)
    print(json.dumps(quality, indent=1))
    recall = quality["fact_recall"]
    default = quality["planted_default"]
    print(f"misaligned vs correct AUROC {quality['auroc_misaligned_vs_correct']:.4f} (target >= 0.98)")
    print(f"swapped vs correct AUROC {quality['auroc_swapped_vs_correct']:.4f} (target >= 0.80); "
          f"with cycle {quality.get('auroc_swapped_vs_correct_with_alt_cycle', float('nan')):.4f}, "
          f"with agreement {quality.get('auroc_swapped_vs_correct_with_agreement', float('nan')):.4f}")
    print("fact recall: " + ", ".join(f"{k} {v:.3f}" for k, v in recall.items()))
    print(f"planted default: synthetic captions say 'yellow star' for {default['captions_say_share']:.0%} of "
          f"star images; {default['images_have_share']:.0%} have a yellow star; said for "
          f"{default['said_for_non_default_images']:.0%} of images whose stars are not yellow")


if __name__ == "__main__":
    main()
