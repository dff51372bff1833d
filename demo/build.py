"""The demo: generate the demo world as WebDataset shards, index it with the shipped model, run every curation step.

The world's truth (scene, noise kind, knowledge, duplicates) goes into the
demo-only table ``demo_truth``, never into the tables a real dataset has, so
quality can be measured against it.
"""
from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from curation.captions.caption import CaptionConfig
from curation.captions.fuse import FuseConfig
from curation.pipeline import run_after_index, stage
from demo import CLIP_CHECKPOINT
from demo.samples import DemoSample, generate_samples, sample_image
from demo.world import NoiseConfig
from indexer.index import IndexConfig
from indexer.models import ModelSpec
from indexer.schema import Table, register_table
from indexer.sources import make_uid
from indexer.store import Workspace

log = logging.getLogger(__name__)

TRUTH = register_table(Table("demo_truth", "demo", """uid VARCHAR PRIMARY KEY, key VARCHAR NOT NULL,
    scene_json VARCHAR NOT NULL, canonical VARCHAR NOT NULL, alt VARCHAR NOT NULL, noise VARCHAR NOT NULL,
    knowledge_json VARCHAR NOT NULL, dup_of VARCHAR, dup_kind VARCHAR, watermark BOOLEAN NOT NULL DEFAULT false"""))


@dataclass(frozen=True)
class DemoConfig:
    """What ``altlens demo`` builds."""

    workspace: str = "demo-workspace"
    n: int = 3000
    seed: int = 0
    shard_size: int = 1000
    batch_size: int = 64
    precision: str = "fp32"
    noise: NoiseConfig = NoiseConfig()

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")


def demo_model_spec(precision: str = "fp32") -> ModelSpec:
    """The shipped demo CLIP, loaded exactly as a user's ``--checkpoint`` would be."""
    if not CLIP_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the demo checkpoint {CLIP_CHECKPOINT} is missing; run 'altlens demo-train'")
    return ModelSpec(checkpoint=str(CLIP_CHECKPOINT), precision=precision)


def write_demo_shards(samples: list[DemoSample], out: Path, shard_size: int) -> list[Path]:
    """img2dataset layout: ``key.jpg``, ``key.txt`` (alt-text), ``key.json`` (url and size)."""
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in tqdm(range(0, len(samples), shard_size), desc="write demo shards", unit="shard"):
        path = out / f"{start // shard_size:05d}.tar"
        if not path.exists():
            tmp = path.with_suffix(".tar.tmp")
            with tarfile.open(tmp, "w") as tar:
                for s in samples[start:start + shard_size]:
                    meta = {"url": f"https://shapes.example/{s.key}.jpg", "key": s.key}
                    for name, data in ((f"{s.key}.jpg", sample_image(s)), (f"{s.key}.txt", s.alt.encode()),
                                       (f"{s.key}.json", json.dumps(meta).encode())):
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime = len(data), 1_700_000_000
                        tar.addfile(info, io.BytesIO(data))
            tmp.replace(path)
        shards.append(path)
    return shards


def store_truth(ws: Workspace, samples: list[DemoSample], source: str, shard_size: int) -> None:
    """Write the demo-only truth table, keyed by the uid the indexer gives each sample."""
    def uid(s: DemoSample) -> str:
        return make_uid(source, f"{int(s.key) // shard_size:05d}/{s.key}")
    by_key = {s.key: s for s in samples}
    rows = [(uid(s), s.key, json.dumps(s.scene), s.caption, s.alt, s.noise, json.dumps(s.knowledge),
             uid(by_key[s.dup_of]) if s.dup_of else None, s.dup_kind, s.watermark) for s in samples]
    with ws.transaction() as cur:
        for statement in TRUTH.statements():
            cur.execute(statement)
        cur.executemany("INSERT INTO demo_truth VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)


def stage_configs(cfg: DemoConfig) -> dict:
    """How the demo runs each stage after index: the demo captioner (a plugin) and otherwise the defaults."""
    return {"caption": CaptionConfig(captioner="demo", num=5, sampling="top_p", precision=cfg.precision),
            "fuse": FuseConfig(precision=cfg.precision)}


def build_demo(cfg: DemoConfig) -> dict:
    """Generate, index and curate the demo workspace through the pipeline's stages; return their reports."""
    root = Path(cfg.workspace).resolve()
    samples = generate_samples(cfg.n, cfg.seed, noise=cfg.noise)
    shard_dir = root / "source"
    shards = write_demo_shards(samples, shard_dir, cfg.shard_size)
    index_cfg = IndexConfig(sources=tuple(str(p) for p in shards), model=demo_model_spec(cfg.precision),
                            batch_size=cfg.batch_size)
    with Workspace(root, create=True) as ws:
        report = {"index": stage("index").run(ws, index_cfg)}
        store_truth(ws, samples, str(shard_dir), cfg.shard_size)
        ws.set_meta("demo", asdict(cfg) | {"noise": asdict(cfg.noise)})
        report |= run_after_index(ws, stage_configs(cfg))
    return {"workspace": str(root), "shards": [str(p) for p in shards], **report}


def build_reduce_world(root: Path, n: int = 600, seed: int = 11, semantic_dups: float = 0.1,
                       watermarked: float = 0.25) -> Path:
    """A demo world for reduction and concepts: planted semantic duplicates and watermarks, indexed, scored
    (clip_score of the alt-text is the reward the caption keep policy reads; no contrast) and mapped. No
    captioning."""
    from curation.scores.score import ScoreConfig
    samples = generate_samples(n, seed, noise=NoiseConfig(semantic_dups=semantic_dups, watermarked=watermarked))
    shards = write_demo_shards(samples, root / "source", 1000)
    with Workspace(root, create=True) as ws:
        stage("index").run(ws, IndexConfig(sources=tuple(str(p) for p in shards), model=demo_model_spec()))
        store_truth(ws, samples, str(root / "source"), 1000)
        stage("score").run(ws, ScoreConfig(contrast=False, progress=False))
        stage("map").run(ws, stage("map").config())
    return root
