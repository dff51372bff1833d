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
import pyarrow.compute as pc

from indexer.paths import text_path
from indexer.schema import ALT
from indexer.sources import Source
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore, build_index, choose_index_kind, write_index

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("id", "uid", "source", "key", "status", "reason", "path", "member_offset", "member_size",
                  "width", "height", "format", "sha256", "url", "meta_json", "caption_status", "thumb",
                  "image_state", "ingested_at")
# what a writer is given per sample: the row without its id and time, plus the alt-text caption
TABLE_COLUMNS = tuple(c for c in SAMPLE_COLUMNS if c not in ("id", "ingested_at")) + ("caption",)
TABLE_TYPES = {"member_offset": pa.int64(), "member_size": pa.int64(), "width": pa.int32(), "height": pa.int32()}
# where a sample's fields travel in an indexer's raw dict
RAW_FIELDS = {"uid": "__uid__", "source": "__source__", "key": "__key__", "path": "__path__",
              "member_offset": "__offset__", "member_size": "__size__"}
CAPTION_COLUMNS = ("id", "sample_id", "uid", "source_kind", "producer", "params", "idx", "text", "status",
                   "created_at")
ALT_PRODUCER = "alt-text"


def sample_table(samples: list[dict]) -> pa.Table:
    """An indexer's decoded sample dicts as the columns a :class:`SampleWriter` commits."""
    return pa.table({c: pa.array([s.get(RAW_FIELDS.get(c, c)) for s in samples], TABLE_TYPES.get(c, pa.string()))
                     for c in TABLE_COLUMNS})


def repeat(value, n: int, type_: pa.DataType | None = None) -> pa.Array:
    """``value`` ``n`` times as an Arrow array (no Python list of ``n`` items)."""
    return pa.array([value], type_).take(pa.array(np.zeros(n, np.int32)))


def _sample_rows(table: pa.Table, start: int) -> pa.Table:
    n = table.num_rows
    rows = table.drop_columns(["caption"]).append_column("id", pa.array(np.arange(start, start + n)))
    return rows.append_column("ingested_at", repeat(now(), n, pa.timestamp("us")))


def _alt_captions(table: pa.Table, start_s: int, start_c: int) -> pa.Table:
    """Each sample's alt-text as caption row ``start_c + i`` (its producer and the source it came from)."""
    n = table.num_rows
    sources = table.column("source").combine_chunks().dictionary_encode()
    params = pa.array([json.dumps({"source": v}) for v in sources.dictionary.to_pylist()]).take(sources.indices)
    return pa.table({"id": np.arange(start_c, start_c + n), "sample_id": np.arange(start_s, start_s + n),
                     "uid": table.column("uid"), "source_kind": repeat(ALT, n), "producer": repeat(ALT_PRODUCER, n),
                     "params": params, "idx": pa.array(np.zeros(n, np.int32)), "text": table.column("caption"),
                     "status": table.column("caption_status"), "created_at": repeat(now(), n, pa.timestamp("us"))})


def _record_progress(cur, progress: dict) -> None:
    """How many rows of an imported file are committed (and whether it is finished), with its size and time."""
    stat = os.stat(progress["file"])
    cur.execute("""INSERT INTO ingest_files VALUES (?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (path) DO UPDATE SET
                   size = excluded.size, mtime = excluded.mtime, n_samples = excluded.n_samples,
                   error = NULL, done_at = excluded.done_at""",
                [progress["file"], progress["source"], stat.st_size, stat.st_mtime, progress["rows"],
                 now() if progress["done"] else None])


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
    """Buffers samples and commits rows + chunks + finished shards (or imported files' progress) every
    ``commit_rows`` samples. Samples come as dicts (``add``, the indexer's) or as an Arrow table of the same
    columns (``add_table``, an import's); both are committed by one :meth:`flush`."""

    def __init__(self, ws: Workspace, dim: int, commit_rows: int = 1024):
        self.ws, self.dim, self.commit_rows = ws, dim, commit_rows
        self.images, self.texts = EmbeddingStore(ws, "image"), EmbeddingStore(ws, "text")
        for store in (self.images, self.texts):
            removed = store.remove_orphans()
            if removed:
                log.info("removed %d uncommitted %s chunk file(s) from an interrupted run", removed, store.kind)
        self._tables: list[pa.Table] = []
        self._rows_buffered = 0
        self._image_vecs: list[np.ndarray] = []
        self._text_vecs: list[np.ndarray] = []
        self._shards: list[dict] = []
        self._progress: dict[str, dict] = {}
        self._extras: list[tuple[str, pa.Table, int]] = []

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
        if samples:
            self._buffer(sample_table(samples), image_vecs, text_vecs)
        for marker in batch:
            if "__shard_done__" in marker or "__shard_error__" in marker:
                self._shards.append(marker)
        if self._rows_buffered >= self.commit_rows:
            self.flush()

    def add_table(self, samples: pa.Table, image_vecs: np.ndarray, text_vecs: np.ndarray,
                  progress: dict | None = None, extras: dict[str, pa.Table] | None = None) -> None:
        """Buffer samples given as columns (:data:`TABLE_COLUMNS`); ``progress`` (``file``, ``source``,
        ``rows`` read from it so far, ``done``) is recorded in ``ingest_files`` with the commit that holds
        those rows, so a killed import resumes after the last committed row of the file. ``extras``: rows of
        other tables that name a sample by its position in ``samples`` (column ``_row``), committed with it
        under its id (``sample_id``)."""
        for table, rows in (extras or {}).items():
            self._extras.append((table, rows, self._rows_buffered))
        self._buffer(samples.select(TABLE_COLUMNS), image_vecs, text_vecs)
        if progress is not None:
            self._progress[progress["file"]] = progress
        if self._rows_buffered >= self.commit_rows:
            self.flush()

    def _buffer(self, table: pa.Table, image_vecs: np.ndarray, text_vecs: np.ndarray) -> None:
        self._tables.append(table)
        self._rows_buffered += table.num_rows
        self._image_vecs.append(image_vecs)
        self._text_vecs.append(text_vecs)

    def flush(self) -> None:
        """Commit the buffered samples; then let go of the workspace until the next commit (another altlens
        process, such as the web server, may use it while this one decodes and embeds)."""
        if not self._rows_buffered and not self._shards and not self._progress:
            return
        n = self._rows_buffered
        with self.ws.transaction() as cur:
            start_s, start_c = next_id(cur, "samples"), next_id(cur, "captions")
            if n:
                buffered = pa.concat_tables(self._tables)
                image_file = self.images.write_chunk(start_s, np.concatenate(self._image_vecs))
                text_file = self.texts.write_chunk(start_c, np.concatenate(self._text_vecs))
                self.ws.insert_arrow("samples", _sample_rows(buffered, start_s), cur=cur)
                self.ws.insert_arrow("captions", _alt_captions(buffered, start_s, start_c), cur=cur)
                self.images.record_chunk(cur, start_s, n, image_file)
                self.texts.record_chunk(cur, start_c, n, text_file)
            for table, rows, offset in self._extras:
                if rows.num_rows:
                    ids = pc.add(rows.column("_row").cast(pa.int64()), start_s + offset)
                    self.ws.insert_arrow(table, rows.drop_columns(["_row"]).append_column("sample_id", ids), cur=cur)
            for marker in self._shards:
                self._record_shard(cur, marker)
            for progress in self._progress.values():
                _record_progress(cur, progress)
        self._tables, self._image_vecs, self._text_vecs, self._shards = [], [], [], []
        self._rows_buffered, self._progress, self._extras = 0, {}, []
        self.ws.release()

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
    ids = np.asarray(ws.numpy("SELECT id FROM samples WHERE status = 'ok' ORDER BY id")["id"], dtype=np.int64)
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
