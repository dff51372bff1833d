"""Text search latency in a server process, quiet and beside a CLI job on the same cores, by torch thread count.

    python bench/search_beside_job.py [--workspace WS] [--queries 40] [--threads 2,1]

Builds a small demo workspace (or uses ``--workspace``), opens it read-only as the server does, and times text
searches (the real text tower of the workspace's model, then FAISS) with each torch intra-op thread count:
first with the machine quiet, then while ``altlens score --recompute`` runs on a copy of the workspace (the
kind of job a curator starts beside the server). Rounds interleave the thread counts. Prints p50/p95 per
case and the ratio beside/quiet, with the CPU. Issue 31's goal: p95 beside a job within 3x the quiet p95.
Prints; never fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.import_throughput import cpu  # noqa: E402

QUERIES = ["a dog on a beach", "a red chair by a window", "two people walking", "a plate of food",
           "a city street at night", "a cat asleep on a sofa", "mountains under snow", "a small boat on a lake"]


def timed(searcher, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        searcher.text(QUERIES[i % len(QUERIES)], 48)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (and its waited-for children) has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def job(workspace: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "altlens"
    return subprocess.Popen([str(exe), "score", "-w", str(workspace), "--recompute"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from curation.views.search import Searcher
    from indexer.store import Workspace

    work = Path(tempfile.mkdtemp(prefix="altlens-search-bench-"))
    try:
        ws_path = Path(args.workspace) if args.workspace else work / "ws"
        if not args.workspace:
            from demo.build import DemoConfig, build_demo
            build_demo(DemoConfig(workspace=str(ws_path), n=600, seed=7, shard_size=200))
        copy = work / "copy"
        shutil.copytree(ws_path, copy)
        print(f"CPU: {cpu()}; {torch.get_num_threads()} torch threads by default, {args.queries} queries a case")
        results: dict[tuple[int, str], list[float]] = {}
        busy: dict[int, list[float]] = {}  # cores the job kept busy while the queries ran
        with Workspace(ws_path, read_only=True) as ws:
            searcher = Searcher(ws)
            timed(searcher, 5)  # the model loads and warms up
            for _ in range(args.rounds):
                for threads in [int(t) for t in args.threads.split(",")]:
                    torch.set_num_threads(threads)
                    results.setdefault((threads, "quiet"), []).extend(timed(searcher, args.queries))
                    running = job(copy)
                    time.sleep(8)  # past its start-up (torch, the model), into the scoring
                    used, t0 = cpu_seconds(running.pid), time.perf_counter()
                    results.setdefault((threads, "beside"), []).extend(timed(searcher, args.queries))
                    busy.setdefault(threads, []).append((cpu_seconds(running.pid) - used) /
                                                        (time.perf_counter() - t0))
                    still = running.poll() is None
                    running.kill()
                    running.wait()
                    if not still:
                        print(f"  (the job ended before the {threads}-thread queries did: raise its size)")
        for threads in [int(t) for t in args.threads.split(",")]:
            quiet, beside = np.array(results[(threads, "quiet")]), np.array(results[(threads, "beside")])
            q95, b95 = np.percentile(quiet, 95), np.percentile(beside, 95)
            print(f"{threads} thread(s): quiet p50 {np.median(quiet):.1f} ms p95 {q95:.1f} ms; beside a running "
                  f"score p50 {np.median(beside):.1f} ms p95 {b95:.1f} ms; p95 ratio {b95 / q95:.2f} "
                  f"(the job used {np.mean(busy[threads]):.1f} cores meanwhile)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
