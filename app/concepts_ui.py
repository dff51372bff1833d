"""The Concepts view: make a concept from a prompt, tag samples for it from its review queue, train it on the
tags and see its scores. The same library calls as ``altlens concept add|queue|tag|train``
(:mod:`curation.review.concepts`); heads are imported with the CLI."""
from __future__ import annotations

import gradio as gr
import numpy as np

from app.charts import histograms
from app.curate import CARD_VIEWS, Curate
from app.curate_ui import _session
from app.handlers import UserError, as_int, one_of
from app.turns import HEAVY
from curation.review import concepts

QUEUE = 20
SEND_MAX = 10_000  # samples one "send to concept" may tag: a lasso over a 12.8 M-row map is not a label
LISTING = ["concept", "prompt", "tagged with", "tagged without", "latest", "CV AUROC", "zero-shot AUROC"]


class ConceptDesk:
    """Handlers for the Concepts view; writes are refused on a ``--read-only`` server."""

    def __init__(self, c: Curate):
        self.c, self.h, self.ws = c, c.h, c.ws

    def names(self) -> list[str]:
        return concepts.names(self.ws)

    def listing(self) -> list[list]:
        rows = []
        for c in concepts.listing(self.ws):
            v = c["versions"][0] if c["versions"] else None
            p = v["provenance"] if v else {}
            rows.append([c["name"], c["prompt"] or "", c["tagged_with"], c["tagged_without"],
                         f"v{v['version']} {v['kind']}" if v else "no scores", _fmt(p.get("cv_auroc")),
                         _fmt(p.get("zero_shot_auroc"))])
        return rows

    def create(self, name: str, prompt: str) -> str:
        """A new concept (or a new prompt for one); with a prompt, its zero-shot scores for every sample."""
        self.c._writable()
        name, prompt = (name or "").strip().lower(), (prompt or "").strip()[:300] or None
        try:
            out = concepts.add(self.ws, name, prompt, self.h.model if prompt else None)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if prompt:
            return (f"{name}: zero-shot scores v{out['version']} for {out['samples']} samples from "
                    f"{prompt!r} against {concepts.BASELINE_PROMPT!r}. Start its queue and tag what you see.")
        return f"{name}: created without a prompt; import a head or tag samples found elsewhere to score it"

    def queue(self, name: str):
        """The concept's review queue: (ids, their scores and why they were picked, position 0, first panel)."""
        name = self._name(name)
        try:
            items = concepts.queue(self.ws, name, QUEUE)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        ids = [i["sample_id"] for i in items]
        notes = [f"score {i['score']:.2f} ({'the score is unsure' if i['why'] == 'uncertain' else 'random'})"
                 for i in items]
        return ids, notes, 0, *self.panel(name, ids, notes, 0)

    def panel(self, name: str, ids: list[int], notes: list[str], pos) -> tuple[str, str]:
        """(sample card, progress text) at ``pos``."""
        ids = [as_int(i, "sample id") for i in (ids or [])]
        pos = as_int(pos or 0, "position", 0, 10**6)
        tagged = concepts.tags(self.ws, name) if name else {}
        counts = f"{name}: {sum(tagged.values())} tagged with, {len(tagged) - sum(tagged.values())} without"
        if not ids:
            return "", f"nothing to tag: start the queue · {counts}"
        if pos >= len(ids):
            return "", f"queue done ({len(ids)} seen) · {counts} · train it, or start the queue again"
        note = notes[pos] if notes and pos < len(notes) else ""
        return self.h.sample(ids[pos])[0], f"sample {pos + 1} of {len(ids)} · #{ids[pos]} · {note} · {counts}"

    def tag(self, name: str, ids: list[int], notes: list[str], pos, present: bool | None, who: str = "local"):
        """Tag the sample on screen as showing the concept (``present``), not, or skip it (None); move on."""
        self.c._writable()
        name = self._name(name)
        ids = [as_int(i, "sample id") for i in (ids or [])]
        pos = as_int(pos or 0, "position", 0, 10**6)
        if pos >= len(ids):
            raise UserError("no sample on screen; start the concept's queue first")
        if present is not None:
            concepts.tag(self.ws, name, [ids[pos]], present, who=who or "local", view="concepts")
        return pos + 1, *self.panel(name, ids, notes, pos + 1)

    def send(self, name: str, ids, present: bool, who: str = "local", view: str = "map") -> str:
        """Tag every sample of what is on screen (a map region, a gallery page, a search result) for the concept,
        as showing it (``present``) or not."""
        self.c._writable()
        name = self._name(name)
        one_of(view, CARD_VIEWS, "view")
        ids = [as_int(i, "sample id") for i in (ids or [])]
        if not ids:
            raise UserError("nothing to send yet: draw a region, open a page or search first")
        if len(ids) > SEND_MAX:
            raise UserError(f"{len(ids):,} samples are more than the {SEND_MAX:,} one send may tag; draw a smaller "
                            "region")
        added = concepts.tag(self.ws, name, ids, present, who=who or "local", view=view)
        tagged = concepts.tags(self.ws, name)
        with_ = sum(tagged.values())
        return (f"{added} samples tagged as {'showing' if present else 'not showing'} {name} · {name}: {with_} "
                f"tagged with, {len(tagged) - with_} without (train it in the Concepts view)")

    def train(self, name: str):
        """Train on the tags; (message, score histogram)."""
        self.c._writable()
        name = self._name(name)
        try:
            r = concepts.train(self.ws, name)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        low, high = r["cv_auroc_interval"]
        zero = (f"; zero-shot on the same tags {r['zero_shot_auroc']:.3f}" if r["zero_shot_auroc"] is not None
                else "")
        without = r["without"]
        text = (f"{name} v{r['version']} trained on {r['tags']} tags ({r['tags'] - without} with, {without} without), "
                f"{r['features']} embedding: {r['folds']}-fold CV AUROC {r['cv_auroc']:.3f} (95% interval "
                f"{low:.2f}–{high:.2f}){zero}. Scores written for {r['samples']} samples; rules such as "
                f"{name}<0.5 in the Selection panel use them.")
        return text, self.picture(name)

    def picture(self, name: str):
        """Histogram of the concept's latest scores, with the tagged samples' scores beside them."""
        name = self._name(name)
        values = concepts.scores(self.ws, name)
        if not values:
            return None
        tagged = concepts.tags(self.ws, name)
        version = concepts.latest(self.ws, name)
        return histograms({"all samples": np.array(list(values.values())),
                           "tagged with": np.array([values[i] for i, v in tagged.items() if v and i in values]),
                           "tagged without": np.array([values[i] for i, v in tagged.items()
                                                       if not v and i in values])},
                          threshold=0.5, title=f"{name} v{version} scores", xlabel=f"P({name})")

    def _name(self, name) -> str:
        if name in (None, ""):
            raise UserError("choose a concept (or create one above)")
        try:
            return concepts.get(self.ws, concepts.check_name(str(name)))["name"]
        except LookupError as exc:
            raise UserError(str(exc)) from None


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def concept_sender(c: Curate, friendly, who, ids: gr.State, view: str, what: str) -> None:
    """A row under a result list (``ids``: the region, page or hits on screen) that tags all of it for a
    concept, as positives or negatives; the concept list is read again each time it is opened."""
    desk = ConceptDesk(c)
    with gr.Row():
        chosen = gr.Dropdown(friendly(desk.names)(), value=None, label=f"Send {what} to a concept", scale=2,
                             elem_id=f"{view}-concept")
        present = gr.Radio(["shows it", "does not"], value="shows it", label="as", scale=1,
                           elem_id=f"{view}-concept-as")
        send = gr.Button("Send to concept", scale=1, elem_id=f"{view}-send-concept")
    said = gr.Textbox(show_label=False, interactive=False, elem_id=f"{view}-concept-said")
    chosen.focus(lambda current: gr.Dropdown(choices=friendly(desk.names)(), value=current), [chosen], [chosen],
                 show_progress="hidden")

    def do_send(name, on_screen, as_what, request: gr.Request):
        return friendly(desk.send)(name, on_screen, as_what == "shows it", who(request), view)
    send.click(do_send, [chosen, ids, present], [said], trigger_mode="once")


def concepts_tab(c: Curate, friendly, who) -> dict:
    """Concepts: the table of concepts, create one from a prompt, tag from its queue, train, see its scores."""
    desk = ConceptDesk(c)
    gr.Markdown("A **concept** scores something the reward does not cover (a watermark, text in the picture, "
                "an off-topic image). Start from a prompt (CLIP's zero-shot guess), tag what you see in its queue "
                "(the samples the score is least sure of, mixed with random ones), then train: a classifier on "
                "the embeddings, with its cross-validated AUROC beside the prompt's. Use it in the Selection "
                "panel as `name<0.5`. Import a head (e.g. an aesthetic predictor) with `altlens concept import`.")
    table = gr.Dataframe(value=friendly(desk.listing), headers=LISTING, label="Concepts", interactive=False,
                         elem_id="concepts-table")
    with gr.Row():
        name = gr.Textbox(label="New concept", max_lines=1, placeholder="watermark", elem_id="concept-name")
        prompt = gr.Textbox(label="Prompt (optional)", max_lines=1, placeholder="a photo with a watermark",
                            elem_id="concept-prompt", scale=2)
        create = gr.Button("Add concept / set prompt", elem_id="concept-create")
    made = gr.Textbox(label="", show_label=False, interactive=False, elem_id="concept-made")
    with gr.Row():
        chosen = gr.Dropdown(friendly(desk.names)(), value=None, label="Concept", elem_id="concept-chosen")
        start = gr.Button("Start its queue", variant="primary", elem_id="concept-start")
    ids, notes, pos = gr.State([]), gr.State([]), gr.State(0)
    progress = gr.Textbox(label="Progress", interactive=False, elem_id="concept-progress")
    card = gr.HTML(elem_id="concept-card")
    with gr.Row():
        yes = gr.Button("shows it", elem_id="concept-yes", size="sm")
        no = gr.Button("does not", elem_id="concept-no", size="sm")
        skip = gr.Button("skip", elem_id="concept-skip", size="sm")
    with gr.Row():
        train = gr.Button("Train on the tags", elem_id="concept-train")
        result = gr.Textbox(label="Trained", interactive=False, elem_id="concept-trained", scale=3)
    hist = gr.Image(label="Scores", interactive=False, elem_id="concept-hist", height=300)

    def do_create(n, p):
        said = friendly(desk.create)(n, p)
        names = friendly(desk.names)()
        pick = (n or "").strip().lower()
        return said, friendly(desk.listing)(), gr.Dropdown(choices=names, value=pick if pick in names else None)
    create.click(do_create, [name, prompt], [made, table, chosen])
    start.click(lambda n: (*friendly(desk.queue)(n), friendly(desk.picture)(n)), [chosen],
                [ids, notes, pos, card, progress, hist])
    for button, present in ((yes, True), (no, False), (skip, None)):
        def act(n, i, t, p, request: gr.Request, present=present):
            return friendly(desk.tag)(n, i, t, p, present, who(request))
        button.click(act, [chosen, ids, notes, pos], [pos, card, progress], trigger_mode="once")
    def train_concept(n, request: gr.Request):
        trained = friendly(c.h.turns.run)(_session(request) or "", "concept training", friendly(desk.train), n)
        return (*trained, friendly(desk.listing)())
    train.click(train_concept, [chosen], [result, hist, table], **HEAVY)

    def refresh(current):
        """The table and the concept list as the workspace has them now: a concept added, tagged or trained
        elsewhere (the CLI, another curator) shows when the view is opened, without a server restart."""
        names = friendly(desk.names)()
        return friendly(desk.listing)(), gr.Dropdown(choices=names, value=current if current in names else None)
    return {"refresh": refresh, "inputs": [chosen], "outputs": [table, chosen]}
