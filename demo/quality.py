"""Caption and score quality on a demo workspace, measured against the world's truth (``demo_truth``)."""
from __future__ import annotations

import json
import re

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from demo.world import COLOURS, SHAPES
from indexer.store import Workspace

MISALIGNED = ("unrelated", "junk")


def truth_frame(ws: Workspace) -> list[dict]:
    """One row per ok demo sample: truth, reward (active version), alt scores, agreement."""
    return ws.dicts("""
        SELECT s.id, t.noise, t.scene_json, t.knowledge_json, r.value AS reward,
               cs.clip_score AS alt_clip, cs.cycle AS alt_cycle, ss.agreement
        FROM demo_truth t JOIN samples s ON s.uid = t.uid AND s.status = 'ok'
        LEFT JOIN rewards r ON r.sample_id = s.id AND r.version = (SELECT CAST(value AS INTEGER) FROM meta
                                                                   WHERE key = 'active_reward')
        JOIN captions a ON a.sample_id = s.id AND a.source_kind = 'alt'
        LEFT JOIN caption_scores cs ON cs.caption_id = a.id
        LEFT JOIN sample_scores ss ON ss.sample_id = s.id
        ORDER BY s.id""")


def auroc(rows: list[dict], positive: tuple[str, ...], negative: tuple[str, ...], score) -> float | None:
    """AUROC of ``score(row)`` separating ``positive`` noise kinds (should score high) from ``negative``."""
    picked = [r for r in rows if r["noise"] in positive + negative and score(r) is not None]
    labels = [r["noise"] in positive for r in picked]
    if len(set(labels)) < 2:
        return None
    return float(roc_auc_score(labels, [score(r) for r in picked]))


def rank_mean(rows: list[dict], *keys: str) -> dict[int, float]:
    """Parameter-free combination: the mean percentile rank of several scores (missing = 0)."""
    ranks = [rankdata([r[k] if r[k] is not None else -1e9 for r in rows]) / len(rows) for k in keys]
    return {r["id"]: float(np.mean([rk[i] for rk in ranks])) for i, r in enumerate(rows)}


def stated_objects(text: str) -> list[tuple[str, str]]:
    """The (colour, shape) objects a caption states, read with the demo world's own vocabulary (truth side only:
    product code knows no colours or shapes)."""
    words = re.findall(r"[a-z]+", text.lower())
    return [(w, nxt) for w, nxt in zip(words, words[1:]) if w in COLOURS and nxt in SHAPES]


def fact_recall(text: str, scene: dict, knowledge: list[str]) -> float:
    """Share of the true objects' 'colour shape' and the alt-text knowledge items the text states."""
    low = text.lower()
    facts = [f"{o['colour']} {o['shape']}" in low for o in scene["objects"]]
    facts += [item in text for item in knowledge]
    return float(np.mean(facts)) if facts else 0.0


def caption_quality(ws: Workspace) -> dict:
    """Every issue-4 number: filtering AUROCs, combinations, fact recall per source, the planted default."""
    rows = truth_frame(ws)
    out = {"samples": len(rows),
           "auroc_misaligned_vs_correct": auroc(rows, ("correct",), MISALIGNED, lambda r: r["reward"]),
           "auroc_swapped_vs_correct": auroc(rows, ("correct",), ("swapped",), lambda r: r["reward"])}
    for extra in ("alt_cycle", "agreement"):
        if any(r[extra] is not None for r in rows):
            combined = rank_mean(rows, "reward", extra)
            out[f"auroc_swapped_vs_correct_with_{extra}"] = auroc(
                rows, ("correct",), ("swapped",), lambda r, c=combined: c[r["id"]])
            out[f"auroc_misaligned_vs_correct_with_{extra}"] = auroc(
                rows, ("correct",), MISALIGNED, lambda r, c=combined: c[r["id"]])
    out["fact_recall"] = fact_recall_by_source(ws)
    out["planted_default"] = planted_default(ws)
    return out


def fact_recall_by_source(ws: Workspace) -> dict[str, float]:
    rows = ws.rows("""SELECT c.source_kind, c.text, t.scene_json, t.knowledge_json
                      FROM captions c JOIN samples s ON s.id = c.sample_id AND s.status = 'ok'
                      JOIN demo_truth t ON t.uid = s.uid""")
    by_source: dict[str, list[float]] = {}
    for kind, text, scene, knowledge in rows:
        by_source.setdefault(kind, []).append(fact_recall(text, json.loads(scene), json.loads(knowledge)))
    return {k: round(float(np.mean(v)), 4) for k, v in sorted(by_source.items())}


def planted_default(ws: Workspace, concept: str = "star", value: str = "yellow") -> dict:
    """How often synthetic captions call a star yellow, against how often stars really are yellow."""
    rows = ws.rows("""SELECT c.text, t.scene_json FROM captions c
                      JOIN samples s ON s.id = c.sample_id AND s.status = 'ok'
                      JOIN demo_truth t ON t.uid = s.uid WHERE c.source_kind = 'syn'""")
    said, other_said, truly, non_default_images = 0, 0, 0, 0
    for text, scene_json in rows:
        objects = json.loads(scene_json)["objects"]
        stars = [o for o in objects if o["shape"] == concept]
        if not stars:
            continue
        truly += any(o["colour"] == value for o in stars)
        low = text.lower()
        says = f"{value} {concept}" in low
        said += says
        if all(o["colour"] != value for o in stars):
            non_default_images += 1
            other_said += says
    n = sum(1 for text, scene_json in rows if any(o["shape"] == concept for o in json.loads(scene_json)["objects"]))
    return {"concept": concept, "value": value, "syn_captions_of_images_with_one": n,
            "captions_say_share": round(said / n, 4) if n else None,
            "images_have_share": round(truly / n, 4) if n else None,
            "said_for_non_default_images": round(other_said / non_default_images, 4) if non_default_images else None}
