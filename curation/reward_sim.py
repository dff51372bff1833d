"""A curator simulated from the demo truth: labels chosen by the review queue, then the learned reward measured."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from curation.labels import add_label, current
from curation.reward import features, predict, review_queue, save_model, train_reward
from indexer.store import Workspace

GOOD = ("correct", "partial")  # partial alt-text is thin but true: an honest curator calls it aligned
NEGATIVE = ("unrelated", "junk", "swapped")


def truth_by_id(ws: Workspace) -> dict[int, str]:
    return dict(ws.rows("SELECT s.id, t.noise FROM demo_truth t JOIN samples s ON s.uid = t.uid WHERE s.status = 'ok'"))


def simulate_labels(ws: Workspace, budget: int, batch: int = 25) -> dict | None:
    """Label ``budget`` samples as the queue proposes them, retraining after every batch; return the last model."""
    truth = truth_by_id(ws)
    model = None
    while len(current(ws, "alignment")) < budget:
        todo = review_queue(ws, "useful", n=min(batch, budget - len(current(ws, "alignment"))))
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


def held_out_auroc(ws: Workspace, model: dict) -> dict:
    """AUROC on unlabelled samples, correct vs misaligned + swapped: learned reward vs alt clip_score alone."""
    truth = truth_by_id(ws)
    labelled = set(current(ws, "alignment"))
    ids = [i for i, noise in sorted(truth.items()) if i not in labelled and noise in ("correct",) + NEGATIVE]
    feats = features(ws, ids)
    y = np.array([truth[i] == "correct" for i in ids], dtype=int)
    learned = predict(model, feats.x)
    clip = feats.x[:, feats.names.index("alt_clip")]
    return {"held_out": len(ids), "learned_auroc": round(float(roc_auc_score(y, learned)), 4),
            "clip_score_auroc": round(float(roc_auc_score(y, clip)), 4), "cv_auroc": model["cv_auroc"],
            "labels": model["labels"]}
