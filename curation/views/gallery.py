"""Plain data for the curation views: overview, gallery pages, sample detail, caption comparison, filter effect.

The app renders what these return; tests call them without a browser. Score
columns are chosen from a fixed set (never from user text), values travel as
SQL parameters, and everything a filter touches is one indexed table scan, so a
page or a filter change stays fast at a million rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curation.scores.rewards import active_reward
from indexer.schema import SOURCE_KINDS
from indexer.store import Workspace

PER_PAGE = 48
SCORE_SOURCES = ("reward", *SOURCE_KINDS)
COMPARE_SORTS = {
    "syn_minus_alt": "syn - alt DESC", "alt_minus_syn": "alt - syn DESC",
    "fused_minus_alt": "fused - alt DESC", "fused_minus_syn": "fused - syn DESC",
    "fused_loses": "fused - greatest(alt, syn) ASC",
}


class ViewError(ValueError):
    """A view was asked for something that does not exist; the message says what is allowed."""


def _score_sql(source: str) -> str:
    if source not in SCORE_SOURCES:
        raise ViewError(f"unknown score {source!r}; allowed: {', '.join(SCORE_SOURCES)}")
    return "r.value" if source == "reward" else f"sss.{source}"


JOINS = """FROM samples s
           LEFT JOIN rewards r ON r.sample_id = s.id AND r.version = ?
           LEFT JOIN sample_source_scores sss ON sss.sample_id = s.id
           LEFT JOIN clusters k ON k.sample_id = s.id"""


def _version(ws: Workspace) -> int:
    version = active_reward(ws)
    return -1 if version is None else version


@dataclass(frozen=True)
class Scope:
    """Which samples a gallery shows: a cluster, a search result, a score range, an order."""

    cluster: int | None = None
    ids: tuple[int, ...] | None = None
    source: str = "reward"
    min_score: float | None = None
    max_score: float | None = None
    order: str = "default"

    def __post_init__(self):
        _score_sql(self.source)
        if self.order not in ("default", "score_asc", "score_desc"):
            raise ViewError(f"unknown order {self.order!r}; allowed: default, score_asc, score_desc")


def gallery_page(ws: Workspace, scope: Scope, page: int = 0, per_page: int = PER_PAGE) -> dict:
    """One page of tiles (id, uid, thumb, score) and the total, for a scope."""
    if page < 0 or not 1 <= per_page <= 500:
        raise ViewError(f"bad page {page} / size {per_page}")
    score = _score_sql(scope.source)
    where, params = ["s.status = 'ok'"], [_version(ws)]
    if scope.cluster is not None:
        where.append("k.cluster = ?")
        params.append(int(scope.cluster))
    if scope.ids is not None:
        where.append("list_contains(?, s.id)")
        params.append([int(i) for i in scope.ids])
    for bound, op in ((scope.min_score, ">="), (scope.max_score, "<")):
        if bound is not None:
            where.append(f"{score} {op} ?")
            params.append(float(bound))
    order = {"default": "coalesce(k.distance, 0), s.id", "score_asc": f"{score} ASC NULLS LAST, s.id",
             "score_desc": f"{score} DESC NULLS LAST, s.id"}[scope.order]
    if scope.ids is not None and scope.order == "default":
        order = "list_position(?, s.id)"
    sql = f"SELECT s.id, s.uid, s.thumb, {score} AS score, k.cluster {JOINS} WHERE {' AND '.join(where)}"
    total = int(ws.scalar(f"SELECT count(*) FROM ({sql})", params))
    order_params = [[int(i) for i in scope.ids]] if "list_position" in order else []
    rows = ws.dicts(f"{sql} ORDER BY {order} LIMIT ? OFFSET ?", params + order_params + [per_page, page * per_page])
    return {"items": rows, "total": total, "page": page, "pages": max(1, -(-total // per_page))}


def sample_detail(ws: Workspace, sample_id: int) -> dict:
    """Everything the sample panel shows: fields, every caption with its scores, duplicates, cluster."""
    rows = ws.dicts("""SELECT s.id, s.uid, s.source, s.key, s.status, s.reason, s.width, s.height, s.url,
                              s.thumb, s.caption_status, k.cluster, k.distance, ss.agreement, r.value AS reward
                       FROM samples s LEFT JOIN clusters k ON k.sample_id = s.id
                       LEFT JOIN sample_scores ss ON ss.sample_id = s.id
                       LEFT JOIN rewards r ON r.sample_id = s.id AND r.version = ?
                       WHERE s.id = ?""", [_version(ws), int(sample_id)])
    if not rows:
        raise ViewError(f"no sample with id {sample_id}")
    detail = rows[0]
    detail["captions"] = ws.dicts("""SELECT c.source_kind, c.producer, c.idx, c.text, cs.clip_score, cs.cycle
                                     FROM captions c LEFT JOIN caption_scores cs ON cs.caption_id = c.id
                                     WHERE c.sample_id = ? ORDER BY CASE c.source_kind WHEN 'alt' THEN 0
                                     WHEN 'fused' THEN 1 ELSE 2 END, c.producer, c.idx""", [int(sample_id)])
    detail["duplicates"] = ws.dicts("""SELECT s.id, s.thumb, d.representative FROM dup_groups d
                                       JOIN samples s ON s.id = d.sample_id
                                       WHERE d.group_id = (SELECT group_id FROM dup_groups WHERE sample_id = ?)
                                       AND d.sample_id <> ? ORDER BY s.id""", [int(sample_id), int(sample_id)])
    return detail


def compare_rows(ws: Workspace, sort: str = "syn_minus_alt", limit: int = 50, offset: int = 0) -> list[dict]:
    """Samples with their alt, best synthetic and fused caption and scores, sorted by a gap between sources."""
    if sort not in COMPARE_SORTS:
        raise ViewError(f"unknown sort {sort!r}; allowed: {', '.join(COMPARE_SORTS)}")
    if not 1 <= limit <= 500 or offset < 0:
        raise ViewError(f"bad limit {limit} / offset {offset}")
    return ws.dicts(f"""
        WITH best AS (
            SELECT c.sample_id, c.source_kind, arg_max(c.text, cs.clip_score) AS text
            FROM captions c JOIN caption_scores cs ON cs.caption_id = c.id GROUP BY ALL)
        SELECT s.id, s.thumb, sss.alt, sss.syn, sss.fused,
               a.text AS alt_text, y.text AS syn_text, f.text AS fused_text,
               round(sss.syn - sss.alt, 4) AS syn_minus_alt, round(sss.fused - sss.alt, 4) AS fused_minus_alt
        FROM sample_source_scores sss JOIN samples s ON s.id = sss.sample_id
        LEFT JOIN best a ON a.sample_id = s.id AND a.source_kind = 'alt'
        LEFT JOIN best y ON y.sample_id = s.id AND y.source_kind = 'syn'
        LEFT JOIN best f ON f.sample_id = s.id AND f.source_kind = 'fused'
        WHERE sss.alt IS NOT NULL AND sss.syn IS NOT NULL
        ORDER BY {COMPARE_SORTS[sort]} NULLS LAST, s.id LIMIT ? OFFSET ?""", [limit, offset])


def score_values(ws: Workspace, source: str) -> np.ndarray:
    score = _score_sql(source)
    rows = ws.execute(f"SELECT {score} AS v {JOINS} WHERE s.status = 'ok' AND {score} IS NOT NULL",
                      [_version(ws)]).fetchnumpy()
    return np.asarray(rows["v"], dtype=np.float64)


class FilterIndex:
    """Per-sample scores and clusters held in memory, so a filter change is array work, not five 1 M-row joins.

    Built once per served (read-only) workspace; ``effect`` answers a threshold change in milliseconds.
    """

    def __init__(self, ws: Workspace):
        self.ws = ws
        frame = ws.execute(f"""SELECT s.id, k.cluster, r.value AS reward, sss.alt, sss.syn, sss.fused
                               {JOINS} WHERE s.status = 'ok' ORDER BY s.id""", [_version(ws)]).fetchnumpy()
        self.ids = np.asarray(frame["id"], dtype=np.int64)
        cluster = frame["cluster"]
        self.cluster = np.asarray(cluster.filled(-1) if hasattr(cluster, "filled") else cluster, dtype=np.int64)
        self.scores = {name: _float_array(frame[name]) for name in SCORE_SOURCES}

    def score(self, source: str) -> np.ndarray:
        """Per-sample values of ``source``: a caption source, ``reward`` (the active version) or
        ``reward@N`` (any stored reward version, loaded on first use)."""
        if source in self.scores:
            return self.scores[source]
        version = _reward_at(source)
        if version is None:
            _score_sql(source)  # raises with the allowed names
        if not self.ws.scalar("SELECT count(*) FROM reward_versions WHERE version = ?", [version]):
            raise ViewError(f"no reward version {version}")
        frame = self.ws.execute("""SELECT s.id, r.value FROM samples s LEFT JOIN rewards r
                                   ON r.sample_id = s.id AND r.version = ? WHERE s.status = 'ok' ORDER BY s.id""",
                                [version]).fetchnumpy()
        self.scores[source] = _float_array(frame["value"])
        return self.scores[source]

    def values(self, source: str) -> np.ndarray:
        v = self.score(source)
        return v[~np.isnan(v)]

    def effect(self, source: str, threshold: float, preview: int = 12) -> dict:
        """Kept/dropped counts, the effect per cluster, and what sits just below and above the threshold."""
        score = self.score(source)
        scored = ~np.isnan(score)
        dropped = scored & (score < threshold)
        kept = scored & (score >= threshold)
        clustered = self.cluster >= 0
        sizes = np.bincount(self.cluster[clustered])
        drops = np.bincount(self.cluster[clustered], weights=dropped[clustered], minlength=len(sizes))
        per_cluster = [{"cluster": int(c), "size": int(sizes[c]), "dropped": int(drops[c]),
                        "dropped_share": round(float(drops[c] / sizes[c]), 4)}
                       for c in np.nonzero(sizes)[0]]
        per_cluster.sort(key=lambda r: (-r["dropped_share"], r["cluster"]))
        below = self._lowest(np.nonzero(dropped)[0], score, preview)
        above = self._lowest(np.nonzero(kept)[0], score, preview)
        return {"source": source, "threshold": threshold, "kept": int(kept.sum()), "dropped": int(dropped.sum()),
                "unscored": int((~scored).sum()), "per_cluster": per_cluster,
                "dropped_lowest_first": self._tiles(below, score), "just_above": self._tiles(above, score)}

    @staticmethod
    def _lowest(rows: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
        if len(rows) > n:
            rows = rows[np.argpartition(score[rows], n)[:n]]
        return rows[np.lexsort((rows, score[rows]))]

    def _tiles(self, rows: np.ndarray, score: np.ndarray) -> list[dict]:
        ids = [int(i) for i in self.ids[rows]]
        thumbs = dict(self.ws.rows("SELECT id, thumb FROM samples WHERE list_contains(?, id)", [ids])) if ids else {}
        return [{"id": i, "thumb": thumbs.get(i), "score": float(score[r])} for i, r in zip(ids, rows)]


def _reward_at(source: str) -> int | None:
    head, sep, tail = source.partition("@")
    return int(tail) if head == "reward" and sep and tail.isdigit() else None


def reward_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, value) for every stored reward version, the active one marked."""
    active = _version(ws)
    return [(f"reward v{v}: {kind}" + (" (active)" if v == active else ""), f"reward@{v}")
            for v, kind in ws.rows("SELECT version, kind FROM reward_versions ORDER BY version")]


def _float_array(column) -> np.ndarray:
    if hasattr(column, "filled"):
        column = column.astype(np.float64).filled(np.nan)
    return np.asarray(column, dtype=np.float64)


def filter_effect(ws: Workspace, source: str, threshold: float, preview: int = 12) -> dict:
    """One-off filter effect (builds a :class:`FilterIndex`; a server keeps one instead)."""
    return FilterIndex(ws).effect(source, threshold, preview)


def overview(ws: Workspace) -> dict:
    """Counts by status and source, caption counts, map meta and the cluster table."""
    from curation.structure.summaries import cluster_table
    from curation.views.stats import workspace_stats
    stats = workspace_stats(ws)
    clusters = cluster_table(ws)
    return {"stats": stats, "clusters": clusters, "map": ws.get_meta("map"),
            "demo": ws.get_meta("demo") is not None, "captions": stats["captions"]}
