"""Caption default behaviours (GRADE, with embeddings instead of VQA): what captions say vs what images show.

For a concept ("star") and an attribute axis (colour = yellow, red, ...):

- caption side: among captions of one source that mention the concept, how often
  each value is stated right before it ("a large *yellow* star");
- image side: among images whose captions mention the concept (or, with
  ``images="retrieval"``, whose cosine to "a photo of a {concept}" passes a
  threshold), a zero-shot classification over the values with prompt-ensembled
  embeddings ("a photo of a {value} {concept}", "a {value} {concept}").

Each side gets a distribution, normalised entropy ``H = -sum p log2 p / log2 K``
and a default flag (one value >= 80%). The finding is the gap between them.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from curation.claims.sets import ContrastSets
from curation.claims.words import STOP_WORDS
from indexer.schema import SOURCE_KINDS
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore

DEFAULT_SHARE = 0.8
TEMPLATES = ("a photo of a {value} {concept}", "a {value} {concept}")


@dataclass(frozen=True)
class DefaultsQuery:
    """A concept, an axis name and its values, which captions to read and how to pick images."""

    concept: str
    axis: str
    values: tuple[str, ...]
    source: str = "syn"
    images: str = "captions"
    retrieval_threshold: float = 0.2
    examples: int = 6

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z][A-Za-z\- ]{0,40}", self.concept or ""):
            raise ValueError(f"concept must be a word or two of letters, got {self.concept!r}")
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise ValueError(f"give at least two distinct axis values, got {list(self.values)}")
        if self.source not in SOURCE_KINDS:
            raise ValueError(f"unknown caption source {self.source!r}; allowed: {', '.join(SOURCE_KINDS)}")
        if self.images not in ("captions", "retrieval"):
            raise ValueError(f"unknown image selection {self.images!r}; allowed: captions, retrieval")


def parse_axis(text: str) -> tuple[str, tuple[str, ...]]:
    """'colour=yellow,red,blue' -> ('colour', ('yellow', 'red', 'blue'))."""
    name, sep, values = text.partition("=")
    vals = tuple(v.strip().lower() for v in values.split(",") if v.strip())
    if not sep or not name.strip() or len(vals) < 2:
        raise ValueError(f"--axis must look like NAME=VALUE1,VALUE2[,...], got {text!r}")
    return name.strip(), vals


def distribution(counts: Counter, values: tuple[str, ...]) -> dict:
    total = sum(counts[v] for v in values)
    shares = {v: (counts[v] / total if total else 0.0) for v in values}
    nonzero = [p for p in shares.values() if p > 0]
    entropy = -sum(p * math.log2(p) for p in nonzero) / math.log2(len(values)) if total else None
    top = max(values, key=lambda v: shares[v])
    return {"counts": {v: int(counts[v]) for v in values}, "shares": {v: round(s, 4) for v, s in shares.items()},
            "n": int(total), "entropy": None if entropy is None else round(entropy, 4),
            "top": top, "top_share": round(shares[top], 4), "default": bool(total and shares[top] >= DEFAULT_SHARE)}


def _mention(concept: str, values: tuple[str, ...]) -> re.Pattern:
    """A value at most two words before the concept (singular or plural)."""
    vals = "|".join(re.escape(v) for v in values)
    return re.compile(rf"\b({vals})\b(?:\s+[\w-]+){{0,2}}?\s+{re.escape(concept)}(?:s|es)?\b", re.I)


def caption_side(ws: Workspace, q: DefaultsQuery) -> tuple[dict, dict[str, list[int]], list[int]]:
    """Distribution of stated values, examples per value, and the samples whose captions mention the concept."""
    rows = ws.rows("""SELECT c.sample_id, c.text FROM captions c JOIN samples s ON s.id = c.sample_id
                      WHERE s.status = 'ok' AND c.source_kind = ? AND regexp_matches(lower(c.text), ?)""",
                   [q.source, rf"\b{re.escape(q.concept.lower())}(s|es)?\b"])
    pattern = _mention(q.concept, q.values)
    counts: Counter = Counter()
    examples: dict[str, list[int]] = {v: [] for v in q.values}
    for sample_id, text in rows:
        for match in pattern.finditer(text):
            value = match.group(1).lower()
            counts[value] += 1
            if len(examples[value]) < q.examples and sample_id not in examples[value]:
                examples[value].append(sample_id)
    return distribution(counts, q.values), examples, sorted({r[0] for r in rows})


def image_side(ws: Workspace, q: DefaultsQuery, model, mentioned: list[int]) -> tuple[dict, dict[str, list[int]]]:
    """Zero-shot distribution of the values over the concept's images, with the most confident examples."""
    images = EmbeddingStore(ws, "image").load()
    if q.images == "retrieval":
        ok = np.array([r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok' ORDER BY id")])
        query = model.encode_texts([t.replace("{value} ", "").format(concept=q.concept) for t in TEMPLATES]).mean(0)
        sims = np.asarray(images[ok], dtype=np.float32) @ (query / np.linalg.norm(query))
        chosen = ok[sims >= q.retrieval_threshold]
    else:
        chosen = np.array(mentioned, dtype=np.int64)
    if not len(chosen):
        return distribution(Counter(), q.values), {v: [] for v in q.values}
    prompts = np.stack([_prompt_vector(model, q.concept, v) for v in q.values])
    logits = np.asarray(images[chosen], dtype=np.float32) @ prompts.T
    picked = logits.argmax(1)
    margin = np.sort(logits, 1)[:, -1] - np.sort(logits, 1)[:, -2] if len(q.values) > 1 else logits[:, 0]
    counts = Counter(q.values[i] for i in picked)
    examples = {}
    for i, value in enumerate(q.values):
        rows = np.nonzero(picked == i)[0]
        examples[value] = [int(chosen[r]) for r in rows[np.argsort(-margin[rows])][: q.examples]]
    return distribution(counts, q.values), examples


def _prompt_vector(model, concept: str, value: str) -> np.ndarray:
    vecs = model.encode_texts([t.format(value=value, concept=concept) for t in TEMPLATES])
    mean = vecs.mean(0)
    return mean / np.linalg.norm(mean)


def find_default(ws: Workspace, q: DefaultsQuery, model) -> dict:
    """Both sides, their gap, and a one-line finding."""
    captions, cap_examples, mentioned = caption_side(ws, q)
    images, img_examples = image_side(ws, q, model, mentioned)
    gap = {v: round(captions["shares"][v] - images["shares"][v], 4) for v in q.values}
    top = captions["top"]
    finding = (f"{q.source} captions say {top} for {captions['top_share']:.0%} of {q.concept}s "
               f"({captions['n']} mentions); images show {top} for {images['shares'][top]:.0%} "
               f"({images['n']} images)")
    return {"concept": q.concept, "axis": q.axis, "values": list(q.values), "source": q.source,
            "captions": captions, "images": images, "gap": gap, "finding": finding,
            "caption_default_only": bool(captions["default"] and not images["default"]),
            "caption_examples": cap_examples, "image_examples": img_examples}


def mined_axes(ws: Workspace) -> list[tuple[str, ...]]:
    """The workspace's axes: groups of interchangeable words from its contrast sets, largest first."""
    return ContrastSets.load(ws).axes()


def axis_name(values: tuple[str, ...]) -> str:
    """A short name for a mined axis: its first values ("blue/green/orange...")."""
    return "/".join(values[:3]) + ("..." if len(values) > 3 else "")


def suggest(ws: Workspace, model, source: str = "syn", top: int = 10, min_mentions: int = 20) -> list[dict]:
    """Concept/axis pairs worth checking, ranked by how much lower the caption-side entropy is than the image side.

    The axes are the workspace's contrast sets (groups of words the images tell
    apart and captions use in one slot: colours, patterns, places, ...); the
    candidate concepts are the words that most often follow one of an axis's values
    in the captions of ``source`` ("yellow star", "sandy beach").
    """
    axes = mined_axes(ws)
    if not axes:
        raise ValueError("this workspace has no contrast sets yet; 'altlens score' mines them")
    texts = [r[0] for r in ws.rows("""SELECT c.text FROM captions c JOIN samples s ON s.id = c.sample_id
                                       WHERE s.status = 'ok' AND c.source_kind = ?""", [source])]
    pairs: Counter = Counter()
    for a, values in enumerate(axes):
        pattern = re.compile(rf"\b({'|'.join(map(re.escape, values))})\s+(?:[\w-]+\s+)?([a-z]{{3,}})\b")
        for text in texts:
            for _, word in pattern.findall(text.lower()):
                if word not in values and word not in STOP_WORDS:
                    pairs[(word, a)] += 1
    out = []
    for (concept, a), n in pairs.most_common(3 * top):
        if n < min_mentions:
            break
        axis = axis_name(axes[a])
        result = find_default(ws, DefaultsQuery(concept, axis, axes[a], source=source), model)
        cap_h, img_h = result["captions"]["entropy"], result["images"]["entropy"]
        if cap_h is None or img_h is None:
            continue
        out.append({"concept": concept, "axis": axis, "values": list(axes[a]), "mentions": n, "caption_entropy": cap_h,
                    "image_entropy": img_h, "entropy_drop": round(img_h - cap_h, 4),
                    "caption_top": result["captions"]["top"], "caption_top_share": result["captions"]["top_share"],
                    "image_top_share_of_it": result["images"]["shares"][result["captions"]["top"]],
                    "flag": result["caption_default_only"]})
    return sorted(out, key=lambda r: -r["entropy_drop"])[:top]
