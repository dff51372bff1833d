"""Pictures for the UI, rendered on the server with matplotlib (Agg): histograms and bar charts as PIL images."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

SOURCE_COLOURS = {"alt": "#d9822b", "syn": "#2b7bd9", "fused": "#2ba05a", "reward": "#7a4fbf"}


def _to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def histograms(values: dict[str, np.ndarray], threshold: float | None = None, title: str = "",
               size: tuple[float, float] = (6.4, 3.0), xlabel: str = "clip_score") -> Image.Image:
    """Overlaid score histograms, one per source, with an optional threshold line."""
    fig, ax = plt.subplots(figsize=size)
    finite = [v for v in values.values() if len(v)]
    lo = min((float(v.min()) for v in finite), default=0.0)
    hi = max((float(v.max()) for v in finite), default=1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    for name, v in values.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.55, label=f"{name} (n={len(v)})", color=SOURCE_COLOURS.get(name))
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=10)
    if finite:
        ax.legend(fontsize=8)
    return _to_image(fig)


def bars(shares: dict[str, float], title: str, colour: str = "#2b7bd9", size=(4.2, 2.8)) -> Image.Image:
    """One bar per value, labelled with its share."""
    fig, ax = plt.subplots(figsize=size)
    names, vals = list(shares), [shares[k] for k in shares]
    ax.bar(names, vals, color=colour)
    for i, v in enumerate(vals):
        ax.text(i, v + 0.01, f"{v:.0%}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    return _to_image(fig)


def curve(xs: list[float], series: dict[str, list[float]], title: str, xlabel: str, mark: float | None = None,
          size=(5.2, 2.8)) -> Image.Image:
    """Lines of shares against ``xs`` (e.g. what each eps removes), with an optional marked x."""
    fig, ax = plt.subplots(figsize=size)
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    if mark is not None:
        ax.axvline(mark, color="black", linestyle="--", linewidth=1, label=f"{xlabel} {mark:g}")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _to_image(fig)


class HistogramWithLine:
    """A histogram rendered once, with the threshold line drawn onto a copy per change (fast slider updates)."""

    def __init__(self, values: np.ndarray, name: str, size: tuple[float, float] = (6.4, 3.0), dpi: int = 100):
        fig, ax = plt.subplots(figsize=size, dpi=dpi)
        lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        ax.hist(values, bins=np.linspace(lo, hi if hi > lo else lo + 1, 41), color=SOURCE_COLOURS.get(name),
                alpha=0.8, label=f"{name} (n={len(values)})")
        ax.set_xlabel("score")
        ax.set_ylabel("samples")
        if len(values):
            ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.canvas.draw()
        width, height = fig.canvas.get_width_height()
        self._x0, _ = ax.transData.transform((lo, 0))
        self._x1, _ = ax.transData.transform((hi if hi > lo else lo + 1, 0))
        self._lo, self._hi = lo, hi if hi > lo else lo + 1
        box = ax.get_window_extent()
        self._top, self._bottom = height - box.y1, height - box.y0
        self.base = Image.frombuffer("RGBA", (width, height), fig.canvas.buffer_rgba()).convert("RGB")
        plt.close(fig)

    def with_threshold(self, threshold: float) -> Image.Image:
        from PIL import ImageDraw
        image = self.base.copy()
        frac = (min(max(threshold, self._lo), self._hi) - self._lo) / (self._hi - self._lo)
        x = self._x0 + frac * (self._x1 - self._x0)
        draw = ImageDraw.Draw(image)
        for y in range(int(self._top), int(self._bottom), 8):
            draw.line([(x, y), (x, min(y + 4, self._bottom))], fill=(0, 0, 0), width=2)
        draw.text((min(x + 4, image.width - 90), self._top + 2), f"keep >= {threshold:.3f}", fill=(0, 0, 0))
        return image


def fmt_reward(value) -> str:
    return f"{value:.3f}" if value is not None else "–"


def per_cluster_view(table: list[dict] | None) -> tuple:
    """A budget's per-cluster quotas as table rows and a bar picture of the share each cluster keeps."""
    if not table:
        return [], None
    rows = [[r["cluster"], r["candidates"], r["kept"], r["candidates"] - r["kept"],
             f"{r['kept'] / r['candidates']:.0%}" if r["candidates"] else "–"] for r in table]
    biggest = sorted(table, key=lambda r: -r["candidates"])[:24]
    picture = bars({f"c{r['cluster']} ({r['candidates']})": r["kept"] / max(r["candidates"], 1) for r in biggest},
                   "share each cluster keeps (largest clusters)")
    return rows, picture
