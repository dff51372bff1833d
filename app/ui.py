"""``build_app(workspace) -> gr.Blocks``: lays out the nine views and wires them to :mod:`app.handlers`
(reading) and :mod:`app.curate` (labels, reward, selections, export).

No logic lives here. Per-user state (the ids of the tiles on screen, the page)
sits in ``gr.State``. Captions reach the browser only as table cells and text
boxes, never interpolated into HTML.
"""
from __future__ import annotations

import contextlib
import functools
import logging

import gradio as gr

from app.atlas_ui import map_tab, prefetch_js
from app.card import CARD_CSS
from app.concepts_ui import concept_sender, concepts_tab
from app.curate import Curate
from app.curate_ui import (
    KEYS_JS,
    SamplePanel,
    _who,
    export_tab,
    legend,
    review_tab,
    selection_choices,
    selection_panel,
    threshold_slider,
)
from app.handlers import Handlers, UserError, from_page_box, to_page_box
from app.semantic_ui import semantic_tab
from curation.views.filter import imported_choices
from curation.views.gallery import COMPARE_SORTS, SCORE_SOURCES
from curation.views.glossary import CAPTION_SCORES
from indexer.errors import AltlensError
from indexer.store import Workspace

log = logging.getLogger(__name__)

CSS = """.tile-gallery img, .big-sample img { image-rendering: pixelated; }
.big-sample img { width: 100% !important; height: 100% !important; object-fit: contain; }
#overview-clusters th *, #overview-clusters td * { word-break: normal !important; overflow-wrap: normal !important; }
.tile-gallery .caption-label { white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
  max-width: calc(100% - 2 * var(--block-label-margin)) !important; overflow-wrap: anywhere; }""" + CARD_CSS


SERVER_LOCK_WAIT_S = 120.0  # a request waits this long for a CLI command to let go of the workspace


def friendly(fn):
    """A handler (a bound method of Handlers or Curate) run in one workspace session: the workspace is held for
    the request only, and expected problems become a visible message, never a stack trace."""
    ws = getattr(getattr(fn, "__self__", None), "ws", None)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with ws.session() if ws is not None else contextlib.nullcontext():
                return fn(*args, **kwargs)
        except (UserError, ValueError, LookupError, AltlensError) as exc:
            raise gr.Error(str(exc)[:500]) from None
        except gr.Error:  # an inner handler's message, already in plain words
            raise
        except Exception as exc:  # the request boundary: the log keeps the trace, the curator gets one line
            log.exception("%s failed", fn.__name__)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise gr.Error(f"that did not go through ({type(exc).__name__}{': ' + first if first else ''}); "
                           "try again") from None
    return wrapper


def build_app(workspace: str, read_only: bool = False) -> gr.Blocks:
    ws = Workspace(workspace, read_only=read_only, per_request=True, lock_wait=SERVER_LOCK_WAIT_S)
    h = Handlers(ws)
    c = Curate(h, read_only)
    clusters = ["all"] + [str(c) for c in h.clusters()]
    with gr.Blocks(title="altlens", analytics_enabled=False) as app:
        gr.Markdown("## altlens · curating image–caption pairs")
        tile_ids = gr.State([])
        with gr.Tabs() as tabs:
            with gr.Tab("Overview", id="overview"):
                overview = _overview_tab(h)
            with gr.Tab("Map", id="map"):
                map_tab(h, c, friendly)
            with gr.Tab("Browser", id="browser"):
                browser = _browser_tab(h, c, clusters, tile_ids)
            with gr.Tab("Compare captions", id="compare"):
                _compare_tab(h, c)
            with gr.Tab("Filter", id="filter") as filter_view:
                filters = _filter_tab(h, c)
            with gr.Tab("Defaults", id="defaults"):
                _defaults_tab(h, c)
            with gr.Tab("Search", id="search"):
                _search_tab(h, c)
            with gr.Tab("Semantic duplicates", id="semantic"):
                semantic_tab(c, friendly)
            with gr.Tab("Review", id="review"):
                review = review_tab(c, friendly, clusters, filters)
            with gr.Tab("Concepts", id="concepts") as concepts_view:
                concept_desk = concepts_tab(c, friendly, _who)
            with gr.Tab("Export", id="export") as export_view:
                export_selection = export_tab(c, friendly)
        app.load(friendly(h.overview), [overview["color_by"]],
                 [overview["counts"], overview["hist"], overview["map"], overview["clusters"]])

        def open_cluster(evt: gr.SelectData, table):
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            cluster = str(table.iloc[row, 0]) if hasattr(table, "iloc") else str(table[row][0])
            tiles, ids, text, page = friendly(h.browse)(cluster, 0)
            return gr.Tabs(selected="browser"), cluster, tiles, ids, text, page + 1  # the box counts from 1
        overview["clusters"].select(open_cluster, [overview["clusters"]],
                                    [tabs, browser["cluster"], browser["gallery"], tile_ids, browser["info"],
                                     browser["page"]])
        browser["review"].click(review["review_cluster"], [browser["cluster"]], [tabs, *review["outputs"]],
                                show_progress="hidden")
        app.load(None, None, None, js=KEYS_JS)
        app.load(None, None, None, js=prefetch_js())
        # a view shows its data when opened, and Export lists the selections saved meanwhile
        filter_view.select(filters["on_open"], [filters["source"], filters["threshold"], filters["scale_note"]],
                           [filters["threshold"], filters["scale_note"], filters["last_source"]]).then(
            filters["run"], [filters["source"], filters["threshold"]], filters["outputs"])
        concepts_view.select(concept_desk["refresh"], concept_desk["inputs"], concept_desk["outputs"])
        export_view.select(lambda current: selection_choices(c, current), [export_selection], [export_selection])
    app.altlens_workspace = ws
    app.altlens_handlers = h
    return app


def _overview_tab(h: Handlers) -> dict:
    with gr.Row():
        counts = gr.Dataframe(headers=["what", "count"], label="Samples", interactive=False, wrap=True)
        hist = gr.Image(label="clip_score histogram per caption source", type="pil", interactive=False)
    with gr.Row():
        with gr.Column(scale=3):
            color_by = gr.Radio(["cluster", "reward"], value="cluster", label="Colour the map by")
            picture = gr.Image(label="Map (density of every sample)", type="pil", interactive=False)
        with gr.Column(scale=4):
            clusters = gr.Dataframe(headers=["cluster", "size", "top terms", "alt", "syn", "fused", "flagged",
                                             "image diversity", "syn/alt diversity"],
                                    label="Clusters (click a row to browse it)", interactive=False, wrap=True,
                                    elem_id="overview-clusters",  # headers never break inside a word
                                    column_widths=["80px", "56px", "220px", "64px", "64px", "68px", "76px", "92px", "100px"])
    legend(("alt / syn / fused", "clip_score", "reward", "flagged", "image diversity", "syn/alt diversity"))
    color_by.change(friendly(h.map_picture), [color_by], [picture])
    return {"counts": counts, "hist": hist, "map": picture, "clusters": clusters, "color_by": color_by}


def _browser_tab(h: Handlers, c: Curate, clusters: list[str], tile_ids: gr.State) -> dict:
    with gr.Row():
        cluster = gr.Dropdown(clusters, value="all", label="Cluster", elem_id="browser-cluster")
        source = gr.Dropdown([*SCORE_SOURCES, *(v for _, v in imported_choices(h.ws))], value="reward",
                             label="Score shown")
        order = gr.Dropdown(["default", "score_asc", "score_desc"], value="default", label="Order")
        page = gr.Number(value=1, precision=0, label="Page", minimum=1)
    with gr.Row():
        prev_btn, next_btn, show_btn = gr.Button("◀ previous"), gr.Button("next ▶"), gr.Button("Show", variant="primary")
        review_btn = gr.Button("Review this cluster", elem_id="browser-review-cluster")
    info = gr.Textbox(label="In view", interactive=False)
    gallery = gr.Gallery(label="Samples", columns=8, height=560, allow_preview=False, object_fit="contain",
                         elem_classes=["tile-gallery"])
    panel = SamplePanel(c, friendly, "browser")
    outputs = [gallery, tile_ids, info, page]

    def show(c, p, s, o, step=0):  # p: the page box's number, counted from 1
        return to_page_box(friendly(h.browse)(c, max(0, friendly(from_page_box)(p) + step), s, None, o))
    show_btn.click(show, [cluster, page, source, order], outputs)
    cluster.change(lambda c, s, o: show(c, 1, s, o), [cluster, source, order], outputs)
    prev_btn.click(lambda c, p, s, o: show(c, p, s, o, -1), [cluster, page, source, order], outputs)
    next_btn.click(lambda c, p, s, o: show(c, p, s, o, 1), [cluster, page, source, order], outputs)

    panel.open_ids(gallery, tile_ids)
    concept_sender(c, friendly, _who, tile_ids, "browser", "this page")
    return {"cluster": cluster, "gallery": gallery, "info": info, "page": page, "review": review_btn}


def _compare_tab(h: Handlers, c: Curate) -> None:
    with gr.Row():
        sort = gr.Dropdown(list(COMPARE_SORTS), value="syn_minus_alt", label="Sort by gap")
        page = gr.Number(value=1, precision=0, label="Page", minimum=1)
        go = gr.Button("Compare", variant="primary")
    table = gr.Dataframe(headers=["id", "alt-text", "alt", "best synthetic", "syn", "fused", "fused score",
                                  "syn − alt", "fused − alt"],
                         label="Alt vs synthetic vs fused (clip_score) · click a row for its card",
                         interactive=False, wrap=True, elem_id="compare-table",
                         column_widths=["6%", "19%", "6%", "19%", "6%", "19%", "7%", "9%", "9%"])
    legend(("alt / syn / fused", "clip_score"))
    SamplePanel(c, friendly, "compare").open_rows(table)
    def compare(sort_by, p):  # p: the page box's number, counted from 1
        return friendly(h.compare)(sort_by, friendly(from_page_box)(p))
    go.click(compare, [sort, page], [table])
    sort.change(compare, [sort, page], [table])


def _filter_tab(h: Handlers, c: Curate) -> dict:
    with gr.Row():
        first = c.default_source()
        source = gr.Dropdown(c.score_choices(), value=first, label="Filter by", elem_id="filter-source")
        threshold = gr.Slider(0.0, 2.5, value=0.625, step=0.005, label="Keep pairs scoring at least")
    last_source = gr.State(first)
    scale_note = gr.Textbox(label="Scale", interactive=False, elem_id="filter-scale")
    counts = gr.Textbox(label="Kept / dropped", interactive=False, elem_id="filter-counts")
    legend(("reward", "clip_score", "alt / syn / fused"))
    with gr.Row():
        hist = gr.Image(label="Histogram", type="pil", interactive=False)
        per_cluster = gr.Dataframe(headers=["cluster", "size", "dropped", "dropped share"],
                                   label="Effect per cluster", interactive=False)
    with gr.Row():
        strip_page = gr.Number(value=1, precision=0, label="Strip page (12 tiles each)", minimum=1, scale=1)
        prev_btn = gr.Button("◀ previous 12", scale=1, elem_id="filter-prev")
        next_btn = gr.Button("next 12 ▶", scale=1, elem_id="filter-next")
    below = gr.Gallery(label="Dropped, lowest first (click a tile for its card)", columns=6, height=420,
                       allow_preview=False, object_fit="contain", elem_id="filter-below", elem_classes=["tile-gallery"])
    above = gr.Gallery(label="Just above the line", columns=6, height=420, allow_preview=False, object_fit="contain",
                       elem_id="filter-above", elem_classes=["tile-gallery"])
    panel = SamplePanel(c, friendly, "filter")
    panel.open_tiles(below)
    panel.open_tiles(above)
    outputs = [hist, counts, per_cluster, below, above, strip_page]

    def run(src, t):
        """A new threshold or score: everything again, the strips from their first page."""
        return (*friendly(h.filter)(src, t), 1)
    for button, step in ((prev_btn, -1), (next_btn, 1)):
        def move(src, t, p, step=step):  # p: the page box's number, counted from 1
            p = max(0, friendly(from_page_box)(p) + step)
            return (*friendly(h.filter)(src, t, p)[3:], p + 1)
        button.click(move, [source, threshold, strip_page], [below, above, strip_page], show_progress="hidden")
    def rescale(new_source, old_source, value):
        scale = friendly(h.threshold_scale)(new_source, old_source, value)
        return threshold_slider(scale), scale["note"], new_source
    def on_open(src, t, note):
        """Opening the view sets the slider to the score's range; a note saying why the threshold moved (a
        reward applied in Review) stays until the curator has seen it."""
        scale = friendly(h.threshold_scale)(src, src, t)
        keep = bool(note) and note.startswith(scale["note"])
        return threshold_slider(scale), gr.update() if keep else scale["note"], src
    threshold.release(run, [source, threshold], outputs, api_name="filter")
    source.input(rescale, [source, last_source, threshold], [threshold, scale_note, last_source]).then(
        run, [source, threshold], outputs)
    threshold.change(run, [source, threshold], outputs, show_progress="hidden", trigger_mode="always_last")
    selection_panel(c, friendly, source, threshold)
    return {"source": source, "threshold": threshold, "outputs": outputs, "run": run, "scale_note": scale_note,
            "last_source": last_source, "rescale": rescale, "on_open": on_open}


def _defaults_tab(h: Handlers, c: Curate) -> None:
    with gr.Row():
        concept = gr.Textbox(label="Concept", max_lines=1, placeholder="a word captions use after the axis's values")
        axis = gr.Textbox(value=h.default_axis(), label="Axis (NAME=VALUE1,VALUE2,...; the first mined axis)",
                          max_lines=1)
        source = gr.Dropdown(["syn", "alt", "fused"], value="syn", label="Captions")
        go = gr.Button("Check", variant="primary")
    summary = gr.Textbox(label="Finding", interactive=False)
    with gr.Row():
        say = gr.Image(label="Captions say", type="pil", interactive=False)
        show = gr.Image(label="Images show", type="pil", interactive=False)
    with gr.Row():
        cap_examples = gr.Gallery(label="Examples: what captions said", columns=8, height=150, allow_preview=False)
        img_examples = gr.Gallery(label="Examples: what images show", columns=8, height=150, allow_preview=False)
    legend(("H",))
    suggest_btn = gr.Button("Suggest what to check")
    suggestions = gr.Dataframe(headers=["concept", "axis", "captions say", "share", "images show it", "entropy drop",
                                        "default?"], label="Suggestions", interactive=False)
    go.click(friendly(h.defaults), [concept, axis, source], [say, show, summary, cap_examples, img_examples])
    panel = SamplePanel(c, friendly, "defaults")
    panel.open_tiles(cap_examples)
    panel.open_tiles(img_examples)
    suggest_btn.click(friendly(h.suggestions), [source], [suggestions])


def _search_tab(h: Handlers, c: Curate) -> None:
    hits = gr.State([])
    with gr.Row():
        text = gr.Textbox(label="Find images matching a text", max_lines=1, placeholder="a dog running on a beach")
        go = gr.Button("Search", variant="primary")
    with gr.Row():
        sample = gr.Number(value=0, precision=0, label="…or images similar to sample #", minimum=0)
        similar = gr.Button("Similar images")
    results = gr.Gallery(label="Results (cosine to the query)", columns=8, height=480, allow_preview=False,
                         elem_id="search-results")
    legend(("cosine", *CAPTION_SCORES))
    panel = SamplePanel(c, friendly, "search")
    go.click(friendly(h.search_text), [text], [results, hits])
    text.submit(friendly(h.search_text), [text], [results, hits])
    similar.click(friendly(h.search_similar), [sample], [results, hits])
    panel.open_ids(results, hits)
    concept_sender(c, friendly, _who, hits, "search", "these results")
