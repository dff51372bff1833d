"""The interactive map: windows, density, colourings and regions on the server, then a box and a lasso drawn
with the mouse in Chromium, the gallery they open, a label from it and the region saved as a selection."""
from __future__ import annotations

import itertools
import re
import tarfile

import numpy as np
import pytest
from browser import browser_page, served
from conftest import writable_copy
from matplotlib.path import Path as Polygon

from curation.export.select import SelectionExists, load_selection, save_picked
from curation.review.labels import add_label, add_labels, current
from curation.structure.mapview import Colouring, density_image
from curation.views.atlas import COLOURINGS, Atlas, AtlasError, clean_term
from indexer.store import Workspace


@pytest.fixture(scope="module")
def atlas(demo_ws):
    root, _ = demo_ws
    ws = Workspace(root, read_only=True)
    yield Atlas(ws)
    ws.close()


def test_a_window_never_ships_more_than_the_cap_and_zooming_only_adds_points(atlas):
    whole = atlas.view(None, "cluster", cap=100)
    assert whole["in_view"] == len(atlas.ids) and whole["shown"] == 100 == len(whole["points"]["id"])
    assert whole["density"].startswith("data:image/png;base64,"), "the rest of the points are in the picture"
    x0, x1, y0, y1 = whole["box"]
    zoom = [x0, (x0 + x1) / 2, y0, (y0 + y1) / 2]
    part = atlas.view(zoom, "cluster", cap=100)
    inside = (atlas.x >= zoom[0]) & (atlas.x <= zoom[1]) & (atlas.y >= zoom[2]) & (atlas.y <= zoom[3])
    assert part["in_view"] == int(inside.sum())
    before = {i for i, x, y in zip(whole["points"]["id"], whole["points"]["x"], whole["points"]["y"], strict=True)
              if zoom[0] <= x <= zoom[1] and zoom[2] <= y <= zoom[3]}
    assert before <= set(part["points"]["id"]), "points shown zoomed out stay shown when zooming in"
    close = atlas.view(zoom, "cluster", cap=10_000)
    assert close["density"] is None and close["shown"] == close["in_view"], "zoomed in: every point, no picture"
    with pytest.raises(AtlasError, match="x0 < x1"):
        atlas.view([1, 0, 0, 1])


def test_hover_data_and_labels_come_with_the_points(atlas, demo_ws):
    view = atlas.view(None, "cluster", cap=50)
    root, _ = demo_ws
    with Workspace(root, read_only=True) as ws:
        i = view["points"]["id"][0]
        alt = ws.scalar("SELECT arg_min(text, idx) FROM captions WHERE sample_id = ? AND source_kind = 'alt'", [i])
        thumb = ws.scalar("SELECT thumb FROM samples WHERE id = ?", [i])
    card = atlas.hover(i)
    row = int(np.searchsorted(atlas.ids, i))
    assert card["alt"] == (alt or "")[:200] and card["thumb"] == thumb and card["cluster"] == atlas.cluster[row]
    assert set(view["points"]) == {"id", "x", "y", "colour"}, "a window carries no caption text"
    with pytest.raises(AtlasError, match="not on the map"):
        atlas.hover(10**9)
    assert view["labels"] and all(re.fullmatch(r"\d+(: [\w\s'\-]+)?", lab["text"]) for lab in view["labels"])
    assert clean_term('<a href="x">dog</a>') == "a hrefxdoga"


@pytest.mark.parametrize("name", list(COLOURINGS))
def test_every_colouring_has_a_legend(atlas, name):
    view = atlas.view(None, name, cap=200)
    legend = view["legend"]
    assert legend["title"] and len(view["points"]["colour"]) == 200
    if legend["kind"] == "ramp":
        assert legend["lo"] < legend["hi"] and len(legend["stops"]) == 5
    with pytest.raises(AtlasError, match="allowed"):
        atlas.view(None, "rainbow")


def test_density_colours_a_bin_by_its_most_common_category():
    x = np.array([0.1, 0.12, 0.11, 0.9])
    y = np.array([0.1, 0.1, 0.12, 0.9])
    palette = np.array([[255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    colouring = Colouring("c", codes=np.array([1, 1, 0, 0]), palette=palette, names=("a", "b"))
    image = np.asarray(density_image(x, y, np.arange(4), colouring, (0, 1, 0, 1), 4, 4))
    assert tuple(image[3, 0, :3]) == (0, 0, 255), "two blue against one red: the bin is blue"
    assert tuple(image[0, 3, :3]) == (255, 0, 0) and image[0, 0, 3] == 0, "empty bins are transparent"


def test_regions_answer_over_all_points(atlas):
    x0, x1, y0, y1 = atlas.extent
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
    box = [cx - w, cx + w, cy - h, cy + h]
    square = {"x": [box[0], box[1], box[1], box[0]], "y": [box[2], box[2], box[3], box[3]]}
    assert np.array_equal(atlas.region(box=box), atlas.region(lasso=square))
    triangle = {"x": [cx - w, cx + w, cx], "y": [cy - h, cy - h, cy + h]}
    truth = Polygon(np.c_[triangle["x"], triangle["y"]]).contains_points(np.c_[atlas.x, atlas.y])
    found = atlas.region(lasso=triangle)
    assert len(found) > 5 and np.array_equal(found, atlas.ids[truth])
    with pytest.raises(AtlasError, match="three"):
        atlas.region(lasso={"x": [0, 1], "y": [0, 1]})
    # a lasso of a million corners from a script would hold a worker for minutes: refused in one line
    many = np.linspace(0, 2 * np.pi, 5_001)
    with pytest.raises(AtlasError, match="at most 5,000 corners"):
        atlas.region(lasso={"x": list(cx + w * np.cos(many)), "y": list(cy + h * np.sin(many))})


def test_labels_colouring_and_picked_selections(demo_ws, tmp_path):
    root = writable_copy(demo_ws, tmp_path)
    with Workspace(root) as ws:
        atlas = Atlas(ws)
        ids = atlas.region(box=[*atlas.extent[:2], *atlas.extent[2:]])[:30].tolist()
        add_label(ws, ids[0], "alignment", "bad", view="map")
        assert add_labels(ws, [*ids[:10], 10**9], "tag", "beach scene", view="map") == 10
        codes = atlas.colouring("label").codes
        assert codes[np.searchsorted(atlas.ids, ids[0])] == 1 and (codes == -1).sum() == len(atlas.ids) - 1
        assert sum(1 for v in current(ws, "tag").values() if v == "beach scene") == 10
        result = save_picked(ws, "corner", ids, "map box", "best")
        rule, members = load_selection(ws, "corner")
        assert result["selected"] == 30 and members.tolist() == sorted(ids) and rule.picked == "map box"
        with pytest.raises(SelectionExists):
            save_picked(ws, "corner", ids[:5], "map box", "best")
        assert save_picked(ws, "corner", ids[:5], "map box", "best", replace=True)["replaced"] == 30


def _drag(page, points):
    page.mouse.move(*points[0])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*p, steps=6)
    page.mouse.up()


def _clear_box(page, plot, xr, yr, margin: float = 3.0):
    """Corners near the middle of the plot for a box with no point within ``margin`` px of its edges (a point on
    an edge falls on either side of it by sub-pixel rounding, in the browser or here)."""
    xs, ys = page.evaluate("() => { const t = document.querySelector('#atlas-root .atlas-plot').data[0]; "
                           "return [t.x, t.y]; }")
    px = plot["x"] + (np.asarray(xs) - xr[0]) / (xr[1] - xr[0]) * plot["width"]
    py = plot["y"] + (yr[1] - np.asarray(ys)) / (yr[1] - yr[0]) * plot["height"]
    for dx, dy in itertools.product(np.linspace(0, 0.1, 21), repeat=2):
        x0, x1 = plot["x"] + plot["width"] * (0.35 + dx), plot["x"] + plot["width"] * (0.6 + dx)
        y0, y1 = plot["y"] + plot["height"] * (0.35 + dy), plot["y"] + plot["height"] * (0.65 + dy)
        across_y = (py > y0 - margin) & (py < y1 + margin)
        across_x = (px > x0 - margin) & (px < x1 + margin)
        on_edge = ((np.abs(px - x0) <= margin) | (np.abs(px - x1) <= margin)) & across_y
        on_edge |= ((np.abs(py - y0) <= margin) | (np.abs(py - y1) <= margin)) & across_x
        if not on_edge.any():
            return (x0, y0), (x1, y1)
    raise AssertionError("no box without a point on its edge")


def _region_text(page, before: str) -> str:
    page.wait_for_function("([sel, before]) => { const el = document.querySelector(sel); "
                           "return el && el.value && el.value !== before; }", arg=["#atlas-region textarea", before])
    page.wait_for_function("() => /of \\d+ · page/.test(document.querySelector('#atlas-page textarea').value)")
    return page.input_value("#atlas-region textarea")


SELECTED_IDS = """() => { const gd = document.querySelector('#atlas-root .atlas-plot');
    const t = gd.data[0]; return (t.selectedpoints || []).map(i => t.customdata[i]); }"""
AXES = """() => { const f = document.querySelector('#atlas-root .atlas-plot')._fullLayout;
    return [f.xaxis.range, f.yaxis.range]; }"""


@pytest.mark.browser
def test_map_box_and_lasso_open_exactly_the_server_region_then_label_and_save(demo_ws, tmp_path):
    from curation.review import concepts
    root = writable_copy(demo_ws, tmp_path)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with Workspace(root) as ws:
        concepts.add(ws, "crowded")
    with Workspace(root, read_only=True) as ws:
        atlas = Atlas(ws)
    with served(root) as url, browser_page(1280, 900) as page:
        page.goto(url)
        page.get_by_role("tab", name="Map").click()
        page.wait_for_selector("#atlas-root[data-state=ready]")
        assert int(page.get_attribute("#atlas-root", "data-in-view")) == len(atlas.ids)
        plot = page.locator("#atlas-root .nsewdrag").first.bounding_box()
        (xr, yr) = page.evaluate(AXES)
        px, py = page.evaluate("() => { const t = document.querySelector('#atlas-root .atlas-plot').data[0]; "
                               "return [t.x[0], t.y[0]]; }")
        page.mouse.move(plot["x"] + (px - xr[0]) / (xr[1] - xr[0]) * plot["width"],
                        plot["y"] + (yr[1] - py) / (yr[1] - yr[0]) * plot["height"])
        page.wait_for_function("() => /#\\d+ · cluster \\d+/.test(document.querySelector('.atlas-hover').innerText)")
        assert "/gradio_api/file=" in page.get_attribute(".atlas-hover img", "src")
        page.screenshot(path=shots / "map.png")
        page.mouse.move(plot["x"] + 2, plot["y"] + 2)

        page.click("#atlas-root button[data-mode=select]")
        a, b = _clear_box(page, plot, *page.evaluate(AXES))
        _drag(page, [a, b])
        text = _region_text(page, "")
        (xr, yr) = page.evaluate(AXES)
        # the server's answer for the dragged box, computed here from the pixels and the axes on screen
        to_x = lambda px: xr[0] + (px - plot["x"]) / plot["width"] * (xr[1] - xr[0])  # noqa: E731
        to_y = lambda py: yr[1] - (py - plot["y"]) / plot["height"] * (yr[1] - yr[0])  # noqa: E731
        expected = atlas.region(box=[to_x(a[0]), to_x(b[0]), to_y(b[1]), to_y(a[1])]).tolist()
        drawn = sorted(page.evaluate(SELECTED_IDS))
        assert len(expected) > 3 and f"box: {len(expected)} samples" in text
        assert drawn == expected, "what Plotly highlighted is what the server found (every point is drawn here)"
        tiles = page.locator("#atlas-gallery button img").count()
        assert tiles == min(48, len(expected))
        captions = page.locator("#atlas-gallery .caption-label, #atlas-gallery figcaption").all_inner_texts()
        shown = [int(m.group(1)) for c in captions if (m := re.match(r"#(\d+)", c))]
        assert shown == expected[:len(shown)] and len(shown) == tiles
        page.screenshot(path=shots / "map-box.png", full_page=True)

        page.click("#atlas-root button[data-mode=lasso]")
        cx, cy, r = plot["x"] + plot["width"] * 0.5, plot["y"] + plot["height"] * 0.5, plot["height"] * 0.3
        corners = [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 9)[:-1]]
        _drag(page, corners + [corners[0]])
        text = _region_text(page, text)
        lasso = sorted(page.evaluate(SELECTED_IDS))
        assert re.search(rf"lasso of \d+ corners: {len(lasso)} samples", text), text

        visible = page.locator("#atlas-gallery button").filter(visible=True).first
        visible.click()
        page.locator("#map-card .al-card").wait_for()
        first = int(page.get_attribute("#map-card .al-card", "data-sample"))
        page.click("#map-bad")
        page.wait_for_function("() => /labelled bad/.test(document.querySelector('#map-card').innerText)")
        page.fill("#map-caption textarea", "a curator's <b>own</b> caption")
        page.click("#map-save-caption")
        page.wait_for_function("() => /curator's <b>own<\\/b> caption/.test("
                               "document.querySelector('#map-card [data-source=curator]')?.innerText || '')")
        page.fill("#atlas-sel-name input, #atlas-sel-name textarea", "lassoed")
        page.locator("#atlas-policy input").click()
        page.get_by_role("option", name="best", exact=True).click()
        page.click("#atlas-save")
        page.wait_for_function("() => /saved/.test(document.querySelector('#atlas-result textarea').value)")
        page.locator("#map-concept input").click()  # the region to a concept, as negatives
        page.get_by_role("option", name="crowded", exact=True).click()
        page.get_by_label("does not").check()
        page.click("#map-send-concept")
        page.wait_for_function("() => /samples tagged as not showing crowded/.test("
                               "document.querySelector('#map-concept-said textarea').value)")
        assert f"{len(lasso)} samples tagged" in page.input_value("#map-concept-said textarea")
        page.screenshot(path=shots / "map-lasso.png", full_page=True)
    with Workspace(root, read_only=True) as ws:
        assert concepts.tags(ws, "crowded") == {i: False for i in lasso}
        assert {v for (v,) in ws.rows("SELECT DISTINCT view FROM labels WHERE kind = 'concept:crowded'")} == {"map"}
        assert current(ws).get(first) == "bad"
        assert ws.scalar("SELECT view FROM labels WHERE sample_id = ? ORDER BY id DESC LIMIT 1", [first]) == "map"
        _, members = load_selection(ws, "lassoed")
    assert members.tolist() == lasso and first in members
    # the caption written in the browser is what the export's best policy writes for that sample
    with Workspace(root) as ws:
        export_webdataset(ws, "lassoed")
        uid = ws.scalar("SELECT uid FROM samples WHERE id = ?", [first])
    with tarfile.open(next((root / "exports" / "lassoed").glob("*.tar"))) as tar:
        assert tar.extractfile(f"{uid}.txt").read().decode() == "a curator's <b>own</b> caption"


def export_webdataset(ws, name: str) -> None:
    from curation.export.export import ExportConfig, run
    run(ws, ExportConfig(selection=name, format="webdataset", out=str(ws.root / "exports" / name), progress=False))
