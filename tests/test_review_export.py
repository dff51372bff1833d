"""The writing views: Review (labels by keyboard, reward train/apply), the Selection panel and Export.

Handlers are called directly on a writable copy of the demo workspace, then the
real app is driven in Debian's Chromium: keystrokes label pairs, a selection is
saved from the Filter view and exported from the Export view, and what the
browser did is checked in the workspace and the shards afterwards.
"""
from __future__ import annotations

import json
import re

import pytest
from browser import browser_page, served
from conftest import writable_copy

from app.curate import Curate
from app.handlers import Handlers, UserError
from curation.export.verify import verify_export
from curation.review import labels as label_store
from curation.review.labels import history
from indexer.store import Workspace


@pytest.fixture()
def curate(demo_ws, tmp_path):
    ws = Workspace(writable_copy(demo_ws, tmp_path))
    yield Curate(Handlers(ws), read_only=False)
    ws.close()


def test_review_queue_labels_and_moves_on(curate):
    ids, pos, card, captions, facts, progress = curate.queue("lowest reward first")
    assert len(ids) == 50 and pos == 0 and progress.startswith("sample 1 of 50")
    ok = curate.ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok'")
    assert f"the first 50 of {ok} unlabelled; start the queue again for the next 50" in progress, "no silent cap"
    assert ".webp" in card and "not labelled" in card and {row[0] for row in captions} >= {"alt", "syn"}
    pos, *_ = curate.act(ids, pos, "bad")
    assert pos == 1
    pos, *_, progress = curate.act(ids, pos, "best: fused")
    assert pos == 1, "a caption preference keeps the sample on screen"
    pos, *_, progress = curate.act(ids, pos, "skip")
    assert pos == 2 and "1 bad" in progress
    assert curate.tag(ids, 1, "watermark").startswith("tagged")
    rows = history(curate.ws, ids[1])
    assert [(r["kind"], r["value"], r["view"]) for r in rows] == [("preference", "fused", "review"),
                                                                  ("tag", "watermark", "review")]
    with pytest.raises(UserError, match="unknown action"):
        curate.act(ids, 0, "<script>")
    cluster = curate.h.clusters()[0]
    ids, *_ = curate.queue("a cluster", str(cluster))
    members = {r[0] for r in curate.ws.rows("SELECT sample_id FROM clusters WHERE cluster = ?", [cluster])}
    assert ids and set(ids) <= members
    ids, *_ = curate.queue("a search", text="a large yellow star")
    assert ids


def test_a_late_answer_labels_what_was_on_screen_and_never_moves_back(curate):
    ids, *_ = curate.queue("lowest reward first")
    curate.remember("s1", ids, 0)
    assert curate.act(ids, 0, "good", session="s1")[0] == 1
    pos, card, *_ = curate.act(ids, 0, "best: syn", session="s1")  # pressed on sample 1, answered after "good"
    assert pos == 1 and f'data-sample="{ids[1]}"' in card
    assert [(r["kind"], r["value"]) for r in history(curate.ws, ids[0])] == [("alignment", "good"),
                                                                            ("preference", "syn")]
    assert curate.act(ids, 1, "skip", session="other")[0] == 2, "sessions are apart"


def test_label_from_any_card_and_tiles_show_labels(curate):
    tiles, ids, *_ = curate.h.browse("all", 0)
    card = curate.label_one(ids[3], "good", view="search")
    assert "labelled good" in card and f'data-sample="{ids[3]}"' in card
    assert "tag: blurry" in curate.label_one(ids[3], "tag", view="search", tag="blurry")
    assert [(r["kind"], r["value"], r["view"]) for r in history(curate.ws, ids[3])] == [
        ("alignment", "good", "search"), ("tag", "blurry", "search")]
    tiles, ids2, *_ = curate.h.browse("all", 0)
    assert tiles[ids2.index(ids[3])][1].endswith(" · good") and not tiles[0][1].endswith(("good", "bad"))
    for bad in ((None, "good"), (ids[3], "skip"), (ids[3], "<b>")):
        with pytest.raises(UserError):
            curate.label_one(*bad, view="browser")
    with pytest.raises(UserError, match="unknown view"):
        curate.label_one(ids[3], "good", view="admin")
    with pytest.raises(UserError, match="--read-only"):
        Curate(curate.h, read_only=True).label_one(ids[3], "bad")


def test_read_only_server_refuses_writes(curate):
    ro = Curate(curate.h, read_only=True)
    ids, *_ = ro.queue("most useful next")
    with pytest.raises(UserError, match="--read-only"):
        ro.act(ids, 0, "good")
    with pytest.raises(UserError, match="--read-only"):
        ro.save("x", "reward", 0.5, True, "exclude_bad", 0, "hybrid")


def test_selection_from_a_reward_version_and_export(curate):
    with pytest.raises(UserError, match="selection name"):
        curate.save("../../etc", "reward", 0.5, True, "exclude_bad", 0, "hybrid")
    with pytest.raises(UserError, match="unknown score"):
        curate.save("a", "reward; DROP TABLE samples", 0.5, True, "exclude_bad", 0, "hybrid")
    version = curate.score_choices()[-1][1]
    assert version.startswith("reward@")
    _, counts, *_ = curate.h.filter(version, 0.6)
    assert counts.startswith("kept ")
    with pytest.raises(UserError, match="no reward version"):
        curate.h.filter("reward@99", 0.6)
    note = curate.save("kept", version, 0.6, True, "exclude_bad", 0, "best")
    assert "saved" in note
    summary, files, sample, manifest = curate.export("kept", "webdataset", 100, 0)
    assert "every file verified" in summary and files and sample
    out = curate.ws.root / "exports" / "kept-webdataset"
    assert verify_export(out)["samples"] == json.loads(manifest)["samples"]
    with pytest.raises(UserError, match="unknown selection"):
        curate.export("nope", "webdataset", 100, 0)


@pytest.mark.browser
def test_label_select_and_export_in_a_real_browser(demo_ws, tmp_path):
    root = writable_copy(demo_ws, tmp_path)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with Workspace(root, read_only=True) as ws:
        cluster = str(ws.scalar("SELECT max(cluster) FROM clusters"))
    with served(root) as url, browser_page() as page:
        page.goto(url)
        # pick a cluster in the Browser; from there, review that cluster
        page.get_by_role("tab", name="Browser").click()
        page.locator("#browser-cluster input").click()
        page.get_by_role("option", name=cluster, exact=True).click()
        page.wait_for_function("el => /samples · page 1 of/.test(el.value)",
                               arg=page.get_by_label("In view").element_handle())
        page.get_by_role("button", name="Review this cluster").click()
        progress = page.locator("#review-progress textarea")
        page.wait_for_function("el => /^sample 1 of/.test(el.value)", arg=progress.element_handle())
        assert f"cluster {cluster}" in page.locator("#review-card").inner_text()
        page.locator("#review-kind input").click()
        page.get_by_role("option", name="most useful next").click()
        page.locator("#review-start").click()  # the most useful queue: 50 of every unlabelled sample
        page.wait_for_function("el => /^sample 1 of 50 .*the first 50 of/.test(el.value)", arg=progress.element_handle())
        page.locator("body").click(position={"x": 5, "y": 5})  # focus off any text box
        for key, expect in (("g", 2), ("b", 3), ("s", 4), ("2", 4), ("g", 5)):
            page.keyboard.press(key)
            page.wait_for_function(f"el => /^sample {expect} of/.test(el.value)", arg=progress.element_handle())
        page.wait_for_timeout(1000)
        assert progress.input_value().startswith("sample 5 of"), "a slower answer never moves the screen back"
        assert "not labelled" in page.locator("#review-card").inner_text()
        page.screenshot(path=shots / "review.png", full_page=True)
        page.set_viewport_size({"width": 1280, "height": 720})
        page.locator("#review-card").scroll_into_view_if_needed()
        page.evaluate("document.getElementById('review-card').scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
        page.screenshot(path=shots / "review-1280.png")
        boxes = {"image": page.locator("#review-card .al-img img").bounding_box()}
        for source in ("alt", "syn", "fused"):
            boxes[source] = page.locator(f'#review-card .al-col[data-source="{source}"]').bounding_box()
        for action in ("good", "bad", "skip", "best-fused"):
            boxes[action] = page.locator(f"#review-{action}").bounding_box()
        off = {k: b for k, b in boxes.items() if not (b and b["y"] >= 0 and b["y"] + b["height"] <= 720
                                                       and b["x"] >= 0 and b["x"] + b["width"] <= 1280)}
        assert not off, f"off the 1280x720 screen: {off}"

        page.get_by_role("tab", name="Browser").click()  # label from the Browser's card too
        page.get_by_role("button", name="Show").click()
        page.locator(".tile-gallery button").filter(visible=True).nth(7).click()
        card = page.locator("#browser-card")
        page.wait_for_function("el => /not labelled|labelled/.test(el.innerText)", arg=card.element_handle())
        page.locator("#browser-bad").click()
        page.wait_for_function("el => /labelled bad/.test(el.innerText)", arg=card.element_handle())

        page.get_by_role("tab", name="Search").click()  # ... and from Search, Compare and the Filter strips
        page.get_by_label("Find images matching a text").fill("a large purple star")
        page.get_by_role("button", name="Search", exact=True).click()
        page.locator("#search-results button").filter(visible=True).first.click()
        page.locator("#search-card .al-card").wait_for()
        page.locator("#search-good").click()
        page.wait_for_function("() => /labelled good/.test(document.querySelector('#search-card').innerText)")
        page.get_by_role("tab", name="Compare captions").click()
        page.get_by_role("button", name="Compare", exact=True).click()
        row = page.locator("#compare-table .virtual-row").nth(1)
        row.locator(".body-cell").nth(1).click()
        page.locator("#compare-card .al-card").wait_for()
        compared = int(page.get_attribute("#compare-card .al-card", "data-sample"))
        assert row.locator(".body-cell").first.inner_text().strip() == str(compared), "the card of the clicked row"
        page.locator("#compare-best-syn").click()
        page.wait_for_function("() => /best caption: syn/.test(document.querySelector('#compare-card').innerText)")
        page.get_by_role("tab", name="Filter").click()
        strip = "#filter-below .caption-label, #filter-below figcaption"
        page.locator(strip).first.wait_for()
        first = page.locator(strip).first.inner_text()
        page.locator("#filter-next").click()  # the strip pages on: the next 12 lowest
        page.wait_for_function("([sel, f]) => document.querySelector(sel)?.innerText !== f", arg=[strip, first])
        page.locator("#filter-below button").filter(visible=True).first.click()
        page.locator("#filter-card .al-card").wait_for()
        filtered = int(page.get_attribute("#filter-card .al-card", "data-sample"))
        assert f"#{filtered} " in page.locator(strip).first.inner_text()
        page.locator("#filter-bad").click()
        page.wait_for_function("() => /labelled bad/.test(document.querySelector('#filter-card').innerText)")


        page.get_by_role("tab", name="Filter").click()
        counts = page.locator("#filter-counts textarea")
        page.wait_for_function("el => /kept \\d+/.test(el.value)", arg=counts.element_handle())  # filled on open
        page.locator("#selection-name textarea, #selection-name input").first.fill("from-browser")
        note = page.locator("#selection-note textarea")
        page.get_by_role("button", name="Preview", exact=True).click()
        page.wait_for_function("el => /near-duplicates .* → \\d+ selected/.test(el.value)", arg=note.element_handle())
        page.get_by_role("button", name="Save selection").click()
        page.wait_for_function("el => /saved: \\d+ of/.test(el.value)", arg=note.element_handle())

        page.get_by_role("tab", name="Export").click()  # opening the view lists the new selection
        page.locator("#export-selection input").click()
        page.get_by_role("option", name="from-browser").click()
        page.get_by_role("button", name="Export", exact=True).click()
        summary = page.locator("#export-summary textarea")
        page.wait_for_function("el => /every file verified/.test(el.value)", arg=summary.element_handle(),
                               timeout=180_000)
        page.screenshot(path=shots / "export.png", full_page=True)
    assert (shots / "review.png").stat().st_size > 10_000 and (shots / "export.png").stat().st_size > 10_000
    with Workspace(root, read_only=True) as ws:
        labels = ws.rows("SELECT kind, value, who, view FROM labels ORDER BY id")
    assert labels == [("alignment", "good", "local", "review"), ("alignment", "bad", "local", "review"),
                      ("preference", "syn", "local", "review"), ("alignment", "good", "local", "review"),
                      ("alignment", "bad", "local", "browser"), ("alignment", "good", "local", "search"),
                      ("preference", "syn", "local", "compare"), ("alignment", "bad", "local", "filter")]
    out = root / "exports" / "from-browser-datacompdr"
    import webdataset as wds
    manifest = json.loads((out / "manifest.json").read_text())
    shard = str(out / manifest["files"][0]["file"])
    first = next(iter(wds.WebDataset(shard, shardshuffle=False)))
    assert {"txt", "npz", "json", "syn.json"} <= set(first)


def test_threshold_follows_the_score_it_filters_by(curate):
    """Switching the score, or applying a learned reward with another range, rescales the threshold control and
    keeps the share it dropped, and says so."""
    index = curate.h.filter_index
    before = index.dropped_share("reward", 0.625)
    to_syn = curate.h.threshold_scale("syn", "reward", 0.625)
    syn = index.values("syn")
    assert to_syn["minimum"] <= syn.min() and syn.max() <= to_syn["maximum"]
    assert abs(index.dropped_share("syn", to_syn["value"]) - before) < 0.01
    assert to_syn["note"].startswith("syn clip_score runs") and f"keep dropping {before:.0%}" in to_syn["note"]
    assert "keep dropping" not in curate.h.threshold_scale("reward", "reward", 0.625)["note"]

    truth = dict(curate.ws.rows("SELECT s.id, t.noise FROM demo_truth t JOIN samples s ON s.uid = t.uid"))
    for sample_id in sorted(truth)[:60]:
        label_store.add_label(curate.ws, sample_id, "alignment",
                              "good" if truth[sample_id] in ("correct", "partial") else "bad")
    assert "95% interval" in curate.train()
    curate.apply()
    learned = curate.h.threshold_scale("reward", "reward", 0.625, share=before)
    assert learned["maximum"] <= 1.0 and learned["value"] != 0.625, "a learned reward is a probability"
    assert abs(curate.h.filter_index.dropped_share("reward", learned["value"]) - before) < 0.01
    assert learned["note"].startswith(f"reward v{curate.ws.get_meta('active_reward')} (learned")


def test_selection_preview_explains_the_count_and_a_name_is_not_silently_reused(curate):
    """The Filter's 'kept' is the threshold alone; the preview lists what duplicates and labels remove, and the
    saved selection holds exactly what the preview said. Saving under a used name needs 'Replace'."""
    kept = int(curate.h.filter("reward", 0.6)[1].split()[1])
    rule = ("dups", "reward", 0.6, True, "exclude_bad", 0, "hybrid")
    text, quotas, bars = curate.preview(*rule)
    assert quotas == [] and bars is None, "no budget: no per-cluster quotas"
    steps = [part for part in text.split(" → ")]
    assert steps[1].startswith("reward below 0.6") and steps[2].startswith("near-duplicates")
    first_removed = int(steps[1].rsplit("−", 1)[1])
    assert int(steps[0].split()[0]) - first_removed == kept, (text, kept)
    selected = int(steps[-1].split()[0])
    assert f"saved: {selected} of" in curate.save(*rule)
    with pytest.raises(UserError, match="saved already .* tick 'Replace'"):
        curate.save(*rule)
    again = curate.save("dups", "reward", 0.3, True, "exclude_bad", 0, "hybrid", True)
    assert f"replacing the previous {selected}" in again
    assert "a selection named 'dups' exists" in curate.preview(*rule)[0]
    text, quotas, bars = curate.preview(*rule, 0, 0.5, "size", "central", "")
    assert "beyond the budget (50%" in text and sum(r[2] for r in quotas) == int(text.rsplit("→ ", 1)[1].split()[0])
    assert bars is not None


@pytest.mark.browser
def test_balanced_first_queue_then_train_apply_and_the_threshold_rescales_in_a_real_browser(demo_ws, tmp_path):
    """With no labels yet, the first queue labelled by keyboard (as the demo's truth says) reaches a trainable
    set of both classes; training shows an interval; applying the learned reward moves the Filter threshold
    onto the new score's range and says so."""
    from demo.reward_sim import GOOD, truth_by_id
    root = writable_copy(demo_ws, tmp_path)
    with Workspace(root, read_only=True) as ws:
        truth = truth_by_id(ws)
    with served(root) as url, browser_page(1280, 900) as page:
        page.goto(url)
        page.get_by_role("tab", name="Filter").click()
        scale = page.locator("#filter-scale textarea")
        page.wait_for_function("el => /^reward v1 .* runs 0 to 2\\./.test(el.value)", arg=scale.element_handle())
        page.get_by_role("tab", name="Review").click()
        page.locator("#review-start").click()
        progress = page.locator("#review-progress textarea")
        page.wait_for_function("el => /^sample 1 of/.test(el.value)", arg=progress.element_handle())
        page.locator("body").click(position={"x": 5, "y": 5})
        labelled = []
        while "enough to train" not in progress.input_value():
            text = progress.input_value()
            sample = int(re.search(r"· #(\d+) ·", text).group(1))
            labelled.append(truth[sample] in GOOD)
            page.keyboard.press("g" if labelled[-1] else "b")
            page.wait_for_function("([el, before]) => el.value !== before", arg=[progress.element_handle(), text])
            assert len(labelled) <= 24, f"still not trainable after {len(labelled)} labels: {progress.input_value()}"
        assert sum(labelled) >= 8 and len(labelled) - sum(labelled) >= 8
        page.get_by_role("button", name="Train reward from labels").click()
        note = page.locator("#review-reward textarea")
        page.wait_for_function("el => /CV AUROC [\\d.]+ \\(95% interval [\\d.]+/.test(el.value)",
                               arg=note.element_handle(), timeout=120_000)
        page.get_by_role("button", name="Apply learned reward").click()
        page.wait_for_function("el => /reward v2 written/.test(el.value)", arg=note.element_handle(), timeout=120_000)
        page.get_by_role("tab", name="Filter").click()
        page.wait_for_function("el => /^reward v2 /.test(el.value)", arg=scale.element_handle())
        moved = re.match(r"reward v2 .* runs ([\d.]+) to ([\d.]+); the threshold moved from 0.625 to ([\d.]+) to keep "
                         r"dropping \d+%", scale.input_value())
        assert moved, scale.input_value()
        low, high, value = map(float, moved.groups())
        assert 0 <= low <= value <= high <= 1.0, scale.input_value()
        slider = page.get_by_role("slider").first
        assert float(slider.get_attribute("aria-valuemax") or slider.get_attribute("max")) <= 1.0
        page.screenshot(path=tmp_path / "rescaled.png", full_page=True)


def test_selection_panel_applies_a_datacomp_preset_first_and_says_what_it_keeps(curate):
    """The preset runs over the whole pool before the Filter threshold and every other rule; on a workspace
    without imported scores the clip-score baseline ranks by the workspace model's own alt-text cosine."""
    import numpy as np
    ws = curate.ws
    cosines = np.array([r[0] for r in ws.rows("""SELECT cs.cosine FROM captions c JOIN caption_scores cs
                                                  ON cs.caption_id = c.id WHERE c.source_kind = 'alt'""")])
    cut = -np.sort(-cosines)[int(len(cosines) * 0.3)]  # DataComp's get_threshold
    expected = int((cosines >= cut).sum())
    rule = ("clip30", "alt", -1, False, "any", 0, "hybrid")
    text, _, _ = curate.preview(*rule, 0, 0, "sqrt", "central", "", "datacomp-clip-score", 0.3)
    steps = text.split(" → ")
    assert steps[1].startswith("below the top 30% by altlens.alt_cosine")
    assert int(steps[0].split()[0]) - int(steps[1].rsplit("−", 1)[1]) == expected
    with pytest.raises(UserError, match="unknown preset"):
        curate.preview(*rule, 0, 0, "sqrt", "central", "", "datacomp-everything", 0.3)
