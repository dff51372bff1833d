"""Write stage: decoded + embedded samples -> DuckDB rows and embedding chunks, committed together.

One commit = write the image and text chunk files (atomic renames), then one
DuckDB transaction inserting the samples, their alt captions, the chunk rows
and the shards that finished before them. If the process dies before the
transaction commits, the chunk files are orphans and the next writer removes
them; nothing is half-visible.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pyarrow as pa

from indexer.paths import text_path
from indexer.schema import ALT
from indexer.sources import Source
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore, build_index, choose_index_kind, write_index

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("id", "uid", "source", "key", "status", "reason", "path", "member_offset", "member_size",
                  "width", "height", "format", "sha256", "url", "meta_json", "caption_status", "thumb",
                  "ingested_at")
CAPTION_COLUMNS = ("id", "sample_id", "uid", "source_kind", "producer", "params", "idx", "text", "status",
                   "created_at")
ALT_PRODUCER = "alt-text"


def insert_rows(ws: Workspace, cur, table: str, columns: tuple[str, ...], rows: list[dict]) -> None:
    """Bulk insert dict rows through Arrow."""
    if rows:
        ws.insert_arrow(table, pa.table({c: [r.get(c) for r in rows] for c in columns}), cur=cur)


def insert_captions(ws: Workspace, rows: list[dict], vectors: np.ndarray) -> None:
    """Append caption rows with their text embeddings, atomically. Ids are assigned inside the transaction,
    so another process that wrote in between cannot collide with them."""
    store = EmbeddingStore(ws, "text")
    with ws.transaction() as cur:
        start = next_id(cur, "captions")
        for i, row in enumerate(rows):
            row["id"] = start + i
            row.setdefault("created_at", now())
            row.setdefault("status", "ok")
        name = store.write_chunk(start, vectors)
        insert_rows(ws, cur, "captions", CAPTION_COLUMNS, rows)
        store.record_chunk(cur, start, len(rows), name)


def next_id(cur, table: str) -> int:
    """The next row id of ``samples`` or ``captions`` (row-aligned with the embedding files), read in the
    committing transaction."""
    if table not in ("samples", "captions"):
        raise ValueError(f"no id sequence for table {table!r}")
    return int(cur.execute(f"SELECT coalesce(max(id) + 1, 0) FROM {table}").fetchall()[0][0])


class SampleWriter:
    """Buffers samples and commits rows + chunks + finished shards every ``commit_rows`` samples."""

    def __init__(self, ws: Workspace, dim: int, commit_rows: int = 1024):
        self.ws, self.dim, self.commit_rows = ws, dim, commit_rows
        self.images, self.texts = EmbeddingStore(ws, "image"), EmbeddingStore(ws, "text")
        for store in (self.images, self.texts):
            removed = store.remove_orphans()
            if removed:
                log.info("removed %d uncommitted %s chunk file(s) from an interrupted run", removed, store.kind)
        self._samples: list[dict] = []
        self._image_vecs: list[np.ndarray] = []
        self._text_vecs: list[np.ndarray] = []
        self._shards: list[dict] = []

    def register_source(self, src: Source) -> None:
        self.ws.execute("INSERT INTO sources VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [src.name, src.kind, src.location, now()])

    def shard_done(self, shard: str) -> bool:
        """Whether a tar shard was fully ingested before and is unchanged since."""
        row = self.ws.row("SELECT size, mtime FROM ingest_files WHERE path = ? AND done_at IS NOT NULL", [shard])
        if row is None:
            return False
        stat = os.stat(text_path(shard))
        return row[0] == stat.st_size and abs(row[1] - stat.st_mtime) < 1e-6

    def add(self, batch: list[dict], image_vecs: np.ndarray, text_vecs: np.ndarray) -> None:
        samples = [s for s in batch if "__key__" in s]
        self._samples += samples
        self._image_vecs.append(image_vecs)
        self._text_vecs.append(text_vecs)
        for marker in batch:
            if "__shard_done__" in marker or "__shard_error__" in marker:
                self._shards.append(marker)
        if len(self._samples) >= self.commit_rows:
            self.flush()

    def flush(self) -> None:
        """Commit the buffered samples; then let go of the workspace until the next commit (another altlens
        process, such as the web server, may use it while this one decodes and embeds)."""
        if not self._samples and not self._shards:
            return
        n = len(self._samples)
        with self.ws.transaction() as cur:
            start_s, start_c = next_id(cur, "samples"), next_id(cur, "captions")
            sample_rows, caption_rows = self._rows(start_s, start_c)
            if n:
                image_file = self.images.write_chunk(start_s, np.concatenate(self._image_vecs))
                text_file = self.texts.write_chunk(start_c, np.concatenate(self._text_vecs))
            insert_rows(self.ws, cur, "samples", SAMPLE_COLUMNS, sample_rows)
            insert_rows(self.ws, cur, "captions", CAPTION_COLUMNS, caption_rows)
            if n:
                self.images.record_chunk(cur, start_s, n, image_file)
                self.texts.record_chunk(cur, start_c, n, text_file)
            for marker in self._shards:
                self._record_shard(cur, marker)
        self._samples, self._image_vecs, self._text_vecs, self._shards = [], [], [], []
        self.ws.release()

    def _rows(self, start_s: int, start_c: int) -> tuple[list[dict], list[dict]]:
        stamp = now()
        samples, captions = [], []
        for i, s in enumerate(self._samples):
            samples.append({
                "id": start_s + i, "uid": s["__uid__"], "source": s["__source__"], "key": s["__key__"],
                "status": s["status"], "reason": s.get("reason"), "path": s.get("__path__"),
                "member_offset": s.get("__offset__"), "member_size": s.get("__size__"),
                "width": s.get("width"), "height": s.get("height"), "format": s.get("format"),
                "sha256": s.get("sha256"), "url": s.get("url"), "meta_json": s.get("meta_json"),
                "caption_status": s["caption_status"], "thumb": s.get("thumb"), "ingested_at": stamp})
            captions.append({
                "id": start_c + i, "sample_id": start_s + i, "uid": s["__uid__"], "source_kind": ALT,
                "producer": ALT_PRODUCER, "params": json.dumps({"source": s["__source__"]}), "idx": 0,
                "text": s["caption"], "status": s["caption_status"], "created_at": stamp})
        return samples, captions

    def _record_shard(self, cur, marker: dict) -> None:
        shard = marker.get("__shard_done__") or marker["__shard_error__"]
        stat = os.stat(text_path(shard))
        done = now() if "__shard_done__" in marker else None
        count = cur.execute("SELECT count(*) FROM samples WHERE path = ?", [shard]).fetchall()[0][0]
        cur.execute("""INSERT INTO ingest_files VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET
                       size = excluded.size, mtime = excluded.mtime, n_samples = excluded.n_samples,
                       error = excluded.error, done_at = excluded.done_at""",
                    [shard, marker.get("source", ""), stat.st_size, stat.st_mtime, count,
                     marker.get("error"), done])


def rebuild_index_if_stale(ws: Workspace, kind: str = "auto", force: bool = False) -> bool:
    """(Re)build the FAISS index over ok samples unless the stored one already matches; return if built."""
    ids = np.array([r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok' ORDER BY id")], dtype=np.int64)
    state = {"n": int(len(ids)), "max_id": int(ids[-1]) if len(ids) else -1,
             "kind": choose_index_kind(len(ids), kind)}
    current = ws.get_meta("faiss_index")
    if not force and ws.index_path.exists() and current and {k: current.get(k) for k in state} == state:
        return False
    if not len(ids):
        return False
    stored = EmbeddingStore(ws, "image").load()
    # the ok rows, still float16 (the index converts a block at a time); no copy when every row is ok
    vectors = stored[: len(ids)] if len(ids) == len(stored) and ids[-1] == len(ids) - 1 else stored[ids]
    write_index(build_index(vectors, ids, state["kind"], progress=True), ws.index_path)
    ws.set_meta("faiss_index", {**state, "built_at": now().isoformat()})
    return True
