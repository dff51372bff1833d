"""Handlers for the views that write: Review (labels, reward training), the Selection panel and Export.

Same rules as :mod:`app.handlers`: every input is validated on the server, bad
values raise :class:`UserError`. Writes go through the curation library (labels,
reward, select, export), the same code the CLI runs. A server started with
``--read-only`` refuses them with a clear message.
"""
from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

from app.charts import per_cluster_view
from app.handlers import Handlers, UserError, as_float, as_int, one_of
from curation.export.budget import ALLOCATE, PICK
from curation.export.export import ExportConfig, run
from curation.export.formats import format_names
from curation.export.policy import ExportError
from curation.export.presets import FILE_FREE_PRESETS
from curation.export.select import (
    LABEL_FILTERS,
    POLICIES,
    SelectionExists,
    SelectionRule,
    preview_selection,
    preview_text,
    save_picked,
    save_selection,
    selection_names,
)
from curation.export.verify import read_back, verify_export
from curation.review import labels as label_store
from curation.review.edits import add_curator_caption
from curation.review.progress import label_progress, progress_text
from curation.review.queue import review_queue, unlabelled_count
from curation.review.reward import apply_reward, load_model, train_from_labels
from curation.views.filter import default_source, imported_choices, reward_choices
from curation.views.gallery import SCORE_SOURCES, imported_name

QUEUES = {"most useful next": "useful", "lowest reward first": "lowest", "a cluster": "cluster",
          "a search": "search"}
ACTIONS = {"good": ("alignment", "good"), "bad": ("alignment", "bad"), "skip": (None, None),
           "best: alt": ("preference", "alt"), "best: syn": ("preference", "syn"),
           "best: fused": ("preference", "fused")}
QUEUE_SIZE = 50
CARD_VIEWS = ("browser", "search", "filter", "compare", "defaults", "map", "semantic")


@contextlib.contextmanager
def _selection_errors():
    """A refused or invalid selection save as a message for the curator (an existing name: tick Replace)."""
    try:
        yield
    except SelectionExists as exc:
        raise UserError(str(SelectionExists(exc.name, exc.held, "tick 'Replace' to overwrite it"))) from None
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _replaced(result: dict) -> str:
    return f", replacing the previous {result['replaced']}" if result["replaced"] is not None else ""


NO_PRESET = "none"  # the Selection panel's preset choice that applies no DataComp baseline


class Curate:
    """Writes on behalf of the browser; ``read_only`` servers refuse them."""

    def __init__(self, h: Handlers, read_only: bool):
        self.h, self.ws, self.read_only = h, h.ws, read_only
        # the furthest review position each browser session was shown (see ``act``)
        self._positions: dict[str, tuple[tuple[int, ...], int]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def remember(self, session: str | None, ids: list[int], pos: int) -> None:
        """Note the queue and position a session shows (a new queue, or a move)."""
        if session:
            with self._lock:
                self._positions[session] = (tuple(ids), pos)

    def _writable(self) -> None:
        if self.read_only:
            raise UserError("this server was started with --read-only; labels, rewards, selections and exports "
                            "need 'altlens serve' without it")

    # ------------------------------------------------------------ review queue
    def queue(self, kind: str, cluster=None, text: str = ""):
        """Build a review queue; returns (ids, position 0) and the first sample's panel."""
        mode = QUEUES[one_of(kind, tuple(QUEUES), "queue")]
        if mode == "search":
            text = (text or "").strip()
            if not text:
                raise UserError("type what to search for, then start the queue")
            labelled = set(label_store.current(self.ws, "alignment"))
            ids = [h["id"] for h in self.h.searcher.text(text[:500], 4 * QUEUE_SIZE) if h["id"] not in labelled]
        else:
            cluster_id = None
            if mode == "cluster":
                cluster_id = as_int(cluster, "cluster")
                if cluster_id not in self.h.clusters():
                    raise UserError(f"no cluster {cluster_id}")
            ids = review_queue(self.ws, mode, QUEUE_SIZE, cluster_id)
            pool = unlabelled_count(self.ws, cluster_id)
        ids = ids[:QUEUE_SIZE]
        image, captions, facts, progress = self.panel(ids, 0)
        if mode == "search":
            progress += f" · the {len(ids)} nearest unlabelled matches"
        elif pool > len(ids):
            where = f" in cluster {cluster_id}" if cluster_id is not None else ""
            progress += (f" · the first {len(ids)} of {pool} unlabelled{where}; start the queue again for the next "
                         f"{min(QUEUE_SIZE, pool - len(ids))}")
        return ids, 0, image, captions, facts, progress

    def panel(self, ids: list[int], pos):
        """(sample card, captions table, facts, progress text) for position ``pos`` of the queue."""
        ids = [as_int(i, "sample id") for i in (ids or [])]
        pos = as_int(pos or 0, "position", 0, 10**6)
        if not ids:
            return "", [], [], "the queue is empty: start one above"
        if pos >= len(ids):
            return "", [], [], f"queue done: {len(ids)} samples seen. Start another queue, or train the reward."
        card, captions, facts, _ = self.h.sample(ids[pos])
        progress = f"sample {pos + 1} of {len(ids)} · #{ids[pos]} · {progress_text(label_progress(self.ws))}"
        return card, captions, facts, progress

    def act(self, ids: list[int], pos, action: str, who: str = "local", session: str | None = None):
        """Record ``action`` on the sample at ``pos`` (the one on screen when it was pressed); good/bad/skip move
        on, a caption preference stays. With ``session``, the screen never moves back: keys pressed faster than
        the server answers arrive as events that all carry the same position, and the slowest answer would
        otherwise show a sample already labelled."""
        self._writable()
        kind, value = ACTIONS[one_of(action, tuple(ACTIONS), "action")]
        ids = [as_int(i, "sample id") for i in (ids or [])]
        pos = as_int(pos or 0, "position", 0, 10**6)
        if pos >= len(ids):
            raise UserError("no sample on screen; start a queue first")
        # one session's actions run one at a time, in arrival order: two keys pressed together ran in parallel,
        # and the one that finished last (a preference, which stays on its sample) moved the screen back
        with self._session_lock(session):
            return self._act(ids, pos, kind, value, who, session)

    def _session_lock(self, session: str | None):
        if not session:
            return contextlib.nullcontext()
        with self._lock:
            return self._locks.setdefault(session, threading.Lock())

    def _act(self, ids: list[int], pos: int, kind, value, who: str, session: str | None):
        if kind is not None:
            label_store.add_label(self.ws, ids[pos], kind, value, who=who or "local", view="review")
        if kind != "preference":
            pos += 1
        if session:
            with self._lock:
                known = self._positions.get(session)
                if known is not None and known[0] == tuple(ids):
                    pos = max(pos, known[1])
                self._positions[session] = (tuple(ids), pos)
        return (pos, *self.panel(ids, pos))

    def label_one(self, sample_id, action: str, who: str = "local", view: str = "browser", tag: str = "") -> str:
        """Label the sample whose card is open in any view (``action``: good, bad, best: SOURCE, or tag with
        ``tag``); returns the card, now showing the label."""
        self._writable()
        one_of(view, CARD_VIEWS, "view")
        if sample_id in (None, ""):
            raise UserError("open a sample first: click a tile")
        sample_id = as_int(sample_id, "sample id")
        if action == "tag":
            kind, value = "tag", (tag or "").strip()
        else:
            kind, value = ACTIONS[one_of(action, tuple(a for a in ACTIONS if a != "skip"), "action")]
        try:
            label_store.add_label(self.ws, sample_id, kind, value, who=who or "local", view=view)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return self.h.sample(sample_id)[0]

    def write_caption(self, sample_id, text: str, who: str = "local", view: str = "browser") -> str:
        """Store a caption the curator wrote for the open sample (a new ``curator`` caption, embedded and scored;
        nothing is overwritten); returns the card, now showing it."""
        self._writable()
        one_of(view, CARD_VIEWS + ("review",), "view")
        if sample_id in (None, ""):
            raise UserError("open a sample first: click a tile")
        try:
            add_curator_caption(self.ws, as_int(sample_id, "sample id"), text or "", self.h.model, who or "local")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return self.h.sample(sample_id)[0]

    def tag(self, ids: list[int], pos, tag: str, who: str = "local") -> str:
        self._writable()
        ids = [as_int(i, "sample id") for i in (ids or [])]
        pos = as_int(pos or 0, "position", 0, 10**6)
        if pos >= len(ids):
            raise UserError("no sample on screen; start a queue first")
        label_store.add_label(self.ws, ids[pos], "tag", (tag or "").strip(), who=who or "local", view="review")
        return f"tagged #{ids[pos]} {tag.strip()!r}"

    # ------------------------------------------------------------ reward
    def train(self) -> str:
        self._writable()
        result = train_from_labels(self.ws)
        model, chooser = result["reward"], result["chooser"]
        low, high = model["cv_auroc_interval"]
        message = (f"trained on {model['labels']} labels ({model['good']} good, {model['bad']} bad): "
                   f"{model['folds']}-fold CV AUROC {model['cv_auroc']:.3f} (95% interval {low:.2f}–{high:.2f})"
                   f"{'; ' + model['warning'] if model['warning'] else ''}. Saved as {result['reward_file']}. "
                   "Apply it to score every sample.")
        if chooser is None:
            return f"{message} Caption chooser not trained: {result['chooser_skipped']}."
        return (f"{message} Caption chooser trained on {chooser['preferences']} preferences: CV accuracy "
                f"{chooser['cv_accuracy']:.2f} (most common choice alone {chooser['majority_share']:.2f}); the 'best' "
                "caption policy uses it.")

    def apply(self):
        self._writable()
        model = load_model(self.ws)
        if model is None:
            raise UserError("no learned reward yet: label some samples and train first")
        result = apply_reward(self.ws, model)
        self.h.reset_scores()
        return (f"reward v{result['version']} written for {result['samples']} samples and made active "
                f"(labels {result['labels']}, CV AUROC {result['cv_auroc']:.3f})")

    # ------------------------------------------------------------ selections and export
    def score_choices(self) -> list[tuple[str, str]]:
        return [(s, s) for s in SCORE_SOURCES] + reward_choices(self.ws) + imported_choices(self.ws)

    def default_source(self) -> str:
        return default_source(self.ws)

    def _rule(self, name: str, source: str, threshold, drop_dups: bool, labels: str, per_cluster,
              policy: str, reduce: tuple = ()) -> SelectionRule:
        allowed = [value for _, value in self.score_choices()]
        one_of(source, allowed, "score")
        t = as_float(threshold, "threshold")
        one_of(labels, LABEL_FILTERS, "label filter")
        one_of(policy, POLICIES, "caption policy")
        k = None if per_cluster in (None, "", 0) else as_int(per_cluster, "per-cluster K", 1, 10**7)
        rule = {"min_reward": t} if source == "reward" else {}
        if source.startswith("reward@"):
            rule = {"min_reward": t, "reward_version": int(source.partition("@")[2])}
        elif imported_name(source) is not None:
            rule = {"imported_min": {imported_name(source): t}}
        elif source != "reward":
            rule = {"source_min": {source: t}}
        rule |= self._reduce(*reduce) if reduce else {}
        try:
            return SelectionRule(name=(name or "").strip() or "preview", drop_duplicates=bool(drop_dups),
                                 labels=labels, per_cluster_k=k, caption_policy=policy, **rule)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def _reduce(self, semdedup_eps=None, budget=None, allocate: str = "sqrt", pick: str = "central",
                concept_rules: str = "", preset: str = NO_PRESET, fraction=0.3) -> dict:
        """The Selection panel's reduction fields (0 or empty: not used) as SelectionRule fields."""
        out: dict = {}
        if preset not in (None, "", NO_PRESET):
            out |= {"preset": one_of(preset, FILE_FREE_PRESETS, "preset"),
                    "fraction": as_float(fraction if fraction not in (None, "") else 0.3, "fraction")}
        eps = as_float(semdedup_eps or 0, "semantic dedup eps")
        if eps:
            stored = self.ws.get_meta("semdedup")
            if stored is None:
                raise UserError("no semantic dedup yet; run 'altlens semdedup --workspace WS' first")
            out |= {"semdedup_eps": eps, "semdedup_keep": stored["keep"]}
        share = as_float(budget or 0, "budget")
        if share:
            out |= {"budget": share, "allocate": one_of(allocate, ALLOCATE, "allocation"),
                    "pick": one_of(pick, PICK, "pick")}
        rules = tuple(part.strip() for part in (concept_rules or "").split(",") if part.strip())
        if len(rules) > 8 or len(concept_rules or "") > 400:
            raise UserError("at most 8 concept rules")
        return out | ({"concepts": rules} if rules else {})

    def preview(self, name: str, source: str, threshold, drop_dups: bool, labels: str, per_cluster,
                policy: str, *reduce) -> tuple:
        """What saving would keep, step by step (the Filter's "kept" is only the first step), and with a budget
        what each cluster keeps and drops (a table and bars)."""
        try:
            found = preview_selection(self.ws, self._rule(name, source, threshold, drop_dups, labels, per_cluster,
                                                          policy, reduce))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        exists = (f" · a selection named {name.strip()!r} exists ({found['exists']} samples)"
                  if found["exists"] is not None and (name or "").strip() else "")
        return (preview_text(found) + exists, *per_cluster_view(found.get("per_cluster")))

    def save(self, name: str, source: str, threshold, drop_dups: bool, labels: str, per_cluster, policy: str,
             replace: bool = False, *reduce) -> str:
        """Save the selection; a saved one of the same name is replaced only when ``replace`` is ticked."""
        self._writable()
        if not (name or "").strip():
            raise UserError("type a selection name (letters, digits, - _ or .)")
        rule = self._rule(name, source, threshold, drop_dups, labels, per_cluster, policy, reduce)
        with _selection_errors():
            found = preview_selection(self.ws, rule)
            result = save_selection(self.ws, rule, replace=bool(replace))
        return (f"selection {result['name']!r} saved: {result['selected']} of {result['ok_samples']} samples "
                f"({result['share']:.1%}){_replaced(result)}. {preview_text(found)}")

    # ------------------------------------------------------------ semantic duplicates
    def save_region(self, name: str, ids, picked: str, policy: str, replace: bool = False) -> str:
        """Save the samples of a map region as a selection (exactly those; export reads them like any other)."""
        self._writable()
        if not ids:
            raise UserError("draw a box or a lasso on the map first")
        if not (name or "").strip():
            raise UserError("type a selection name (letters, digits, - _ or .)")
        one_of(policy, POLICIES, "caption policy")
        with _selection_errors():
            result = save_picked(self.ws, name.strip(), ids, picked, policy, replace=bool(replace))
        return (f"selection {result['name']!r} saved: {result['selected']} samples of the region's {result['asked']}"
                f"{_replaced(result)}; export it from the Export tab")

    def tag_many(self, ids, tag: str, who: str = "local", view: str = "map") -> str:
        """Tag every sample of a map region (one label row each)."""
        self._writable()
        one_of(view, CARD_VIEWS, "view")
        if not ids:
            raise UserError("draw a box or a lasso on the map first")
        tag = (tag or "").strip()
        if not label_store.TAG.fullmatch(tag):
            raise UserError(f"a tag is 1-64 letters, digits, spaces or . : / -, got {tag!r}")
        added = label_store.add_labels(self.ws, [as_int(i, "sample id") for i in ids], "tag", tag, who or "local", view)
        return f"tagged {added} samples {tag!r}"

    def selection_names(self) -> list[str]:
        return selection_names(self.ws)

    def export(self, name: str, fmt: str, shard_size, augmentations):
        """Export into ``<workspace>/exports/<selection>-<format>`` (the browser never picks a server path)."""
        self._writable()
        one_of(name, self.selection_names(), "selection")
        one_of(fmt, format_names(), "format")
        cfg = ExportConfig(selection=name, format=fmt,
                           out=str(self.ws.root / "exports" / f"{name}-{fmt}"),
                           shard_size=as_int(shard_size, "shard size", 1, 10**7),
                           augmentations=as_int(augmentations or 0, "augmentations", 0, 16))
        manifest = run(self.ws, cfg)
        try:
            verify_export(cfg.out)
            verdict = "every file verified"
        except ExportError as exc:
            verdict = f"VERIFY FAILED: {exc}"
        files = [[f["file"], f["samples"], f["sha256"][:16]] for f in manifest["files"]]
        summary = f"wrote {manifest['samples']} samples in {len(files)} file(s) to {cfg.out}; {verdict}"
        return summary, files, read_back(Path(cfg.out), manifest), json.dumps(
            {k: v for k, v in manifest.items() if k != "files"}, indent=1, default=str)
