"""Claims and contrast on captions the product has never seen: AUROC of correct vs each error kind.

    python bench/contrast_quality.py [--scenes 300] [--seed 97] [--labels 300]

Builds a held-out demo world in which every scene is indexed once per caption
(demo/phrasings.py: four phrasings unlike the demo's alt-text and captioner; the
correct description and one caption per error kind: colour, shape, size,
position, background, binding, unrelated), runs caption -> fuse -> score with the
shipped demo models, and prints AUROC of correct vs each kind for:

- clip_score of the caption;
- contrast (the caption against its mined variants);
- the learned reward, trained on labels simulated from the truth for a random half
  of the scenes and measured on the other half (all columns are on that half);
- "today": the contrast this project had before claims were general (colour+shape
  word pairs only, re-implemented here with the demo world's vocabulary).

It also prints what contrast costs: seconds per 1,000 captions and as a multiple
of indexing. Prints; never fails.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from curation.review.features import features  # noqa: E402
from curation.review.labels import add_label  # noqa: E402
from curation.review.models import predict  # noqa: E402
from curation.review.reward import train_reward  # noqa: E402
from demo.contrast_world import build, held_out_scenes, quality, scene_of  # noqa: E402
from demo.world import COLOURS, SHAPES  # noqa: E402
from indexer.models import open_workspace_model  # noqa: E402
from indexer.store import Workspace  # noqa: E402
from indexer.vectors import EmbeddingStore  # noqa: E402


def old_variants(text: str) -> list[str]:
    """The contrast of before: colour+shape word pairs from fixed lists, one word changed at a time."""
    words = re.findall(r"[a-z]+", text.lower())
    pairs = list(dict.fromkeys((w, n) for w, n in zip(words, words[1:]) if w in COLOURS and n in SHAPES))[:4]
    out: list[str] = []
    for colour, shape in pairs:
        claim = re.compile(rf"\b{colour} {shape}\b", re.IGNORECASE)
        for swap in [f"{c} {shape}" for c in COLOURS if c != colour] + [f"{colour} {s}" for s in SHAPES if s != shape]:
            changed = claim.sub(swap, text, count=1)
            if changed != text and changed not in out:
                out.append(changed)
    return out


def old_contrast(ws: Workspace, model) -> dict[int, float | None]:
    rows = ws.rows("""SELECT s.id, c.text FROM samples s JOIN captions c ON c.sample_id = s.id
                      AND c.source_kind = 'alt' WHERE s.status = 'ok'""")
    images = EmbeddingStore(ws, "image").load()
    out = {}
    for sample_id, text in rows:
        variants = old_variants(text)
        if not variants:
            out[sample_id] = None
            continue
        vecs = model.encode_texts([text] + variants)
        sims = vecs @ np.asarray(images[sample_id], dtype=np.float32)
        out[sample_id] = float(sims[0] - sims[1:].max())
    return out


def learned_reward(ws: Workspace, held: set[int], labels: int, seed: int) -> dict[int, float]:
    """Label ``labels`` samples of the training scenes from the truth (correct = good), train, score all."""
    scene = scene_of(ws)
    kind = dict(ws.rows("SELECT s.id, t.noise FROM demo_truth t JOIN samples s ON s.uid = t.uid"))
    pool = sorted(i for i, s in scene.items() if s not in held)
    for sample_id in random.Random(seed).sample(pool, min(labels, len(pool))):
        add_label(ws, sample_id, "alignment", "good" if kind[sample_id] == "correct" else "bad", who="bench")
    model = train_reward(ws)
    feats = features(ws)
    return dict(zip(feats.ids.tolist(), predict(model, feats.x).tolist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=97)
    ap.add_argument("--labels", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        built = build(Path(tmp), args.scenes, args.seed, stages=("caption", "fuse", "score"))
        with Workspace(Path(tmp) / "ws") as ws:
            held = held_out_scenes(ws, seed=args.seed)
            scene = scene_of(ws)
            keep = lambda values: {i: v for i, v in values.items() if scene.get(i) in held}  # noqa: E731
            model = open_workspace_model(ws, None)
            extra = {"learned_reward": keep(learned_reward(ws, held, args.labels, args.seed)),
                     "today (colour+shape lists)": keep(old_contrast(ws, model))}
            measured = quality(ws, extra, only=set(i for i, s in scene.items() if s in held))
        score = built["reports"]["score"]["contrast"]
        index = built["reports"]["index"]
        cost = {"contrast_s_per_1000_captions": round(1000 * score["seconds"] / max(score["captions"], 1), 1),
                "index_s_per_1000_samples": round(1000 * index["wall_s"] / max(index["samples"], 1), 1),
                "variants_per_caption": round(score["variants"] / max(score["captions"], 1), 1),
                "texts_encoded_share": round(score["texts_encoded"] / max(score["variants"] + score["captions"], 1), 3)}
        cost["contrast_cost_vs_indexing_per_sample"] = round(
            3 * cost["contrast_s_per_1000_captions"] / max(cost["index_s_per_1000_samples"], 1e-9), 2)
        print(json.dumps({"samples": built["samples"], "held_out_scenes": len(held), "quality": measured,
                          "cost": cost, "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))
        kinds = [k for k in measured["clip_score"]]
        print(f"{'AUROC correct vs':<28}" + "".join(f"{k:>11}" for k in kinds))
        for name in ("clip_score", "contrast", "learned_reward", "today (colour+shape lists)"):
            print(f"{name:<28}" + "".join(f"{measured[name].get(k, float('nan')):>11.3f}" for k in kinds))


if __name__ == "__main__":
    main()
