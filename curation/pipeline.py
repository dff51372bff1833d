"""The pipeline, written down once: each stage's command, config dataclass and ``run(ws, cfg) -> report``.

``altlens index`` makes a workspace; ``caption`` -> ``fuse`` -> ``score`` -> ``map`` ->
``semdedup`` prepare it for the curator (label, reward, select, export work on top of it).
The command line and the demo build both run stages from this list, so the order
lives here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from curation.captions import caption, fuse
from curation.scores import score
from curation.structure import map as map_stage
from curation.structure import semdedup
from indexer import importer, index
from indexer.store import Workspace


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its ``altlens`` command name, config dataclass and run function."""

    name: str
    config: type
    run: Callable[[Workspace, Any], dict]
    check: Callable[[Any], object] | None = None  # validates the config before the workspace is opened
    creates_workspace: bool = False


STAGES: tuple[Stage, ...] = (
    Stage("index", index.IndexConfig, index.run, check=index.resolve_sources, creates_workspace=True),
    Stage("caption", caption.CaptionConfig, caption.run),
    Stage("fuse", fuse.FuseConfig, fuse.run),
    Stage("score", score.ScoreConfig, score.run),
    Stage("map", map_stage.MapConfig, map_stage.run),
    # after map (it reads the clusters) and score (the caption keep policy reads the active reward)
    Stage("semdedup", semdedup.SemDedupConfig, semdedup.run),
)


# Other ways into a workspace: they fill the same tables through the same writer, then the stages above follow.
ENTRY_STAGES: tuple[Stage, ...] = (
    Stage("import", importer.ImportConfig, importer.run, check=importer.check, creates_workspace=True),
)


def stage(name: str) -> Stage:
    for candidate in STAGES + ENTRY_STAGES:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown stage {name!r}; the pipeline is {' -> '.join(s.name for s in STAGES)}")


def run_stage(name: str, workspace: str | Path, cfg=None) -> dict:
    """Open ``workspace`` (creating it for ``index``), run one stage with ``cfg`` (default: its defaults)."""
    step = stage(name)
    cfg = step.config() if cfg is None else cfg
    if not isinstance(cfg, step.config):
        raise TypeError(f"stage {name!r} takes a {step.config.__name__}, got {type(cfg).__name__}")
    if step.check is not None:
        step.check(cfg)
    with Workspace(workspace, create=step.creates_workspace) as ws:
        return step.run(ws, cfg)


def run_after_index(ws: Workspace, configs: dict[str, Any] | None = None) -> dict[str, dict]:
    """Every stage after ``index``, in order, on an open workspace; ``configs`` overrides a stage's defaults."""
    configs = configs or {}
    unknown = set(configs) - {s.name for s in STAGES[1:]}
    if unknown:
        raise ValueError(f"no stage named {sorted(unknown)}; stages after index: {[s.name for s in STAGES[1:]]}")
    return {s.name: s.run(ws, configs.get(s.name) or s.config()) for s in STAGES[1:]}
