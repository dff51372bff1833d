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
    """Pairwise precision and recall of found duplicate groups against the planted copies (exact and near).
    A planted semantic duplicate (the scene drawn again) and its original are neither: whether the pixel
    check calls a redrawn picture a copy is not scored."""
    truth: dict[str, set[str]] = {}
    redrawn: set[tuple[str, str]] = set()
    for uid, dup_of, kind in ws.rows("SELECT uid, dup_of, dup_kind FROM demo_truth WHERE dup_of IS NOT NULL"):
        if kind == "semantic":
            redrawn.add(tuple(sorted((uid, dup_of))))
        else:
            truth.setdefault(dup_of, {dup_of}).add(uid)
    found: dict[int, set[str]] = {}
    for group, uid in ws.rows("SELECT d.group_id, s.uid FROM dup_groups d JOIN samples s ON s.id = d.sample_id"):
        found.setdefault(group, set()).add(uid)
    true_pairs, found_pairs = _pairs(truth), _pairs(found) - redrawn
    hit = len(true_pairs & found_pairs)
    return {"planted_pairs": len(true_pairs), "found_pairs": len(found_pairs),
            "precision": round(hit / len(found_pairs), 4) if found_pairs else None,
            "recall": round(hit / len(true_pairs), 4) if true_pairs else None}


def same_thing(a: dict, b: dict) -> bool:
    """Two scenes show the same thing: the same objects (shape and colour) on the same background, wherever
    and however large they are drawn (another shot of the same products)."""
    def content(scene):
        return sorted((o["shape"], o["colour"]) for o in scene["objects"]), scene["background"]
    return content(a) == content(b)


NOISE_ORDER = ("correct", "partial", "swapped", "unrelated", "junk", "empty")  # best alt-text first


def semdedup_quality(ws: Workspace, eps: float) -> dict:
    """The stored semantic dedup at ``eps`` against the demo truth.

    precision: of the samples it removes, the share whose kept look-alike (``duplicate_of``) shows the same
    thing; recall: of the planted semantic copies, the share whose pair (copy, original) loses one member to
    a sample showing the same thing; planted_members_by_alt_noise: how many members of planted groups were kept
    and dropped, by the noise kind of their alt-text; best_caption_kept: of the planted groups whose members' alt-texts differ
    in quality and that the run found, the share where the member kept has the best alt-text noise kind."""
    rows = {r["uid"]: r for r in ws.dicts("""SELECT s.uid, t.scene_json, t.noise, t.dup_of, t.dup_kind, d.max_sim,
                                                     o.uid AS kept_uid FROM semdedup d
                                              JOIN samples s ON s.id = d.sample_id JOIN demo_truth t ON t.uid = s.uid
                                              LEFT JOIN samples o ON o.id = d.duplicate_of""")}
    for r in rows.values():
        r["scene"] = json.loads(r.pop("scene_json"))
        r["removed"] = r["max_sim"] is not None and r["max_sim"] >= 1 - eps
    removed = [r for r in rows.values() if r["removed"]]
    right = [r for r in removed if r["kept_uid"] in rows and same_thing(r["scene"], rows[r["kept_uid"]]["scene"])]
    right_uids = {r["uid"] for r in right}
    groups: dict[str, list[dict]] = {}
    for r in rows.values():
        if r["dup_kind"] == "semantic" and r["dup_of"] in rows:
            groups.setdefault(r["dup_of"], [rows[r["dup_of"]]]).append(r)
    pairs = [(r, rows[r["dup_of"]]) for members in groups.values() for r in members[1:]]
    found = [p for p in pairs if p[0]["uid"] in right_uids or p[1]["uid"] in right_uids]
    judged = kept_best = 0
    fate: dict[str, dict[str, int]] = {kind: {"kept": 0, "dropped": 0} for kind in NOISE_ORDER}
    for members in groups.values():
        for m in members:
            fate[m["noise"]]["dropped" if m["removed"] else "kept"] += 1
        kept = [m for m in members if not m["removed"]]
        ranks = [NOISE_ORDER.index(m["noise"]) for m in members]
        if len(kept) != 1 or len(set(ranks)) == 1:
            continue  # not reduced to one, or nothing to choose between
        judged += 1
        kept_best += NOISE_ORDER.index(kept[0]["noise"]) == min(ranks)
    return {"eps": eps, "removed": len(removed), "planted_pairs": len(pairs),
            "precision": round(len(right) / len(removed), 4) if removed else None,
            "recall": round(len(found) / len(pairs), 4) if pairs else None,
            "groups_judged": judged, "best_caption_kept": round(kept_best / judged, 4) if judged else None,
            "planted_members_by_alt_noise": {k: v for k, v in fate.items() if v["kept"] or v["dropped"]}}


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
