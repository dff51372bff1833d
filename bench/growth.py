"""How a workspace's costs grow with its size: batch stages, interactive queries and memory at 100k .. 3M rows.

    python bench/growth.py [--sizes 100000,300000,1000000,3000000] [--repeats 20]
    python bench/growth.py --input datacomp [--sizes 1000000,3000000] [--keep DIR]   (bench/growth_datacomp.py)

Each size runs in its own process (so peak memory is that size's): it builds a
synthetic workspace (bench/ui_latency.py's: clustered embeddings, shared
thumbnails, rewards, map coordinates) in the space of a random-weight ViT-B-32
(512-d, its real text tower for search; ``--model``), then times

- batch stages: the FAISS index build, the map (k-means + layout), the
  near-duplicate search (exact up to 100k rows, cluster-local beyond) and a 10%
  selection exported as a uid list (the synthetic rows have no image bytes to
  shard);
- interactive queries, p50/p95: text search (the text tower and the index), the
  index search alone, a gallery page, a filter change, the sample panel; and
  recall@10 against exact search, for image queries (similar images) and for two
  kinds of text query (see ``recall_at_10``), searched wider as text search is;
- peak resident memory of each phase.

The batch stages and the queries run in two processes, one after the other, as
``altlens map``/``dups``/``export`` and ``altlens serve`` do: a server does not
carry the heap the batch stages grew.

It prints a row per size and the fitted growth exponent of every figure (the
slope of log cost on log rows: 1 is linear, 0 flat), then extrapolates the map
and search to 10 M rows. Goals: batch stages <= 1.1, queries <= 0.2, 3 M rows in
24 GB, 10 M: map <= 30 min, search p95 <= 100 ms at recall@10 >= 0.95.
Prints; never fails on time.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

BATCH = ("index_build_s", "map_s", "duplicates_s", "export_10pct_s")
QUERIES = ("search", "search_index_only", "gallery_page", "filter_change", "sample_panel")


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return round(time.perf_counter() - t0, 2)


def batch_phase(n: int, model_name: str, tmp: Path) -> dict:
    """Build a workspace of ``n`` rows under ``tmp`` and time its batch stages (one child process)."""
    from bench.engine_compare import random_checkpoint
    from bench.ui_latency import build
    from curation.export.export import ExportConfig
    from curation.export.export import run as export
    from curation.export.select import SelectionRule, save_selection
    from curation.structure.clusters import ClusterConfig, cluster_and_layout
    from curation.structure.duplicates import find_duplicates
    from indexer.models import ModelSpec
    from indexer.store import Workspace
    from indexer.writer import rebuild_index_if_stale

    out: dict = {"n": n}
    root = tmp / "ws"
    spec = ModelSpec(checkpoint=str(random_checkpoint(model_name, tmp)))
    out["build_s"] = seconds(lambda: build(root, n, spec=spec))
    with Workspace(root) as ws:
        ws.execute("UPDATE samples SET sha256 = uid")  # distinct bytes, as real images have
        out["index_build_s"] = seconds(lambda: rebuild_index_if_stale(ws, force=True))
        out["map_s"] = seconds(lambda: cluster_and_layout(ws, ClusterConfig()))
        out["duplicates_s"] = seconds(lambda: find_duplicates(ws))
        cut = float(np.quantile(np.array([r[0] for r in ws.rows("SELECT value FROM rewards")]), 0.9))

        def export_tenth():
            save_selection(ws, SelectionRule("tenth", min_reward=cut, drop_duplicates=False, labels="any"))
            export(ws, ExportConfig("tenth", str(tmp / "export"), format="uids", progress=False))
        out["export_10pct_s"] = seconds(export_tenth)
    out["peak_batch_gb"] = peak_gb()
    return out


def serve_phase(n: int, repeats: int, tmp: Path) -> dict:
    """Open the workspace as ``altlens serve`` does, in a fresh process (a server does not carry the batch
    stages' memory), and time the interactive queries."""
    from app.handlers import Handlers
    from bench.recall import recall_at_10
    from bench.ui_latency import timed
    from indexer.store import Workspace
    from indexer.vectors import EmbeddingStore, read_index, search

    out: dict = {}
    ws = Workspace(tmp / "ws", read_only=True)
    h = Handlers(ws)
    rng = np.random.default_rng(1)
    clusters = h.clusters()
    thresholds = iter(rng.uniform(0.3, 1.5, 10 * repeats))
    queries = iter(["a large yellow star", "a small red circle on the left", "a blue square",
                    "purple hexagon", "a green cross at the bottom"] * (4 * repeats))
    out["search"] = timed(lambda: h.search_text(next(queries)), repeats)
    index, stored = read_index(ws.index_path), EmbeddingStore(ws, "image").load()
    probe = iter(np.asarray(stored[rng.integers(0, n, 20 * repeats)], np.float32))
    out["search_index_only"] = timed(lambda: search(index, next(probe)[None, :], 48, vectors=stored), repeats)
    out["gallery_page"] = timed(lambda: h.browse(str(rng.choice(clusters)), int(rng.integers(0, 5))), repeats)
    out["filter_change"] = timed(lambda: h.filter("reward", float(next(thresholds))), repeats)
    out["sample_panel"] = timed(lambda: h.sample(int(rng.integers(0, n))), repeats)
    out["peak_serve_gb"] = peak_gb()  # before the recall check, which reads every vector in float32
    out["recall_image"], out["recall_text"], out["recall_text_gap"] = recall_at_10(ws, h)
    ws.close()
    return out


def peak_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)


def one_size(n: int, repeats: int, model_name: str) -> dict | None:
    """Both phases of one size, each in its own child process, on one temporary workspace."""
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for phase in ("batch", "serve"):
            proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--phase", phase, "--dir", tmp,
                                   "--repeats", str(repeats), "--model", model_name], capture_output=True, text=True,
                                  check=False)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(f"{n} ({phase}): failed ({proc.returncode})\n{proc.stderr[-2000:]}")
                return None
            out |= json.loads(line[7:])
    out["peak_rss_gb"] = max(out["peak_batch_gb"], out["peak_serve_gb"])
    return out


def exponent(ns, values) -> float:
    ok = [(n, v) for n, v in zip(ns, values) if v and v > 0]
    if len(ok) < 2:
        return float("nan")
    x, y = np.log([n for n, _ in ok]), np.log([v for _, v in ok])
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,300000,1000000,3000000")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip config whose random weights define the space")
    ap.add_argument("--input", choices=("synthetic", "datacomp"), default="synthetic",
                    help="datacomp: a DataComp-layout pool through import, map, semdedup, a preset and a subset "
                         "export, then the served queries (bench/growth_datacomp.py)")
    ap.add_argument("--keep", help="datacomp: work in this folder and keep the pools and workspaces")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=("batch", "serve"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.input == "datacomp":
        from bench.growth_datacomp import main as datacomp_main
        return datacomp_main([int(s) for s in args.sizes.split(",")], args.repeats, args.keep)
    if args.one:
        result = (batch_phase(args.one, args.model, Path(args.dir)) if args.phase == "batch"
                  else serve_phase(args.one, args.repeats, Path(args.dir)))
        print("RESULT " + json.dumps(result))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        row = one_size(n, args.repeats, args.model)
        if row is None:
            break
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) < 2:
        return
    ns = [r["n"] for r in rows]
    print(f"\n{'rows':>9} " + " ".join(f"{b:>15}" for b in BATCH) + " " +
          " ".join(f"{q + ' p95':>18}" for q in QUERIES) + f" {'recall img/txt/gap':>20} {'peak GB batch/serve':>20}")
    for r in rows:
        print(f"{r['n']:>9} " + " ".join(f"{r[b]:>15.2f}" for b in BATCH) + " " +
              " ".join(f"{r[q]['p95_ms']:>15.1f} ms" for q in QUERIES) +
              f" {r['recall_image']:>8.3f}/{r['recall_text']:.3f}/{r.get('recall_text_gap', float('nan')):.3f}"
              f" {r['peak_batch_gb']:>5.2f}/{r['peak_serve_gb']:.2f}")
    print("\ngrowth exponents (log cost / log rows; goal: batch <= 1.1, queries <= 0.2), over every size and\n"
          "between the two largest (up to 100k rows the index is exact and flat, above it an inverted file):")
    fits, tails = {}, {}
    for b in BATCH:
        fits[b] = exponent(ns, [r[b] for r in rows])
        tail = exponent(ns[-2:], [r[b] for r in rows[-2:]])
        tails[b] = tail
        print(f"  {b:<18} {fits[b]:5.2f}  largest two {tail:5.2f}  {'ok' if tail <= 1.1 else 'MISSED'}")
    for q in QUERIES:
        fits[q] = exponent(ns, [r[q]["p95_ms"] for r in rows])
        tail = exponent(ns[-2:], [r[q]["p95_ms"] for r in rows[-2:]])
        tails[q] = tail
        print(f"  {q + ' p95':<18} {fits[q]:5.2f}  largest two {tail:5.2f}  {'ok' if tail <= 0.2 else 'MISSED'}")
    fits["peak_rss_gb"] = exponent(ns, [r["peak_rss_gb"] for r in rows])
    print(f"  {'peak memory':<18} {fits['peak_rss_gb']:5.2f}")
    last = rows[-1]
    scale = 10_000_000 / last["n"]
    map_10m = last["map_s"] * scale ** fits["map_s"] + last["duplicates_s"] * scale ** fits["duplicates_s"]
    map_tail = last["map_s"] * scale ** tails["map_s"] + last["duplicates_s"] * scale ** tails["duplicates_s"]
    search_10m = last["search"]["p95_ms"] * scale ** max(fits["search"], tails["search"], 0)
    print(f"\nextrapolated to 10 M rows from {last['n']:,} (each figure's own exponent, over every size / the "
          "largest two):")
    print(f"  map + duplicates {map_10m / 60:6.1f} / {map_tail / 60:.1f} min   goal <= 30 min  "
          f"{'ok' if max(map_10m, map_tail) <= 1800 else 'MISSED'}")
    print(f"  search p95       {search_10m:6.1f} ms    goal <= 100 ms  {'ok' if search_10m <= 100 else 'MISSED'}"
          f"  (recall@10 at {last['n']:,}: images {last['recall_image']:.3f}, text with a modality gap "
          f"{last['recall_text_gap']:.3f}, random-model text {last['recall_text']:.3f}; goal >= 0.95)")
    print(f"  peak memory at {last['n']:,}: batch stages {last['peak_batch_gb']:.1f} GB, server "
          f"{last['peak_serve_gb']:.1f} GB (goal: 3 M rows within 24 GB)")


if __name__ == "__main__":
    main()
