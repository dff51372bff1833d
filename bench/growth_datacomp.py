"""DataComp-layout growth (issue 29): a pool of N rows through ``altlens import datacomp``, map, semdedup, a
``datacomp-clip-score`` preset with a subset export, and the served queries; each phase in its own process.

    python bench/growth.py --input datacomp [--sizes 1000000,3000000] [--repeats 20] [--keep DIR]

The pool is bench/import_throughput.py's: DataComp parquet + npz files of 250 k rows, clustered unit 512-d
vectors with 1% planted near-copies, metadata with scores and sizes, no images. The model is a random-weight
ViT-B-32 (its text tower serves search; the vectors are the pool's). Phases, one child process each (so peak
RSS is that phase's):

- ``import``: ``altlens import datacomp --embeddings b32`` (rows, compaction, the FAISS index);
- ``map``: k-means, the layout fitted on a sample and placed for every row, cluster summaries, near-duplicates;
- ``semdedup``: the semantic-duplicate pass at the default settings;
- ``preset_export``: ``select --preset datacomp-clip-score`` (top 30% by the L/14 score) and the subset file;
- ``serve``: the workspace opened read-only as ``altlens serve`` opens it; p50/p95 of text search (and of its
  index part alone), a gallery page, a filter change, the sample panel and a map window; recall@10 of the
  index against exact search; page load is bench/ui_latency.py's (a browser).

For each size it prints every phase's wall time and peak RSS (ru_maxrss: memory-mapped pages a phase touched
count too), then the growth exponents between the two largest sizes, against the goals for 12.8 M rows on a
2-core, 24 GB machine. Prints; never fails on time.
"""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

BATCH = ("import", "map", "semdedup", "preset_export")
QUERIES = ("search", "search_index_only", "gallery_page", "filter_change", "sample_panel", "map_window")
GOALS_12M = {"import": 15 * 60, "map": 30 * 60, "semdedup": 30 * 60, "preset_export": 2 * 60}


def peak_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def phase(name: str, n: int, work: Path, repeats: int) -> dict:
    """Run one phase on the pool and workspace under ``work`` (in a child process); its wall time and peak."""
    from indexer.store import Workspace
    pool, root = work / "pool", work / "ws"
    t0 = time.perf_counter()
    out: dict = {}
    if name == "pool":
        from bench.import_throughput import write_pool
        if not pool.exists():
            write_pool(pool, n, 250_000, 512, keys=("b32",))  # 2 KB a row: 26 GB at 12.8 M
    elif name == "import":
        from bench.engine_compare import random_checkpoint
        from curation.pipeline import run_stage
        from indexer.importer import ImportConfig
        from indexer.models import ModelSpec
        spec = ModelSpec(checkpoint=str(random_checkpoint("ViT-B-32", work)))
        shutil.rmtree(root, ignore_errors=True)
        report = run_stage("import", root, ImportConfig("datacomp", str(pool), spec, embeddings="b32", progress=False))
        out = {k: report.get(k) for k in ("rows_s", "compact_s", "index_s")}
    elif name == "map":
        from curation.structure.map import MapConfig, run
        with Workspace(root) as ws:
            out = {"times": run(ws, MapConfig()).get("times")}
    elif name == "semdedup":
        from curation.structure.semdedup import DEFAULT_EPS, semdedup
        with Workspace(root) as ws:
            semdedup(ws, progress=False)
            wall = time.perf_counter() - t0
            out["planted_recall"] = planted_recall(ws, pool, DEFAULT_EPS)
        out["wall_s"] = round(wall, 2)  # the check above is the bench's, not the stage's
    elif name == "preset_export":
        from curation.export.export import ExportConfig
        from curation.export.export import run as export
        from curation.export.select import SelectionRule, save_selection
        shutil.rmtree(work / "subset", ignore_errors=True)
        with Workspace(root) as ws:
            ws.execute("DELETE FROM selection_members WHERE name = 'top30'")
            ws.execute("DELETE FROM selections WHERE name = 'top30'")
            save_selection(ws, SelectionRule("top30", preset="datacomp-clip-score", drop_duplicates=False,
                                             labels="any"))
            out["kept"] = export(ws, ExportConfig("top30", str(work / "subset"), format="datacomp-subset",
                                                  progress=False))["samples"]
    elif name == "serve":
        out = serve(n, root, repeats)
    out.setdefault("wall_s", round(time.perf_counter() - t0, 2))
    out.setdefault("peak_gb", peak_gb())
    return out


def planted_recall(ws, pool: Path, eps: float) -> float:
    """Of the pool's planted near-copies (bench/import_throughput.py's ``clustered``: a row that is the row
    before it plus a little noise, cosine about 0.9996; two rows of one centre are about 0.89 apart), the
    share semdedup found: one member of the pair at ``max_sim >= 1 - eps``. Pairs that k-means put in two
    clusters are missed by design (``--probes`` finds them); the rest measures the cells."""
    frame = ws.numpy("""SELECT CAST('0x' || substr(s.uid, 17) AS UBIGINT) AS row, coalesce(d.max_sim, -1) AS max_sim
                        FROM semdedup d JOIN samples s ON s.id = d.sample_id""")
    max_sim = np.full(int(frame["row"].max()) + 1, -1.0)
    max_sim[np.asarray(frame["row"], np.int64)] = frame["max_sim"]
    found = planted = start = 0
    for path in sorted((pool / "metadata").glob("*.npz")):
        v = np.load(path)["b32_img"].astype(np.float32)
        copies = np.flatnonzero((v * np.roll(v, 1, axis=0)).sum(1) > 0.99)
        a, b = start + copies, start + (copies - 1) % len(v)
        planted += len(copies)
        found += int((np.fmax(max_sim[a], max_sim[b]) >= 1 - eps).sum())
        start += len(v)
    return round(found / max(planted, 1), 4)


def serve(n: int, root: Path, repeats: int) -> dict:
    """The interactive queries on the workspace opened read-only, as a server opens it."""
    from app.handlers import Handlers
    from bench.recall import recall_at_10
    from bench.ui_latency import timed
    from curation.views.filter import default_source
    from indexer.store import Workspace
    from indexer.vectors import EmbeddingStore, read_index, search
    ws = Workspace(root, read_only=True)
    t0 = time.perf_counter()
    h = Handlers(ws)
    source = default_source(ws)
    out: dict = {"open_s": round(time.perf_counter() - t0, 2), "source": source}
    rng = np.random.default_rng(1)
    clusters = h.clusters()
    values = h.filter_index.values(source)
    thresholds = iter(np.quantile(values, rng.uniform(0.1, 0.9, 10 * repeats)))
    words = ["a dog on a beach", "a red chair by a window", "two people walking in the snow", "a bowl of soup",
             "a city street at night"]
    queries = iter(words * (4 * repeats))
    out["search"] = timed(lambda: h.search_text(next(queries)), repeats)
    index, stored = read_index(ws.index_path), EmbeddingStore(ws, "image").load()
    probe = iter(np.asarray(stored[rng.integers(0, n, 20 * repeats)], np.float32))
    out["search_index_only"] = timed(lambda: search(index, next(probe)[None, :], 48, vectors=stored), repeats)
    out["gallery_page"] = timed(lambda: h.browse(str(rng.choice(clusters)), int(rng.integers(0, 5)), source=source),
                                repeats)
    out["filter_change"] = timed(lambda: h.filter(source, float(next(thresholds))), repeats)
    out["sample_panel"] = timed(lambda: h.sample(int(rng.integers(0, n))), repeats)
    atlas = h.atlas
    x0, x1, y0, y1 = atlas.extent

    def window():
        w, hgt = (x1 - x0) * rng.uniform(0.05, 0.5), (y1 - y0) * rng.uniform(0.05, 0.5)
        left, bottom = x0 + rng.uniform(0, x1 - x0 - w), y0 + rng.uniform(0, y1 - y0 - hgt)
        atlas.view((left, left + w, bottom, bottom + hgt))
    out["map_window"] = timed(window, repeats)
    out["peak_gb"] = peak_gb()  # before the recall check, which reads every vector in float32
    status = {line.split(":")[0]: int(line.split()[1]) / 2**20 for line in open("/proc/self/status")
              if line.startswith(("RssAnon", "RssFile"))}
    out["rss_anon_gb"], out["rss_file_gb"] = round(status["RssAnon"], 2), round(status["RssFile"], 2)
    out["recall_image"], out["recall_text"], out["recall_text_gap"] = recall_at_10(ws, h)
    ws.close()
    return out


def exponent(a: tuple[int, float], b: tuple[int, float]) -> float:
    (n0, v0), (n1, v1) = a, b
    return float(np.log(v1 / v0) / np.log(n1 / n0)) if v0 > 0 and v1 > 0 else float("nan")


def one_size(n: int, repeats: int, work: Path) -> dict | None:
    out = {"n": n}
    for name in ("pool",) + BATCH + ("serve",):
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--phase", name, "--dir", str(work),
                               "--repeats", str(repeats)], capture_output=True, text=True, check=False)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{n:,} rows, {name}: failed ({proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
            return None
        out[name] = json.loads(line[7:])
        print(f"{n:,} rows, {name}: {out[name]['wall_s']:.1f} s, peak {out[name]['peak_gb']:.2f} GB", flush=True)
    return out


def report(rows: list[dict]) -> None:
    print(f"\n{'rows':>10} " + " ".join(f"{b + ' s':>16}" for b in BATCH) + " " +
          " ".join(f"{q + ' p95':>20}" for q in QUERIES) + f" {'recall img/txt/gap':>20} {'peak GB batch/serve':>20}")
    for r in rows:
        s = r["serve"]
        print(f"{r['n']:>10,} " + " ".join(f"{r[b]['wall_s']:>16.1f}" for b in BATCH) + " " +
              " ".join(f"{s[q]['p95_ms']:>17.1f} ms" for q in QUERIES) +
              f" {s['recall_image']:>8.3f}/{s['recall_text']:.3f}/{s['recall_text_gap']:.3f}"
              f" {max(r[b]['peak_gb'] for b in BATCH):>8.2f}/{s['peak_gb']:.2f}"
              f" (server's own {s['rss_anon_gb']:.2f}, mapped files {s['rss_file_gb']:.2f})")
    last = rows[-1]
    if len(rows) >= 2:
        prev = rows[-2]
        print(f"\ngrowth exponents between {prev['n']:,} and {last['n']:,} rows (goal: batch <= 1.1, queries <= 0.2):")
        for b in BATCH:
            e = exponent((prev["n"], prev[b]["wall_s"]), (last["n"], last[b]["wall_s"]))
            print(f"  {b:<18} {e:5.2f}  {'ok' if e <= 1.1 else 'MISSED'}")
        for q in QUERIES:
            e = exponent((prev["n"], prev["serve"][q]["p95_ms"]), (last["n"], last["serve"][q]["p95_ms"]))
            print(f"  {q + ' p95':<18} {e:5.2f}  {'ok' if e <= 0.2 else 'MISSED'}")
    s = last["serve"]
    print(f"\nagainst the 12.8 M goals, at {last['n']:,} rows:")
    for b in BATCH:
        print(f"  {b:<14} {last[b]['wall_s'] / 60:6.1f} min (goal at 12.8 M <= {GOALS_12M[b] / 60:.0f} min)")
    print(f"  batch peak {max(last[b]['peak_gb'] for b in BATCH):.2f} GB (goal <= 16), server peak {s['peak_gb']:.2f} GB "
          f"(goal <= 6), its own memory {s['rss_anon_gb']:.2f} GB")
    print(f"  text search p95 {s['search']['p95_ms']:.1f} ms (goal <= 150; the index part alone "
          f"{s['search_index_only']['p95_ms']:.1f} ms); gallery/filter/panel/map window p95 "
          + "/".join(f"{s[q]['p95_ms']:.1f}" for q in QUERIES[2:]) + " ms (goal <= 100)")
    print(f"  recall@10 images {s['recall_image']:.3f}, text with a modality gap {s['recall_text_gap']:.3f}, "
          f"random-model text {s['recall_text']:.3f} (goal >= 0.95)")


def main(sizes: list[int], repeats: int, keep: str | None) -> None:
    from bench.import_throughput import cpu
    print(f"CPU: {cpu()}; DataComp-layout pools of {', '.join(f'{n:,}' for n in sizes)} rows")
    rows = []
    for n in sizes:
        work = Path(keep) / f"datacomp-{n}" if keep else Path(tempfile.mkdtemp(prefix=f"altlens-growth-{n}-"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            row = one_size(n, repeats, work)
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
        if row is None:
            break
        rows.append(row)
        print(json.dumps(row), flush=True)
    if rows:
        report(rows)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", type=int, required=True)
    ap.add_argument("--phase", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    print("RESULT " + json.dumps(phase(args.phase, args.one, Path(args.dir), args.repeats)))
