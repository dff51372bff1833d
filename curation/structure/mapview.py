"""The map picture: 2-D coordinates of every sample -> a density image rendered on the server, plus a few sampled points.

The browser never receives all points (FiftyOne's old plot froze at ~30k by
shipping them as JSON). Points are binned with numpy into a grid. A bin's
brightness is its log count, and its colour is its dominant cluster or its mean
reward. At most a few thousand sampled points go out for hover and click.
"""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from curation.scores.rewards import active_reward
from indexer.store import Workspace

COLOR_BY = ("cluster", "reward")


def has_map(ws: Workspace) -> bool:
    """Whether ``altlens map`` has laid the workspace out."""
    return ws.get_meta("map") is not None


def map_frame(ws: Workspace) -> dict[str, np.ndarray]:
    """Coordinates, cluster and active reward of every mapped sample, as column arrays."""
    version = active_reward(ws)
    table = ws.numpy("""SELECT m.sample_id, m.x, m.y, k.cluster, r.value FROM map_coords m
                        JOIN clusters k ON k.sample_id = m.sample_id
                        LEFT JOIN rewards r ON r.sample_id = m.sample_id AND r.version = ?""", [version or -1])
    if not len(table["sample_id"]):
        raise ValueError("no map yet; run 'altlens map' first")
    reward = table["value"]
    reward = np.asarray(reward.filled(np.nan) if hasattr(reward, "filled") else reward, dtype=np.float64)
    return {"id": np.asarray(table["sample_id"]), "x": np.asarray(table["x"], dtype=np.float64),
            "y": np.asarray(table["y"], dtype=np.float64), "cluster": np.asarray(table["cluster"]), "reward": reward}


def cluster_colours(k: int) -> np.ndarray:
    """``k`` well-separated colours (golden-angle hues), as uint8 RGB."""
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)]
                     for i in range(max(k, 1))], dtype=np.uint8)


def _bins(frame: dict, width: int, height: int, pad: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    x, y = frame["x"], frame["y"]
    span_x, span_y = np.ptp(x) or 1.0, np.ptp(y) or 1.0
    bx = np.clip(((x - x.min()) / span_x * (1 - 2 * pad) + pad) * (width - 1), 0, width - 1).astype(np.int64)
    by = np.clip(((y.max() - y) / span_y * (1 - 2 * pad) + pad) * (height - 1), 0, height - 1).astype(np.int64)
    return bx, by


def render_map(frame: dict, color_by: str = "cluster", width: int = 720, height: int = 540) -> Image.Image:
    """Density image of all points, coloured by dominant cluster or by mean reward (red low, green high)."""
    if color_by not in COLOR_BY:
        raise ValueError(f"unknown colouring {color_by!r}; allowed: {', '.join(COLOR_BY)}")
    bx, by = _bins(frame, width, height)
    flat = by * width + bx
    counts = np.bincount(flat, minlength=width * height).astype(np.float64)
    if color_by == "cluster":
        k = int(frame["cluster"].max()) + 1
        per = np.zeros((width * height, k), dtype=np.int32)
        np.add.at(per, (flat, frame["cluster"]), 1)
        rgb = cluster_colours(k)[per.argmax(1)].astype(np.float64)
    else:
        reward = np.nan_to_num(frame["reward"], nan=np.nanmin(frame["reward"]) if np.isfinite(frame["reward"]).any() else 0)
        sums = np.bincount(flat, weights=reward, minlength=width * height)
        mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        lo, hi = np.percentile(reward, [2, 98]) if len(reward) else (0, 1)
        t = np.clip((mean - lo) / ((hi - lo) or 1.0), 0, 1)[:, None]
        rgb = (1 - t) * np.array([220, 60, 50]) + t * np.array([40, 180, 90])
    counts, rgb = _splat(counts, rgb, width, height, radius=2 if len(flat) < 20_000 else 1 if len(flat) < 200_000 else 0)
    alpha = np.log1p(counts) / np.log1p(counts.max() or 1)
    alpha = np.where(counts > 0, 0.45 + 0.55 * alpha, 0.0)[:, None]
    background = np.array([250, 250, 248], dtype=np.float64)
    pixels = background * (1 - alpha) + rgb * alpha
    return Image.fromarray(pixels.reshape(height, width, 3).astype(np.uint8), "RGB")


def _splat(counts: np.ndarray, rgb: np.ndarray, width: int, height: int, radius: int):
    """Spread each bin over a (2r+1)^2 square so sparse maps stay visible; colour follows the densest bin."""
    if radius <= 0:
        return counts, rgb
    grid = counts.reshape(height, width)
    colours = rgb.reshape(height, width, 3)
    out_counts = np.zeros_like(grid)
    best = np.zeros_like(grid)
    out_rgb = np.zeros_like(colours)
    padded_c = np.pad(grid, radius)
    padded_rgb = np.pad(colours, ((radius, radius), (radius, radius), (0, 0)))
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            shifted = padded_c[dy:dy + height, dx:dx + width]
            out_counts += shifted
            take = shifted > best
            best = np.where(take, shifted, best)
            out_rgb[take] = padded_rgb[dy:dy + height, dx:dx + width][take]
    return out_counts.reshape(-1), out_rgb.reshape(-1, 3)


def sample_points(frame: dict, n: int = 2000, seed: int = 0, width: int = 720, height: int = 540) -> list[dict]:
    """At most ``n`` points (stratified by cluster) with their pixel position on the rendered map."""
    bx, by = _bins(frame, width, height)
    rng = np.random.default_rng(seed)
    total = len(frame["id"])
    if total <= n:
        picked = np.arange(total)
    else:
        picked = np.sort(rng.choice(total, size=n, replace=False))
    return [{"id": int(frame["id"][i]), "px": int(bx[i]), "py": int(by[i]), "cluster": int(frame["cluster"][i]),
             "reward": None if np.isnan(frame["reward"][i]) else round(float(frame["reward"][i]), 4)}
            for i in picked]
