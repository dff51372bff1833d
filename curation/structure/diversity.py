"""Diversity and set difference over embeddings.

- Vendi score: ``exp(-sum l log l)`` over the eigenvalues of ``K / n`` for the cosine kernel of
  L2-normalised embeddings, computed through the d x d dual ``X^T X / n`` (same non-zero spectrum).
  1 = all the same, n = all orthogonal.
- Set difference (VisDiff, lightweight): candidate phrases from both sets' captions, ranked by how
  much better they match set A's images than set B's.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

STOP = {"a", "an", "the", "on", "in", "at", "of", "and", "with", "to", "is", "for", "by", "from"}


def vendi(vectors: np.ndarray) -> float:
    """Vendi score of row vectors (normalised here); 0 for an empty set."""
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) == 0:
        return 0.0
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    eig = np.linalg.eigvalsh(x.T @ x / len(x)) if len(x) > x.shape[1] else np.linalg.eigvalsh(x @ x.T / len(x))
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n of one image's captions: unique word n-grams over all n-grams across them (1.0: no n-gram
    repeats; five copies of one caption: 0.2). NaN when the captions have no n-gram at all."""
    grams = [tuple(words[i:i + n]) for t in texts for words in [t.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def phrases(texts: list[str], max_n: int = 3, top: int = 200) -> list[str]:
    """The most frequent 1-3 word phrases (no stopword at either end) of some captions."""
    counts: Counter = Counter()
    for text in texts:
        words = re.findall(r"[a-z][a-z'-]*", text.lower())
        seen = set()
        for n in range(1, max_n + 1):
            for i in range(len(words) - n + 1):
                gram = words[i:i + n]
                if gram[0] in STOP or gram[-1] in STOP:
                    continue
                seen.add(" ".join(gram))
        counts.update(seen)
    return [p for p, c in counts.most_common(top) if c >= 2]


def set_difference(model, images_a: np.ndarray, images_b: np.ndarray, captions_a: list[str],
                   captions_b: list[str], top: int = 5) -> list[dict]:
    """Phrases that describe set A's images better than set B's, with the mean-cosine gap."""
    candidates = phrases(captions_a + captions_b)
    if not candidates or not len(images_a) or not len(images_b):
        return []
    text = model.encode_texts(candidates)
    mean_a = (np.asarray(images_a, dtype=np.float32) @ text.T).mean(0)
    mean_b = (np.asarray(images_b, dtype=np.float32) @ text.T).mean(0)
    gap = mean_a - mean_b
    order = np.argsort(-gap)[:top]
    return [{"phrase": candidates[i], "gap": round(float(gap[i]), 4), "score_a": round(float(mean_a[i]), 4),
             "score_b": round(float(mean_b[i]), 4)} for i in order]
