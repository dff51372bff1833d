"""Workspace statistics: samples by status, by source, and caption health."""
from __future__ import annotations

from indexer.store import Workspace


def workspace_stats(ws: Workspace) -> dict:
    """Counts that always add up: per source ``seen == ok + failed``."""
    sources = ws.source_stats()
    for src in sources:
        src["failures"] = dict(ws.rows(
            "SELECT status, count(*) FROM samples WHERE source = ? AND status <> 'ok' GROUP BY status ORDER BY status",
            [src["source"]]))
    return {
        "workspace": str(ws.root),
        "samples": int(ws.scalar("SELECT count(*) FROM samples")),
        "by_status": ws.status_counts(),
        "by_source": sources,
        "captions": dict(ws.rows("SELECT source_kind, count(*) FROM captions GROUP BY 1 ORDER BY 1")),
        "caption_status": dict(ws.rows(
            "SELECT caption_status, count(*) FROM samples GROUP BY 1 ORDER BY 1")),
        "images_not_downloaded": int(ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok' "
                                               "AND image_state = 'not_downloaded'")),
        "imported_scores": ws.dicts("""SELECT name, count(*) AS samples, min(value) AS min, max(value) AS max
                                       FROM imported_scores GROUP BY name ORDER BY name"""),
        "shard_errors": ws.dicts("SELECT path, error FROM ingest_files WHERE error IS NOT NULL ORDER BY path"),
        "model": ws.get_meta("model"),
        "index": ws.get_meta("faiss_index"),
    }


def format_stats(stats: dict) -> str:
    lines = [f"workspace {stats['workspace']}: {stats['samples']} samples"]
    lines += [f"  {status:<20} {n}" for status, n in stats["by_status"].items()]
    if stats.get("images_not_downloaded"):
        lines.append(f"  of the ok samples, {stats['images_not_downloaded']} have no image at hand "
                     "(imported, not downloaded: url kept)")
    lines.append("by source (seen = ok + failed):")
    for src in stats["by_source"]:
        lines.append(f"  {src['source']}: seen {src['seen']}, ok {src['ok']}, failed {src['failed']}")
        lines += [f"      {reason}: {n}" for reason, n in src["failures"].items()]
    lines.append("captions: " + ", ".join(f"{k} {v}" for k, v in stats["captions"].items()))
    if stats.get("shard_errors"):
        lines.append("damaged inputs (what was read before the damage is kept):")
        lines += [f"  {e['error']}" for e in stats["shard_errors"]]
    if stats.get("imported_scores"):
        lines.append("imported scores (select --min-score NAME=VALUE, the Filter view):")
        lines += [f"  {s['name']}: {s['samples']} samples, {s['min']:.4g} to {s['max']:.4g}"
                  for s in stats["imported_scores"]]
    return "\n".join(lines)
