"""A curator simulated from the demo truth: labels chosen by the review queue, then the learned reward measured.

Protocol: a random share of the samples is held out first; the simulated curator
never sees it (the queue excludes it), and both the learned reward
and clip_score are measured on it. Measuring on "whatever the queue left" would
be biased: the queue takes the hard cases, so the leftovers are the easy ones.
"""
from __future__ import annotations

import json
import random

import numpy as np
from sklearn.metrics import roc_auc_score

from curation.review.chooser import best_of, choose_sources
from curation.review.features import features
from curation.review.labels import add_label, current
from curation.review.models import predict
from curation.review.queue import review_queue
from curation.review.reward import save_model, train_reward
from demo.quality import fact_recall, stated_objects
from indexer.store import Workspace

GOOD = ("correct", "partial")  # partial alt-text is thin but true: an honest curator calls it aligned
NEGATIVE = ("unrelated", "junk", "swapped")


def truth_by_id(ws: Workspace) -> dict[int, str]:
    return dict(ws.rows("SELECT s.id, t.noise FROM demo_truth t JOIN samples s ON s.uid = t.uid WHERE s.status = 'ok'"))


def held_out_split(ws: Workspace, share: float = 0.4, seed: int = 0) -> set[int]:
    """A seeded random share of the demo samples to measure on, never labelled."""
    ids = sorted(truth_by_id(ws))
    return set(random.Random(seed).sample(ids, int(len(ids) * share)))


def simulate_labels(ws: Workspace, budget: int, batch: int = 25, held_out: set[int] = frozenset()) -> dict | None:
    """Label ``budget`` samples as the queue proposes them (never one in ``held_out``), retraining after
    every batch; return the last model."""
    truth = truth_by_id(ws)
    model = None
    while len(current(ws, "alignment")) < budget:
        want = min(batch, budget - len(current(ws, "alignment")))
        todo = review_queue(ws, "useful", n=want, exclude=held_out)
        if not todo:
            break
        for sample_id in todo:
            add_label(ws, sample_id, "alignment", "good" if truth[sample_id] in GOOD else "bad",
                      who="simulated-curator", view="review")
        try:
            model = train_reward(ws)
        except ValueError:
            continue  # not enough of one class yet: keep labelling
        save_model(ws, model)
    return model


def held_out_auroc(ws: Workspace, model: dict, held_out: set[int]) -> dict:
    """AUROC on the held-out samples, correct vs misaligned + swapped: learned reward vs alt clip_score alone."""
    truth = truth_by_id(ws)
    if held_out & set(current(ws, "alignment")):
        raise ValueError("held-out samples were labelled")
    ids = [i for i in sorted(held_out) if truth[i] in ("correct",) + NEGATIVE]
    feats = features(ws, ids)
    y = np.array([truth[i] == "correct" for i in ids], dtype=int)
    learned = predict(model, feats.x)
    clip = feats.x[:, feats.names.index("alt_clip")]
    return {"held_out": len(ids), "learned_auroc": round(float(roc_auc_score(y, learned)), 4),
            "clip_score_auroc": round(float(roc_auc_score(y, clip)), 4), "cv_auroc": model["cv_auroc"],
            "labels": model["labels"]}


# ---------------------------------------------------------------- best-caption preferences

def source_captions(ws: Workspace, ids: list[int]) -> dict[int, dict[str, dict]]:
    """Per sample, the caption that represents each source (alt; the best-scored syn and fused)."""
    pools: dict[int, dict[str, list[dict]]] = {}
    for c in ws.dicts("""SELECT c.sample_id, c.source_kind, c.text, cs.clip_score FROM captions c
                         LEFT JOIN caption_scores cs ON cs.caption_id = c.id
                         WHERE list_contains(?, c.sample_id) ORDER BY c.id""", [ids]):
        if c["source_kind"] != "alt" or c["text"].strip():
            pools.setdefault(c["sample_id"], {}).setdefault(c["source_kind"], []).append(c)
    return {i: {kind: best_of(pool) for kind, pool in pools.get(i, {}).items()} for i in ids}


def caption_truth(text: str, scene: dict, knowledge: list[str]) -> float:
    """How good a caption is by the truth: facts stated (fact recall) minus the share of false colour+shape claims."""
    claims = set(stated_objects(text[:2000]))
    true = {(o["colour"], o["shape"]) for o in scene["objects"]}
    return fact_recall(text, scene, knowledge) - (len(claims - true) / len(claims) if claims else 0.0)


def curator_preference(captions: dict[str, dict], scene: dict, knowledge: list[str]) -> str:
    """The source a careful curator prefers: the truest caption; ties go to the alt-text, then fused, then syn."""
    order = [s for s in ("alt", "fused", "syn") if s in captions]
    return max(order, key=lambda s: (round(caption_truth(captions[s]["text"], scene, knowledge), 6), -order.index(s)))


def scenes_by_id(ws: Workspace) -> dict[int, tuple[dict, list[str]]]:
    return {i: (json.loads(scene), json.loads(know or "[]")) for i, scene, know in ws.rows(
        "SELECT s.id, t.scene_json, t.knowledge_json FROM demo_truth t JOIN samples s ON s.uid = t.uid")}


def simulate_preferences(ws: Workspace, ids: list[int]) -> None:
    """Give every sample in ``ids`` the simulated curator's best-caption preference."""
    truth, captions = scenes_by_id(ws), source_captions(ws, ids)
    for i in ids:
        if captions[i]:
            add_label(ws, i, "preference", curator_preference(captions[i], *truth[i]), who="simulated-curator",
                      view="review")


def chooser_quality(ws: Workspace, model: dict, held_out: set[int]) -> dict:
    """On held-out samples: how often the chooser, the top clip_score and each fixed source pick what the
    simulated curator prefers, and the mean truth score of the captions each picks."""
    truth, ids = scenes_by_id(ws), sorted(held_out)
    captions = source_captions(ws, ids)
    ids = [i for i in ids if captions[i]]
    wanted = {i: curator_preference(captions[i], *truth[i]) for i in ids}
    picks = {"chooser": choose_sources(ws, model, {i: set(captions[i]) for i in ids}),
             "top_clip_score": {i: max(captions[i], key=lambda s: captions[i][s]["clip_score"] or 0.0) for i in ids}}
    for fixed in ("alt", "fused", "syn"):
        picks[fixed] = {i: fixed if fixed in captions[i] else "fused" for i in ids}
    out = {"held_out": len(ids), "preferences": model["preferences"], "cv_accuracy": model["cv_accuracy"]}
    for name, pick in picks.items():
        out[f"{name}_accuracy"] = round(float(np.mean([pick[i] == wanted[i] for i in ids])), 4)
        out[f"{name}_truth"] = round(float(np.mean([caption_truth(captions[i][pick[i]]["text"], *truth[i])
                                                     for i in ids])), 4)
    return out
