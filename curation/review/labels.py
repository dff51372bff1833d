"""Curator labels: pair alignment (good/bad), free tags and best-caption preferences, with full history.

Every label is a new row (who, when, from which view); the current label of a
sample is its latest row of that kind, so relabelling never loses history.
"""
from __future__ import annotations

import re

from indexer.schema import SOURCE_KINDS
from indexer.store import Workspace, now

KINDS = {"alignment": ("good", "bad"), "preference": SOURCE_KINDS}
TAG = re.compile(r"[\w][\w .:/-]{0,63}")
CONCEPT_KIND = re.compile(r"concept:[a-z][a-z0-9_-]{0,39}")  # good/bad: the concept is / is not in the picture


def allowed(kind: str) -> tuple[str, ...] | None:
    """The values a label kind takes (None for free tags); unknown kinds are refused."""
    if kind == "tag":
        return None
    if kind in KINDS:
        return KINDS[kind]
    if CONCEPT_KIND.fullmatch(kind or ""):
        return ("good", "bad")
    raise ValueError(f"unknown label kind {kind!r}; allowed: alignment, preference, tag, concept:NAME")


def add_label(ws: Workspace, sample_id: int, kind: str, value: str, who: str = "local", view: str = "cli") -> int:
    """Record one label; returns its id. Values are checked: alignment good/bad, preference alt/syn/fused, tags."""
    check_value(kind, value)
    if not ws.scalar("SELECT count(*) FROM samples WHERE id = ? AND status = 'ok'", [int(sample_id)]):
        raise ValueError(f"no ok sample with id {sample_id}")
    # ids from a sequence: concurrent curators never race for the same id (max(id)+1 did, under load)
    return int(ws.scalar("INSERT INTO labels VALUES (nextval('label_ids'), ?, ?, ?, ?, ?, ?) RETURNING id",
                         [int(sample_id), kind, value, who[:64], view, now()]))


def add_labels(ws: Workspace, ids: list[int], kind: str, value: str, who: str = "local", view: str = "cli") -> int:
    """Give the same label to many samples in one transaction (a map region); returns how many got it
    (ids that are not ok samples are skipped)."""
    check_value(kind, value)
    ok = """FROM (SELECT DISTINCT unnest(?) AS id) q JOIN samples s ON s.id = q.id WHERE s.status = 'ok'"""
    wanted = [int(i) for i in ids]
    with ws.transaction() as cur:
        n = int(cur.execute(f"SELECT count(*) {ok}", [wanted]).fetchone()[0])
        cur.execute(f"INSERT INTO labels SELECT nextval('label_ids'), s.id, ?, ?, ?, ?, ? {ok} ORDER BY s.id",
                    [kind, value, who[:64], view, now(), wanted])
    return n


def check_value(kind: str, value: str) -> None:
    values = allowed(kind)
    if values is None and not TAG.fullmatch(value or ""):
        raise ValueError(f"a tag is 1-64 letters, digits, spaces or . : / -, got {value!r}")
    if values is not None and value not in values:
        raise ValueError(f"{kind} must be one of {', '.join(values)}, got {value!r}")


def current(ws: Workspace, kind: str = "alignment") -> dict[int, str]:
    """The latest label of ``kind`` per sample."""
    return dict(ws.rows("""SELECT sample_id, arg_max(value, id) FROM labels WHERE kind = ?
                           GROUP BY sample_id""", [kind]))


def history(ws: Workspace, sample_id: int) -> list[dict]:
    return ws.dicts("SELECT kind, value, who, view, created_at FROM labels WHERE sample_id = ? ORDER BY id",
                    [int(sample_id)])


def labels_of(ws: Workspace, ids: list[int], kind: str = "alignment") -> dict[int, str]:
    """The latest label of ``kind`` for each of ``ids`` that has one (a page of tiles, not the whole table)."""
    if not ids:
        return {}
    return dict(ws.rows("""SELECT sample_id, arg_max(value, id) FROM labels WHERE kind = ? AND
                           list_contains(?, sample_id) GROUP BY sample_id""", [kind, [int(i) for i in ids]]))


def current_of(ws: Workspace, sample_id: int, kind: str = "alignment") -> str | None:
    """The latest label of ``kind`` for one sample, or None."""
    return ws.scalar("SELECT arg_max(value, id) FROM labels WHERE sample_id = ? AND kind = ?", [int(sample_id), kind])


def counts(ws: Workspace, kind: str = "alignment") -> dict[str, int]:
    """How many samples currently carry each value of ``kind``."""
    values = current(ws, kind).values()
    return {v: sum(1 for x in values if x == v) for v in set(values)}
