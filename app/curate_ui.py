"""Layout of the writing views: Review (keyboard labelling + reward), the Selection panel (with semantic dedup,
a budget and concept rules), Export.

Keys in the Review view: g = good, b = bad, s = skip, 1/2/3 = best caption is
alt/syn/fused; in the Concepts view's queue g = shows it, b = does not, s = skip.
They are ignored while typing in a text box and whenever their view is not on
screen.
"""
import json
import re

import gradio as gr

from app.card import SCROLL_TO
from app.curate import ACTIONS, NO_PRESET, QUEUES, Curate
from app.handlers import CAPTION_COLUMNS, as_int
from app.turns import HEAVY
from curation.export.budget import ALLOCATE, PICK
from curation.export.formats import format_names
from curation.export.presets import FILE_FREE_PRESETS
from curation.export.select import LABEL_FILTERS, POLICIES
from curation.views.glossary import CAPTION_SCORES, glossary_markdown

KEYS = {"g": "good", "b": "bad", "s": "skip", "1": "best: alt", "2": "best: syn", "3": "best: fused"}
BUTTON_IDS = {action: "review-" + action.replace(": ", "-") for action in ACTIONS}
# the concept queue answers the same keys: g shows it, b does not, s skip
CONCEPT_KEYS = {"g": "concept-yes", "b": "concept-no", "s": "concept-skip"}
KEYS_JS = """() => {
  const keys = %s;
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    for (const id of keys[e.key.toLowerCase()] || []) {
      const el = document.getElementById(id);
      const btn = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
      if (!btn || btn.offsetParent === null) continue;  // its view is not on screen
      e.preventDefault();
      btn.click();
      return;
    }
  });
}""" % json.dumps({k: [BUTTON_IDS[a]] + ([CONCEPT_KEYS[k]] if k in CONCEPT_KEYS else []) for k, a in KEYS.items()})


def _who(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or "local") if request is not None else "local"


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def legend(names: tuple[str, ...]) -> None:
    """A closed "What these numbers mean" panel for the scores a view shows."""
    with gr.Accordion("What these numbers mean", open=False):
        gr.Markdown(glossary_markdown(names))


def details_panel() -> tuple[gr.Dataframe, gr.Dataframe]:
    """Every caption of every source and every fact of the sample on the card, closed until asked for."""
    with gr.Accordion("All captions and facts", open=False):
        captions = gr.Dataframe(headers=CAPTION_COLUMNS, label="Captions (every source)", interactive=False,
                                wrap=True)
        facts = gr.Dataframe(headers=["field", "value"], label="Sample facts", interactive=False, wrap=True)
    legend(CAPTION_SCORES)
    return facts, captions


def card_actions(c: Curate, friendly, open_id: gr.State, card: gr.HTML, view: str) -> None:
    """Label buttons under a view's sample card: the label is stored with the view's name and the card shows it."""
    with gr.Row(elem_id=f"{view}-actions"):
        buttons = {a: gr.Button(a, size="sm", elem_id=f"{view}-{a.replace(': ', '-')}")
                   for a in ("good", "bad", "best: alt", "best: syn", "best: fused")}
        tag = gr.Textbox(show_label=False, placeholder="tag", max_lines=1, scale=2, elem_id=f"{view}-tag")
        tag_btn = gr.Button("add tag", size="sm", elem_id=f"{view}-add-tag")
    for action, button in buttons.items():
        def label(sample_id, request: gr.Request, action=action):
            return friendly(c.label_one)(sample_id, action, _who(request), view)
        button.click(label, [open_id], [card], api_name=f"{view}_label_{action.replace(': ', '_')}")

    with gr.Row(elem_id=f"{view}-edit"):
        caption = gr.Textbox(show_label=False, max_lines=3, scale=5, elem_id=f"{view}-caption",
                             placeholder="write or correct the caption: saved as your caption beside the others, "
                                         "embedded and scored; export's 'best' policy uses it")
        caption_btn = gr.Button("save caption", size="sm", scale=1, elem_id=f"{view}-save-caption")

    def add_tag(sample_id, text, request: gr.Request):
        return friendly(c.label_one)(sample_id, "tag", _who(request), view, text)
    tag_btn.click(add_tag, [open_id, tag], [card], api_name=f"{view}_add_tag")

    def write(sample_id, text, request: gr.Request):
        return friendly(c.write_caption)(sample_id, text, _who(request), view), ""
    caption_btn.click(write, [open_id, caption], [card, caption], api_name=f"{view}_write_caption")


class SamplePanel:
    """The sample card of one view with its label buttons, caption box, details and near-duplicates.

    ``open_ids(gallery, ids_state)`` opens the clicked tile of a gallery whose tile ids sit in a state;
    ``open_tiles(gallery)`` reads the id from the tile's own caption ("#123 · ..."), for galleries that keep
    no ids; ``open_rows(table)`` opens the sample of a table row whose first column is the id."""

    def __init__(self, c: Curate, friendly, view: str):
        self.h, self.friendly, self.view = c.h, friendly, view
        self.card = gr.HTML(elem_id=f"{view}-card")
        self.open_id = gr.State(None)
        card_actions(c, friendly, self.open_id, self.card, view)
        self.facts, self.captions = details_panel()
        self.dups = gr.Gallery(label="Near-duplicates", columns=8, height=140, allow_preview=False)
        self.outputs = [self.card, self.captions, self.facts, self.dups, self.open_id]

    def show(self, sample_id):
        """The card, captions table, facts, duplicates and id of ``sample_id`` (a bad id: a visible message)."""
        sample_id = self.friendly(as_int)(sample_id, "sample id")
        return (*self.friendly(self.h.sample)(sample_id), sample_id)

    def _then_scroll(self, event):
        event.then(None, js=SCROLL_TO % f"{self.view}-card")

    def open_ids(self, gallery: gr.Gallery, ids: gr.State) -> None:
        def open_tile(evt: gr.SelectData, tile_ids):
            if not tile_ids or evt.index is None or not 0 <= int(evt.index) < len(tile_ids):
                raise gr.Error("that tile is no longer on the page")
            return self.show(tile_ids[int(evt.index)])
        self._then_scroll(gallery.select(open_tile, [ids], self.outputs))

    def open_tiles(self, gallery: gr.Gallery) -> None:
        def open_tile(evt: gr.SelectData):
            caption = (evt.value or {}).get("caption") if isinstance(evt.value, dict) else None
            found = re.search(r"#(\d+)", caption or "")
            if found is None:
                raise gr.Error("that tile names no sample")
            return self.show(int(found.group(1)))
        self._then_scroll(gallery.select(open_tile, None, self.outputs))

    def open_rows(self, table: gr.Dataframe) -> None:
        def open_row(evt: gr.SelectData, rows):
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            value = rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]
            return self.show(value)
        self._then_scroll(table.select(open_row, [table], self.outputs))


def review_tab(c: Curate, friendly, clusters: list[str], filters: dict) -> dict:
    ids, pos = gr.State([]), gr.State(0)
    gr.Markdown("Label one pair at a time. Keys: **g** good · **b** bad · **s** skip · **1/2/3** best caption "
                "is alt / syn / fused. Hover a caption for its producer.")
    with gr.Row():
        kind = gr.Dropdown(list(QUEUES), value="most useful next", label="Queue", elem_id="review-kind")
        cluster = gr.Dropdown(clusters[1:] or ["0"], value=(clusters[1:] or ["0"])[0], label="Cluster (queue: a cluster)")
        text = gr.Textbox(label="Search (queue: a search)", max_lines=1, placeholder="a dog on a beach")
        start = gr.Button("Start queue", variant="primary", elem_id="review-start")
    progress = gr.Textbox(label="Progress", interactive=False, elem_id="review-progress", lines=1, max_lines=2)
    image = gr.HTML(elem_id="review-card")
    with gr.Row(elem_id="review-actions"):
        buttons = {a: gr.Button(f"{a} ({k})", elem_id=BUTTON_IDS[a], variant="secondary", size="sm")
                   for k, a in KEYS.items()}
    facts, captions = details_panel()
    with gr.Row():
        tag = gr.Textbox(label="Tag", max_lines=1, placeholder="watermark")
        tag_btn = gr.Button("Add tag")
        tag_note = gr.Textbox(label="", interactive=False, show_label=False)
    with gr.Row():
        caption = gr.Textbox(label="Your caption", max_lines=3, scale=4, elem_id="review-caption",
                             placeholder="write or correct the caption (saved beside the others, embedded and scored)")
        caption_btn = gr.Button("Save caption", scale=1, elem_id="review-save-caption")
    with gr.Row():
        train_btn = gr.Button("Train reward from labels")
        apply_btn = gr.Button("Apply learned reward")
    reward_note = gr.Textbox(label="Learned reward", interactive=False, elem_id="review-reward")
    panel = [image, captions, facts, progress]
    def start_queue(k, cl, t, request: gr.Request):
        out = friendly(c.queue)(k, cl, t)
        c.remember(_session(request), out[0], 0)
        return out
    start.click(start_queue, [kind, cluster, text], [ids, pos, *panel], api_name="queue")
    for action, button in buttons.items():
        def act(i, p, request: gr.Request, action=action):
            return friendly(c.act)(i, p, action, _who(request), _session(request))
        button.click(act, [ids, pos], [pos, *panel], trigger_mode="once")

    def add_tag(i, p, t, request: gr.Request):
        return friendly(c.tag)(i, p, t, _who(request))
    tag_btn.click(add_tag, [ids, pos, tag], [tag_note], api_name="add_tag")

    def write(i, p, text, request: gr.Request):
        i, p = list(i or []), int(p or 0)
        if p >= len(i):
            raise gr.Error("no sample on screen; start a queue first")
        return friendly(c.write_caption)(i[p], text, _who(request), "review"), ""
    caption_btn.click(write, [ids, pos, caption], [image, caption], api_name="review_write_caption")
    def train(request: gr.Request):
        return friendly(c.h.turns.run)(_session(request) or "", "reward training", friendly(c.train))
    train_btn.click(train, [], [reward_note], **HEAVY)

    def apply(source, threshold, request: gr.Request):
        """Apply the learned reward; the Filter threshold keeps dropping the share it dropped before."""
        share = friendly(c.h.filter_index.dropped_share)(source, float(threshold))
        note = friendly(c.h.turns.run)(_session(request) or "", "reward scoring", friendly(c.apply))
        scale = friendly(c.h.threshold_scale)(source, source, threshold, share)
        return (note, gr.Dropdown(choices=c.score_choices()), threshold_slider(scale), scale["note"], source)
    apply_btn.click(apply, [filters["source"], filters["threshold"]],
                    [reward_note, filters["source"], filters["threshold"], filters["scale_note"],
                     filters["last_source"]], **HEAVY)

    def review_cluster(chosen, request: gr.Request):
        """Another view's "Review this cluster": the Review view, its queue set to that cluster and started."""
        if chosen in (None, "", "all"):
            raise gr.Error("choose a cluster first")
        return (gr.Tabs(selected="review"), "a cluster", str(chosen), *start_queue("a cluster", chosen, "", request))
    return {"outputs": [kind, cluster, ids, pos, *panel], "review_cluster": review_cluster}


def threshold_slider(scale: dict) -> gr.Slider:
    """The Filter threshold control for a score's range (see ``Handlers.threshold_scale``)."""
    return gr.Slider(minimum=scale["minimum"], maximum=scale["maximum"], step=scale["step"], value=scale["value"])


def selection_panel(c: Curate, friendly, source: gr.Dropdown, threshold: gr.Slider) -> None:
    with gr.Accordion("Save these pairs as a selection", open=True):
        with gr.Row():
            name = gr.Textbox(label="Selection name", max_lines=1, placeholder="aligned-v1", elem_id="selection-name")
            policy = gr.Dropdown(list(POLICIES), value="hybrid", label="Caption policy")
            labels = gr.Dropdown(list(LABEL_FILTERS), value="exclude_bad", label="Labels")
        with gr.Row():
            drop_dups = gr.Checkbox(value=True, label="Drop near-duplicates (keep each group's representative)")
            per_cluster = gr.Number(value=0, precision=0, minimum=0, label="Keep K per cluster (0 = all)")
            replace = gr.Checkbox(value=False, label="Replace a saved selection of this name")
        with gr.Row():
            eps = gr.Number(value=0, minimum=0, maximum=0.5, step=0.01, label="Semantic dedup eps (0 = off)",
                            elem_id="selection-eps")
            budget = gr.Number(value=0, minimum=0, maximum=1, step=0.05, label="Budget: share to keep (0 = all)",
                               elem_id="selection-budget")
            allocate = gr.Dropdown(list(ALLOCATE), value="sqrt", label="Spread the budget by cluster")
            pick = gr.Dropdown(list(PICK), value="central", label="Pick inside a cluster")
            concept_rules = gr.Textbox(label="Concept-score rules (altlens concept; e.g. watermark<0.5, comma-separated)",
                                       max_lines=1,
                                       elem_id="selection-concepts")
        with gr.Row():
            preset = gr.Dropdown([NO_PRESET, *FILE_FREE_PRESETS], value=NO_PRESET, elem_id="selection-preset",
                                 label="DataComp baseline applied first (the preview shows what it keeps)")
            fraction = gr.Number(value=0.3, minimum=0.01, maximum=1, step=0.05, elem_id="selection-fraction",
                                 label="datacomp-clip-score: share of the whole pool to keep")
        with gr.Row():
            preview = gr.Button("Preview", elem_id="selection-preview")
            save = gr.Button("Save selection", variant="primary", elem_id="selection-save")
        note = gr.Textbox(label="What it keeps", interactive=False, elem_id="selection-note")
        with gr.Row():
            quotas = gr.Dataframe(headers=["cluster", "candidates", "kept", "dropped", "kept share"],
                                  label="Per cluster under the budget", interactive=False, elem_id="selection-quotas")
            quota_bars = gr.Image(label="Share each cluster keeps", type="pil", interactive=False)
    rule = [name, source, threshold, drop_dups, labels, per_cluster, policy]
    reduce = [eps, budget, allocate, pick, concept_rules, preset, fraction]
    preview.click(friendly(c.preview), [*rule, *reduce], [note, quotas, quota_bars])
    save.click(friendly(c.save), [*rule, replace, *reduce], [note])


NO_SELECTION = "No saved selection yet: save one in the Filter view's Selection panel (or `altlens select`)."


def selection_choices(c: Curate, current: str | None = None) -> gr.Dropdown:
    """The Export view's selection list, refreshed (keeping the current pick); says how to make one when there
    is none."""
    names = c.selection_names()
    return gr.Dropdown(choices=names, value=current if current in names else (names[0] if names else None),
                       info=NO_SELECTION if not names else f"{len(names)} saved, newest first")


def export_tab(c: Curate, friendly) -> gr.Dropdown:
    names = c.selection_names()
    with gr.Row():
        selection = gr.Dropdown(names, label="Selection", elem_id="export-selection", allow_custom_value=False,
                                info=NO_SELECTION if not names else f"{len(names)} saved, newest first")
        refresh = gr.Button("↻ selections")
        fmt = gr.Dropdown(format_names(), value="datacompdr", label="Format")
        shard = gr.Number(value=10000, precision=0, minimum=1, label="Samples per shard")
        augment = gr.Number(value=0, precision=0, minimum=0, maximum=16, label="Augmented views (datacompdr)")
    run = gr.Button("Export", variant="primary", elem_id="export-run")
    summary = gr.Textbox(label="Result", interactive=False, elem_id="export-summary")
    with gr.Row():
        files = gr.Dataframe(headers=["file", "samples", "sha256"], label="Files (from manifest.json)",
                             interactive=False)
        sample = gr.Dataframe(headers=["key", "caption"], label="A sample of what was written (read back)",
                              interactive=False, wrap=True)
    manifest = gr.Code(label="manifest.json (without the file list)", language="json", interactive=False)

    def do_export(name, f, s, a, progress=gr.Progress(track_tqdm=True)):
        return friendly(c.export)(name, f, s, a)
    run.click(do_export, [selection, fmt, shard, augment], [summary, files, sample, manifest])
    refresh.click(lambda current: selection_choices(c, current), [selection], [selection])
    return selection
