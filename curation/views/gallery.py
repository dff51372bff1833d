"""Plain data for the curation views: overview, gallery pages, sample detail, caption comparison.

The app renders what these return; tests call them without a browser. Score
columns are chosen from a fixed set (never from user text), values travel as
SQL parameters, and everything a filter touches is one indexed table scan, so a
page or a filter change stays fast at a million rows.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def score_sql(source: str) -> str:
    if source not in SCORE_SOURCES:
        raise ViewError(f"unknown score {source!r}; allowed: {', '.join(SCORE_SOURCES)}")
    return "r.value" if source == "reward" else f"sss.{source}"


def reward_at(source: str) -> int | None:
    head, sep, tail = source.partition("@")
    return int(tail) if head == "reward" and sep and tail.isdigit() else None


IMPORTED = "imported:"  # a filter source naming a score the pool shipped: imported:datacomp.clip_l14_similarity_score


def imported_name(source: str) -> str | None:
    """The imported score a filter source names, or None when it names another kind of score."""
    return source[len(IMPORTED):] if str(source).startswith(IMPORTED) and len(source) > len(IMPORTED) else None


def is_filter_source(source) -> bool:
    """Whether ``source`` is a kind of score the Filter view and gallery can rank by (not whether it exists)."""
    source = str(source)
    return source in SCORE_SOURCES or reward_at(source) is not None or imported_name(source) is not None


JOINS = """FROM samples s
           LEFT JOIN rewards r ON r.sample_id = s.id AND r.version = ?
           LEFT JOIN sample_source_scores sss ON sss.sample_id = s.id
           LEFT JOIN clusters k ON k.sample_id = s.id"""


def active_version_param(ws: Workspace) -> int:
    """The active reward version as a SQL parameter (-1, which matches nothing, before any reward exists)."""
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
        if not is_filter_source(self.source):
            score_sql(self.source)  # raises with the allowed names
        if self.order not in ("default", "score_asc", "score_desc"):
            raise ViewError(f"unknown order {self.order!r}; allowed: default, score_asc, score_desc")


def gallery_page(ws: Workspace, scope: Scope, page: int = 0, per_page: int = PER_PAGE) -> dict:
    """One page of tiles (id, uid, thumb, score) and the total, for a scope."""
    if page < 0 or not 1 <= per_page <= 500:
        raise ViewError(f"bad page {page} / size {per_page}")
    score = score_sql(scope.source)
    where, params = ["s.status = 'ok'"], [active_version_param(ws)]
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
    """Everything the sample panel shows: fields, every caption with its scores, duplicates, cluster, and the
    scores the pool shipped (``imported``: name -> value)."""
    rows = ws.dicts("""SELECT s.id, s.uid, s.source, s.key, s.status, s.reason, s.width, s.height, s.url,
                              s.thumb, s.caption_status, s.image_state, k.cluster, k.distance, ss.agreement, r.value AS reward
                       FROM samples s LEFT JOIN clusters k ON k.sample_id = s.id
                       LEFT JOIN sample_scores ss ON ss.sample_id = s.id
                       LEFT JOIN rewards r ON r.sample_id = s.id AND r.version = ?
                       WHERE s.id = ?""", [active_version_param(ws), int(sample_id)])
    if not rows:
        raise ViewError(f"no sample with id {sample_id}")
    detail = rows[0]
    detail["reward_version"] = active_reward(ws)  # which reward the value is: the card names it
    detail["captions"] = ws.dicts("""SELECT c.source_kind, c.producer, c.idx, c.text, cs.clip_score, cs.cycle,
                                            cc.contrast, cc.exchange, cc.lost_claim, cc.lost_to
                                     FROM captions c LEFT JOIN caption_scores cs ON cs.caption_id = c.id
                                     LEFT JOIN caption_contrast cc ON cc.caption_id = c.id
                                     WHERE c.sample_id = ? ORDER BY CASE c.source_kind WHEN 'alt' THEN 0
                                     WHEN 'fused' THEN 1 ELSE 2 END, c.producer, c.idx""", [int(sample_id)])
    detail["duplicates"] = ws.dicts("""SELECT s.id, s.thumb, d.representative FROM dup_groups d
                                       JOIN samples s ON s.id = d.sample_id
                                       WHERE d.group_id = (SELECT group_id FROM dup_groups WHERE sample_id = ?)
                                       AND d.sample_id <> ? ORDER BY s.id""", [int(sample_id), int(sample_id)])
    detail["imported"] = dict(ws.rows("SELECT name, value FROM imported_scores WHERE sample_id = ? ORDER BY name",
                                      [int(sample_id)]))
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


def overview(ws: Workspace) -> dict:
    """Counts by status and source, caption counts, map meta and the cluster table."""
    from curation.structure.summaries import cluster_table
    from curation.views.stats import workspace_stats
    stats = workspace_stats(ws)
    clusters = cluster_table(ws)
    return {"stats": stats, "clusters": clusters, "map": ws.get_meta("map"),
            "demo": ws.get_meta("demo") is not None, "captions": stats["captions"]}


def cluster_ids(ws: Workspace) -> list[int]:
    """Every cluster id of the current map (empty before ``altlens map``)."""
    return [r[0] for r in ws.rows("SELECT DISTINCT cluster FROM clusters ORDER BY cluster")]


def thumbs_of(ws: Workspace, ids: list[int]) -> dict[int, str]:
    """sample id -> thumbnail path (relative to the workspace's thumbs folder) for the given ids."""
    if not ids:
        return {}
    return dict(ws.rows("SELECT id, thumb FROM samples WHERE list_contains(?, id) AND thumb IS NOT NULL",
                        [[int(i) for i in ids]]))


def contrast_set_rows(ws: Workspace, limit: int = 500) -> list[dict]:
    """The mined contrast sets for display: each judged word, its alternatives (best first), how often a caption
    lost one of its claims to them, and how many candidate alternatives the images could not judge."""
    return ws.dicts("""SELECT word, list(alternative ORDER BY similarity DESC) FILTER (WHERE kept) AS alternatives,
                              sum(decided) FILTER (WHERE kept) AS decided, count(*) FILTER (WHERE NOT kept) AS dropped
                       FROM contrast_sets GROUP BY word HAVING count(*) FILTER (WHERE kept) > 0
                       ORDER BY decided DESC NULLS LAST, word LIMIT ?""", [limit])
