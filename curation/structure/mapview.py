"""Map pictures: 2-D coordinates of samples -> a density image of any window of the map, in any colouring.

The browser never receives all points (FiftyOne's old plot froze at ~30k by
shipping them as JSON). Points are binned with numpy into a pixel grid. A bin's
opacity is its log count; its colour is the bin's most common category
(clusters, labels) or its mean value on a continuous score, through one ramp.
:mod:`curation.views.atlas` draws the interactive map's zoomed-out layer with
:func:`density_image`; ``altlens map`` and the Overview draw the whole map with
:func:`render_map`.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from curation.scores.rewards import active_reward
from indexer.store import Workspace

COLOR_BY = ("cluster", "reward")
BACKGROUND = np.array([250, 250, 248], dtype=np.float64)
NOT_SCORED = (200, 200, 200)
# a viridis-like ramp (dark blue = low, yellow = high): ordered in lightness, readable by colour-blind curators
RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def has_map(ws: Workspace) -> bool:
    """Whether ``altlens map`` has laid the workspace out."""
    return ws.get_meta("map") is not None


def map_frame(ws: Workspace) -> dict[str, np.ndarray]:
    """Coordinates, cluster and active reward of every mapped sample, as column arrays ordered by id."""
    version = active_reward(ws)
    table = ws.numpy("""SELECT m.sample_id, m.x, m.y, k.cluster, r.value FROM map_coords m
                        JOIN clusters k ON k.sample_id = m.sample_id
                        LEFT JOIN rewards r ON r.sample_id = m.sample_id AND r.version = ?
                        ORDER BY m.sample_id""", [version or -1])
    if not len(table["sample_id"]):
        raise ValueError("no map yet; run 'altlens map' first")
    return {"id": np.asarray(table["sample_id"], dtype=np.int64), "x": np.asarray(table["x"], dtype=np.float64),
            "y": np.asarray(table["y"], dtype=np.float64), "cluster": np.asarray(table["cluster"], dtype=np.int64),
            "reward": as_float(table["value"])}


def as_float(column) -> np.ndarray:
    """A numeric column with NULLs (a masked array from DuckDB) as float64 with NaN."""
    return np.asarray(column.filled(np.nan) if hasattr(column, "filled") else column, dtype=np.float64)


def cluster_colours(k: int) -> np.ndarray:
    """``k`` well-separated colours (golden-angle hues), as uint8 RGB."""
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)]
                     for i in range(max(k, 1))], dtype=np.uint8)


def ramp(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB float rows along :data:`RAMP`."""
    t = np.clip(np.nan_to_num(np.asarray(t, dtype=np.float64), nan=0.0), 0, 1) * (len(RAMP) - 1)
    lo = np.minimum(t.astype(np.int64), len(RAMP) - 2)
    frac = (t - lo)[..., None]
    return RAMP[lo] * (1 - frac) + RAMP[lo + 1] * frac


@dataclass(frozen=True)
class Colouring:
    """Per-sample values to colour by: ``codes`` into ``palette`` (categories) or ``values`` scaled lo..hi."""

    name: str
    codes: np.ndarray | None = None  # int category per sample (-1: none)
    palette: np.ndarray | None = None  # uint8 RGB per category
    names: tuple[str, ...] = ()
    values: np.ndarray | None = None  # float per sample, NaN: not scored
    lo: float = 0.0
    hi: float = 1.0

    @classmethod
    def continuous(cls, name: str, values: np.ndarray) -> Colouring:
        finite = values[np.isfinite(values)]
        lo, hi = (np.percentile(finite, [2, 98]) if len(finite) else (0.0, 1.0))
        return cls(name, values=values, lo=float(lo), hi=float(hi) if hi > lo else float(lo) + 1.0)

    def rgb(self, rows: np.ndarray) -> np.ndarray:
        """RGB float rows for the samples at ``rows``."""
        if self.codes is not None:
            codes = self.codes[rows]
            out = self.palette[np.maximum(codes, 0)].astype(np.float64)
            out[codes < 0] = NOT_SCORED
            return out
        values = self.values[rows]
        out = ramp((values - self.lo) / (self.hi - self.lo))
        out[~np.isfinite(values)] = NOT_SCORED
        return out


def density_image(x: np.ndarray, y: np.ndarray, rows: np.ndarray, colouring: Colouring,
                  box: tuple[float, float, float, float], width: int, height: int) -> Image.Image:
    """The points ``rows`` (indexes into x/y) binned into a width x height RGBA picture of ``box``
    (x0, x1, y0, y1; y grows upwards). Empty bins are transparent."""
    x0, x1, y0, y1 = box
    bx = np.clip(((x[rows] - x0) / ((x1 - x0) or 1.0) * width).astype(np.int64), 0, width - 1)
    by = np.clip(((y1 - y[rows]) / ((y1 - y0) or 1.0) * height).astype(np.int64), 0, height - 1)
    flat = by * width + bx
    counts = np.bincount(flat, minlength=width * height).astype(np.float64)
    rgb = np.zeros((width * height, 3))
    if colouring.codes is not None:
        # the most common category per bin: sort by (bin, category), count runs, keep each bin's longest run
        codes = colouring.codes[rows]
        key = flat * (int(codes.max(initial=0)) + 2) + (codes + 1)
        keys, run = np.unique(key, return_counts=True)
        bins = keys // (int(codes.max(initial=0)) + 2)
        order = np.lexsort((run, bins))
        last = np.r_[bins[order][1:] != bins[order][:-1], True]
        winner = order[last]
        cat = keys[winner] % (int(codes.max(initial=0)) + 2) - 1
        colours = colouring.palette[np.maximum(cat, 0)].astype(np.float64)
        colours[cat < 0] = NOT_SCORED
        rgb[bins[winner]] = colours
    else:
        values = colouring.values[rows]
        scored = np.isfinite(values)
        sums = np.bincount(flat[scored], weights=values[scored], minlength=width * height)
        n = np.bincount(flat[scored], minlength=width * height)
        mean = np.divide(sums, n, out=np.full(width * height, np.nan), where=n > 0)
        rgb = ramp((mean - colouring.lo) / (colouring.hi - colouring.lo))
        rgb[n == 0] = NOT_SCORED
    alpha = np.log1p(counts) / np.log1p(counts.max() or 1)
    alpha = np.where(counts > 0, 0.45 + 0.55 * alpha, 0.0)
    pixels = np.concatenate([rgb, 255 * alpha[:, None]], axis=1)
    return Image.fromarray(pixels.reshape(height, width, 4).astype(np.uint8), "RGBA")


def extent(x: np.ndarray, y: np.ndarray, pad: float = 0.03) -> tuple[float, float, float, float]:
    """The padded bounding box (x0, x1, y0, y1) of all points."""
    sx, sy = (np.ptp(x) or 1.0), (np.ptp(y) or 1.0)
    return (float(x.min() - pad * sx), float(x.max() + pad * sx), float(y.min() - pad * sy), float(y.max() + pad * sy))


def frame_colouring(frame: dict, color_by: str) -> Colouring:
    """The colourings ``altlens map`` can draw from a :func:`map_frame` alone."""
    if color_by not in COLOR_BY:
        raise ValueError(f"unknown colouring {color_by!r}; allowed: {', '.join(COLOR_BY)}")
    if color_by == "cluster":
        k = int(frame["cluster"].max()) + 1
        return Colouring("cluster", codes=frame["cluster"], palette=cluster_colours(k),
                         names=tuple(str(i) for i in range(k)))
    return Colouring.continuous("reward", frame["reward"])


def render_map(frame: dict, color_by: str = "cluster", width: int = 720, height: int = 540) -> Image.Image:
    """Density picture of every point on a light background, coloured by dominant cluster or mean reward."""
    colouring = frame_colouring(frame, color_by)
    image = density_image(frame["x"], frame["y"], np.arange(len(frame["x"])), colouring,
                          extent(frame["x"], frame["y"]), width, height)
    base = Image.new("RGBA", image.size, tuple(int(c) for c in BACKGROUND) + (255,))
    return Image.alpha_composite(base, image).convert("RGB")
