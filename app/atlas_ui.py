"""The Map tab: an interactive map (Plotly, drawn in the browser) over :class:`curation.views.atlas.Atlas`,
and the gallery of cards a box or lasso opens.

Why Plotly: its ``plotly.min.js`` ships inside the ``plotly`` wheel, so the map
works offline with nothing to build or fetch; box and lasso selection, scroll
zoom, pan and WebGL points (``scattergl``) are built in, and it falls back to
SVG where WebGL is missing. What it cannot do alone, drawing a million points,
is what the server does: at most :data:`curation.views.atlas.POINT_CAP` points
per window, plus a density picture of the rest. (Embedding Atlas and
regl-scatterplot draw millions of points client-side, but need their npm
bundles built and served, and would ship every point to the browser.)

The browser asks for windows through a Gradio server function (``view``) and
reports a selected region or a clicked point through custom events (``region``,
``pick``), so every selection is answered by the server over all points.
"""
from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from urllib.parse import quote

import anyio
import gradio as gr

from app.concepts_ui import concept_sender
from app.curate import Curate
from app.curate_ui import SamplePanel, _session, _who, legend
from app.handlers import Handlers, UserError, as_int, from_page_box, to_page_box
from app.turns import HEAVY
from curation.export.select import POLICIES
from curation.views.atlas import COLOURINGS, Atlas, region_summary
from curation.views.gallery import PER_PAGE, SCORE_SOURCES

ATLAS_JS = (Path(__file__).with_name("atlas.js")).read_text()
ATLAS_CSS = """
.atlas { position: relative; }
.atlas-bar { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin-bottom: 4px; }
.atlas-bar button { padding: 2px 10px; border: 1px solid #bbb; border-radius: 6px; background: #f4f4f4; cursor: pointer; }
.atlas[data-dragmode=lasso] button[data-mode=lasso], .atlas[data-dragmode=select] button[data-mode=select],
.atlas[data-dragmode=pan] button[data-mode=pan] { background: #dde8ff; border-color: #6b8fd6; }
.atlas-status { color: #555; font-size: 13px; }
.atlas-plot { width: 100%; height: 560px; }
.atlas-legend { font-size: 12px; color: #333; display: flex; flex-wrap: wrap; gap: 10px; align-items: center; }
.atlas-legend-title { font-weight: 600; }
.atlas-ramp { width: 220px; height: 12px; border-radius: 3px; }
.atlas-ramp-ends { display: flex; gap: 12px; }
.atlas-key i { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 4px; }
.atlas-note { color: #666; }
.atlas-hover { display: none; position: absolute; z-index: 20; width: 240px; background: #fff; pointer-events: none;
               border: 1px solid #ccc; border-radius: 6px; padding: 6px; box-shadow: 0 2px 8px rgba(0,0,0,.15);
               white-space: pre-wrap; font-size: 12px; }
.atlas-hover img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; display: block; }
"""


def plotly_js() -> Path:
    """The ``plotly.min.js`` bundled in the installed ``plotly`` wheel (no network, nothing to build)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'plotly' package is missing: pip install -e . installs it")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


def plotly_url() -> str:
    return f"/gradio_api/file={quote(str(plotly_js()))}"


def prefetch_js() -> str:
    """JS for the page's load event: fetch and run plotly.min.js a moment after the page shows, so opening the
    Map does not wait a second for it (the Map tab's own script is only run when the tab is first opened)."""
    return ("() => { setTimeout(() => { if (window.Plotly || document.querySelector('script[data-altlens-plotly]')) "
            "return; const s = document.createElement('script'); s.src = %s; s.dataset.altlensPlotly = '1'; "
            "document.head.appendChild(s); }, 1000); }" % json.dumps(plotly_url()))


def _template() -> str:
    options = "".join(f'<option value="{name}">{name}</option>' for name in COLOURINGS)
    script = plotly_url()
    return f"""<div class="atlas" data-dragmode="lasso" id="atlas-root" data-plotly="{script}">
<div class="atlas-bar"><label>Colour by <select class="atlas-colour">{options}</select></label>
<button data-mode="lasso" title="drag a free shape">Lasso</button><button data-mode="select" title="drag a box">Box</button>
<button data-mode="pan" title="drag to move">Pan</button><button class="atlas-reset">Whole map</button>
<span class="atlas-status">loading the map…</span></div>
<div class="atlas-legend"></div><div class="atlas-plot"></div><div class="atlas-hover"></div></div>"""


class MapHandlers:
    """The Map tab's server side: windows for the browser, regions and pages for the gallery."""

    def __init__(self, h: Handlers):
        self.h, self.ws = h, h.ws

    @property
    def atlas(self) -> Atlas:
        return self.h.atlas

    def view(self, box, colour, width, height) -> dict:
        with self.ws.session():
            try:
                out = self.atlas.view(box, str(colour), as_int(width or 900, "width", 1, 8000),
                                      as_int(height or 600, "height", 1, 8000))
            except (ValueError, LookupError) as exc:
                return {"error": str(exc)[:300]}
        return out

    def hover(self, sample_id) -> dict:
        with self.ws.session():
            try:
                out = self.atlas.hover(as_int(sample_id, "sample id"))
            except (ValueError, LookupError) as exc:
                return {"error": str(exc)[:300]}
        path = self.h.thumb(out.pop("thumb"))
        out["thumb_url"] = f"/gradio_api/file={quote(path)}" if path else None
        return out

    def region(self, spec: dict) -> tuple[list[int], str]:
        """The ids inside a selected region (all of them, in id order) and a line saying what it is."""
        if not isinstance(spec, dict) or not ({"box", "lasso"} & set(spec)):
            raise UserError("draw a box or a lasso on the map")
        ids = self.atlas.region(box=spec.get("box"), lasso=spec.get("lasso"))
        shape = "box" if spec.get("box") is not None else f"lasso of {len(spec['lasso'].get('x', []))} corners"
        return ids.tolist(), f"{shape}: {region_summary(ids, self.atlas)}"

    def page(self, ids: list[int], page, source: str = "reward"):
        """A gallery page of the region: (tiles, tile ids, text, page)."""
        if not ids:
            return [], [], "draw a box or a lasso on the map to open its samples here", 0
        pages = max(1, -(-len(ids) // PER_PAGE))
        page = min(as_int(page or 0, "page", 0, 10**9), pages - 1)
        chunk = ids[page * PER_PAGE:(page + 1) * PER_PAGE]
        tiles, shown, _, _ = self.h.browse("all", 0, source, ids=chunk)
        first = page * PER_PAGE + 1
        return tiles, shown, f"samples {first}–{first + len(chunk) - 1} of {len(ids)} · page {page + 1} of {pages}", page


def _args(data, n: int) -> list:
    """A server function's arguments: Gradio passes several as a list and a single one as itself."""
    values = list(data) if isinstance(data, (list, tuple)) and n > 1 else [data]
    return (values + [None] * n)[:n]


def map_tab(h: Handlers, c: Curate, friendly) -> dict:
    """Lay out the Map tab; returns its components."""
    m = MapHandlers(h)

    async def view(args):
        box, colour, width, height = _args(args, 4)
        return await anyio.to_thread.run_sync(functools.partial(m.view, box, colour, width, height))

    async def hover(args):
        return await anyio.to_thread.run_sync(m.hover, _args(args, 1)[0])

    region_ids, picked = gr.State([]), gr.State("")
    atlas = gr.HTML(html_template=_template(), css_template=ATLAS_CSS, js_on_load=ATLAS_JS, server_functions=[view, hover],
                    elem_id="atlas", padding=False)
    legend(("reward", "clip_score", "alt / syn / fused"))
    info = gr.Textbox(label="Selected region", interactive=False, elem_id="atlas-region")
    with gr.Row():
        source = gr.Dropdown(list(SCORE_SOURCES), value="reward", label="Score on tiles", scale=1)
        page = gr.Number(value=1, precision=0, label="Page", minimum=1, scale=1)
        prev_btn, next_btn = gr.Button("◀ previous", scale=1), gr.Button("next ▶", scale=1)
    page_text = gr.Textbox(show_label=False, interactive=False, elem_id="atlas-page")
    gallery = gr.Gallery(label="Samples in the region", columns=8, height=420, allow_preview=False,
                         object_fit="contain", elem_classes=["tile-gallery"], elem_id="atlas-gallery")
    tile_ids = gr.State([])
    with gr.Row():
        tag = gr.Textbox(label="Tag every sample in the region", max_lines=1, scale=2, elem_id="atlas-tag-text")
        tag_btn = gr.Button("Tag all", scale=1, elem_id="atlas-tag-all")
        name = gr.Textbox(label="Save the region as selection", max_lines=1, scale=2, elem_id="atlas-sel-name",
                          placeholder="letters, digits, - _ .")
        policy = gr.Dropdown(list(POLICIES), value="hybrid", label="Caption policy for export", scale=1,
                             elem_id="atlas-policy")
        replace = gr.Checkbox(label="Replace a selection of that name", value=False, scale=1)
        save_btn = gr.Button("Save selection", variant="primary", scale=1, elem_id="atlas-save")
    done = gr.Textbox(label="Result", interactive=False, elem_id="atlas-result")
    concept_sender(c, friendly, _who, region_ids, "map", "the region")
    panel = SamplePanel(c, friendly, "map")
    page_out = [gallery, tile_ids, page_text, page]

    def on_region(evt: gr.EventData, src, request: gr.Request):
        ids, text = friendly(h.turns.run)(_session(request) or "", "map region", friendly(m.region),
                                          getattr(evt, "_data", None))
        return (ids, text, text, *to_page_box(friendly(m.page)(ids, 0, src)))
    atlas.region(on_region, [source], [region_ids, picked, info, *page_out], api_name="map_region",
                 show_progress="hidden", **HEAVY)
    for button, step in ((prev_btn, -1), (next_btn, 1)):
        button.click(lambda ids, p, s, step=step: to_page_box(friendly(m.page)(
            ids, max(0, friendly(from_page_box)(p) + step), s)), [region_ids, page, source], page_out,
            show_progress="hidden")
    source.change(lambda ids, p, s: to_page_box(friendly(m.page)(ids, friendly(from_page_box)(p), s)),
                  [region_ids, page, source], page_out)

    panel.open_ids(gallery, tile_ids)

    def on_pick(evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        return panel.show(data.get("id"))
    atlas.pick(on_pick, None, panel.outputs, api_name="map_pick", show_progress="hidden")

    def tag_all(ids, text, request: gr.Request):
        return friendly(c.tag_many)(ids, text, _who(request))
    tag_btn.click(tag_all, [region_ids, tag], [done], api_name="map_tag_all")

    def save(ids, text, shape, pol, rep):
        return friendly(c.save_region)(text, ids, f"map {shape}", pol, rep)
    save_btn.click(save, [region_ids, name, picked, policy, replace], [done], api_name="map_save")
    return {"atlas": atlas, "gallery": gallery, "info": info, "handlers": m}


__all__ = ["MapHandlers", "map_tab", "plotly_js"]
