"""What goes into an exported sample: its captions, the main caption chosen by the selection's caption policy,
its embeddings and provenance, read from the workspace in batches.

Policies: ``alt`` and ``hybrid`` (alt-text as the main caption; hybrid adds the
synthetic captions beside it), ``fused``, and ``best`` (a caption the curator wrote,
else the curator's preference, else the caption chooser, else the top clip_score). Where the policy's caption is
missing, or the alt-text is empty or junk, the fused caption stands in, else the
best synthetic one, so no exported sample is left without text.
"""
from __future__ import annotations

import hashlib

import numpy as np

from curation.captions.fusion_rules import junk_reason
from curation.review.chooser import best_of, choose_sources, load_chooser
from curation.scores.rewards import active_reward
from indexer.errors import AltlensError
from indexer.paths import read_member
from indexer.schema import ALT, CURATOR, FUSED, SYN
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore

IMAGE_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


class ExportError(AltlensError, RuntimeError):
    """An export directory that does not match the plan, or a shard that fails verification."""


def usable_alt(caption: dict) -> bool:
    """Can the alt-text be a main caption? Not when it is empty or junk (a filename, spam)."""
    return bool(caption["text"].strip()) and junk_reason(caption["text"]) is None


class SampleSource:
    """Reads everything a sample's export needs from the workspace, in batches."""

    def __init__(self, ws: Workspace, policy: str, augmentations: int = 0, keep_repeats: bool = False):
        self.ws, self.policy, self.augmentations, self.keep_repeats = ws, policy, augmentations, keep_repeats
        self.images = EmbeddingStore(ws, "image").load()
        self.texts = EmbeddingStore(ws, "text").load()
        self.model = ws.get_meta("model") or {}
        self.version = active_reward(ws)
        self.chooser = load_chooser(ws) if policy == "best" else None
        self._augmenter = None

    def rows(self, ids) -> list[dict]:
        """The export rows of a block of ``ids`` (a few hundred; a list or an array), in that order."""
        ids = [int(i) for i in ids]
        samples = {r["id"]: r for r in self.ws.dicts(
            """SELECT s.*, r.value AS reward, ss.agreement FROM samples s
               LEFT JOIN rewards r ON r.sample_id = s.id AND r.version = ?
               LEFT JOIN sample_scores ss ON ss.sample_id = s.id
               WHERE list_contains(?, s.id)""", [self.version or -1, ids])}
        captions: dict[int, list[dict]] = {}
        for c in self.ws.dicts("""SELECT c.id, c.sample_id, c.source_kind, c.producer, c.idx, c.text, cs.clip_score
                                  FROM captions c LEFT JOIN caption_scores cs ON cs.caption_id = c.id
                                  WHERE list_contains(?, c.sample_id) AND c.id < ?
                                  ORDER BY c.sample_id, c.source_kind, c.producer, c.idx""", [ids, len(self.texts)]):
            captions.setdefault(c["sample_id"], []).append(c)
        prefs = dict(self.ws.rows("""SELECT sample_id, arg_max(value, id) FROM labels WHERE kind = 'preference'
                                     AND list_contains(?, sample_id) GROUP BY 1""", [ids]))
        guesses = self._chooser_guesses(ids, captions, prefs)
        return [self._assemble(samples[i], captions.get(i, []), prefs.get(i), guesses.get(i)) for i in ids]

    def _chooser_guesses(self, ids: list[int], captions: dict, prefs: dict) -> dict[int, str | None]:
        """The caption chooser's source for samples the curator gave no preference (``best`` policy only)."""
        if self.chooser is None:
            return {}
        available = {}
        for i in ids:
            caps = captions.get(i, [])
            if i not in prefs and any(c["source_kind"] == ALT for c in caps):  # the chooser reads alt signals
                available[i] = {c["source_kind"] for c in caps if c["source_kind"] != "alt" or usable_alt(c)}
        return choose_sources(self.ws, self.chooser, available)

    def _assemble(self, s: dict, caps: list[dict], preferred: str | None, guess: str | None = None) -> dict:
        alt = next((c for c in caps if c["source_kind"] == ALT), None)
        syn_by_producer: dict[str, list[dict]] = {}
        for c in caps:
            if c["source_kind"] == SYN:
                mine = syn_by_producer.setdefault(c["producer"], [])
                # a captioner that wrote the same text twice adds nothing a trainer can use twice
                if self.keep_repeats or all(c["text"] != other["text"] for other in mine):
                    mine.append(c)
        main_syn = max(syn_by_producer, key=lambda p: (len(syn_by_producer[p]), p)) if syn_by_producer else None
        fused = [c for c in caps if c["source_kind"] == FUSED]
        written = max((c for c in caps if c["source_kind"] == CURATOR), key=lambda c: c["idx"], default=None)
        chosen, how = self._choose(alt, syn_by_producer.get(main_syn, []), fused, preferred, guess, written)
        return {"sample": s, "alt": alt, "main_syn": main_syn, "syn": syn_by_producer, "fused": fused,
                "curator": written, "chosen": chosen, "chosen_by": how}

    def _choose(self, alt, syn, fused, preferred, guess, written=None) -> tuple[dict | None, str]:
        """The caption that becomes ``<uid>.txt`` and why, by policy.

        ``best``: a caption the curator wrote (the latest), else the curator's preference, else the caption
        chooser's, else the top clip_score.
        ``fused``: the fused caption. ``alt`` and ``hybrid`` (which adds the synthetic captions beside
        it): the alt-text. Where the policy's caption is missing, or the alt-text is empty or junk, the
        fused caption stands in, else the best synthetic one, so no exported sample is left without text.
        """
        usable = alt if alt and usable_alt(alt) else None
        pools = {"alt": [usable] if usable else [], "syn": syn, "fused": fused}
        if self.policy == "best":
            if written is not None:
                return written, "curator"
            for source, how in ((preferred, "preference"), (guess, "chooser")):
                if source in pools and pools[source]:
                    return best_of(pools[source]), how
            return best_of([c for c in [usable] + syn + fused if c]), "top_clip_score"
        wanted = "fused" if self.policy == "fused" else "alt"
        for source in (wanted, "fused", "syn"):
            if pools[source]:
                return best_of(pools[source]), "policy" if source == wanted else "fallback"
        return alt, "policy"

    def image_bytes(self, s: dict) -> bytes:
        data = read_member(s["path"], s["member_offset"], s["member_size"])
        if hashlib.sha256(data).hexdigest() != s["sha256"]:
            raise ExportError(f"the image of sample {s['uid']} changed on disk since indexing ({s['path']})")
        return data

    def image_embeddings(self, item: dict) -> tuple[np.ndarray, list | None]:
        s = item["sample"]
        if not self.augmentations:
            return np.asarray(self.images[[s["id"]]], dtype=np.float32), None
        if self._augmenter is None:
            from curation.export.augment import Augmenter
            self._augmenter = Augmenter(self.ws)
        return self._augmenter.embed(self.image_bytes(s), s["uid"], self.augmentations)

    def metadata(self, item: dict) -> dict:
        s = item["sample"]
        scores = {c["source_kind"] + (f"_{c['idx']}" if c["source_kind"] == SYN else ""): c["clip_score"]
                  for c in ([item["alt"]] if item["alt"] else []) + item["syn"].get(item["main_syn"], []) + item["fused"]
                  + ([item["curator"]] if item.get("curator") else [])}
        return {"uid": s["uid"], "sha256": s["sha256"], "key": s["key"], "source": s["source"],
                "width": s["width"], "height": s["height"], "reward": s["reward"], "reward_version": self.version,
                "agreement": s["agreement"], "clip_score": scores,
                "caption_source": (item["chosen"] or {}).get("source_kind"), "caption_chosen_by": item["chosen_by"],
                "caption_producer": (item["chosen"] or {}).get("producer"),
                "embedding_model": self.model.get("model_id"), "syn_producer": item["main_syn"]}

    def image_ext(self, s: dict) -> str:
        return IMAGE_EXT.get(s["format"], (s["format"] or "jpg").lower())
