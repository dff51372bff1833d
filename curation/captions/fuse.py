"""``altlens fuse``: for each sample, alt-text + synthetic captions -> one fused caption, stored with provenance.

Fusers: ``rules`` (offline default, :mod:`curation.captions.fusion_rules`) and ``llm:PATH_OR_ID``
(a local causal LM with the CapsFusion instruction, :mod:`curation.captions.hf`).
Incremental: samples that already have a fused caption from the same fuser over
the same synthetic producer are skipped.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from curation.captions.fusion_rules import RULES_VERSION, compose, conflict_alternatives, plan_fusion
from curation.claims.mining import ensure_contrast_sets
from curation.claims.sets import ContrastSets
from curation.registry import Registry
from indexer.models import ModelError, open_workspace_model, run_spec
from indexer.schema import FUSED
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore
from indexer.writer import insert_captions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FuseConfig:
    """``altlens fuse`` settings."""

    fuser: str = "rules"
    syn: str | None = None
    batch_size: int = 256
    device: str = "auto"
    precision: str = "fp32"
    limit: int | None = None
    progress: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")


def syn_producer(ws: Workspace, requested: str | None) -> str:
    """The synthetic-caption producer to fuse from: the one asked for, else the most used one."""
    producers = [r[0] for r in ws.rows("""SELECT producer FROM captions WHERE source_kind = 'syn'
                                           GROUP BY producer ORDER BY count(*) DESC, producer""")]
    if not producers:
        raise ValueError("the workspace has no synthetic captions yet; run 'altlens caption' first")
    if requested is None:
        return producers[0]
    if requested not in producers:
        raise ValueError(f"unknown synthetic producer {requested!r}; the workspace has: {', '.join(producers)}")
    return requested


def pending(ws: Workspace, syn: str, producer: str, limit: int | None) -> list[dict]:
    sql = """SELECT s.id, s.uid, a.text AS alt, list(y.id ORDER BY y.idx) AS syn_ids,
                    list(y.text ORDER BY y.idx) AS syn_texts
             FROM samples s JOIN captions a ON a.sample_id = s.id AND a.source_kind = 'alt'
             JOIN captions y ON y.sample_id = s.id AND y.producer = ?
             WHERE s.status = 'ok' AND s.id NOT IN (SELECT sample_id FROM captions WHERE producer = ?)
             GROUP BY s.id, s.uid, a.text ORDER BY s.id"""
    return ws.dicts(sql + (" LIMIT ?" if limit else ""), [syn, producer] + ([limit] if limit else []))


def run(ws: Workspace, cfg: FuseConfig) -> dict:
    """One fused caption for every ok sample of ``ws`` that has synthetic captions and no fused one yet."""
    syn = syn_producer(ws, cfg.syn)
    factory = fuser_factory(cfg.fuser)  # an unknown fuser is refused before any model loads
    embedder = open_workspace_model(ws, run_spec(cfg.device, cfg.precision))
    fuser = factory(cfg.fuser, embedder, ws)
    producer = f"{fuser.version}({syn})"
    todo = pending(ws, syn, producer, cfg.limit)
    images = EmbeddingStore(ws, "image").load()
    texts = EmbeddingStore(ws, "text").load()
    ws.release()
    bar = tqdm(total=len(todo), desc=f"fuse ({fuser.version})", unit="img", disable=not cfg.progress)
    failed = 0
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        try:
            plans = fuser.fuse(batch, images, texts)
        except (RuntimeError, ValueError, OSError) as exc:  # a failing batch is recorded, the run goes on
            log.warning("fuser %s failed on %d samples: %s", fuser.version, len(batch), exc)
            failed += len(batch)
            bar.update(len(batch))
            continue
        rows = [{"sample_id": r["id"], "uid": r["uid"], "source_kind": FUSED, "producer": producer,
                 "params": json.dumps(plan), "idx": 0, "text": plan["text"]} for r, plan in zip(batch, plans)]
        insert_captions(ws, rows, embedder.encode_texts([p["text"] for p in plans]))
        ws.release()
        bar.update(len(batch))
    bar.close()
    return {"producer": producer, "fused": len(todo) - failed, "failed": failed}


class RulesFuser:
    """:mod:`curation.captions.fusion_rules` rules; the image decides conflicts through the embedding model."""

    version = RULES_VERSION

    def __init__(self, embedder, sets: ContrastSets):
        self.embedder, self.sets = embedder, sets

    rounds = 3

    def fuse(self, batch: list[dict], images, texts) -> list[dict]:
        plans = []
        for row in batch:
            image = np.asarray(images[row["id"]], dtype=np.float32)
            base_idx = int(np.argmax(np.asarray(texts[row["syn_ids"]], dtype=np.float32) @ image))
            options, know, junk = plan_fusion(row["alt"], row["syn_texts"][base_idx], self.sets)
            plans.append({"base_idx": base_idx, "junk": junk, "knowledge": know, "visual": options[0],
                          "base": options[0]})
        self._correct(batch, plans, images)
        return [{"text": compose(p["visual"], p["knowledge"]), "base_idx": p["base_idx"], "junk_alt": p["junk"],
                 "knowledge": p["knowledge"].items(), "corrected": p["visual"] != p["base"], "rules": RULES_VERSION}
                for p in plans]

    def _correct(self, batch: list[dict], plans: list[dict], images) -> None:
        """Greedy, image-decided corrections: take the alternative the image prefers while it beats the current."""
        active = [i for i, p in enumerate(plans) if not p["junk"]]
        for _ in range(self.rounds):
            candidates, owners = [], []
            for i in active:
                options = [plans[i]["visual"]] + conflict_alternatives(plans[i]["visual"], batch[i]["alt"], self.sets)
                candidates += options
                owners += [i] * len(options)
            if not candidates:
                return
            scores = self._image_scores(batch, candidates, owners, images)
            improved = []
            for i in active:
                mine = [j for j, o in enumerate(owners) if o == i]
                best = max(mine, key=lambda j: scores[j])
                if best != mine[0] and scores[best] > scores[mine[0]]:
                    plans[i]["visual"] = candidates[best]
                    improved.append(i)
            active = improved

    def _image_scores(self, batch, candidates, owners, images) -> np.ndarray:
        vecs = self.embedder.encode_texts(candidates)
        sample_ids = np.array([batch[o]["id"] for o in owners])
        return (vecs * np.asarray(images[sample_ids], dtype=np.float32)).sum(1)


def _rules_fuser(arg: str, embedder, ws: Workspace) -> RulesFuser:
    return RulesFuser(embedder, ensure_contrast_sets(ws, embedder))


def _llm_fuser(arg: str, embedder, ws: Workspace):
    try:
        from curation.captions.hf import LLMFuser
    except ImportError as exc:
        raise ModelError(f"the llm fuser needs transformers: {exc}") from exc
    return LLMFuser(arg.partition(":")[2])


# A factory takes (the --fuser value, the workspace's embedding model, the workspace) and returns an object with ``version``
# and ``fuse(batch, images, texts) -> plans``. Plugins add theirs under the ``altlens.fusers`` entry point.
FUSERS: Registry[Callable] = Registry("fuser", "altlens.fusers")
FUSERS.register("rules", _rules_fuser)
FUSERS.register("llm", _llm_fuser)


def fuser_factory(arg: str) -> Callable:
    """The factory of the fuser named by ``--fuser`` (``rules``, ``llm:PATH_OR_ID`` or a plugin's ``NAME[:VALUE]``)."""
    factory = FUSERS.find(arg.partition(":")[0])
    if factory is None:
        raise ValueError(f"unknown fuser {arg!r}; allowed: {', '.join(FUSERS.names())} (llm as llm:PATH_OR_ID)")
    return factory
