"""``altlens map``: clusters + 2-D map + cluster summaries + near-duplicates + map pictures, timed per step."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from curation.structure.clusters import ClusterConfig, cluster_and_layout
from curation.structure.duplicates import DupConfig, find_duplicates
from curation.structure.mapview import COLOR_BY, map_frame, render_map
from curation.structure.summaries import summarise_clusters
from indexer.files import atomic_write
from indexer.store import Workspace


@dataclass(frozen=True)
class MapConfig:
    """``altlens map`` settings: the clustering and layout, and the near-duplicate search (None skips it)."""

    layout: ClusterConfig = field(default_factory=ClusterConfig)
    duplicates: DupConfig | None = field(default_factory=DupConfig)


def run(ws: Workspace, cfg: MapConfig = MapConfig()) -> dict:
    """Cluster, lay out, summarise and de-duplicate ``ws``; write the map pictures; return counts and times."""
    report = cluster_and_layout(ws, cfg.layout)
    times = report["times"]
    t0 = time.perf_counter()
    report["summaries"] = summarise_clusters(ws)
    times["summaries_s"] = round(time.perf_counter() - t0, 2)
    if cfg.duplicates is not None:
        t0 = time.perf_counter()
        report["duplicates"] = find_duplicates(ws, cfg.duplicates)
        times["duplicates_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    frame = map_frame(ws)
    for color_by in COLOR_BY:
        image = render_map(frame, color_by)
        atomic_write(ws.root / "maps" / f"map_{color_by}.png", lambda fh, im=image: im.save(fh, format="PNG"))
    times["render_s"] = round(time.perf_counter() - t0, 2)
    return report
