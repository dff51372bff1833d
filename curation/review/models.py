"""The one model family of the review stage, kept as JSON (never pickled): standardised features -> logistic
regression, for the learned reward (binary) and the caption chooser (multinomial).

Models live in ``WS/reward/<kind>-<time>.json``; ``meta.<kind>_model`` names the current one.
"""
from __future__ import annotations

import json

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from curation.review.features import SCALARS
from indexer.files import atomic_write
from indexer.store import Workspace


def pipeline():
    """Standardised features -> L2-regularised logistic regression (the reward's and the chooser's model)."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000))


def model_columns(model: dict, x: np.ndarray) -> np.ndarray:
    """The columns of a :func:`features` matrix that ``model`` was trained on, in its order."""
    unknown = [name for name in model["features"] if name not in SCALARS]
    if unknown:
        raise ValueError(f"this model uses features altlens no longer computes ({', '.join(unknown)}); train it again")
    return x[:, [SCALARS.index(name) for name in model["features"]]]


def standardised(model: dict, x: np.ndarray) -> np.ndarray:
    """``x`` (a features matrix) in the model's columns, scaled as in training."""
    return (model_columns(model, x) - np.array(model["mean"])) / np.array(model["scale"])


def predict(model: dict, x: np.ndarray) -> np.ndarray:
    """Probability that a pair is good, from the JSON model (``x``: a :func:`features` matrix)."""
    z = standardised(model, x)
    return 1.0 / (1.0 + np.exp(-(z @ np.array(model["coef"]) + model["intercept"])))


def save_json_model(ws: Workspace, model: dict, kind: str = "reward") -> str:
    """Write a trained model as ``WS/reward/<kind>-<time>.json`` (atomic) and make it the current ``kind``."""
    name = f"{kind}-{model['trained_at'].replace(':', '').replace('-', '').split('.')[0]}.json"
    atomic_write(ws.root / "reward" / name, lambda fh: fh.write(json.dumps(model).encode()))
    ws.set_meta(f"{kind}_model", name)
    return name


def load_json_model(ws: Workspace, kind: str = "reward") -> dict | None:
    """The current model of ``kind`` (``reward`` or ``chooser``), or None before any was trained."""
    name = ws.get_meta(f"{kind}_model")
    return json.loads((ws.root / "reward" / name).read_text()) if name else None
