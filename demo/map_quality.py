"""Map, duplicate and default-behaviour quality on a demo workspace, measured against ``demo_truth``."""
from __future__ import annotations

import itertools
import json

from sklearn.metrics import normalized_mutual_info_score

from curation.claims.sets import ContrastSets
from curation.structure.defaults import DefaultsQuery, find_default, suggest
from demo.world import COLOURS
from indexer.models import open_workspace_model
from indexer.store import Workspace


def cluster_nmi(ws: Workspace) -> dict:
    """NMI of k-means clusters against the true main (largest) shape, background, both together, and topic."""
    rows = ws.rows("""SELECT k.cluster, t.scene_json FROM clusters k JOIN samples s ON s.id = k.sample_id
                      JOIN demo_truth t ON t.uid = s.uid""")
    clusters = [r[0] for r in rows]
    scenes = [json.loads(r[1]) for r in rows]
    shape = [s["objects"][0]["shape"] for s in scenes]
    background = [s["background"] for s in scenes]
    joint = [f"{a}/{b}" for a, b in zip(shape, background)]
    topic = [s.get("topic", "") for s in scenes]
    return {name: round(float(normalized_mutual_info_score(labels, clusters)), 4)
            for name, labels in (("main_shape", shape), ("background", background), ("shape_and_background", joint),
                                 ("topic", topic))}


def _pairs(groups: dict) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for members in groups.values() for p in itertools.combinations(sorted(members), 2)}


def duplicate_quality(ws: Workspace) -> dict:
    """Pairwise precision and recall of found duplicate groups against the planted duplicates."""
    truth: dict[str, set[str]] = {}
    for uid, dup_of in ws.rows("SELECT uid, dup_of FROM demo_truth WHERE dup_of IS NOT NULL"):
        truth.setdefault(dup_of, {dup_of}).add(uid)
    found: dict[int, set[str]] = {}
    for group, uid in ws.rows("SELECT d.group_id, s.uid FROM dup_groups d JOIN samples s ON s.id = d.sample_id"):
        found.setdefault(group, set()).add(uid)
    true_pairs, found_pairs = _pairs(truth), _pairs(found)
    hit = len(true_pairs & found_pairs)
    return {"planted_pairs": len(true_pairs), "found_pairs": len(found_pairs),
            "precision": round(hit / len(found_pairs), 4) if found_pairs else None,
            "recall": round(hit / len(true_pairs), 4) if true_pairs else None}


def default_quality(ws: Workspace) -> dict:
    """Is the planted default (synthetic captions call stars yellow) found, and suggested?"""
    model = open_workspace_model(ws, None)
    result = find_default(ws, DefaultsQuery("star", "colour", tuple(COLOURS), source="syn"), model)
    suggestions = suggest(ws, model, source="syn")
    rank = next((i for i, s in enumerate(suggestions) if s["concept"] == "star" and "yellow" in s["values"]), None)
    return {"finding": result["finding"], "caption_side": result["captions"], "image_side": result["images"],
            "caption_default_only": result["caption_default_only"], "suggestion_rank": rank,
            "suggestions": [(s["concept"], s["axis"], s["entropy_drop"]) for s in suggestions[:5]],
            "axes_mined": ContrastSets.load(ws).axes()}


def map_quality(ws: Workspace) -> dict:
    return {"nmi": cluster_nmi(ws), "duplicates": duplicate_quality(ws), "default": default_quality(ws)}
