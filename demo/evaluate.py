"""Quality of an embedding/caption model on freshly generated demo-world scenes (known truth)."""
from __future__ import annotations

import random

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from curation.structure.diversity import distinct_n
from demo.phrasings import HARD_KINDS, corrupt, describe
from demo.world import EVAL_WORLD, SHAPES, SIZES, canonical_caption, random_scene, render, swap_caption


def first_shape(text: str) -> str | None:
    """The first shape word a caption names (captions list the largest object first)."""
    hits = [(text.find(s), s) for s in SHAPES if s in text]
    return min(hits)[1] if hits else None


def largest_shapes(scene: dict) -> set[str]:
    top = max(SIZES[o["size"]] for o in scene["objects"])
    return {o["shape"] for o in scene["objects"] if SIZES[o["size"]] == top}


def held_out_scenes(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [random_scene(rng, EVAL_WORLD) for _ in range(n)]


def pixels_for(model, scenes: list[dict], seed: int) -> torch.Tensor:
    return torch.stack([model.preprocess(render(s, 96, jitter_seed=seed + i)) for i, s in enumerate(scenes)])


def evaluate_model(model, n: int = 300, seed: int = 777, caption_n: int | None = None, batch: int = 100,
                   captioner=None) -> dict:
    """The three demo-model numbers on ``n`` held-out scenes (seeded, never seen in training).

    - ``auroc_random``: cosine of the true caption vs a caption of another scene;
    - ``auroc_swapped``: true caption vs the same caption with one colour or shape changed;
    - ``largest_shape_acc``: share of top-p (p=0.9) captions whose first named shape is a largest object's,
      from ``captioner`` (anything with ``generate`` and a ``preprocess``-compatible input) or, when
      it is None, the embedding model itself if it is a CoCa.
    """
    scenes = held_out_scenes(n, seed)
    rng = random.Random(seed + 1)
    pixels = pixels_for(model, scenes, seed)
    img = np.concatenate([model.encode_images(pixels[i:i + batch]) for i in range(0, n, batch)])
    true = model.encode_texts([canonical_caption(s) for s in scenes])
    swapped = model.encode_texts([swap_caption(s, rng) for s in scenes])
    pos = (img * true).sum(1)
    other = (img * np.roll(true, 1, axis=0)).sum(1)
    swap = (img * swapped).sum(1)
    result = {
        "n": n,
        "auroc_random": _auroc(pos, other),
        "auroc_swapped": _auroc(pos, swap),
        "auroc_by_kind": by_kind(model, scenes, img, pos, seed),
        "auroc_by_kind_unseen": by_kind(model, scenes, img, None, seed, unseen=True),
    }
    if captioner is not None:
        generator = captioner
    else:
        from indexer.caption_decode import CocaDecoder
        generator = CocaDecoder(model) if model.can_caption else None
    if generator is not None:
        m = caption_n or n
        captions = []
        for i in range(0, m, batch):
            captions += generator.generate(pixels[i:min(i + batch, m)], sampling="top_p", top_p=0.9, seed=seed + i)
        hits = [first_shape(c) in largest_shapes(s) for c, s in zip(captions, scenes[:m])]
        result["largest_shape_acc"] = float(np.mean(hits))
        result["caption_examples"] = captions[:5]
        result |= caption_diversity(generator, pixels[:min(m, 100)], seed)
    return result


def caption_diversity(generator, pixels: torch.Tensor, seed: int, num: int = 5) -> dict:
    """How different ``num`` top-p (0.9) captions of one image are, averaged over images: distinct captions,
    the share of images with at least 3 distinct, distinct-1 and distinct-2."""
    flat = generator.generate(pixels.repeat_interleave(num, dim=0), sampling="top_p", top_p=0.9, seed=seed + 5)
    per_image = [flat[i * num:(i + 1) * num] for i in range(len(pixels))]
    counts = [len(set(c)) for c in per_image]
    return {"distinct_of_5": float(np.mean(counts)), "share_3_distinct": float(np.mean([c >= 3 for c in counts])),
            "distinct_1": float(np.nanmean([distinct_n(c, 1) for c in per_image])),
            "distinct_2": float(np.nanmean([distinct_n(c, 2) for c in per_image]))}


def by_kind(model, scenes: list[dict], img: np.ndarray, pos: np.ndarray | None, seed: int,
            unseen: bool = False) -> dict[str, float]:
    """True caption vs the same caption wrong in one way, per kind (scenes that cannot show a kind are left out).
    ``unseen``: both captions in :mod:`demo.phrasings`' wordings (the contrast bench's, never trained on),
    scene i in style i % 4, instead of the canonical caption."""
    rng = random.Random(seed + 2)
    if unseen:
        def word(scene, i):
            return describe(scene, i % 4)
        pos = (img * model.encode_texts([word(s, i) for i, s in enumerate(scenes)])).sum(1)
    else:
        def word(scene, i):
            return canonical_caption(scene)
    out = {}
    for kind in HARD_KINDS:
        pairs = [(i, corrupt(s, kind, rng, s)) for i, s in enumerate(scenes)]
        pairs = [(i, w) for i, w in pairs if w is not None]
        wrong = model.encode_texts([word(w, i) for i, w in pairs])
        rows = np.array([i for i, _ in pairs])
        out[kind] = round(_auroc(pos[rows], (img[rows] * wrong).sum(1)), 4)
    return out


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(labels, np.r_[pos, neg]))
