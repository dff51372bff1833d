"""``altlens map``: clusters + 2-D map + cluster summaries + near-duplicates + map pictures, timed per stage."""
from __future__ import annotations

import time

from curation.structure.clusters import MapConfig, run_map
from curation.structure.duplicates import DupConfig, find_duplicates
from curation.structure.mapview import map_frame, render_map
from curation.structure.summaries import summarise_clusters
from indexer.store import Workspace
from indexer.vectors import atomic_write


def build_structure(ws: Workspace, clusters: int | None = None, fit_max: int = 50_000,
                    dup_threshold: float = 0.85, duplicates: bool = True) -> dict:
    report = run_map(ws, MapConfig(clusters=clusters, fit_max=fit_max))
    times = report["times"]
    t0 = time.perf_counter()
    report["summaries"] = summarise_clusters(ws)
    times["summaries_s"] = round(time.perf_counter() - t0, 2)
    if duplicates:
        t0 = time.perf_counter()
        report["duplicates"] = find_duplicates(ws, DupConfig(threshold=dup_threshold))
        times["duplicates_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    frame = map_frame(ws)
    for color_by in ("cluster", "reward"):
        image = render_map(frame, color_by)
        atomic_write(ws.root / "maps" / f"map_{color_by}.png", lambda fh, im=image: im.save(fh, format="PNG"))
    times["render_s"] = round(time.perf_counter() - t0, 2)
    return report
