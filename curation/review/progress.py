"""How far the alignment labels are from a reward that can be trained and trusted.

``label_progress`` counts good and bad labels against ``MIN_PER_CLASS``;
``auroc_interval`` puts a bootstrap interval on a cross-validated AUROC, and
``label_warning`` says in words when the labels are too few or too one-sided for
that number to mean much.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from curation.review.labels import current
from indexer.store import Workspace

MIN_PER_CLASS = 8
# below this many of the smaller class, or beyond this ratio between classes, a CV AUROC is shown with a warning
FEW_PER_CLASS = 30
IMBALANCE = 4.0


def label_progress(ws: Workspace) -> dict:
    """good / bad alignment label counts, what training needs, and whether it can run."""
    labels = current(ws, "alignment").values()
    good = sum(v == "good" for v in labels)
    bad = len(labels) - good
    return {"good": good, "bad": bad, "needed": MIN_PER_CLASS,
            "trainable": good >= MIN_PER_CLASS and bad >= MIN_PER_CLASS}


def progress_text(progress: dict) -> str:
    """One line for the Review view: counts and what is still missing."""
    line = f"labelled so far: {progress['good']} good, {progress['bad']} bad"
    if progress["trainable"]:
        return f"{line} (enough to train a reward)"
    missing = [f"{progress['needed'] - progress[k]} more {k}" for k in ("good", "bad")
               if progress[k] < progress["needed"]]
    return f"{line}; to train a reward: {' and '.join(missing)}"


def auroc_interval(y: np.ndarray, prob: np.ndarray, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of AUROC: labels resampled with replacement, rounds with one class skipped."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, len(y), len(y))
        if 0 < y[pick].sum() < len(pick):
            values.append(roc_auc_score(y[pick], prob[pick]))
    if not values:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def label_warning(good: int, bad: int) -> str | None:
    """Why a CV AUROC from these counts should be read with care, or None."""
    small, large = min(good, bad), max(good, bad)
    reasons = []
    if small < FEW_PER_CLASS:
        reasons.append(f"only {small} {'good' if good < bad else 'bad'} labels")
    if small and large / small > IMBALANCE:
        reasons.append(f"classes {large / small:.1f}:1 apart")
    if not reasons:
        return None
    return f"{' and '.join(reasons)}: the AUROC is uncertain (see its interval); label more of the smaller class"
