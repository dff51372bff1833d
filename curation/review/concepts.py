"""Concepts: scores for what the reward does not cover (watermarks, text-heavy images, off-topic pictures, poor
aesthetics), from a text prompt, from the curator's tags, or from an imported head.

A concept is a name, with an optional prompt ("a photo with a watermark"). Every way of scoring it writes a
new *version* of its scores, one value per ok sample, with its provenance; the latest version is the one that
rules (``altlens select --concept watermark<0.5``) and the review queue read.

* **zero-shot** (``altlens concept add NAME --prompt TEXT``): CLIP's own two-way choice between the prompt
  and a plain "a photo", at the model's logit scale, as a probability.
* **trained** (``altlens concept train NAME``): tags are labels of kind ``concept:NAME`` (good = the concept is
  present, bad = it is not), kept with their history like every label. A logistic regression on the image
  embedding, and on image + alt-text embedding where cross-validation says that helps, reports its
  cross-validated AUROC beside the zero-shot AUROC on the same tags, so the curator sees whether tagging paid.
* **imported** (``altlens concept import NAME --head FILE``): a linear or small MLP head saved as safetensors
  or a torch state dict (LAION's aesthetic predictor is one), applied to the stored image embeddings. It is
  refused when its input size is not the workspace's embedding size, or when it names another model.

The review queue for a concept mixes the untagged samples its latest score is least sure of with random
ones, as the reward's does.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from curation.review.labels import current
from curation.review.models import pipeline
from curation.review.progress import MIN_PER_CLASS, auroc_interval
from indexer.files import atomic_write
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore

NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
RULE = re.compile(r"\s*([a-z][a-z0-9_-]{0,39})\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*")
BASELINE_PROMPT = "a photo"
ACTIVATIONS = ("relu", "none")


def label_kind(name: str) -> str:
    return f"concept:{check_name(name)}"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise ValueError(f"a concept name is 1-40 lowercase letters, digits, _ or -, starting with a letter; "
                         f"got {name!r}")
    return name


def get(ws: Workspace, name: str) -> dict:
    row = ws.dicts("SELECT name, prompt, created_at FROM concepts WHERE name = ?", [check_name(name)])
    if not row:
        raise ValueError(f"no concept {name!r}; create it with 'altlens concept add {name}'")
    return row[0]


def add(ws: Workspace, name: str, prompt: str | None = None, model=None) -> dict:
    """Create a concept (or give an existing one a new prompt); with a prompt, write its zero-shot scores."""
    check_name(name)
    if prompt is not None and not prompt.strip():
        raise ValueError("the prompt is empty")
    ws.execute("""INSERT INTO concepts VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET
                  prompt = coalesce(excluded.prompt, concepts.prompt)""", [name, prompt, now()])
    out = {"concept": name, "prompt": get(ws, name)["prompt"]}
    if prompt:
        ids, values = zero_shot(ws, prompt, model)
        out["version"] = write_scores(ws, name, "zero-shot", {"prompt": prompt, "baseline": BASELINE_PROMPT}, ids,
                                      values)
        out["samples"] = int(len(ids))
    return out


def zero_shot(ws: Workspace, prompt: str, model) -> tuple[np.ndarray, np.ndarray]:
    """P(prompt) against "a photo" for every ok sample, from the stored image embeddings and the model's text
    tower at its logit scale (CLIP's zero-shot classifier with two classes)."""
    ids, images = ok_images(ws)
    texts = np.asarray(model.encode_texts([prompt, BASELINE_PROMPT]), dtype=np.float32)
    scale = getattr(model.model, "logit_scale", None)
    scale = float(scale.detach().exp()) if scale is not None else 100.0
    logits = scale * (images @ texts.T)
    return ids, 1.0 / (1.0 + np.exp(-(logits[:, 0] - logits[:, 1])))


def ok_images(ws: Workspace, ids: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    if ids is None:
        ids = [r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok' ORDER BY id")]
    ids = np.asarray(ids, dtype=np.int64)
    return ids, np.asarray(EmbeddingStore(ws, "image").load()[ids], dtype=np.float32)


def alt_texts(ws: Workspace, ids: np.ndarray) -> np.ndarray:
    """The alt-text embedding of each sample (zeros where it has none)."""
    rows = dict(ws.rows("""SELECT sample_id, min(id) FROM captions WHERE source_kind = 'alt'
                           AND list_contains(?, sample_id) GROUP BY sample_id""", [ids.tolist()]))
    store = EmbeddingStore(ws, "text").load()
    out = np.zeros((len(ids), store.shape[1]), dtype=np.float32)
    for k, sample in enumerate(ids):
        if int(sample) in rows:
            out[k] = store[rows[int(sample)]]
    return out


def tag(ws: Workspace, name: str, ids: list[int], present: bool, who: str = "local", view: str = "cli") -> int:
    """Tag samples as showing the concept (``present``) or not; returns how many were tagged."""
    from curation.review.labels import add_labels
    get(ws, name)
    return add_labels(ws, ids, label_kind(name), "good" if present else "bad", who=who, view=view)


def tags(ws: Workspace, name: str) -> dict[int, bool]:
    return {i: v == "good" for i, v in current(ws, label_kind(name)).items()}


def train(ws: Workspace, name: str, folds: int = 5) -> dict:
    """Fit the concept on its tags, report cross-validated AUROC (and the zero-shot one on the same tags), and
    write scores for every ok sample as a new version."""
    concept = get(ws, name)
    tagged = tags(ws, name)
    good = sum(tagged.values())
    bad = len(tagged) - good
    if good < MIN_PER_CLASS or bad < MIN_PER_CLASS:
        raise ValueError(f"need at least {MIN_PER_CLASS} samples tagged with and {MIN_PER_CLASS} without "
                         f"'{name}' to train it; have {good} with and {bad} without")
    ids = np.array(sorted(tagged), dtype=np.int64)
    y = np.array([tagged[int(i)] for i in ids], dtype=int)
    _, images = ok_images(ws, ids.tolist())
    candidates = {"image": images}
    if ws.get_meta("model") is not None and ws.scalar("SELECT count(*) FROM captions WHERE source_kind = 'alt'"):
        candidates["image+alt-text"] = np.hstack([images, alt_texts(ws, ids)])
    splits = StratifiedKFold(n_splits=min(folds, good, bad), shuffle=True, random_state=0)
    cv = {k: cross_val_predict(pipeline(), x, y, cv=splits, method="predict_proba")[:, 1]
          for k, x in candidates.items()}
    aurocs = {k: round(float(roc_auc_score(y, p)), 4) for k, p in cv.items()}
    chosen = max(aurocs, key=lambda k: (aurocs[k], k == "image"))  # the caption only where it helps
    start = latest(ws, name, kind="zero-shot")
    zero = None
    if start is not None:
        by_id = scores(ws, name, start)
        zero = round(float(roc_auc_score(y, [by_id.get(int(i), 0.5) for i in ids])), 4)
    model = pipeline().fit(candidates[chosen], y)
    all_ids, all_images = ok_images(ws)
    x = np.hstack([all_images, alt_texts(ws, all_ids)]) if chosen != "image" else all_images
    values = model.predict_proba(x)[:, 1]
    provenance = {"tags": len(ids), "with": good, "without": bad, "features": chosen, "cv_auroc": aurocs[chosen],
                  "cv_auroc_by_features": aurocs, "cv_auroc_interval": list(auroc_interval(y, cv[chosen])),
                  "zero_shot_auroc": zero, "folds": splits.n_splits, "prompt": concept["prompt"]}
    scaler, logreg = model[0], model[1]
    weights = {"features": chosen, "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
               "coef": logreg.coef_[0].tolist(), "intercept": float(logreg.intercept_[0])}
    version = write_scores(ws, name, "trained", provenance, all_ids, values)
    atomic_write(ws.root / "concepts" / f"{name}-v{version}.json",
                 lambda fh: fh.write(json.dumps(weights | {"version": version}).encode()))
    return {"concept": name, "version": version, "samples": int(len(all_ids)), **provenance}


def load_head(path: str | Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """The linear layers of a head file (safetensors or a torch state dict) in order, and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no head file at {path}")
    meta: dict = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    else:
        import torch
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle with code in it, or not a torch file at all
            raise ValueError(f"{path} is not a torch state dict of tensors ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    layers = []
    for key in sorted((k for k in state if k.endswith(".weight") or k == "weight"), key=_natural):
        weight = state[key].float().numpy()
        if weight.ndim != 2:
            continue  # a norm layer's scale, not a linear layer
        bias_key = key[: -len("weight")] + "bias"
        bias = state[bias_key].float().numpy() if bias_key in state else np.zeros(weight.shape[0], np.float32)
        layers.append((weight, bias))
    if not layers:
        raise ValueError(f"{path} has no linear layer (2-d '*.weight' tensors)")
    for (a, _), (b, _) in zip(layers, layers[1:]):
        if b.shape[1] != a.shape[0]:
            raise ValueError(f"{path}: the layers do not chain ({a.shape[0]} outputs feed {b.shape[1]} inputs)")
    if layers[-1][0].shape[0] not in (1, 2):
        raise ValueError(f"{path}: the head gives {layers[-1][0].shape[0]} outputs; a concept head gives one "
                         "score (or two classes)")
    return layers, meta


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def apply_head(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, activation: str = "relu") -> np.ndarray:
    """The head's score for each row of ``x``: its single output, or P(class 1) for a two-class head."""
    for k, (weight, bias) in enumerate(layers):
        x = x @ weight.T + bias
        if k < len(layers) - 1 and activation == "relu":
            x = np.maximum(x, 0)
    if x.shape[1] == 2:
        x = x - x.max(1, keepdims=True)
        return np.exp(x[:, 1]) / np.exp(x).sum(1)
    return x[:, 0]


def import_head(ws: Workspace, name: str, path: str | Path, activation: str = "relu",
                model: str | None = None) -> dict:
    """Apply a head file to every ok sample's stored image embedding and write the result as a new version."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown --activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
    check_name(name)
    layers, meta = load_head(path)
    record = ws.get_meta("model") or {}
    declared = model or meta.get("model")
    if declared and record and declared.lower() not in {str(record.get("name", "")).lower(),
                                                        str(record.get("model_id", "")).lower()}:
        raise ValueError(f"the head was made for {declared!r}; this workspace's embeddings come from "
                         f"{record.get('model_id') or record.get('name')}: its scores would be meaningless")
    ids, images = ok_images(ws)
    if layers[0][0].shape[1] != images.shape[1]:
        raise ValueError(f"the head takes {layers[0][0].shape[1]}-d embeddings; this workspace's model "
                         f"({record.get('model_id', 'unknown')}) gives {images.shape[1]}-d ones")
    if not ws.scalar("SELECT count(*) FROM concepts WHERE name = ?", [name]):
        add(ws, name)
    values = apply_head(layers, images, activation)
    provenance = {"head": str(Path(path).resolve()), "layers": [list(w.shape) for w, _ in layers],
                  "activation": activation, "declared_model": declared}
    version = write_scores(ws, name, "imported", provenance, ids, values)
    return {"concept": name, "version": version, "samples": int(len(ids)), **provenance,
            "mean": round(float(values.mean()), 4) if len(values) else None}


def write_scores(ws: Workspace, name: str, kind: str, provenance: dict, ids: np.ndarray, values: np.ndarray) -> int:
    """One new version of a concept's scores, in one transaction."""
    import pyarrow as pa
    with ws.transaction() as cur:
        version = int(cur.execute("SELECT coalesce(max(version), 0) + 1 FROM concept_versions WHERE name = ?",
                                  [name]).fetchone()[0])
        cur.execute("INSERT INTO concept_versions VALUES (?, ?, ?, ?, ?)",
                    [name, version, kind, json.dumps(provenance), now()])
        ws.insert_arrow("concept_scores", pa.table({
            "name": [name] * len(ids), "version": np.full(len(ids), version, np.int32),
            "sample_id": np.asarray(ids, np.int64), "value": np.asarray(values, np.float64)}), cur=cur)
    return version


def latest(ws: Workspace, name: str, kind: str | None = None) -> int | None:
    sql = "SELECT max(version) FROM concept_versions WHERE name = ?" + (" AND kind = ?" if kind else "")
    return ws.scalar(sql, [name, kind] if kind else [name])


def scores(ws: Workspace, name: str, version: int | None = None) -> dict[int, float]:
    version = version if version is not None else latest(ws, name)
    if version is None:
        return {}
    return dict(ws.rows("SELECT sample_id, value FROM concept_scores WHERE name = ? AND version = ?",
                        [name, version]))


def names(ws: Workspace) -> list[str]:
    return [r[0] for r in ws.rows("SELECT name FROM concepts ORDER BY name")]


def listing(ws: Workspace) -> list[dict]:
    """Every concept with its prompt, tag counts and versions (newest first)."""
    out = []
    for c in ws.dicts("SELECT name, prompt FROM concepts ORDER BY name"):
        tagged = tags(ws, c["name"])
        versions = ws.dicts("""SELECT version, kind, provenance, created_at FROM concept_versions WHERE name = ?
                               ORDER BY version DESC""", [c["name"]])
        for v in versions:
            v["provenance"] = json.loads(v["provenance"])
            v["created_at"] = str(v["created_at"])
        out.append({**c, "tagged_with": sum(tagged.values()), "tagged_without": len(tagged) - sum(tagged.values()),
                    "versions": versions})
    return out


def queue(ws: Workspace, name: str, n: int = 20, random_share: float = 0.3, seed: int = 0) -> list[dict]:
    """Untagged samples to tag next: those the latest score is least sure of, mixed with random ones (so the
    classifier also sees what it is sure of and may be wrong about)."""
    get(ws, name)
    values = scores(ws, name)
    if not values:
        raise ValueError(f"concept {name!r} has no scores yet; give it a --prompt or import a head first")
    tagged = tags(ws, name)
    pool = np.array([i for i in values if i not in tagged], dtype=np.int64)
    if not len(pool):
        return []
    v = np.array([values[int(i)] for i in pool])
    lo, hi = np.quantile(v, [0.05, 0.95])
    middle = (lo + hi) / 2 if hi > lo else float(v.mean())
    rng = np.random.default_rng(seed)
    n_random = min(len(pool), int(round(n * random_share)))
    uncertain = [int(pool[k]) for k in np.argsort(np.abs(v - middle), kind="stable")[: n - n_random]]
    rest = np.setdiff1d(pool, uncertain)
    chosen = uncertain + [int(i) for i in rng.permutation(rest)[:n_random]]
    order = rng.permutation(len(chosen))
    return [{"sample_id": chosen[k], "score": round(float(values[chosen[k]]), 4),
             "why": "uncertain" if chosen[k] in uncertain else "random"} for k in order]


def parse_rule(text: str) -> tuple[str, str, float]:
    """``watermark<0.5`` -> ("watermark", "<", 0.5)."""
    m = RULE.fullmatch(text or "")
    if not m:
        raise ValueError(f"a concept rule reads NAME<VALUE, NAME>VALUE, NAME<=VALUE or NAME>=VALUE "
                         f"(e.g. watermark<0.5), got {text!r}")
    return m.group(1), m.group(2), float(m.group(3))


def rule_step(ws: Workspace, text: str) -> tuple[str, str, list]:
    """A selection step for a concept rule: its label, SQL condition on ``s.id`` and parameters (the concept's
    latest version; a sample without a score fails the rule)."""
    name, op, value = parse_rule(text)
    get(ws, name)
    version = latest(ws, name)
    if version is None:
        raise ValueError(f"concept {name!r} has no scores yet; give it a --prompt, tag and train it, or import a head")
    return (f"concept {name} {op} {value:g} (v{version})",
            f"s.id IN (SELECT sample_id FROM concept_scores WHERE name = ? AND version = ? AND value {op} ?)",
            [name, version, value])
