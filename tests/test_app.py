"""The curation UI: handlers called directly, then the real app in a real browser (Debian Chromium + Playwright)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from browser import browser_page, served
from conftest import tiny_coca_spec, write_folder

from app.handlers import Handlers, UserError
from indexer.store import Workspace

VIEWS = ["Overview", "Browser", "Compare captions", "Filter", "Defaults", "Search"]


def visible(locator):
    """The first visible match (Gradio keeps hidden copies of table cells for measuring)."""
    return locator.filter(visible=True).first


@pytest.fixture(scope="module")
def handlers(demo_ws):
    root, _ = demo_ws
    ws = Workspace(root, read_only=True)
    yield Handlers(ws)
    ws.close()


def test_overview_and_browser_handlers(handlers):
    counts, hist, picture, clusters = handlers.overview("cluster")
    assert any(row[0] == "status: ok" for row in counts)
    assert hist.size[0] > 300 and picture.size == (720, 540)
    assert clusters and all(len(row) == 9 for row in clusters)
    tiles, ids, text, page = handlers.browse("all", 0)
    assert len(tiles) == 48 == len(ids) and page == 0 and "page 1 of" in text
    cluster = clusters[0][0]
    tiles, ids, text, _ = handlers.browse(cluster, 0)
    assert f"{clusters[0][1]} samples" in text
    card, captions, facts, dups = handlers.sample(ids[0])
    assert re.search(r'<img src="/gradio_api/file=[^"]+\.webp"', card) and {c[0] for c in captions} == {"alt", "syn",
                                                                                                     "fused"}
    assert [m for m in re.findall(r'data-source="(\w+)"', card)] == ["alt", "syn", "fused"]
    assert dict(facts)["cluster"] == str(cluster)


def test_filter_counts_move_with_the_threshold(handlers):
    _, low, _, _, _ = handlers.filter("reward", 0.1)
    _, high, per_cluster, below, above = handlers.filter("reward", 0.9)
    kept = lambda text: int(re.search(r"kept (\d+)", text).group(1))
    assert kept(low) > kept(high)
    assert per_cluster and below and above


def test_filter_effect_from_sorted_scores_matches_a_full_count(handlers):
    """The Filter view answers from binary searches in sorted scores; a plain count over every sample agrees
    on kept, dropped, unscored, every cluster's drops and both tile strips (lowest first, ties by row)."""
    fi = handlers.filter_index
    for source in ("reward", "alt", "syn", "fused"):
        score = fi.score(source)
        scored = ~np.isnan(score)
        for t in list(np.nanquantile(score, [0.0, 0.3, 0.97])) + [float(np.nanmax(score)) + 1]:
            for page in (0, 1):
                got = fi.effect(source, float(t), preview=5, page=page)
                dropped, kept = scored & (score < t), scored & (score >= t)
                assert (got["kept"], got["dropped"], got["unscored"]) == (kept.sum(), dropped.sum(), (~scored).sum())
                want = {}
                for c in np.unique(fi.cluster[fi.cluster >= 0]):
                    members = fi.cluster == c
                    want[int(c)] = (int(members.sum()), int((dropped & members).sum()))
                assert {r["cluster"]: (r["size"], r["dropped"]) for r in got["per_cluster"]} == want
                for rows, strip in ((np.flatnonzero(dropped), "dropped_lowest_first"),
                                    (np.flatnonzero(kept), "just_above")):
                    rows = rows[np.lexsort((rows, score[rows]))][page * 5:page * 5 + 5]
                    assert [x["id"] for x in got[strip]] == fi.ids[rows].tolist(), (source, t, page, strip)
                assert fi.dropped_share(source, float(t)) == pytest.approx(dropped.sum() / scored.sum())


def test_gallery_pages_from_memory_match_the_sql_pages(handlers):
    """Gallery pages come from orders held in memory; for every kind of scope they equal the SQL page."""
    from curation.views.gallery import Scope, gallery_page
    fi = handlers.filter_index
    median = float(np.nanmedian(fi.score("alt")))
    scopes = [Scope(), Scope(cluster=handlers.clusters()[0]), Scope(order="score_desc"),
              Scope(cluster=handlers.clusters()[-1], source="alt", order="score_asc"),
              Scope(source="alt", min_score=median), Scope(source="syn", min_score=median, order="score_desc"),
              Scope(source="fused", max_score=median, order="score_asc")]
    for scope in scopes:
        for page in (0, 1, 99):
            want = gallery_page(handlers.ws, scope, page, 7)
            got = fi.page(scope, page, 7)
            assert (got["total"], got["pages"]) == (want["total"], want["pages"]), scope
            assert got["items"] == want["items"], (scope, page)
            assert page == 99 or got["items"], scope


def test_a_servers_cached_orders_stay_within_their_budget(handlers, monkeypatch):
    """Issue 29: gallery orders and sorted scores are caches with a bound in bytes and in sources, as int32
    rows; what they answer does not change when they evict."""
    from curation.views import filter as filter_view
    from curation.views.filter import FilterIndex
    fresh = FilterIndex(handlers.ws)
    n = len(fresh.ids)
    monkeypatch.setattr(filter_view, "PAGE_CACHE_BYTES", 3 * 4 * n)  # three orders of every row
    monkeypatch.setattr(filter_view, "ORDER_SOURCES", 2)
    want = {}
    for order in ("default", "score_asc", "score_desc"):
        for source in ("alt", "syn", "fused", "reward"):
            want[source, order] = FilterIndex(handlers.ws)._ordered(None, source, order).tolist()
            got = fresh._ordered(None, source, order)
            assert got.dtype == np.int32 and got.tolist() == want[source, order]
            assert sum(r.nbytes for r in fresh._pages.values()) <= 3 * 4 * n
    for source in ("alt", "syn", "fused", "reward", "alt"):
        assert fresh.effect(source, 1.0)["kept"] == FilterIndex(handlers.ws).effect(source, 1.0)["kept"]
        assert len(fresh._orders) <= 2


def test_compare_defaults_search_handlers(handlers):
    rows = handlers.compare("syn_minus_alt")
    gaps = [float(r[7]) for r in rows]
    assert gaps == sorted(gaps, reverse=True)
    say, show, summary, cap_examples, img_examples = handlers.defaults("star", "colour=yellow,red,blue,purple", "syn")
    assert "captions say" in summary and cap_examples and img_examples
    tiles, ids = handlers.search_text("a large yellow star")
    assert tiles and len(tiles) == len(ids)
    similar, sim_ids = handlers.search_similar(ids[0])
    assert ids[0] not in sim_ids


@pytest.mark.parametrize("call", [
    lambda h: h.browse("99999", 0), lambda h: h.browse("abc", 0), lambda h: h.browse("all", -1),
    lambda h: h.browse("all", 0, source="price"), lambda h: h.sample(10**9), lambda h: h.filter("reward", "nan"),
    lambda h: h.filter("'; DROP TABLE samples; --", 0.5), lambda h: h.compare("random()"),
    lambda h: h.defaults("star", "colour", "syn"), lambda h: h.search_text("   "),
    lambda h: h.overview("rainbow"),
])
def test_bad_client_values_get_clear_errors(handlers, call):
    with pytest.raises(UserError):
        call(handlers)


def test_only_thumbnails_are_served(handlers):
    assert handlers.thumb("../altlens.duckdb") is None
    assert handlers.thumb("/etc/passwd") is None
    from app.handlers import PLACEHOLDER
    assert handlers.thumb(None) == str(PLACEHOLDER), "a sample with no image at hand shows the placeholder"


# ---------------------------------------------------------------- real browser


@pytest.mark.browser
def test_every_view_in_a_real_browser(demo_ws, tmp_path):
    root, _ = demo_ws
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with served(root, "--read-only") as url, browser_page() as page:
        page.goto(url)
        visible(page.get_by_text("status: ok")).wait_for()
        page.screenshot(path=shots / "overview.png", full_page=True)

        page.get_by_role("tab", name="Browser").click()
        page.get_by_role("button", name="Show").click()
        info = page.get_by_label("In view")
        page.wait_for_function("el => /samples · page 1 of/.test(el.value)", arg=info.element_handle())
        visible(page.locator(".tile-gallery .caption-label")).wait_for()
        clipped = page.evaluate("""() => [...document.querySelectorAll('.tile-gallery .caption-label')]
            .filter(e => e.offsetParent && e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)""")
        assert not clipped, f"tile captions shown in full (score and label): {clipped[:3]}"
        visible(page.locator(".tile-gallery button")).click()
        visible(page.get_by_text("alt-text", exact=True)).wait_for()
        page.wait_for_timeout(300)
        card = page.locator("#browser-card .al-card").bounding_box()
        assert 0 <= card["y"] and card["y"] + card["height"] <= 1000, f"the opened card is on screen: {card}"
        assert page.get_by_text("rules-v2(").count() >= 1, "fused caption shown with its producer"
        page.screenshot(path=shots / "browser.png", full_page=True)

        page.get_by_role("tab", name="Compare captions").click()
        page.get_by_role("button", name="Compare").click()
        visible(page.get_by_text("best synthetic")).wait_for()
        page.screenshot(path=shots / "compare.png", full_page=True)

        page.get_by_role("tab", name="Filter").click()
        scale = page.locator("#filter-scale textarea")
        page.wait_for_function("el => /^reward v1 \\(.*\\) runs [\\d.]+ to [\\d.]+$/.test(el.value)", arg=scale.element_handle())
        counts = page.locator("#filter-counts textarea")
        slider = page.get_by_role("slider").first
        slider.focus()
        for _ in range(20):
            page.keyboard.press("ArrowRight")
        page.wait_for_function("el => /kept \\d+/.test(el.value)", arg=counts.element_handle())
        first = counts.input_value()
        for _ in range(60):
            page.keyboard.press("ArrowRight")
        page.wait_for_function("([el, before]) => el.value !== before && /kept \\d+/.test(el.value)",
                               arg=[counts.element_handle(), first])
        assert counts.input_value() != first
        page.screenshot(path=shots / "filter.png", full_page=True)

        page.get_by_role("tab", name="Defaults").click()
        page.get_by_label("Concept", exact=True).fill("star")  # the axis comes prefilled from the mined contrast sets
        page.get_by_role("button", name="Check", exact=True).click()
        finding = page.get_by_label("Finding")
        page.wait_for_function("el => /captions say \\w+ for/.test(el.value)", arg=finding.element_handle(),
                               timeout=120_000)
        page.screenshot(path=shots / "defaults.png", full_page=True)

        page.get_by_role("tab", name="Search").click()
        page.get_by_label("Find images matching a text").fill("a large purple star")
        page.get_by_role("button", name="Search", exact=True).click()
        visible(page.locator("button img")).wait_for()
        page.screenshot(path=shots / "search.png", full_page=True)

        page.get_by_role("tab", name="Semantic duplicates").click()  # right after the demo build: it ran semdedup
        page.locator("#semantic-show").click()
        note = page.locator("#semantic-note textarea")
        page.wait_for_function("el => /\\d+ groups holding \\d+ samples/.test(el.value)", arg=note.element_handle())
        visible(page.locator("#semantic-members button img")).wait_for()
        assert re.search(r"cos \d\.\d{3} to #\d+", visible(page.locator("#semantic-members")).inner_text())
        page.screenshot(path=shots / "semantic.png", full_page=True)
    for view in ("overview", "browser", "compare", "filter", "defaults", "search", "semantic"):
        assert (shots / f"{view}.png").stat().st_size > 10_000
    newest = max(root.parent.glob("serve-*.log"), key=lambda p: p.stat().st_mtime).read_text()
    assert "search model ready" in newest, "the server loads the search model before the first search"


@pytest.mark.browser
def test_captions_are_never_executed(tmp_path):
    """Plant script-bearing captions; in the browser nothing runs and the text shows literally."""
    nasty = ['<img src=x onerror="window.__x=1">', "<script>window.__x=2</script>",
             '"><svg onload="window.__x=3">']
    src = tmp_path / "src"
    write_folder(src, n_good=3, bad=False)
    for i, text in enumerate(nasty):
        (src / ("a" if i % 2 else "b") / f"{i:08d}.txt").write_text(text)
    from curation.pipeline import run_stage
    from curation.scores.score import score_workspace
    from indexer.index import IndexConfig
    run_stage("index", tmp_path / "ws", IndexConfig(sources=(str(src),), model=tiny_coca_spec(), progress=False))
    with Workspace(tmp_path / "ws") as ws:
        score_workspace(ws)
    with served(tmp_path / "ws") as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Browser").click()
        page.get_by_role("button", name="Show").click()
        for i in range(3):
            page.locator(".tile-gallery button").filter(visible=True).nth(i).click()
            visible(page.get_by_text("alt-text", exact=True)).wait_for()
            page.wait_for_timeout(500)
        page.screenshot(path=tmp_path / "xss.png", full_page=True)
        assert page.evaluate("window.__x") is None, "a caption ran script"
        shown = page.locator("body").inner_text()
        assert any(text in shown for text in nasty), "captions shown literally"
        assert any(text in page.locator("#browser-card").inner_text() for text in nasty), "on the card too"


def test_identical_synthetic_captions_are_shown_once_with_their_count(handlers):
    from app.handlers import collapse_repeats
    base = {"producer": "cap", "clip_score": 0.5, "cycle": 1.0, "contrast": None, "lost_claim": None}
    texts = ["a dog on grass", "a dog on grass", "a puppy", "a dog on grass"]
    caps = [{"source_kind": "alt", "idx": 0, "text": "a dog on grass", **base}] + [
        {"source_kind": "syn", "idx": i, "text": t, **base} for i, t in enumerate(texts)]
    rows, syn = collapse_repeats(caps)
    assert [r[:4] for r in rows] == [["alt", "cap", "0", "a dog on grass"], ["syn", "cap", "0, 1, 3", "a dog on grass  (×3)"],
                                     ["syn", "cap", "2", "a puppy"]]
    assert syn == texts
    _, captions, facts, _ = handlers.sample(handlers.browse("all", 0)[1][0])
    distinct, total = dict(facts)["distinct synthetic captions"].split(" of ")
    assert 1 <= int(distinct) <= int(total) and len([r for r in captions if r[0] == "syn"]) == int(distinct)


def test_card_escapes_every_caption_and_label():
    from app.card import card_html
    evil = '<img src=x onerror="alert(1)">'
    base = {"producer": '"><script>', "clip_score": 0.5, "cycle": 1.0, "contrast": -0.01, "lost_claim": "<b>",
            "lost_to": "<i>"}
    detail = {"id": 7, "cluster": 2, "reward": 0.4, "reward_version": 3, "captions": [
        {"source_kind": "alt", "idx": 0, "text": evil, **base, "exchange": -0.042},
        {"source_kind": "syn", "idx": 0, "text": "a cat", **base}, {"source_kind": "syn", "idx": 1, "text": "a cat",
                                                                    **base}]}
    html = card_html(detail, None, {"alignment": "good", "preference": None, "tags": ["<u>x</u>"]})
    assert "<script" not in html and "<img src=x" not in html and "<b>" not in html and "<u>" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html and "tag: &lt;u&gt;x&lt;/u&gt;" in html
    assert "reward v3 0.400" in html, "the card names the active reward version"
    assert "no reward yet" in card_html({**detail, "reward_version": None, "reward": None}, None, {})
    assert "1 distinct of 2" in html and "(×2)" in html and "labelled good" in html and "fused" in html
    assert html.count("(exchange -0.042)") == 1, "the binding check shows where the caption has exchanges"


@pytest.mark.browser
def test_a_concept_is_made_tagged_and_trained_in_a_real_browser(concept_world, tmp_path):
    """The Concepts view: a concept from a prompt, tags given with its buttons from its queue (each by the demo
    truth of the sample on screen), training, and the table and histogram that follow."""
    import re
    import shutil

    from curation.review import concepts
    root = tmp_path / "ws"
    shutil.copytree(concept_world, root)
    with Workspace(root) as ws:
        truth = dict(ws.rows("""SELECT s.id, t.watermark FROM samples s JOIN demo_truth t ON t.uid = s.uid
                                WHERE s.status = 'ok' ORDER BY s.id"""))
    marked = [i for i, v in truth.items() if v][:7]
    clean = [i for i, v in truth.items() if not v][:7]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with served(root) as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Concepts").click()
        page.locator("#concept-name input").fill("watermark")
        page.locator("#concept-prompt input").fill("a photo with a watermark")
        page.get_by_role("button", name="Add concept / set prompt").click()
        made = page.locator("#concept-made textarea")
        page.wait_for_function("el => /zero-shot scores v1 for 400 samples/.test(el.value)", arg=made.element_handle())
        with Workspace(root) as ws:  # tags given elsewhere (the CLI), so that one more of each can train it
            concepts.tag(ws, "watermark", marked, True)
            concepts.tag(ws, "watermark", clean, False)
        page.get_by_role("button", name="Start its queue").click()
        progress = page.locator("#concept-progress textarea")
        seen: dict[int, bool] = {}
        for step in range(20):
            page.wait_for_function(f"el => el.value.startsWith('sample {step + 1} of')", arg=progress.element_handle())
            sample = int(re.search(r"#(\d+)", progress.input_value()).group(1))
            visible(page.locator("#concept-card img")).wait_for()
            seen[sample] = truth[sample]
            if step % 2:  # the queue answers Review's keys too: g shows it, b does not
                page.keyboard.press("g" if truth[sample] else "b")
            else:
                page.locator("#concept-yes" if truth[sample] else "#concept-no").click()
            if any(seen.values()) and not all(seen.values()) and len(seen) >= 4:
                break
        page.wait_for_function(f"el => el.value.startsWith('sample {len(seen) + 1} of')",
                               arg=progress.element_handle())
        page.get_by_role("button", name="Train on the tags").click()
        trained = page.locator("#concept-trained textarea")
        page.wait_for_function("el => /CV AUROC/.test(el.value)", arg=trained.element_handle())
        assert f"trained on {14 + len(seen)} tags" in trained.input_value()
        assert "zero-shot on the same tags" in trained.input_value()
        visible(page.locator("#concept-hist img")).wait_for()
        assert "v2 trained" in visible(page.locator("#concepts-table")).inner_text()
        page.screenshot(path=shots / "concepts.png", full_page=True)
        with Workspace(root) as ws:  # a concept added elsewhere shows when the view is opened again (issue 31)
            concepts.add(ws, "text-in-picture")
        page.get_by_role("tab", name="Overview").click()
        page.get_by_role("tab", name="Concepts").click()
        page.wait_for_function("() => /text-in-picture/.test(document.querySelector('#concepts-table').innerText)")
    with Workspace(root, read_only=True) as ws:
        from_browser = dict(ws.rows("""SELECT sample_id, value FROM labels WHERE kind = 'concept:watermark'
                                       AND view = 'concepts'"""))
        assert concepts.latest(ws, "watermark", "trained") == 2
    assert from_browser == {i: "good" if v else "bad" for i, v in seen.items()}
    assert (shots / "concepts.png").stat().st_size > 10_000


@pytest.mark.browser
def test_reduction_views_in_a_real_browser(reduce_world, tmp_path):
    """Semantic duplicates (groups, a curator's overrule) and the Selection panel's budget with its per-cluster
    table, in a real browser on a writable workspace."""
    import shutil

    from curation.structure.semdedup import DEFAULT_EPS, SemDedupConfig, groups, semdedup
    root = tmp_path / "ws"
    shutil.copytree(reduce_world, root)
    with Workspace(root) as ws:
        semdedup(ws, SemDedupConfig(keep="caption"), progress=False)
        first = groups(ws, DEFAULT_EPS, limit=1)["page"][0]
    other = first["members"][1]["id"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with served(root) as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Semantic duplicates").click()
        page.get_by_role("button", name="Show groups").click()
        note = page.locator("#semantic-note textarea")
        page.wait_for_function(f"el => /groups holding \\d+ samples at eps {DEFAULT_EPS:g}/.test(el.value)",
                               arg=note.element_handle())
        visible(page.locator("#semantic-members button img")).wait_for()
        assert visible(page.locator("#semantic-members")).inner_text().count("· ★ kept") == 1
        visible(page.locator("#semantic-curve-picture img")).wait_for()
        curve_text = visible(page.locator("#semantic-curve")).inner_text()
        assert "hardest-hit cluster" in curve_text and f"{1 - DEFAULT_EPS:g}" in curve_text
        assert re.search(r"\d+\.\d%", visible(page.locator("#semantic-clusters")).inner_text())
        page.locator("#semantic-keep input").fill(str(other))
        page.get_by_role("button", name="Keep this one instead").click()
        said = page.locator("#semantic-said textarea")
        page.wait_for_function("el => /is kept instead of/.test(el.value)", arg=said.element_handle())
        assert f"#{other} is kept instead of #{first['kept']}" in said.input_value()
        page.screenshot(path=shots / "semantic.png", full_page=True)

        page.get_by_role("tab", name="Filter").click()
        page.locator("#selection-eps input").fill("0.05")
        page.locator("#selection-budget input").fill("0.3")
        page.get_by_role("button", name="Preview").click()
        said = page.locator("#selection-note textarea")
        page.wait_for_function("el => /beyond the budget/.test(el.value)", arg=said.element_handle())
        assert "semantic duplicates (eps 0.05, keep by caption)" in said.input_value()
        page.wait_for_function("() => /\\d+%/.test(document.querySelector('#selection-quotas').innerText)")
        page.screenshot(path=shots / "filter-budget.png", full_page=True)
    with Workspace(root, read_only=True) as ws:
        assert ws.scalar("SELECT keep_id FROM semdedup_overrides") == other
    assert (shots / "semantic.png").stat().st_size > 10_000


def test_page_boxes_count_from_one_like_the_page_text():
    """Issue 30 point 7: a page box showed 0 beside "page 1 of 2". The boxes count from 1; handlers from 0."""
    from app.handlers import UserError, from_page_box, to_page_box
    assert [from_page_box(v) for v in (None, 1, 3, 3.0)] == [0, 0, 2, 2]
    assert to_page_box(("tiles", "ids", "page 1 of 2", 0)) == ("tiles", "ids", "page 1 of 2", 1)
    with pytest.raises((UserError, ValueError)):
        from_page_box(-2)
