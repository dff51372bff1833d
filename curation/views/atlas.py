"""The interactive map's data: a window of the map -> what the browser draws; a drawn region -> its samples.

``Atlas`` holds every mapped sample's coordinates in memory (16 bytes a point)
and answers a window (pan or zoom) in a few numpy passes:

* at most ``cap`` points go out (id, position, colour). Which points are shown is
  a fixed random rank, so zooming in only adds points and never reshuffles them.
  The hover card's thumbnail and alt-text are asked for one point at a time;
* when the window holds more than ``cap`` points, a density picture of all of
  them goes out too (:func:`curation.structure.mapview.density_image`), so a
  zoomed-out map still shows every sample without shipping them;
* cluster labels (top terms) for the largest clusters whose centre is in view,
  and a legend for the colouring.

``region`` answers a box or a lasso over *all* points, not just the ones on
screen, so a selection is the same whatever the zoom.
"""
from __future__ import annotations

import base64
import io
import re

import numpy as np

from curation.review.labels import current
from curation.structure.mapview import Colouring, cluster_colours, density_image, extent, map_frame, ramp
from curation.structure.summaries import cluster_table
from curation.views.filter import FilterIndex
from curation.views.glossary import SCORES
from indexer.schema import SOURCE_KINDS
from indexer.store import Workspace

POINT_CAP = 3000  # points sent for one window; beyond this the density picture shows the rest
LABEL_CAP = 20  # cluster labels drawn in one window
LABEL_COLOURS = {"good": (46, 160, 67), "bad": (214, 39, 40)}
COLOURINGS = {
    "cluster": "cluster (k-means on image embeddings)",
    "reward": "reward (active version)",
    **{kind: f"clip_score of the best {kind} caption" for kind in SOURCE_KINDS},
    "syn_minus_alt": "syn − alt: how much better the synthetic caption fits than the alt-text",
    "label": "your labels (latest per sample)",
}


MAX_CORNERS = 5_000


class AtlasError(ValueError):
    """A map request the atlas cannot answer; the message says what is allowed."""


def _hex(rgb: np.ndarray) -> list[str]:
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.int64)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]


def clean_term(text: str) -> str:
    """A caption word made safe to draw as a label (plotly reads a few tags in label text; captions are untrusted)."""
    return re.sub(r"[^\w\s'\-]", "", str(text))[:24]


class Atlas:
    """Every mapped sample's position, cluster and scores in memory; windows and regions in milliseconds."""

    def __init__(self, ws: Workspace, scores: FilterIndex | None = None):
        self.ws = ws
        frame = map_frame(ws)
        self.ids, self.x, self.y, self.cluster = frame["id"], frame["x"], frame["y"], frame["cluster"]
        self.reward = frame["reward"]
        self.rank = np.random.default_rng(0).permutation(len(self.ids))
        self.extent = extent(self.x, self.y)
        self._scores = scores
        k = int(self.cluster.max()) + 1
        self.palette = cluster_colours(k)
        sizes = np.bincount(self.cluster, minlength=k)
        with np.errstate(invalid="ignore"):
            self.centres = np.stack([np.bincount(self.cluster, self.x, k) / sizes,
                                     np.bincount(self.cluster, self.y, k) / sizes], axis=1)
        self.sizes = sizes
        self.terms = {row["cluster"]: [clean_term(t) for t in row["terms"][:2]] for row in cluster_table(ws)}

    # ------------------------------------------------------------ colourings
    def colouring(self, name: str) -> Colouring:
        """The per-sample colouring ``name`` (one of :data:`COLOURINGS`); labels are read fresh every time."""
        if name == "cluster":
            return Colouring("cluster", codes=self.cluster, palette=self.palette,
                             names=tuple(str(i) for i in range(len(self.palette))))
        if name == "reward":
            return Colouring.continuous("reward", self.reward)
        if name in SOURCE_KINDS:
            return Colouring.continuous(name, self._source(name))
        if name == "syn_minus_alt":
            return Colouring.continuous(name, self._source("syn") - self._source("alt"))
        if name == "label":
            latest = current(self.ws)
            values = list(LABEL_COLOURS)
            codes = np.full(len(self.ids), -1, dtype=np.int64)
            if latest:
                labelled = np.fromiter(latest, dtype=np.int64)
                rows = np.searchsorted(self.ids, labelled)
                ok = (rows < len(self.ids)) & (self.ids[np.minimum(rows, len(self.ids) - 1)] == labelled)
                codes[rows[ok]] = [values.index(latest[int(i)]) if latest[int(i)] in values else -1
                                   for i in labelled[ok]]
            return Colouring("label", codes=codes, palette=np.array(list(LABEL_COLOURS.values()), dtype=np.uint8),
                             names=tuple(values))
        raise AtlasError(f"unknown colouring {name!r}; allowed: {', '.join(COLOURINGS)}")

    def _source(self, kind: str) -> np.ndarray:
        if self._scores is None:
            self._scores = FilterIndex(self.ws)
        values = np.full(len(self.ids), np.nan)
        rows = np.searchsorted(self._scores.ids, self.ids)
        ok = rows < len(self._scores.ids)
        ok[ok] = self._scores.ids[rows[ok]] == self.ids[ok]
        values[ok] = self._scores.score(kind)[rows[ok]]
        return values

    def legend(self, colouring: Colouring) -> dict:
        """What the browser draws beside the map: categories with colours, or a colour bar with its range."""
        if colouring.codes is not None:
            if colouring.name == "cluster":
                return {"kind": "categories", "title": COLOURINGS["cluster"], "items": []}  # labels sit on the map
            return {"kind": "categories", "title": COLOURINGS[colouring.name],
                    "items": [[n, c] for n, c in zip(colouring.names, _hex(colouring.palette), strict=True)]
                    + [["none", _hex(np.array([[200, 200, 200]]))[0]]]}
        meaning = SCORES.get("reward" if colouring.name == "reward" else "clip_score")
        return {"kind": "ramp", "title": COLOURINGS[colouring.name], "lo": round(colouring.lo, 4),
                "hi": round(colouring.hi, 4), "stops": _hex(ramp(np.linspace(0, 1, 5))),
                "better": (meaning[2] if meaning and colouring.name != "syn_minus_alt"
                           else "higher: the alt-text fits worse than the synthetic caption"),
                "none": "grey: not scored"}

    # ------------------------------------------------------------ windows
    def window(self, box=None) -> tuple[float, float, float, float]:
        """A checked (x0, x1, y0, y1); None means the whole map."""
        if box is None:
            return self.extent
        try:
            x0, x1, y0, y1 = (float(v) for v in box)
        except (TypeError, ValueError, OverflowError):
            raise AtlasError("a window is four numbers: x0, x1, y0, y1") from None
        if not all(np.isfinite([x0, x1, y0, y1])) or x1 <= x0 or y1 <= y0:
            raise AtlasError("a window needs x0 < x1 and y0 < y1")
        return x0, x1, y0, y1

    def view(self, box=None, colour: str = "cluster", width: int = 900, height: int = 640,
             cap: int = POINT_CAP) -> dict:
        """Everything the browser draws for one window: points (at most ``cap``), a density picture when there
        are more, cluster labels and the legend."""
        x0, x1, y0, y1 = self.window(box)
        colouring = self.colouring(colour)
        inside = np.flatnonzero((self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1))
        shown = inside
        if len(inside) > cap:
            shown = inside[np.argpartition(self.rank[inside], cap)[:cap]]
        shown = np.sort(shown)
        out = {"box": [x0, x1, y0, y1], "in_view": int(len(inside)), "shown": int(len(shown)),
               "total": int(len(self.ids)), "colour": colour, "legend": self.legend(colouring),
               "points": self._points(shown, colouring), "density": None, "labels": self._labels(x0, x1, y0, y1)}
        if len(inside) > len(shown):
            w, h = max(8, min(int(width) // 2, 480)), max(8, min(int(height) // 2, 360))
            picture = density_image(self.x, self.y, inside, colouring, (x0, x1, y0, y1), w, h)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            out["density"] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return out

    def _points(self, rows: np.ndarray, colouring: Colouring) -> dict:
        return {"id": self.ids[rows].tolist(), "x": np.round(self.x[rows], 5).tolist(),
                "y": np.round(self.y[rows], 5).tolist(), "colour": _hex(colouring.rgb(rows))}

    def hover(self, sample_id: int) -> dict:
        """What the hover card shows for one point: thumbnail path, alt-text (cut to 200 characters), cluster and
        active reward. Asked for when the pointer rests on a point, so windows stay small."""
        row = int(np.searchsorted(self.ids, int(sample_id)))
        if row >= len(self.ids) or self.ids[row] != int(sample_id):
            raise AtlasError(f"sample {sample_id} is not on the map")
        found = self.ws.rows("""SELECT s.thumb, (SELECT arg_min(c.text, c.idx) FROM captions c
                                 WHERE c.sample_id = s.id AND c.source_kind = 'alt') FROM samples s WHERE s.id = ?""",
                             [int(sample_id)])
        thumb, alt = found[0] if found else (None, None)
        reward = self.reward[row]
        return {"id": int(sample_id), "thumb": thumb, "alt": (alt or "")[:200], "cluster": int(self.cluster[row]),
                "reward": None if np.isnan(reward) else round(float(reward), 3)}

    def _labels(self, x0, x1, y0, y1) -> list[dict]:
        cx, cy = self.centres[:, 0], self.centres[:, 1]
        visible = np.flatnonzero((cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1) & (self.sizes > 0))
        visible = visible[np.argsort(-self.sizes[visible], kind="stable")][:LABEL_CAP]
        return [{"cluster": int(c), "x": float(cx[c]), "y": float(cy[c]),
                 "text": f"{c}: " + " ".join(self.terms.get(int(c), [])) if self.terms.get(int(c)) else str(c)}
                for c in visible]

    # ------------------------------------------------------------ regions
    def region(self, box=None, lasso=None) -> np.ndarray:
        """Ids of every mapped sample inside a box (x0, x1, y0, y1) or a lasso ({"x": [...], "y": [...]}),
        in id order. Points on the outline count as inside for a box."""
        if lasso is not None:
            try:
                px = np.asarray(lasso["x"], dtype=np.float64)
                py = np.asarray(lasso["y"], dtype=np.float64)
            except (TypeError, KeyError, ValueError, OverflowError):
                raise AtlasError("a lasso is {'x': [...], 'y': [...]} in map coordinates") from None
            if len(px) < 3 or len(px) != len(py) or not np.isfinite(px).all() or not np.isfinite(py).all():
                raise AtlasError("a lasso needs at least three finite corners")
            if len(px) > MAX_CORNERS:  # a hand-drawn lasso has hundreds; each corner costs a pass over the points
                raise AtlasError(f"a lasso has at most {MAX_CORNERS:,} corners, this one has {len(px):,}")
            near = np.flatnonzero((self.x >= px.min()) & (self.x <= px.max()) &
                                  (self.y >= py.min()) & (self.y <= py.max()))
            inside = np.zeros(len(near), dtype=bool)
            x, y = self.x[near], self.y[near]
            for i in range(len(px)):  # even-odd rule, one polygon edge at a time
                xa, ya, xb, yb = px[i - 1], py[i - 1], px[i], py[i]
                crosses = (ya > y) != (yb > y)
                with np.errstate(divide="ignore", invalid="ignore"):
                    at = xa + (y - ya) * (xb - xa) / (yb - ya)
                inside ^= crosses & (x < at)
            return self.ids[near[inside]]
        x0, x1, y0, y1 = self.window(box)
        return self.ids[(self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1)]


def region_summary(ids: np.ndarray, atlas: Atlas) -> str:
    """One line on a selected region: how many samples, from how many clusters, mean reward."""
    if not len(ids):
        return "nothing inside the region"
    rows = np.searchsorted(atlas.ids, ids)
    clusters = np.unique(atlas.cluster[rows])
    reward = atlas.reward[rows]
    mean = f", mean reward {np.nanmean(reward):.3f}" if np.isfinite(reward).any() else ""
    return f"{len(ids)} samples from {len(clusters)} cluster(s){mean}"


__all__ = ["Atlas", "AtlasError", "COLOURINGS", "POINT_CAP", "region_summary"]
