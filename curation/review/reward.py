"""A reward learned from the curator's good/bad labels, applied to every sample as a new reward version.

``altlens reward train`` fits it (and the caption chooser, when there are enough
preferences) on the features of :mod:`curation.review.features`; ``altlens reward
apply`` writes it for every sample as a new reward version. Cross-validated AUROC
is reported with the label counts, a bootstrap interval and a warning when the
labels are few or one-sided; training refuses below ``MIN_PER_CLASS`` labels of
either class (see :mod:`curation.review.progress`).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from curation.review.chooser import save_chooser, train_chooser
from curation.review.features import features
from curation.review.labels import current
from curation.review.models import load_json_model, pipeline, predict, save_json_model
from curation.review.progress import MIN_PER_CLASS, auroc_interval, label_warning
from curation.scores.rewards import reward_version, write_version
from indexer.store import Workspace, now


def train_reward(ws: Workspace, folds: int = 5) -> dict:
    """Fit on the current alignment labels; returns counts, CV AUROC and the fitted model as JSON-able dict."""
    labels = current(ws, "alignment")
    good = sum(v == "good" for v in labels.values())
    bad = len(labels) - good
    if good < MIN_PER_CLASS or bad < MIN_PER_CLASS:
        raise ValueError(f"need at least {MIN_PER_CLASS} 'good' and {MIN_PER_CLASS} 'bad' labels to train a reward; "
                         f"have {good} good and {bad} bad")
    ids = sorted(labels)
    feats = features(ws, ids)
    y = np.array([labels[i] == "good" for i in ids], dtype=int)
    splits = StratifiedKFold(n_splits=min(folds, good, bad), shuffle=True, random_state=0)
    cv_prob = cross_val_predict(pipeline(), feats.x, y, cv=splits, method="predict_proba")[:, 1]
    model = pipeline().fit(feats.x, y)
    scaler, logreg = model[0], model[1]
    return {"labels": len(ids), "good": good, "bad": bad, "cv_auroc": round(float(roc_auc_score(y, cv_prob)), 4),
            "cv_auroc_interval": list(auroc_interval(y, cv_prob)), "warning": label_warning(good, bad),
            "folds": splits.n_splits, "trained_at": now().isoformat(), "features": feats.names,
            "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(), "coef": logreg.coef_[0].tolist(),
            "intercept": float(logreg.intercept_[0])}


def save_model(ws: Workspace, model: dict) -> str:
    return save_json_model(ws, model, "reward")


def load_model(ws: Workspace) -> dict | None:
    return load_json_model(ws, "reward")


def apply_reward(ws: Workspace, model: dict, activate: bool = True) -> dict:
    """Write the learned reward for every ok sample as a new reward version (provenance kept)."""
    feats = features(ws)
    values = predict(model, feats.x)
    provenance = {k: model[k] for k in ("labels", "good", "bad", "cv_auroc", "trained_at")}
    provenance["model_file"] = ws.get_meta("reward_model")
    version = reward_version(ws, f"learned:{provenance['trained_at']}", provenance)
    write_version(ws, version, feats.ids, values, activate)
    return {"version": version, "samples": int(len(values)), "active": activate, **provenance}


def train_from_labels(ws: Workspace) -> dict:
    """What ``altlens reward train`` and the Review view's button do: fit and save the reward, then the
    caption chooser when there are enough preferences (else say why not)."""
    reward = train_reward(ws)
    out = {"reward": reward, "reward_file": save_model(ws, reward), "chooser": None, "chooser_file": None,
           "chooser_skipped": None}
    try:
        out["chooser"] = train_chooser(ws)
    except ValueError as exc:
        out["chooser_skipped"] = str(exc)
    else:
        out["chooser_file"] = save_chooser(ws, out["chooser"])
    return out
