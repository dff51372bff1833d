"""A demo world for measuring claims and contrast: each scene indexed once per caption of
:mod:`demo.phrasings` (correct, and wrong in one known way), then scored by the product's own stages.

The truth (which kind of error each sample's alt-text has) goes into ``demo_truth``
(``noise`` = the kind), so AUROC of correct against each kind can be read per score.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from curation.pipeline import stage
from demo.build import TRUTH, demo_model_spec
from demo.phrasings import ERROR_KINDS, caption_set
from demo.samples import generate_samples, sample_image
from indexer.index import IndexConfig
from indexer.store import Workspace


def write_world(out: Path, n_scenes: int, seed: int, shard_size: int = 400) -> list[dict]:
    """Shards of every scene under each of its captions; returns the truth rows (key, kind, scene, caption)."""
    samples = generate_samples(n_scenes, seed)
    rng = random.Random(seed + 1)
    truth, members = [], []
    for i, sample in enumerate(samples):
        if sample.dup_of:  # planted copies are another experiment
            continue
        others = [s for s in samples if s.scene.get("topic") != sample.scene.get("topic")] or samples
        other = rng.choice(others).scene
        image = sample_image(sample)
        for kind, caption in caption_set(sample.scene, i % 4, rng, other).items():
            key = f"{i:06d}-{kind}"
            truth.append({"key": key, "kind": kind, "scene": sample.scene, "caption": caption})
            members += [(f"{key}.jpg", image), (f"{key}.txt", caption.encode())]
    out.mkdir(parents=True, exist_ok=True)
    per_shard = shard_size * 2
    for number, start in enumerate(range(0, len(members), per_shard)):
        with tarfile.open(out / f"{number:05d}.tar", "w") as tar:
            for name, data in members[start:start + per_shard]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
    return truth


def build(root: Path, n_scenes: int = 200, seed: int = 97, stages: tuple[str, ...] = ("score",)) -> dict:
    """Index the world with the shipped demo CLIP, store its truth, run ``stages`` (caption, fuse, score, map)."""
    from curation.captions.caption import CaptionConfig
    truth = write_world(root / "source", n_scenes, seed)
    shards = sorted(str(p) for p in (root / "source").glob("*.tar"))
    reports = {}
    with Workspace(root / "ws", create=True) as ws:
        reports["index"] = stage("index").run(ws, IndexConfig(sources=tuple(shards), model=demo_model_spec()))
        store_truth(ws, truth)
        configs = {"caption": CaptionConfig(captioner="demo", num=5)}
        for name in stages:
            step = stage(name)
            reports[name] = step.run(ws, configs.get(name) or step.config())
    return {"samples": len(truth), "reports": reports}


def store_truth(ws: Workspace, truth: list[dict]) -> None:
    """One ``demo_truth`` row per indexed sample: its scene, its caption and the kind of error it has."""
    uid_of = {key.split("/", 1)[1]: uid for key, uid in ws.rows("SELECT key, uid FROM samples")}
    rows = [(uid_of[t["key"]], t["key"], json.dumps(t["scene"]), t["caption"], t["caption"], t["kind"], "[]", None,
             None, False) for t in truth if t["key"] in uid_of]
    with ws.transaction() as cur:
        for statement in TRUTH.statements():
            cur.execute(statement)
        cur.executemany("INSERT INTO demo_truth VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)


def quality(ws: Workspace, scores: dict[str, dict[int, float]] | None = None, only: set[int] | None = None) -> dict:
    """AUROC of correct against each error kind, per score: clip_score and contrast of the alt-text, and any
    extra ``scores`` (name -> sample id -> value); ``only`` restricts it to those sample ids. A missing value
    counts as 0 (a caption with no judged claim has no contrast)."""
    rows = ws.rows("""SELECT s.id, t.noise, cs.clip_score, cc.contrast FROM demo_truth t
                      JOIN samples s ON s.uid = t.uid AND s.status = 'ok'
                      JOIN captions c ON c.sample_id = s.id AND c.source_kind = 'alt'
                      LEFT JOIN caption_scores cs ON cs.caption_id = c.id
                      LEFT JOIN caption_contrast cc ON cc.caption_id = c.id""")
    rows = [r for r in rows if only is None or r[0] in only]
    columns = {"clip_score": {r[0]: r[2] for r in rows}, "contrast": {r[0]: r[3] for r in rows}, **(scores or {})}
    kind_of = {r[0]: r[1] for r in rows}
    out = {"samples": len(rows), "unjudged_contrast": sum(r[3] is None for r in rows)}
    for name, values in columns.items():
        out[name] = {}
        for kind in ERROR_KINDS:
            picked = [i for i in values if kind_of.get(i) in ("correct", kind) and (only is None or i in only)]
            labels = [kind_of[i] == "correct" for i in picked]
            if len(set(labels)) == 2:
                scores_ = [values[i] if values[i] is not None else 0.0 for i in picked]
                out[name][kind] = round(float(roc_auc_score(labels, scores_)), 4)
    return out


def scene_of(ws: Workspace) -> dict[int, int]:
    """sample id -> scene number (for splits that keep a scene's captions together)."""
    return {i: int(key[:6]) for i, key in ws.rows("""SELECT s.id, t.key FROM demo_truth t
                                                      JOIN samples s ON s.uid = t.uid""")}


def held_out_scenes(ws: Workspace, share: float = 0.5, seed: int = 0) -> set[int]:
    scenes = sorted(set(scene_of(ws).values()))
    return set(np.random.default_rng(seed).choice(scenes, int(len(scenes) * share), replace=False).tolist())
