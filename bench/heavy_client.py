"""One client firing heavy map regions at a served workspace while a second curator works: the second one's waits.

    python bench/heavy_client.py [--workspace WS] [--heavy 200] [--corners 5000] [--calls 30]

Builds a demo workspace (or copies ``--workspace``) and serves it with ``altlens serve``. Client A sends
``--heavy`` lasso regions of ``--corners`` corners at once from one browser session, the way a script (or a
stuck page) would, over Gradio's own queue protocol (``queue/join`` with the region as event data, answers
read from ``queue/data``). Meanwhile client B, a second session, starts Review queues, opens Filter pages and
draws its own map regions, ``--calls`` of each in turn. Prints B's p50/p95 per kind of call, how many of A's
regions were answered, refused or still open at the end, and the CPU. Issue 31's goal: B's p95 under 2 s.
Prints; never fails.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402

from bench.import_throughput import cpu  # noqa: E402


def lasso(extent, corners: int, rng) -> dict:
    x0, x1, y0, y1 = extent
    angle = np.sort(rng.uniform(0, 2 * np.pi, corners))
    r = rng.uniform(0.2, 0.45, corners)
    return {"x": list((x0 + x1) / 2 + r * (x1 - x0) * np.cos(angle)),
            "y": list((y0 + y1) / 2 + r * (y1 - y0) * np.sin(angle))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace")
    ap.add_argument("--heavy", type=int, default=200)
    ap.add_argument("--corners", type=int, default=5000)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    from browser import QueueSession, event_index, served
    from gradio_client import Client

    from curation.views.atlas import Atlas
    from indexer.store import Workspace

    work = Path(tempfile.mkdtemp(prefix="altlens-heavy-bench-"))
    try:
        ws_path = work / "ws"
        if args.workspace:
            shutil.copytree(args.workspace, ws_path)
        else:
            from demo.build import DemoConfig, build_demo
            build_demo(DemoConfig(workspace=str(ws_path), n=600, seed=7, shard_size=200))
        with Workspace(ws_path, read_only=True) as ws:
            extent = Atlas(ws).extent
        rng = np.random.default_rng(0)
        with served(ws_path) as url:
            region_fn = event_index(url, "map_region")
            a, b_region = QueueSession(url, region_fn), QueueSession(url, region_fn)
            b = Client(url, verbose=False)
            spec = {"lasso": lasso(extent, args.corners, rng)}
            t0 = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:  # A: every region sent at once, one session
                heavy = list(pool.map(lambda _: a.join(["reward"], spec), range(args.heavy)))
            sent_s = time.perf_counter() - t0
            seconds: dict[str, list[float]] = {"review queue": [], "filter page": [], "own map region": []}
            failed: list[str] = []
            for i in range(args.calls):  # B: one call after another, as a person clicks
                for kind, call in (("review queue", lambda: b.predict("lowest reward first", "0", "",
                                                                      api_name="/queue")),
                                   ("filter page", lambda: b.predict("reward", 0.0, api_name="/filter"))):
                    t = time.perf_counter()
                    try:
                        call()
                        seconds[kind].append(time.perf_counter() - t)
                    except Exception as exc:  # counted, shown below
                        failed.append(f"{kind}: {type(exc).__name__}: {str(exc)[:120]}")
                own = b_region.join(["reward"], {"lasso": lasso(extent, 200, rng)})
                answer = b_region.wait(own, 60)
                if answer is None or not answer[0]:
                    failed.append(f"own map region: {'no answer in 60 s' if answer is None else 'refused'}")
                else:
                    seconds["own map region"].append(answer[1])
            elapsed = time.perf_counter() - t0
            answered = sum(1 for e in heavy if a.done.get(e, (False,))[0])
            refused = sum(1 for e in heavy if e in a.done and not a.done[e][0])
        print(f"CPU: {cpu()}; client A sent {args.heavy} lassoes of {args.corners:,} corners in {sent_s:.1f} s; "
              f"client B made {args.calls} rounds in {elapsed:.1f} s")
        for kind, values in seconds.items():
            if values:
                print(f"  B {kind}: p50 {np.median(values) * 1000:.0f} ms, p95 "
                      f"{np.percentile(values, 95) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms ({len(values)} calls)")
        print(f"  A: {answered} regions answered, {refused} refused, {args.heavy - answered - refused} still open")
        if failed:
            print(f"  B failures: {len(failed)}, first: {failed[0]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
