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

import numpy as np
import pyarrow as pa

from curation.export.budget import ALLOCATE, PICK, budget_pick
from curation.export.presets import PRESETS, preset_steps
from curation.export.presets import score_sql as imported_score_sql
from curation.review.concepts import parse_rule, rule_step
from curation.scores.rewards import active_reward
from curation.structure.semdedup import removed_ids, require_run
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
    picked: str = ""  # set for a hand-picked selection (a map region): where its ids came from
    semdedup_eps: float | None = None  # drop semantic duplicates at this eps (curation/structure/semdedup.py)
    semdedup_keep: str = "caption"
    budget: float | None = None  # keep this share of what the other steps keep (curation/export/budget.py)
    allocate: str = "sqrt"
    pick: str = "central"
    concepts: tuple[str, ...] = ()  # concept rules such as "watermark<0.5" (curation/review/concepts.py)
    preset: str | None = None  # a DataComp baseline applied first (curation/export/presets.py)
    fraction: float = 0.3  # datacomp-clip-score: the share of the whole pool it keeps
    preset_score: str | None = None  # the score a preset ranks or thresholds by (default: the pool's own)
    centroids: str | None = None  # image-based: a .npy of cluster centres (resolved to an absolute path)
    targets: str | None = None  # image-based: a .npy of target image embeddings or of centre numbers
    imported_min: dict = field(default_factory=dict)  # imported score name -> the least value kept

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
        if self.semdedup_eps is not None and not 0 < self.semdedup_eps < 1:
            raise ValueError(f"--semdedup is an eps between 0 and 1 (0.05: cosine 0.95), got {self.semdedup_eps}")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ValueError(f"--budget is a share of the selection, above 0 and at most 1, got {self.budget}")
        if self.allocate not in ALLOCATE or self.pick not in PICK:
            raise ValueError(f"--allocate must be one of {', '.join(ALLOCATE)} and --pick one of {', '.join(PICK)}")
        if self.per_cluster_k is not None and self.per_cluster_k < 1:
            raise ValueError(f"--per-cluster must be >= 1, got {self.per_cluster_k}")
        for text in self.concepts:
            parse_rule(text)
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; allowed: {', '.join(PRESETS)}")
        for score, value in self.imported_min.items():
            if not isinstance(score, str) or not score or len(score) > 200:
                raise ValueError(f"an imported score is named by 1-200 characters, got {score!r}")
            float(value)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"--fraction is a share of the pool, above 0 and at most 1, got {self.fraction}")


def _steps(ws: Workspace, rule: SelectionRule) -> list[tuple[str, str, list]]:
    """The rule as (what it removes, SQL condition, parameters), in the order the preview reports them."""
    version = rule.reward_version or active_reward(ws)
    if rule.reward_version is not None and not ws.scalar("SELECT count(*) FROM reward_versions WHERE version = ?",
                                                         [rule.reward_version]):
        raise ValueError(f"no reward version {rule.reward_version}")
    _require_inputs(ws, rule)
    steps = preset_steps(ws, rule.preset, rule.fraction, rule.preset_score, rule.centroids, rule.targets) \
        if rule.preset else []
    for score, value in sorted(rule.imported_min.items()):
        sql, params = imported_score_sql(ws, score)
        steps.append((f"{score} below {float(value):g}",
                      f"s.id IN (SELECT sample_id FROM ({sql}) WHERE value >= ?)", [*params, float(value)]))
    if rule.min_reward is not None:
        steps.append((f"reward below {rule.min_reward:g}",
                      "s.id IN (SELECT sample_id FROM rewards WHERE version = ? AND value >= ?)",
                      [version, float(rule.min_reward)]))
    for source, value in sorted(rule.source_min.items()):
        steps.append((f"{source} clip_score below {float(value):g}",
                      f"s.id IN (SELECT sample_id FROM sample_source_scores WHERE {source} >= ?)", [float(value)]))
    if rule.clusters_in:
        steps.append(("outside the chosen clusters",
                      "s.id IN (SELECT sample_id FROM clusters WHERE list_contains(?, cluster))",
                      [[int(c) for c in rule.clusters_in]]))
    if rule.clusters_out:
        steps.append(("in excluded clusters",
                      "s.id NOT IN (SELECT sample_id FROM clusters WHERE list_contains(?, cluster))",
                      [[int(c) for c in rule.clusters_out]]))
    if rule.drop_duplicates:
        steps.append(("near-duplicates (each group keeps one)",
                      "s.id NOT IN (SELECT sample_id FROM dup_groups WHERE NOT representative)", []))
    if rule.semdedup_eps is not None:
        require_run(ws, rule.semdedup_keep)
        steps.append((f"semantic duplicates (eps {rule.semdedup_eps:g}, keep by {rule.semdedup_keep})",
                      "s.id NOT IN (SELECT unnest(?))", [removed_ids(ws, rule.semdedup_eps)]))
    steps += [rule_step(ws, text) for text in rule.concepts]
    if rule.labels != "any":
        latest = "(SELECT sample_id, arg_max(value, id) AS value FROM labels WHERE kind = 'alignment' GROUP BY 1)"
        if rule.labels == "good_only":
            steps.append(("not labelled good", f"s.id IN (SELECT sample_id FROM {latest} WHERE value = 'good')", []))
        else:
            steps.append(("labelled bad", f"s.id NOT IN (SELECT sample_id FROM {latest} WHERE value = 'bad')", []))
    return steps


def _where(ws: Workspace, rule: SelectionRule) -> tuple[list[str], list]:
    where, params = ["s.status = 'ok'"], []
    for _, condition, values in _steps(ws, rule):
        where.append(condition)
        params += values
    return where, params


def _ids_sql(where: list[str], params: list, rule: SelectionRule) -> tuple[str, list]:
    sql = f"SELECT s.id FROM samples s WHERE {' AND '.join(where)}"
    if rule.per_cluster_k:
        sql = f"""SELECT sample_id FROM (SELECT k.sample_id, row_number() OVER (PARTITION BY k.cluster
                  ORDER BY k.distance, k.sample_id) AS rank FROM clusters k WHERE k.sample_id IN ({sql}))
                  WHERE rank <= ?"""
        params = [*params, int(rule.per_cluster_k)]
    return sql, params


def preview_selection(ws: Workspace, rule: SelectionRule) -> dict:
    """What the rule would keep, step by step, without saving: ``steps`` lists each step's name, how many
    samples it removes and how many remain; ``selected`` is what saving would hold, and ``exists`` the count of
    a saved selection of the same name (None when there is none)."""
    where, params = ["s.status = 'ok'"], []
    total = int(ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok'"))
    remaining, steps = total, []
    for name, condition, values in _steps(ws, rule):
        where.append(condition)
        params += values
        left = int(ws.scalar(f"SELECT count(*) FROM samples s WHERE {' AND '.join(where)}", params))
        steps.append({"step": name, "removed": remaining - left, "remaining": left})
        remaining = left
    if rule.per_cluster_k:
        sql, all_params = _ids_sql(where, params, rule)
        left = int(ws.scalar(f"SELECT count(*) FROM ({sql})", all_params))
        steps.append({"step": f"beyond {rule.per_cluster_k} per cluster", "removed": remaining - left,
                      "remaining": left})
        remaining = left
    per_cluster = None
    if rule.budget is not None:
        sql, all_params = _ids_sql(where, params, rule)
        kept, per_cluster = budget_pick(ws, [r[0] for r in ws.rows(sql, all_params)], rule.budget, rule.allocate,
                                        rule.pick)
        steps.append({"step": f"beyond the budget ({rule.budget:.0%}, allocate {rule.allocate}, pick {rule.pick})",
                      "removed": remaining - len(kept), "remaining": len(kept)})
        remaining = len(kept)
    existing = ws.scalar("SELECT counts FROM selections WHERE name = ?", [rule.name])
    return {"ok_samples": total, "steps": steps, "selected": remaining, "per_cluster": per_cluster,
            "exists": json.loads(existing)["selected"] if existing else None}


def preview_text(preview: dict) -> str:
    """One line: every step with what it removed, and what is left."""
    parts = [f"{preview['ok_samples']} ok samples"]
    parts += [f"{s['step']} −{s['removed']}" for s in preview["steps"]]
    return " → ".join(parts) + f" → {preview['selected']} selected"


def _require_inputs(ws: Workspace, rule: SelectionRule) -> None:
    """A rule that filters on scores or clusters needs the step that makes them to have run."""
    if rule.min_reward is not None:
        ws.require("rewards", "rewards")
    if rule.source_min:
        ws.require("sample_source_scores", "caption scores")
    if rule.clusters_in or rule.clusters_out or rule.per_cluster_k:
        ws.require("clusters", "clusters")


class SelectionExists(ValueError):
    """A selection of that name is saved already and replacing it was not asked for; ``held``: its count."""

    def __init__(self, name: str, held: int, how: str = "ask to replace it"):
        super().__init__(f"a selection named {name!r} is saved already ({held} samples): choose another name, or "
                         f"{how}")
        self.name, self.held = name, held


def save_selection(ws: Workspace, rule: SelectionRule, replace: bool = True) -> dict:
    """Materialise the rule into ``selection_members``. A selection of the same name is replaced, or, with
    ``replace=False``, refused with :class:`SelectionExists`; ``replaced`` says what it held."""
    where, params = _where(ws, rule)
    sql, params = _ids_sql(where, params, rule)
    _refuse_overwrite(ws, rule.name, replace)
    ids = np.sort(np.asarray(next(iter(ws.numpy(sql, params).values())), dtype=np.int64))  # an array, not rows
    if rule.budget is not None:
        ids, _ = budget_pick(ws, ids.tolist(), rule.budget, rule.allocate, rule.pick)
    return _store(ws, rule, ids)


def save_picked(ws: Workspace, name: str, ids, picked: str, caption_policy: str = "hybrid",
                replace: bool = False) -> dict:
    """Save hand-picked ids (a map region) as a selection: exactly these ok samples, exported with
    ``caption_policy``; ``picked`` records where they came from."""
    rule = SelectionRule(name=name, drop_duplicates=False, labels="any", caption_policy=caption_policy,
                         picked=picked[:500] or "hand-picked")
    _refuse_overwrite(ws, rule.name, replace)
    wanted = sorted({int(i) for i in ids})
    ok = [r[0] for r in ws.rows("""SELECT s.id FROM (SELECT unnest(?) AS id) q JOIN samples s ON s.id = q.id
                                   WHERE s.status = 'ok' ORDER BY s.id""", [wanted])] if wanted else []
    return _store(ws, rule, ok) | {"asked": len(wanted)}


def _refuse_overwrite(ws: Workspace, name: str, replace: bool) -> None:
    before = ws.scalar("SELECT counts FROM selections WHERE name = ?", [name])
    if before is not None and not replace:
        raise SelectionExists(name, json.loads(before)["selected"])


def _store(ws: Workspace, rule: SelectionRule, ids) -> dict:
    """Write the selection and its members (sorted ids, as one Arrow column: the name is a one-entry
    dictionary, so a selection of millions holds no Python object per member)."""
    ids = np.asarray(ids, dtype=np.int64)
    before = ws.scalar("SELECT counts FROM selections WHERE name = ?", [rule.name])
    total_ok = int(ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok'"))
    counts = {"selected": len(ids), "ok_samples": total_ok, "share": round(len(ids) / total_ok, 4) if total_ok else 0}
    with ws.transaction() as cur:
        cur.execute("DELETE FROM selection_members WHERE name = ?", [rule.name])
        cur.execute("DELETE FROM selections WHERE name = ?", [rule.name])
        cur.execute("INSERT INTO selections VALUES (?, ?, ?, ?)",
                    [rule.name, json.dumps(asdict(rule), sort_keys=True), json.dumps(counts), now()])
        if len(ids):
            names = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(ids), np.int32)), pa.array([rule.name]))
            ws.insert_arrow("selection_members", pa.table({"name": names, "sample_id": ids}), cur=cur)
    return {"name": rule.name, **counts, "replaced": json.loads(before)["selected"] if before else None}


def load_rule(ws: Workspace, name: str) -> SelectionRule:
    """A saved selection's rule."""
    row = ws.scalar("SELECT rule FROM selections WHERE name = ?", [name])
    if row is None:
        names = sorted(selection_names(ws))
        raise ValueError(f"no selection {name!r}; saved selections: {', '.join(names) or 'none'}")
    data = json.loads(row)
    data["clusters_in"], data["clusters_out"] = tuple(data["clusters_in"]), tuple(data["clusters_out"])
    data["concepts"] = tuple(data.get("concepts", ()))
    known = set(SelectionRule.__dataclass_fields__)
    return SelectionRule(**{k: v for k, v in data.items() if k in known})


def load_selection(ws: Workspace, name: str) -> tuple[SelectionRule, np.ndarray]:
    """A saved selection's rule and its members' ids (sorted, one int64 array)."""
    rule = load_rule(ws, name)
    ids = ws.numpy("SELECT sample_id FROM selection_members WHERE name = ? ORDER BY sample_id", [name])["sample_id"]
    return rule, np.asarray(ids, dtype=np.int64)


def selection_names(ws: Workspace) -> list[str]:
    """Saved selections, newest first."""
    return [r[0] for r in ws.rows("SELECT name FROM selections ORDER BY created_at DESC, name")]
