"""Mine a workspace's contrast sets from its own captions, images and model; stored in ``contrast_sets``.

1. **Vocabulary**: the frequent content words of (a sample of) the captions.
2. **Words of a kind**: words that fill the same slots ("a ___ star", "on a ___
   background") are interchangeable. Each word's left and right neighbours (words
   and punctuation marks: "(large, at left)" is not the slot of "placed at left")
   are counted, weighted by positive pointwise mutual information, and compared by
   cosine; a word's candidates are its most similar words.
3. **What the image can judge**: each candidate swap is made, both ways, in real
   captions of the workspace, and both texts are embedded with the workspace's
   model. Most captions are true of their image, so where the image can judge a
   pair, it prefers the written word over the swapped one in *both* directions; the
   effect is the mean cosine drop, as a share of how far a wholly wrong caption
   drops it. A pair is dropped when the model barely tells the texts apart (a
   near-synonym) or when either direction's effect is too small (brands, places,
   "print" vs "sticker": the camera cannot say). Asking for both directions matters:
   a visual word swapped with a name looks decisive one way only. What remains is
   stored with every number, dropped pairs included.
4. **Kinds are transitive**: where "left" ~ "right" and "right" ~ "bottom" both passed,
   "left" ~ "bottom" is a candidate too, even if one phrasing says "at left" and
   another "near the bottom edge" so their slots never met. One such round, at most
   ``hop_candidates`` per word, tested like the rest.

Single words embedded out of context were tried first: a small text tower trained
on captions maps lone words to nearly one point (cosine above 0.9 for unrelated
words in the demo model), so slot statistics find the kinds and the model judges.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from curation.claims.sets import ContrastSets
from curation.claims.words import content_words, replace_word, slots, tokens
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiningConfig:
    """How contrast sets are mined; the defaults suit a few hundred to a few million captions."""

    max_captions: int = 50_000  # a seeded sample of captions is read
    max_vocabulary: int = 800
    min_count: int = 3
    candidates: int = 8  # most similar words tested per word
    # second round: words two kept pairs away, most slot-similar first; on the contrast world (60 scenes, phrasings
    # the product never saw) position words of different phrasings met only through a third word ("low" ~ "right"
    # ~ "left"), and this round lifted position contrast from 0.86 to 0.89
    hop_candidates: int = 4
    # slot similarity below this is not "of a kind". Position words of different phrasings ("up top", "at
    # the centre", "near the bottom edge") score 0.35-0.4 once punctuation counts as context; with 0.4, the
    # 300-scene contrast bench lost them and position fell from 0.93 to 0.89, with 0.35 it held 0.94 (0.3 let
    # "shape" in as a kind of "star", and through it of every shape word: every kind lost up to 0.04)
    min_similarity: float = 0.35
    # captions each direction of a swap is tested on: with 8, on a world where most captions are wrong somewhere,
    # the size words' swaps measured -0.03..+0.06 from run to run and the set was lost; 32 held it (mining stays
    # a second or two: each text is encoded once)
    probes: int = 32
    max_text_similarity: float = 0.985  # the model sees no difference: a near-synonym
    min_effect: float = 0.008  # each direction's cosine drop, as a share of a wrong caption's
    seed: int = 0
    batch: int = 512
    progress: bool = True


def ensure_contrast_sets(ws: Workspace, model, cfg: MiningConfig = MiningConfig(), force: bool = False) -> ContrastSets:
    """The workspace's contrast sets, mined first when there are none, the model changed, or the captions have
    more than doubled since they were mined."""
    meta = ws.get_meta("contrast_sets")
    captions = int(ws.scalar("SELECT count(*) FROM captions c JOIN samples s ON s.id = c.sample_id "
                             "WHERE s.status = 'ok'"))
    fresh = meta and meta.get("model_id") == model.model_id and 0 < captions <= 2 * meta.get("captions", 0)
    if force or not fresh:
        mine(ws, model, cfg)
    return ContrastSets.load(ws)


def mine(ws: Workspace, model, cfg: MiningConfig = MiningConfig()) -> dict:
    """Mine and store the contrast sets; returns what was found and what it cost."""
    started = time.perf_counter()
    size, seed = int(cfg.max_captions), int(cfg.seed)  # DuckDB takes no parameters in a SAMPLE clause
    rows = ws.rows(f"""SELECT * FROM (SELECT c.sample_id, c.text FROM captions c JOIN samples s ON s.id = c.sample_id
                       WHERE s.status = 'ok' ORDER BY c.id) USING SAMPLE reservoir({size} ROWS) REPEATABLE ({seed})""")
    images = EmbeddingStore(ws, "image").load()
    ws.release()
    vocabulary = frequent_words([t for _, t in rows], cfg)
    sims = slot_similarity([t for _, t in rows], vocabulary) if len(vocabulary) >= 2 else np.zeros((0, 0))
    vectors: dict[str, np.ndarray] = {}
    tested = test_swaps(rows, images, candidate_pairs(vocabulary, sims, cfg), model, cfg, vectors)
    tested += test_swaps(rows, images, two_step_pairs(vocabulary, sims, tested, cfg), model, cfg, vectors)
    names = names_among(tested, cfg)
    for p in tested:
        p["kept"] = p["kept"] and p["a"] not in names and p["b"] not in names
    kept = sum(p["kept"] for p in tested)
    table = pa.Table.from_pylist([row for p in tested for row in _both_directions(p)], schema=pa.schema([
        ("word", pa.string()), ("alternative", pa.string()), ("similarity", pa.float64()),
        ("text_similarity", pa.float64()), ("image_effect", pa.float64()), ("tested", pa.int32()),
        ("kept", pa.bool_()), ("decided", pa.int64())]))
    report = {"captions": len(rows), "vocabulary": len(vocabulary), "pairs_tested": len(tested), "pairs_kept": kept,
              "seconds": round(time.perf_counter() - started, 2)}
    with ws.transaction() as cur:
        cur.execute("DELETE FROM contrast_sets")
        if len(table):
            ws.insert_arrow("contrast_sets", table, cur=cur)
        ws.set_meta("contrast_sets", {**report, "model_id": model.model_id, "config": asdict(cfg),
                                      "built_at": now().isoformat()}, cur=cur)
    log.info("contrast sets: %s", report)
    return report


def frequent_words(texts: list[str], cfg: MiningConfig) -> list[str]:
    counts = Counter(w for text in texts for w in set(content_words(text)) if w.isalpha())
    return [w for w, n in counts.most_common(cfg.max_vocabulary) if n >= cfg.min_count]


def slot_similarity(texts: list[str], vocabulary: list[str]) -> np.ndarray:
    """Cosine between the words' neighbour profiles (left/right words and punctuation marks, one and two away),
    PPMI-weighted."""
    index = {w: i for i, w in enumerate(vocabulary)}
    contexts: dict[str, Counter] = defaultdict(Counter)
    for text in texts:
        words = slots(text)
        for i in range(1, len(words) - 1):
            if words[i] in index:
                counts = contexts[words[i]]
                counts["L:" + words[i - 1]] += 1.0
                counts["R:" + words[i + 1]] += 1.0
                if i >= 2:
                    counts["L2:" + words[i - 2]] += 0.5
                if i + 2 < len(words):
                    counts["R2:" + words[i + 2]] += 0.5
    features = {f: j for j, f in enumerate(sorted({f for c in contexts.values() for f in c}))}
    matrix = np.zeros((len(vocabulary), max(len(features), 1)))
    for word, counts in contexts.items():
        for feature, n in counts.items():
            matrix[index[word], features[feature]] = n
    total = matrix.sum() or 1.0
    expected = (matrix.sum(1, keepdims=True) / total) * (matrix.sum(0, keepdims=True) / total)
    with np.errstate(divide="ignore", invalid="ignore"):
        ppmi = np.where(matrix > 0, np.maximum(np.log((matrix / total) / expected), 0.0), 0.0)
    ppmi /= np.maximum(np.linalg.norm(ppmi, axis=1, keepdims=True), 1e-12)
    return ppmi @ ppmi.T


def candidate_pairs(vocabulary: list[str], sims: np.ndarray, cfg: MiningConfig) -> list[tuple[str, str, float]]:
    """Unordered (word, word, slot similarity) pairs: each word with its most similar words (``sims`` from
    :func:`slot_similarity`)."""
    pairs: dict[tuple[str, str], float] = {}
    for i, word in enumerate(vocabulary):
        for j in np.argsort(-sims[i])[:cfg.candidates + 1]:
            if j != i and sims[i, j] >= cfg.min_similarity:
                pairs[tuple(sorted((word, vocabulary[j])))] = float(sims[i, j])
    return [(a, b, s) for (a, b), s in sorted(pairs.items())]


def two_step_pairs(vocabulary: list[str], sims: np.ndarray, tested: list[dict],
                   cfg: MiningConfig) -> list[tuple[str, str, float]]:
    """Untested pairs of words joined through a third by two kept pairs; each word's ``hop_candidates`` most
    slot-similar ones."""
    index = {w: i for i, w in enumerate(vocabulary)}
    kept: dict[str, set[str]] = defaultdict(set)
    for p in tested:
        if p["kept"]:
            kept[p["a"]].add(p["b"])
            kept[p["b"]].add(p["a"])
    seen = {(p["a"], p["b"]) for p in tested}
    pairs: dict[tuple[str, str], float] = {}
    for word in sorted(kept):
        reach = {c for b in kept[word] for c in kept[b]} - kept[word] - {word}
        reach = [c for c in reach if tuple(sorted((word, c))) not in seen]
        for c in sorted(reach, key=lambda c: (-sims[index[word], index[c]], c))[:cfg.hop_candidates]:
            pairs[tuple(sorted((word, c)))] = float(sims[index[word], index[c]])
    return [(a, b, s) for (a, b), s in sorted(pairs.items())]


def test_swaps(rows: list[tuple[int, str]], images, pairs, model, cfg: MiningConfig,
               vectors: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Make each swap, both ways, in up to ``probes`` captions per direction (spread over the sample); measure
    the text similarity and, per direction, how much the image prefers the written word. ``vectors``: texts
    embedded by an earlier round (filled in place, so no text is encoded twice)."""
    if not pairs:
        return []
    by_word: dict[str, list[int]] = defaultdict(list)
    for r in np.random.default_rng(cfg.seed).permutation(len(rows)).tolist():
        for word in set(t.word for t in tokens(rows[r][1])):
            if len(by_word[word]) < cfg.probes:
                by_word[word].append(r)
    probes = []  # (pair index, direction, sample id, original, swapped)
    for p, (a, b, _) in enumerate(pairs):
        for direction, (source, target) in enumerate(((a, b), (b, a))):
            for r in by_word.get(source, []):
                sample_id, text = rows[r]
                token = next(t for t in tokens(text) if t.word == source)
                probes.append((p, direction, sample_id, text, replace_word(text, token, target)))
    vectors = {} if vectors is None else vectors
    vectors.update(encode_unique([t for *_, o, s in probes for t in (o, s) if t not in vectors], model, cfg))
    gap = wrong_caption_gap(rows, images, vectors, model, cfg)
    stats: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for p, direction, sample_id, original, swapped in probes:
        image = np.asarray(images[sample_id], dtype=np.float32)
        u, v = vectors[original], vectors[swapped]
        stats[p, direction].append((float(u @ v), float(image @ u - image @ v)))
    out = []
    for p, (a, b, similarity) in enumerate(pairs):
        both = stats[p, 0] + stats[p, 1]
        if len(stats[p, 0]) < 2 or len(stats[p, 1]) < 2:
            continue  # too few captions to judge the pair
        text_sim = float(np.mean([s for s, _ in both]))
        effect = min(float(np.mean([e for _, e in stats[p, d]])) for d in (0, 1)) / gap
        out.append({"a": a, "b": b, "similarity": similarity, "text_similarity": text_sim, "image_effect": effect,
                    "tested": len(both), "kept": text_sim <= cfg.max_text_similarity and effect >= cfg.min_effect})
    return out


def names_among(tested: list[dict], cfg: MiningConfig) -> set[str]:
    """Words the image cannot tell from the words most like them: names (brands, places), not claims.

    Words the model cannot tell apart (near-synonyms: "acme" and "vandelay", "grey" and "gray") form one
    group. The group's most interchangeable outside word is its tested pair of highest slot similarity;
    when the image cannot judge that pair, the group is not a visual kind and every pair with one of its
    words is dropped. (Swapping a size word for a brand looked decisive both ways: the size a brand's
    caption gains is usually false, and the size a size caption loses was true.)"""
    group = {}

    def root(word):
        while group.get(word, word) != word:
            word = group[word]
        return word
    for p in tested:
        if p["text_similarity"] > cfg.max_text_similarity:
            group[root(p["a"])] = root(p["b"])
    nearest: dict[str, dict] = {}
    for p in tested:
        if root(p["a"]) == root(p["b"]):
            continue
        for word in (p["a"], p["b"]):
            g = root(word)
            if g not in nearest or p["similarity"] > nearest[g]["similarity"]:
                nearest[g] = p
    blind = {g for g, p in nearest.items() if not p["image_effect"] >= cfg.min_effect}
    words = {w for p in tested for w in (p["a"], p["b"])}
    return {w for w in words if root(w) in blind}


def wrong_caption_gap(rows, images, vectors: dict, model, cfg: MiningConfig, n: int = 256) -> float:
    """How far the image cosine moves from a sample's own caption to another sample's: the yardstick."""
    rng = np.random.default_rng(cfg.seed)
    picked = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    others = rng.permutation(picked)
    texts = [rows[i][1] for i in picked] + [rows[j][1] for j in others]
    vectors.update(encode_unique([t for t in texts if t not in vectors], model, cfg))
    gaps = [abs(float(np.asarray(images[rows[i][0]], np.float32) @ (vectors[rows[i][1]] - vectors[rows[j][1]])))
            for i, j in zip(picked, others) if rows[i][0] != rows[j][0]]
    return max(float(np.mean(gaps)) if gaps else 0.0, 1e-6)


def encode_unique(texts: list[str], model, cfg: MiningConfig) -> dict[str, np.ndarray]:
    """Each distinct text embedded once, in batches."""
    unique = list(dict.fromkeys(texts))
    out: dict[str, np.ndarray] = {}
    steps = range(0, len(unique), cfg.batch)
    for start in tqdm(steps, desc="mine contrast sets", unit="batch", disable=not cfg.progress or len(steps) < 2):
        chunk = unique[start:start + cfg.batch]
        out.update(zip(chunk, np.asarray(model.encode_texts(chunk), dtype=np.float32)))
    return out


def _both_directions(pair: dict) -> list[dict]:
    shared = {k: pair[k] for k in ("similarity", "text_similarity", "image_effect", "tested", "kept")}
    shared["image_effect"] = round(shared["image_effect"], 6) if math.isfinite(shared["image_effect"]) else None
    return [{"word": pair["a"], "alternative": pair["b"], **shared, "decided": 0},
            {"word": pair["b"], "alternative": pair["a"], **shared, "decided": 0}]
