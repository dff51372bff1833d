"""UI handlers: validated inputs -> plain outputs (rows, file paths, PIL images). No layout, no heavy imports.

Every handler checks its inputs on the server (a client can send anything) and
raises :class:`UserError` with a clear message. The app turns that into a
notice; no stack trace reaches the browser.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass

from app import charts
from app.card import card_html, lost_text
from app.turns import Turns
from curation.review.labels import history as label_history
from curation.review.labels import labels_of
from curation.structure.defaults import DefaultsQuery, find_default, mined_axes, parse_axis, suggest
from curation.structure.mapview import COLOR_BY, has_map, map_frame, render_map
from curation.views.atlas import Atlas
from curation.views.filter import FilterIndex, score_name, score_values, stamp
from curation.views.gallery import (
    COMPARE_SORTS,
    PER_PAGE,
    SCORE_SOURCES,
    Scope,
    ViewError,
    cluster_ids,
    compare_rows,
    contrast_set_rows,
    gallery_page,
    imported_name,
    is_filter_source,
    overview,
    sample_detail,
    thumbs_of,
)
from curation.views.search import Searcher
from indexer.schema import SOURCE_KINDS
from indexer.store import Workspace

CAPTION_COLUMNS = ["source", "producer", "#", "caption", "clip_score", "cycle", "contrast", "exchange",
                   "claim that lost"]
MAX_QUERY = 500


class UserError(ValueError):
    """A bad value from the browser; its message is shown to the user."""


def as_int(value, name: str, lo: int = 0, hi: int = 10**12) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be a whole number, got {_shown(value)}") from None
    if not lo <= number <= hi:
        raise UserError(f"{name} must be between {lo} and {hi}, got {_shown(number)}")
    return number


def _shown(value) -> str:
    """A bad value as a message shows it: its repr, cut to 40 characters (a 400-digit number stays one line)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def from_page_box(value) -> int:
    """The page a page box asks for, counted from 0 (the box counts from 1, as "page 1 of N" does)."""
    return max(0, as_int(value or 1, "page", 1, 10**9) - 1)


def to_page_box(result: tuple) -> tuple:
    """A paging handler's (..., page) result with the page counted from 1, as the page box shows it."""
    return (*result[:-1], int(result[-1]) + 1)


def as_float(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be a finite number, got {_shown(value)}") from None
    if not math.isfinite(number):
        raise UserError(f"{name} must be finite, got {_shown(value)}")
    return number


def one_of(value, allowed, name: str) -> str:
    if value not in allowed:
        raise UserError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


PLACEHOLDER = Path(__file__).with_name("placeholder.png")  # the tile of a sample with no image at hand


@dataclass
class Handlers:
    """Read-only resources of one served workspace (module-level state holds nothing else)."""

    ws: Workspace

    def __post_init__(self):
        self._searcher: Searcher | None = None
        self._filter: FilterIndex | None = None
        self._filter_stamp: tuple | None = None
        self._atlas: Atlas | None = None
        self._overview: tuple | None = None
        self._histograms: dict[str, charts.HistogramWithLine] = {}
        self.thumbs = self.ws.thumbs_dir
        self.turns = Turns()  # heavy handlers, one at a time per browser session

    # ------------------------------------------------------------ helpers
    def thumb(self, rel: str | None) -> str | None:
        """Absolute path of a thumbnail inside the workspace thumbnail folder (nothing else is served but the
        placeholder of a sample with no image at hand, an imported row that was never downloaded)."""
        if not rel:
            return str(PLACEHOLDER)
        path = (self.thumbs / rel).resolve()
        return str(path) if path.is_relative_to(self.thumbs.resolve()) and path.is_file() else None

    def tiles(self, items: list[dict], label: str = "score") -> list[tuple[str, str]]:
        """(thumbnail, caption) per item: "#id · <label> <score> · <alignment label>"."""
        marks = labels_of(self.ws, [item["id"] for item in items])
        out = []
        for item in items:
            path = self.thumb(item["thumb"])  # resolved and checked once per tile
            if path:
                value = item.get("score")
                text = f"#{item['id']}" + (f" · {label} {value:.3f}" if value is not None else "")
                out.append((path, text + (f" · {marks[item['id']]}" if item["id"] in marks else "")))
        return out

    @property
    def searcher(self) -> Searcher:
        """The workspace's FAISS index and (loaded on first use) its embedding model."""
        if self._searcher is None:
            self._searcher = Searcher(self.ws)
        return self._searcher

    @property
    def model(self):
        return self.searcher.model

    def clusters(self) -> list[int]:
        return cluster_ids(self.ws)

    # ------------------------------------------------------------ overview
    def overview(self, color_by: str = "cluster"):
        """(counts, histogram, map picture, cluster table), computed once per state of the workspace: the
        first page load of a 1 M-sample workspace waited a second for it."""
        one_of(color_by, COLOR_BY, "map colouring")
        key = (color_by, self.ws.fingerprint())
        if self._overview is None or self._overview[0] != key:
            self._overview = (key, self._compute_overview(color_by))
        return self._overview[1]

    def _compute_overview(self, color_by: str):
        data = overview(self.ws)
        stats = data["stats"]
        counts = [[f"status: {k}", v] for k, v in stats["by_status"].items()]
        counts += [[f"source: {s['source']}", f"{s['seen']} seen, {s['ok']} ok, {s['failed']} failed"]
                   for s in stats["by_source"]]
        if stats.get("images_not_downloaded"):
            counts.append(["ok, no image at hand (imported, url kept)", stats["images_not_downloaded"]])
        counts += [[f"captions: {k}", v] for k, v in stats["captions"].items()]
        table = [[c["cluster"], c["size"], " ".join(c["terms"]), _fmt(c["reward"].get("alt", {}).get("mean")),
                  _fmt(c["reward"].get("syn", {}).get("mean")), _fmt(c["reward"].get("fused", {}).get("mean")),
                  _fmt(c["flagged_share"]), _fmt(c["diversity"].get("image")), _fmt(c["syn_vs_alt_diversity"])]
                 for c in data["clusters"]]
        hist = charts.histograms({s: score_values(self.ws, s) for s in SOURCE_KINDS},
                                 title="clip_score per caption source (best caption per sample)")
        return counts, hist, self.map_picture(color_by), table

    def map_picture(self, color_by: str = "cluster"):
        one_of(color_by, COLOR_BY, "map colouring")
        if not has_map(self.ws):
            return None
        return render_map(map_frame(self.ws), color_by)

    # ------------------------------------------------------------ browser
    def browse(self, cluster, page, source: str = "reward", min_score=None, order: str = "default",
               ids: list[int] | None = None):
        """A page of tiles; returns (tiles, tile ids, page text, page number)."""
        if not is_filter_source(source):
            one_of(source, SCORE_SOURCES, "score")
        if ids is not None and source not in SCORE_SOURCES:
            raise UserError(f"search results show a caption score or the reward, not {source}")
        cluster_id = None if cluster in (None, "", "all") else as_int(cluster, "cluster")
        if cluster_id is not None and cluster_id not in self.clusters():
            raise UserError(f"no cluster {cluster_id}; clusters are {self.clusters()[:20]}...")
        page = as_int(page or 0, "page", 0, 10**9)
        low = None if min_score in (None, "") else as_float(min_score, "minimum score")
        scope = Scope(cluster=cluster_id, ids=tuple(ids) if ids is not None else None, source=source,
                      min_score=low, order=one_of(order, ("default", "score_asc", "score_desc"), "order"))
        result = (gallery_page(self.ws, scope, page, PER_PAGE) if scope.ids is not None
                  else self.filter_index.page(scope, page, PER_PAGE))
        page = min(page, result["pages"] - 1)
        text = f"{result['total']} samples · page {page + 1} of {result['pages']}"
        return (self.tiles(result["items"], tile_label(source)), [i["id"] for i in result["items"] if self.thumb(i["thumb"])],
                text, page)

    def sample(self, sample_id):
        """The sample panel: the sample card (HTML), captions table, facts table, duplicate tiles."""
        try:
            detail = sample_detail(self.ws, as_int(sample_id, "sample id"))
        except ViewError as exc:
            raise UserError(str(exc)) from None
        history = label_history(self.ws, detail["id"])
        latest = {kind: next((h["value"] for h in reversed(history) if h["kind"] == kind), None)
                  for kind in ("alignment", "preference")}
        tags = list(dict.fromkeys(h["value"] for h in history if h["kind"] == "tag"))
        card = card_html(detail, self.thumb(detail["thumb"]), latest | {"tags": tags})
        captions, syn = collapse_repeats(detail["captions"])
        facts = [[k, _fmt(detail[k])] for k in
                 ("id", "uid", "source", "key", "width", "height", "url", "cluster", "reward", "agreement",
                  "caption_status")]
        if detail["image_state"]:
            facts.append(["image", detail["image_state"].replace("_", " ")])
        facts += [[f"{name} (imported)", _fmt(value)] for name, value in detail["imported"].items()]
        if syn:
            facts.append(["distinct synthetic captions", f"{len(set(syn))} of {len(syn)}"])
        dups = [(self.thumb(d["thumb"]), f"#{d['id']}" + (" (kept)" if d["representative"] else ""))
                for d in detail["duplicates"] if self.thumb(d["thumb"])]
        return card, captions, facts, dups

    # ------------------------------------------------------------ compare, filter
    def compare(self, sort: str, page=0):
        one_of(sort, tuple(COMPARE_SORTS), "sort")
        rows = compare_rows(self.ws, sort, limit=50, offset=50 * as_int(page or 0, "page", 0, 10**7))
        return [[r["id"], r["alt_text"], _fmt(r["alt"]), r["syn_text"], _fmt(r["syn"]), r["fused_text"],
                 _fmt(r["fused"]), _fmt(r["syn_minus_alt"]), _fmt(r["fused_minus_alt"])] for r in rows]

    def reset_scores(self) -> None:
        """Forget cached scores after a reward was written (the next filter reloads them)."""
        self._filter = None
        self._atlas = None
        self._histograms.clear()

    @property
    def filter_index(self) -> FilterIndex:
        """Per-sample scores in memory, loaded again when an index, scoring, reward or map run changed them."""
        now_stamp = stamp(self.ws)
        if self._filter is None or self._filter_stamp != now_stamp:
            self.reset_scores()
            self._filter, self._filter_stamp = FilterIndex(self.ws), now_stamp
        return self._filter

    @property
    def atlas(self) -> Atlas:
        """The interactive map's positions and scores (built on first use, dropped with the scores)."""
        scores = self.filter_index  # first: a changed workspace drops the old atlas
        if self._atlas is None:
            self._atlas = Atlas(self.ws, scores)
        return self._atlas

    def filter(self, source: str, threshold, page=0):
        """(histogram, counts, per-cluster table, dropped tiles, just-above tiles) for a threshold; the two
        strips show page ``page`` (12 tiles each)."""
        if not is_filter_source(source):
            one_of(source, SCORE_SOURCES, "score")
        t = as_float(threshold, "threshold")
        try:
            effect = self.filter_index.effect(source, t, page=as_int(page or 0, "page", 0, 10**6))
        except ViewError as exc:
            raise UserError(str(exc)) from None
        if source not in self._histograms:
            self._histograms[source] = charts.HistogramWithLine(self.filter_index.values(source), source)
        hist = self._histograms[source].with_threshold(t)
        total = effect["kept"] + effect["dropped"]
        counts = (f"kept {effect['kept']} · dropped {effect['dropped']} "
                  f"({effect['dropped'] / total:.1%} of {total})" if total else "no scored samples yet")
        per_cluster = [[c["cluster"], c["size"], c["dropped"], _fmt(c["dropped_share"])] for c in effect["per_cluster"]]
        return (hist, counts, per_cluster, self.tiles(effect["dropped_lowest_first"], tile_label(source)),
                self.tiles(effect["just_above"], tile_label(source)))

    def threshold_scale(self, source: str, last_source: str | None, threshold, share: float | None = None) -> dict:
        """The Filter threshold for ``source``: its range and a value; when the score changes (another
        source, or a new active reward: pass the ``share`` it dropped before), the value keeps the dropped
        share and ``note`` says so."""
        if not is_filter_source(source):
            one_of(source, SCORE_SOURCES, "score")
        t = as_float(threshold, "threshold")
        try:
            if share is None and last_source and last_source != source:
                share = self.filter_index.dropped_share(last_source, t)
            scale = self.filter_index.scale(source, share, t)
        except ViewError as exc:
            raise UserError(str(exc)) from None
        name = score_name(self.ws, source)
        note = f"{name} runs {scale['minimum']:g} to {scale['maximum']:g}"
        if share is not None and scale["moved"]:
            note += (f"; the threshold moved from {t:g} to {scale['value']:g} to keep dropping {share:.0%} "
                     "of scored samples")
        return scale | {"note": note}

    # ------------------------------------------------------------ defaults, search
    def defaults(self, concept: str, axis: str, source: str):
        try:
            name, values = parse_axis(axis or "")
            query = DefaultsQuery((concept or "").strip().lower(), name, values, source=source)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        result = find_default(self.ws, query, self.model)
        say = charts.bars(result["captions"]["shares"], f"captions say (H={result['captions']['entropy']})")
        show = charts.bars(result["images"]["shares"], f"images show (H={result['images']['entropy']})", "#2ba05a")
        flag = "DEFAULT BEHAVIOUR: captions default, images do not" if result["caption_default_only"] else "no caption-only default"
        summary = f"{result['finding']}. {flag}."
        cap_examples = self._example_tiles(result["caption_examples"])
        img_examples = self._example_tiles(result["image_examples"])
        return say, show, summary, cap_examples, img_examples

    def _example_tiles(self, examples: dict[str, list[int]]) -> list[tuple[str, str]]:
        ids = [(v, i) for v, items in examples.items() for i in items[:3]]
        thumbs = thumbs_of(self.ws, [i for _, i in ids])
        return [(self.thumb(thumbs.get(i)), f"{v} · #{i}") for v, i in ids if self.thumb(thumbs.get(i))]

    def contrast_sets(self) -> list[list]:
        """The mined contrast sets: word, its alternatives, captions decided, alternatives the images could not judge."""
        return [[r["word"], ", ".join(r["alternatives"]), int(r["decided"] or 0), int(r["dropped"])]
                for r in contrast_set_rows(self.ws)]

    def default_axis(self) -> str:
        """The workspace's largest mined axis as NAME=V1,V2,... (empty before contrast sets exist)."""
        axes = mined_axes(self.ws)
        return f"axis={','.join(axes[0])}" if axes else ""

    def suggestions(self, source: str):
        one_of(source, SOURCE_KINDS, "source")
        return [[s["concept"], s["axis"], s["caption_top"], _fmt(s["caption_top_share"]),
                 _fmt(s["image_top_share_of_it"]), _fmt(s["entropy_drop"]), "yes" if s["flag"] else ""]
                for s in suggest(self.ws, self.model, source=source, top=8)]

    def search_text(self, text: str, k=48):
        text = (text or "").strip()
        if not text:
            raise UserError("type something to search for")
        if len(text) > MAX_QUERY:
            raise UserError(f"the search text is longer than {MAX_QUERY} characters")
        hits = self.searcher.text(text, as_int(k, "k", 1, 500))
        return self.tiles(hits, "cosine"), [h["id"] for h in hits if self.thumb(h["thumb"])]

    def search_similar(self, sample_id, k=48):
        try:
            hits = self.searcher.similar(as_int(sample_id, "sample id"), as_int(k, "k", 1, 500))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return self.tiles(hits, "cosine"), [h["id"] for h in hits if self.thumb(h["thumb"])]


def tile_label(source: str) -> str:
    """The score name a tile shows: the reward, or which caption source's clip_score."""
    if imported_name(source) is not None:
        return imported_name(source)
    return "reward" if source == "reward" or source.startswith("reward@") else f"{source} clip_score"


def collapse_repeats(captions: list[dict]) -> tuple[list[list], list[str]]:
    """Caption table rows with identical captions of one source and producer shown once ("×4", every index
    listed), and the synthetic texts as written."""
    rows, first, syn = [], {}, []
    for c in captions:
        if c["source_kind"] == "syn":
            syn.append(c["text"])
        key = (c["source_kind"], c["producer"], c["text"])
        if key in first:
            row, count = first[key]
            first[key] = (row, count + 1)
            row[2] = f"{row[2]}, {c['idx']}"
            row[3] = f"{c['text']}  (×{count + 1})"
            continue
        row = [c["source_kind"], c["producer"], str(c["idx"]), c["text"], _fmt(c["clip_score"]), _fmt(c["cycle"]),
               _fmt(c["contrast"]), _fmt(c.get("exchange")), lost_text(c)]
        first[key] = (row, 1)
        rows.append(row)
    return rows, syn


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
