"""The Filter view's and the gallery's data: per-sample scores held in memory, so a threshold change or a
gallery page is array work, not joins.

``FilterIndex`` loads every ok sample's cluster, distance to its centre, active
reward and best clip_score per caption source once; ``effect`` answers a
threshold and ``page`` a gallery page in milliseconds at a million rows, from
orders it sorts once. Any stored reward version can be filtered by as
``reward@N``, and any score a pool shipped (``altlens import``) as ``imported:NAME``.
``stamp`` tells a server when to load them again.
"""
from __future__ import annotations

import math

import numpy as np

from curation.scores.rewards import kind_text
from curation.views.gallery import (
    IMPORTED,
    JOINS,
    SCORE_SOURCES,
    Scope,
    ViewError,
    active_version_param,
    imported_name,
    reward_at,
    score_sql,
    thumbs_of,
)
from indexer.store import Workspace


def score_values(ws: Workspace, source: str) -> np.ndarray:
    score = score_sql(source)
    rows = ws.numpy(f"SELECT {score} AS v {JOINS} WHERE s.status = 'ok' AND {score} IS NOT NULL",
                      [active_version_param(ws)])
    return np.asarray(rows["v"], dtype=np.float64)


PAGE_CACHE_BYTES = 256 * 2**20  # gallery orders a server keeps, all together
ORDER_SOURCES = 4  # sources whose sorted scores a server keeps (24 bytes a scored row each)


class FilterIndex:
    """Per-sample scores and clusters held in memory, so a filter change is array work, not five 1 M-row joins.

    Built once per served (read-only) workspace; ``effect`` answers a threshold change in milliseconds.
    """

    def __init__(self, ws: Workspace):
        self.ws = ws
        frame = ws.numpy(f"""SELECT s.id, k.cluster, coalesce(k.distance, 0) AS distance, r.value AS reward,
                                    sss.alt, sss.syn, sss.fused
                               {JOINS} WHERE s.status = 'ok' ORDER BY s.id""", [active_version_param(ws)])
        self.ids = np.asarray(frame["id"], dtype=np.int64)
        self.distance = _float_array(frame["distance"])
        cluster = frame["cluster"]
        self.cluster = np.asarray(cluster.filled(-1) if hasattr(cluster, "filled") else cluster, dtype=np.int32)
        self.scores = {name: _float_array(frame[name]) for name in SCORE_SOURCES}
        self._orders: dict[str, dict] = {}
        self._sizes: np.ndarray | None = None
        self._pages: dict[tuple, np.ndarray] = {}

    def score(self, source: str) -> np.ndarray:
        """Per-sample values of ``source``: a caption source, ``reward`` (the active version), ``reward@N`` (any
        stored reward version) or ``imported:NAME`` (a score the pool shipped), the last two loaded on first
        use (NaN where a sample has none)."""
        if source in self.scores:
            return self.scores[source]
        name = imported_name(source)
        if name is not None:
            if not self.ws.scalar("SELECT count(*) FROM (SELECT 1 FROM imported_scores WHERE name = ? LIMIT 1)",
                                  [name]):
                raise ViewError(f"no imported score {name!r}")
            table, column = "imported_scores i ON i.sample_id = s.id AND i.name = ?", "i.value"
        else:
            name = reward_at(source)
            if name is None:
                score_sql(source)  # raises with the allowed names
            if not self.ws.scalar("SELECT count(*) FROM reward_versions WHERE version = ?", [name]):
                raise ViewError(f"no reward version {name}")
            table, column = "rewards r ON r.sample_id = s.id AND r.version = ?", "r.value"
        frame = self.ws.numpy(f"SELECT s.id, {column} AS value FROM samples s LEFT JOIN {table} "
                              "WHERE s.status = 'ok' ORDER BY s.id", [name])
        self.scores[source] = _float_array(frame["value"])
        return self.scores[source]

    def values(self, source: str) -> np.ndarray:
        v = self.score(source)
        return v[~np.isnan(v)]

    def dropped_share(self, source: str, threshold: float) -> float | None:
        """Share of scored samples below ``threshold`` on ``source`` (None when nothing is scored)."""
        values = self._sorted(source)["values"]
        return float(np.searchsorted(values, threshold, side="left") / len(values)) if len(values) else None

    def scale(self, source: str, dropped_share: float | None = None, current: float | None = None) -> dict:
        """A threshold control for ``source``: its range (rounded out to 0.01), a step, and a value. With
        ``dropped_share`` the value drops the same share of samples as before (a score or reward that changed
        meaning keeps the curator's cut); otherwise ``current`` is kept when it lies in the range, else the
        value drops the lowest quarter."""
        v = self.values(source)
        if not len(v):
            return {"minimum": 0.0, "maximum": 1.0, "step": 0.001, "value": 0.0, "moved": False}
        low, high = math.floor(float(v.min()) * 100) / 100, math.ceil(float(v.max()) * 100) / 100
        high = max(high, low + 0.01)
        step = 10 ** math.floor(math.log10((high - low) / 500))
        if dropped_share is not None:
            value = float(np.quantile(v, dropped_share))
        elif current is not None and low <= current <= high:
            value = current
        else:
            value = float(np.quantile(v, 0.25))
        value = round(min(max(value, low), high), 4)
        return {"minimum": low, "maximum": high, "step": step, "value": value,
                "moved": current is None or abs(value - current) > step / 2}

    def effect(self, source: str, threshold: float, preview: int = 12, page: int = 0) -> dict:
        """Kept/dropped counts, the effect per cluster, and what sits just below and above the threshold: page
        ``page`` of ``preview`` tiles each, dropped from the lowest score up, kept from the threshold up. Binary
        searches in the source's sorted scores (see ``_sorted``), so its cost does not grow with the rows."""
        score = self.score(source)
        s = self._sorted(source)
        dropped = int(np.searchsorted(s["values"], threshold, side="left"))
        drops = np.array([np.searchsorted(s["by_cluster"][a:b], threshold, side="left")
                          for a, b in zip(s["starts"][:-1], s["starts"][1:])], dtype=np.int64)
        sizes = self.cluster_sizes
        per_cluster = [{"cluster": int(c), "size": int(sizes[c]), "dropped": int(d),
                        "dropped_share": round(float(d / sizes[c]), 4)} for c, d in zip(s["clusters"], drops)]
        per_cluster += [{"cluster": int(c), "size": int(sizes[c]), "dropped": 0, "dropped_share": 0.0}
                        for c in np.setdiff1d(np.nonzero(sizes)[0], s["clusters"])]  # nothing scored there
        per_cluster.sort(key=lambda r: (-r["dropped_share"], r["cluster"]))
        skip = page * preview
        below = s["order"][skip:min(skip + preview, dropped)]
        above = s["order"][dropped + skip:dropped + skip + preview]
        return {"source": source, "threshold": threshold, "kept": len(s["order"]) - dropped, "dropped": dropped,
                "unscored": len(score) - len(s["order"]), "per_cluster": per_cluster,
                "dropped_lowest_first": self._tiles(below, score), "just_above": self._tiles(above, score)}

    def page(self, scope: Scope, page: int, per_page: int) -> dict:
        """A gallery page for a scope without an id list: what ``gallery.gallery_page`` returns (same order,
        same ties), from the scope's row order sorted once and then sliced."""
        if scope.ids is not None:
            raise ViewError("a scope with an id list is paged by gallery_page")
        score = self.score(scope.source)
        rows = self._ordered(scope.cluster, scope.source, scope.order)
        if scope.min_score is not None or scope.max_score is not None:
            v = score[rows]
            keep = ~np.isnan(v)
            if scope.min_score is not None:
                keep &= v >= scope.min_score
            if scope.max_score is not None:
                keep &= v < scope.max_score
            rows = rows[keep]
        chosen = rows[page * per_page:(page + 1) * per_page]
        ids = [int(i) for i in self.ids[chosen]]
        found = {r[0]: r[1:] for r in self.ws.rows("SELECT id, uid, thumb FROM samples WHERE list_contains(?, id)",
                                                   [ids])} if ids else {}
        items = [{"id": i, "uid": found[i][0], "thumb": found[i][1],
                  "score": None if np.isnan(score[r]) else float(score[r]),
                  "cluster": None if self.cluster[r] < 0 else int(self.cluster[r])} for i, r in zip(ids, chosen)]
        total = len(rows)
        return {"items": items, "total": total, "page": page, "pages": max(1, -(-total // per_page))}

    def _ordered(self, cluster: int | None, source: str, order: str) -> np.ndarray:
        """Rows of a cluster (or all) in a gallery order: by distance to the centre, or by score (missing
        scores last), ties by id; the last 64 orders are kept, at most ``PAGE_CACHE_BYTES`` of them (an order of
        every row of a 12.8 M-row pool is 51 MB)."""
        key = (cluster, source if order != "default" else None, order)
        if key not in self._pages:
            rows = np.arange(len(self.ids)) if cluster is None else np.flatnonzero(self.cluster == cluster)
            if order == "default":
                rows = rows[np.lexsort((self.ids[rows], self.distance[rows]))]
            else:
                v = self.score(source)[rows]
                missing = np.isnan(v)
                v = np.where(missing, 0.0, v if order == "score_asc" else -v)
                rows = rows[np.lexsort((self.ids[rows], v, missing))]
            rows = rows.astype(np.int32) if len(self.ids) < 2**31 else rows
            while self._pages and (len(self._pages) >= 64 or
                                   sum(r.nbytes for r in self._pages.values()) + rows.nbytes > PAGE_CACHE_BYTES):
                self._pages.pop(next(iter(self._pages)))  # the oldest order goes first
            self._pages[key] = rows
        return self._pages[key]

    @property
    def cluster_sizes(self) -> np.ndarray:
        if self._sizes is None:
            self._sizes = np.bincount(self.cluster[self.cluster >= 0]) if (self.cluster >= 0).any() else \
                np.zeros(0, np.int64)
        return self._sizes

    def _sorted(self, source: str) -> dict:
        """A source's scored rows sorted by (score, row), and each cluster's scores sorted, made once per
        source (an argsort of the rows) and then only searched."""
        if source in self._orders:
            self._orders[source] = self._orders.pop(source)  # the newest used last: the oldest goes first
        else:
            while len(self._orders) >= ORDER_SOURCES:
                self._orders.pop(next(iter(self._orders)))
            score = self.score(source)
            rows = np.flatnonzero(~np.isnan(score))
            order = rows[np.lexsort((rows, score[rows]))]
            order = order.astype(np.int32) if len(self.ids) < 2**31 else order
            cluster = self.cluster[order]
            clustered = np.flatnonzero(cluster >= 0)
            grouped = clustered[np.argsort(cluster[clustered], kind="stable")]  # by cluster, score order kept
            names, starts = np.unique(cluster[grouped], return_index=True)
            self._orders[source] = {"order": order, "values": score[order], "clusters": names,
                                    "starts": np.r_[starts, len(grouped)].astype(np.int64),
                                    "by_cluster": score[order][grouped]}
        return self._orders[source]

    def _tiles(self, rows: np.ndarray, score: np.ndarray) -> list[dict]:
        ids = [int(i) for i in self.ids[rows]]
        thumbs = thumbs_of(self.ws, ids)
        return [{"id": i, "thumb": thumbs.get(i), "score": float(score[r])} for i, r in zip(ids, rows)]


def stamp(ws: Workspace) -> tuple:
    """What the in-memory scores depend on (the index build, the active reward, the map, the last scoring), read
    from the workspace's metadata in well under a millisecond: when it changes, load them again."""
    return tuple(str(ws.get_meta(key)) for key in ("faiss_index", "active_reward", "map", "scored"))


def imported_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, value) for every score the pool shipped, named with its origin."""
    if not ws.has_table("imported_scores"):
        return []
    return [(f"{name} (imported)", IMPORTED + name)
            for (name,) in ws.rows("SELECT DISTINCT name FROM imported_scores ORDER BY 1")]


def default_source(ws: Workspace) -> str:
    """What the Filter view opens on: the reward once one exists, else a score the pool shipped (an imported
    pool has no reward yet), else the reward (its empty state says how to make one)."""
    if ws.scalar("SELECT count(*) FROM reward_versions"):
        return "reward"
    imported = imported_choices(ws)
    return imported[0][1] if imported else "reward"


def reward_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, value) for every stored reward version, the active one marked."""
    active = active_version_param(ws)
    return [(f"reward v{v}: {kind_text(kind)}" + (" (active)" if v == active else ""), f"reward@{v}")
            for v, kind in ws.rows("SELECT version, kind FROM reward_versions ORDER BY version")]


def score_name(ws: Workspace, source: str) -> str:
    """A filter source in words: ``reward`` and ``reward@N`` name the version and its kind, ``imported:NAME``
    the pool's score."""
    if imported_name(source) is not None:
        return f"{imported_name(source)} (imported)"
    if source != "reward" and reward_at(source) is None:
        return f"{source} clip_score"
    version = reward_at(source) if source != "reward" else active_version_param(ws)
    kind = ws.scalar("SELECT kind FROM reward_versions WHERE version = ?", [version])
    return f"reward v{version} ({kind_text(kind)})" if kind else "reward"


def _float_array(column) -> np.ndarray:
    if hasattr(column, "filled"):
        column = column.astype(np.float64).filled(np.nan)
    return np.asarray(column, dtype=np.float64)


def filter_effect(ws: Workspace, source: str, threshold: float, preview: int = 12) -> dict:
    """One-off filter effect (builds a :class:`FilterIndex`; a server keeps one instead)."""
    return FilterIndex(ws).effect(source, threshold, preview)
