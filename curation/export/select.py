"""Selections: a named, saved rule set -> a table of chosen sample ids, with the rule JSON and its counts.

A rule holds reward threshold(s) and which reward version, clusters in/out,
duplicate dropping (the group representative stays), label filters, an
optional reduction to K representatives per cluster (nearest the centroid among
what is kept), and the caption policy export uses. Rule values are validated
here and reach SQL only as parameters.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from curation.scores.rewards import active_reward
from indexer.schema import SOURCE_KINDS
from indexer.store import Workspace, now

POLICIES = ("alt", "best", "fused", "hybrid")
LABEL_FILTERS = ("any", "good_only", "exclude_bad")


@dataclass(frozen=True)
class SelectionRule:
    """What a selection keeps; every field is checked on creation."""

    name: str
    min_reward: float | None = None
    reward_version: int | None = None
    source_min: dict = field(default_factory=dict)
    clusters_in: tuple[int, ...] = ()
    clusters_out: tuple[int, ...] = ()
    drop_duplicates: bool = True
    labels: str = "exclude_bad"
    per_cluster_k: int | None = None
    caption_policy: str = "hybrid"

    def __post_init__(self):
        if not self.name or len(self.name) > 64 or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"selection name must be 1-64 letters, digits, - _ or ., got {self.name!r}")
        if self.caption_policy not in POLICIES:
            raise ValueError(f"unknown caption policy {self.caption_policy!r}; allowed: {', '.join(POLICIES)}")
        if self.labels not in LABEL_FILTERS:
            raise ValueError(f"unknown label filter {self.labels!r}; allowed: {', '.join(LABEL_FILTERS)}")
        for source, value in self.source_min.items():
            if source not in SOURCE_KINDS:
                raise ValueError(f"unknown caption source {source!r} in a threshold; allowed: {', '.join(SOURCE_KINDS)}")
            float(value)
        if self.per_cluster_k is not None and self.per_cluster_k < 1:
            raise ValueError(f"--per-cluster must be >= 1, got {self.per_cluster_k}")


def _where(ws: Workspace, rule: SelectionRule) -> tuple[list[str], list]:
    version = rule.reward_version or active_reward(ws)
    if rule.reward_version is not None and not ws.scalar("SELECT count(*) FROM reward_versions WHERE version = ?",
                                                         [rule.reward_version]):
        raise ValueError(f"no reward version {rule.reward_version}")
    where, params = ["s.status = 'ok'"], []
    _require_inputs(ws, rule)
    if rule.min_reward is not None:
        where.append("s.id IN (SELECT sample_id FROM rewards WHERE version = ? AND value >= ?)")
        params += [version, float(rule.min_reward)]
    for source, value in sorted(rule.source_min.items()):
        where.append(f"s.id IN (SELECT sample_id FROM sample_source_scores WHERE {source} >= ?)")
        params.append(float(value))
    if rule.clusters_in:
        where.append("s.id IN (SELECT sample_id FROM clusters WHERE list_contains(?, cluster))")
        params.append([int(c) for c in rule.clusters_in])
    if rule.clusters_out:
        where.append("s.id NOT IN (SELECT sample_id FROM clusters WHERE list_contains(?, cluster))")
        params.append([int(c) for c in rule.clusters_out])
    if rule.drop_duplicates:
        where.append("s.id NOT IN (SELECT sample_id FROM dup_groups WHERE NOT representative)")
    if rule.labels != "any":
        latest = "(SELECT sample_id, arg_max(value, id) AS value FROM labels WHERE kind = 'alignment' GROUP BY 1)"
        if rule.labels == "good_only":
            where.append(f"s.id IN (SELECT sample_id FROM {latest} WHERE value = 'good')")
        else:
            where.append(f"s.id NOT IN (SELECT sample_id FROM {latest} WHERE value = 'bad')")
    return where, params


def _require_inputs(ws: Workspace, rule: SelectionRule) -> None:
    """A rule that filters on scores or clusters needs the step that makes them to have run."""
    if rule.min_reward is not None:
        ws.require("rewards", "rewards")
    if rule.source_min:
        ws.require("sample_source_scores", "caption scores")
    if rule.clusters_in or rule.clusters_out or rule.per_cluster_k:
        ws.require("clusters", "clusters")


def save_selection(ws: Workspace, rule: SelectionRule) -> dict:
    """Materialise the rule into ``selection_members`` (replacing a selection of the same name)."""
    where, params = _where(ws, rule)
    sql = f"SELECT s.id FROM samples s WHERE {' AND '.join(where)}"
    if rule.per_cluster_k:
        sql = f"""SELECT sample_id FROM (SELECT k.sample_id, row_number() OVER (PARTITION BY k.cluster
                  ORDER BY k.distance, k.sample_id) AS rank FROM clusters k WHERE k.sample_id IN ({sql}))
                  WHERE rank <= ?"""
        params.append(int(rule.per_cluster_k))
    ids = sorted(r[0] for r in ws.rows(sql, params))
    total_ok = int(ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok'"))
    counts = {"selected": len(ids), "ok_samples": total_ok, "share": round(len(ids) / total_ok, 4) if total_ok else 0}
    with ws.transaction() as cur:
        cur.execute("DELETE FROM selection_members WHERE name = ?", [rule.name])
        cur.execute("DELETE FROM selections WHERE name = ?", [rule.name])
        cur.execute("INSERT INTO selections VALUES (?, ?, ?, ?)",
                    [rule.name, json.dumps(asdict(rule), sort_keys=True), json.dumps(counts), now()])
        if ids:
            ws.insert_arrow("selection_members", pa.table({"name": [rule.name] * len(ids), "sample_id": ids}), cur=cur)
    return {"name": rule.name, **counts}


def load_selection(ws: Workspace, name: str) -> tuple[SelectionRule, list[int]]:
    row = ws.scalar("SELECT rule FROM selections WHERE name = ?", [name])
    if row is None:
        names = sorted(selection_names(ws))
        raise ValueError(f"no selection {name!r}; saved selections: {', '.join(names) or 'none'}")
    data = json.loads(row)
    data["clusters_in"], data["clusters_out"] = tuple(data["clusters_in"]), tuple(data["clusters_out"])
    ids = [r[0] for r in ws.rows("SELECT sample_id FROM selection_members WHERE name = ? ORDER BY sample_id", [name])]
    return SelectionRule(**data), ids


def selection_names(ws: Workspace) -> list[str]:
    """Saved selections, newest first."""
    return [r[0] for r in ws.rows("SELECT name FROM selections ORDER BY created_at DESC, name")]
