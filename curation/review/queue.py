"""The review queue: which unlabelled samples a curator should label next."""
from __future__ import annotations

import itertools
import random

import numpy as np

from curation.review.features import features
from curation.review.labels import current
from curation.review.models import load_json_model, predict
from curation.review.progress import label_progress
from curation.scores.rewards import active_reward
from indexer.store import Workspace

QUEUES = ("useful", "lowest", "cluster")


def review_queue(ws: Workspace, mode: str = "useful", n: int = 20, cluster: int | None = None,
                 exclude: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Unlabelled ok samples to review next: ``lowest`` reward first, a ``cluster``, or the ``useful`` ones:
    those the current learned reward is least sure about, interleaved with as many random ones (seeded by
    the label count, so a queue is reproducible); before any model, see :func:`first_queue`.
    ``exclude``: ids never to propose (a held-out set)."""
    labelled = set(current(ws, "alignment"))
    version = active_reward(ws)
    version = -1 if version is None else version
    rows = ws.rows("""SELECT s.id, r.value FROM samples s LEFT JOIN rewards r ON r.sample_id = s.id AND r.version = ?
                      WHERE s.status = 'ok' ORDER BY s.id""", [version])
    pool = [(i, v) for i, v in rows if i not in labelled and i not in exclude]
    if mode == "lowest":
        return [i for i, _ in sorted(pool, key=lambda r: (r[1] is None, r[1] or 0.0, r[0]))[:n]]
    if mode == "cluster":
        members = {r[0] for r in ws.rows("SELECT sample_id FROM clusters WHERE cluster = ?", [int(cluster)])}
        return [i for i, _ in pool if i in members][:n]
    if mode != "useful":
        raise ValueError(f"unknown queue {mode!r}; allowed: useful, lowest, cluster")
    model = load_json_model(ws, "reward")
    if model is None:
        return first_queue(pool, n, label_progress(ws))
    feats = features(ws, [i for i, _ in pool])
    uncertainty = np.abs(predict(model, feats.x) - 0.5)
    ranked = [int(feats.ids[j]) for j in np.argsort(uncertainty, kind="stable")]
    # Half the queue explores: labels taken only where the model is unsure describe the boundary, not the
    # data, and a reward fitted on them ranked the demo world worse than clip_score alone did.
    explore = random.Random(len(labelled)).sample(ranked, min(n // 2, len(ranked)))
    chosen = set(explore)
    unsure = [i for i in ranked if i not in chosen][:n - len(explore)]
    return [i for pair in itertools.zip_longest(unsure, explore) for i in pair if i is not None]


def first_queue(pool: list[tuple[int, float | None]], n: int, progress: dict) -> list[int]:
    """The queue before any learned reward. Until both classes have enough labels to train on, it takes
    samples from both ends of the reward ranking in turn, starting with the end of the class that has fewer
    labels (the highest reward when good ones are short), so the first labels give both classes even when
    most of the data is bad. Then it spreads over the reward range."""
    ranked = sorted(pool, key=lambda r: (r[1] is None, r[1] or 0.0, r[0]))
    if progress["trainable"]:
        step = max(1, len(ranked) // max(n, 1))
        return [i for i, _ in ranked[::step]][:n]
    high, low = ranked[::-1], ranked
    ends = (high, low) if progress["good"] <= progress["bad"] else (low, high)
    out, seen = [], set()
    for pair in zip(*ends):
        for sample_id, _ in pair:
            if sample_id not in seen and len(out) < n:
                seen.add(sample_id)
                out.append(sample_id)
    return out


def unlabelled_count(ws: Workspace, cluster: int | None = None) -> int:
    """How many ok samples (of ``cluster``, when given) have no alignment label yet: what a queue draws from."""
    scope, params = ("", []) if cluster is None else (
        "AND s.id IN (SELECT sample_id FROM clusters WHERE cluster = ?)", [int(cluster)])
    return int(ws.scalar(f"""SELECT count(*) FROM samples s WHERE s.status = 'ok' {scope} AND s.id NOT IN
                             (SELECT sample_id FROM labels WHERE kind = 'alignment')""", params))
