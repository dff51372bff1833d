"""The caption chooser: learns from best-caption preferences which source becomes a sample's main caption.

A curator marks, for some samples, whether the alt-text, a synthetic caption or
the fused caption is the best one (keys 1/2/3 in the Review view). The chooser is
a multinomial logistic regression on the same stored signals as the learned
reward (alt clip_score, cycle and contrast, agreement, best synthetic and fused
clip_score, junk/empty flags, overruled alt claims), so it learns rules such as "keep the
alt-text when the image backs it, else the fused caption". At export, the
``best`` policy uses a sample's own preference first, then the chooser, then the
highest clip_score; a source a sample does not have is never chosen. The model
is JSON in ``WS/reward/`` (never pickled); training reports cross-validated
accuracy next to the share of the most common preference, the bar to beat.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from curation.review.features import features
from curation.review.labels import current
from curation.review.models import load_json_model, pipeline, save_json_model, standardised
from indexer.schema import SOURCE_KINDS
from indexer.store import Workspace, now

MIN_PREFERENCES = 12
MIN_PER_SOURCE = 4


def best_of(pool: list[dict]) -> dict | None:
    """The caption of one source that represents it: the highest clip_score (first on ties)."""
    return max(pool, key=lambda c: c["clip_score"] or 0.0) if pool else None


SOURCE_WORDS = {"alt": "alt-text", "syn": "synthetic", "fused": "fused"}


def train_chooser(ws: Workspace, folds: int = 5) -> dict:
    """Fit on the current preference labels; refuses with a clear message when there are too few."""
    prefs = current(ws, "preference")
    counts = {s: sum(v == s for v in prefs.values()) for s in SOURCE_KINDS}
    usable = [s for s in SOURCE_KINDS if counts[s] >= MIN_PER_SOURCE]
    if len(prefs) < MIN_PREFERENCES or len(usable) < 2:
        raise ValueError(f"need at least {MIN_PREFERENCES} best-caption preferences, with {MIN_PER_SOURCE} or more "
                         "for two sources, to train a caption chooser; have "
                         + ", ".join(f"{counts[s]} {SOURCE_WORDS.get(s, s)}" for s in SOURCE_KINDS))
    ids = sorted(i for i, v in prefs.items() if v in usable)
    feats = features(ws, ids)
    y = np.array([prefs[i] for i in ids])
    splits = StratifiedKFold(n_splits=min(folds, min(counts[s] for s in usable)), shuffle=True, random_state=0)
    cv_pred = cross_val_predict(pipeline(), feats.x, y, cv=splits)
    model = pipeline().fit(feats.x, y)
    scaler, logreg = model[0], model[1]
    coef = logreg.coef_ if len(usable) > 2 else np.vstack([-logreg.coef_[0], logreg.coef_[0]]) / 2
    intercept = logreg.intercept_ if len(usable) > 2 else np.array([-logreg.intercept_[0], logreg.intercept_[0]]) / 2
    return {"preferences": len(ids), "counts": counts, "classes": [str(c) for c in logreg.classes_],
            "cv_accuracy": round(float(np.mean(cv_pred == y)), 4),
            "majority_share": round(max(counts[s] for s in usable) / len(ids), 4), "folds": splits.n_splits,
            "trained_at": now().isoformat(), "features": feats.names, "mean": scaler.mean_.tolist(),
            "scale": scaler.scale_.tolist(), "coef": coef.tolist(), "intercept": intercept.tolist()}


def predict_sources(model: dict, x: np.ndarray, available: list[set[str]] | None = None) -> list[str | None]:
    """The chosen source per row; ``available`` restricts each row to the sources it has (None if none)."""
    z = standardised(model, x)
    logits = z @ np.array(model["coef"]).T + np.array(model["intercept"])
    out = []
    for row, scores in enumerate(logits):
        order = [model["classes"][k] for k in np.argsort(-scores, kind="stable")]
        allowed = order if available is None else [c for c in order if c in available[row]]
        out.append(allowed[0] if allowed else None)
    return out


def save_chooser(ws: Workspace, model: dict) -> str:
    return save_json_model(ws, model, "chooser")


def load_chooser(ws: Workspace) -> dict | None:
    return load_json_model(ws, "chooser")


def choose_sources(ws: Workspace, model: dict, available: dict[int, set[str]]) -> dict[int, str | None]:
    """The chooser's source for each sample id in ``available`` (id -> the sources that sample has)."""
    ids = sorted(available)
    if not ids:
        return {}
    feats = features(ws, ids)
    return dict(zip(ids, predict_sources(model, feats.x, [available[i] for i in ids])))
