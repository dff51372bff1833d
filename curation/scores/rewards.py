"""Reward versions: one value per sample and version, with provenance, and the active version the UI filters by.

Version 1 (``clip_score:alt``) is written by ``altlens score``; learned rewards
(``altlens reward apply``) become later versions beside it. ``meta.active_reward``
names the version that filters, summaries and duplicate representatives use.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from indexer.store import Workspace, now

ALT_CLIP_REWARD = "clip_score:alt"


def kind_text(kind: str | None) -> str:
    """A reward version's kind in words: ``clip_score:alt`` -> "clip_score of the alt-text", a learned reward's
    ``learned:<ISO time>`` -> "learned, trained 2026-12-07 01:16"."""
    if not kind:
        return ""
    if kind == ALT_CLIP_REWARD:
        return "clip_score of the alt-text"
    head, _, when = kind.partition(":")
    if head == "learned" and when:
        return f"learned, trained {when[:16].replace('T', ' ')}"
    return kind.replace(":", " ")


def reward_version(ws: Workspace, kind: str, provenance: dict | None = None, create: bool = True) -> int | None:
    """The version number of a reward kind, created on first use."""
    found = ws.scalar("SELECT max(version) FROM reward_versions WHERE kind = ?", [kind])
    if found is not None or not create:
        return found
    version = int(ws.scalar("SELECT coalesce(max(version), 0) + 1 FROM reward_versions"))
    ws.execute("INSERT INTO reward_versions VALUES (?, ?, ?, ?)", [version, kind, json.dumps(provenance or {}), now()])
    return version


def active_reward(ws: Workspace) -> int | None:
    return ws.get_meta("active_reward")


def set_active(ws: Workspace, version: int, cur=None) -> None:
    ws.set_meta("active_reward", int(version), cur=cur)


def reward_values(ws: Workspace, version: int | None = None) -> dict[int, float]:
    """sample id -> value of reward ``version`` (default: the active one); empty before any reward."""
    version = version if version is not None else active_reward(ws)
    if version is None:
        return {}
    return dict(ws.rows("SELECT sample_id, value FROM rewards WHERE version = ?", [version]))


def write_version(ws: Workspace, version: int, ids: np.ndarray, values: np.ndarray, activate: bool) -> None:
    """Replace every value of reward ``version`` in one transaction (optionally making it active)."""
    with ws.transaction() as cur:
        cur.execute("DELETE FROM rewards WHERE version = ?", [version])
        ws.insert_arrow("rewards", pa.table({"sample_id": np.asarray(ids, dtype=np.int64),
                                            "version": np.full(len(values), version, np.int32),
                                            "value": np.asarray(values, dtype=np.float64)}), cur=cur)
        if activate:
            set_active(ws, version, cur=cur)


def write_default(ws: Workspace) -> int:
    """Version 1: the alt caption's clip_score, for every scored alt caption still missing it; returns how many."""
    version = reward_version(ws, ALT_CLIP_REWARD, {"definition": "clip_score of the sample's alt caption"})
    if active_reward(ws) is None:
        set_active(ws, version)
    before = ws.scalar("SELECT count(*) FROM rewards WHERE version = ?", [version])
    ws.execute("""INSERT INTO rewards SELECT c.sample_id, ?, cs.clip_score FROM captions c
                  JOIN caption_scores cs ON cs.caption_id = c.id
                  WHERE c.source_kind = 'alt' ON CONFLICT DO NOTHING""", [version])
    return int(ws.scalar("SELECT count(*) FROM rewards WHERE version = ?", [version])) - int(before)
