"""``altlens import``: a pool's own metadata and embeddings -> workspace rows, through the indexer's writer.

No image is opened or embedded: the pool's vectors are the workspace's (checked: finite, L2-normalised), its
uid is the workspace uid, its numeric metadata columns become imported scores, and rows whose image is not
at hand are ``not_downloaded`` with their url kept (nothing is fetched). Rows are committed a block at a time
together with how far each file got (``ingest_files``), so a killed import, run again, resumes after its last
commit and ends with the same workspace.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from indexer.decode import LONG_CAPTION
from indexer.errors import ModelError, SourceError
from indexer.models import ModelSpec, config_beside, load_model, open_workspace_model
from indexer.pool_images import image_sources, join_images, verify_model
from indexer.paths import path_text
from indexer.pools import (COLUMNS, DATACOMP_EMBEDDINGS, LAYOUTS, Block, Columns, PoolFile, blocks, column,
                           pool_files, score_columns)
from indexer.sources import Source, make_uid
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore
from indexer.writer import TABLE_COLUMNS, TABLE_TYPES, SampleWriter, rebuild_index_if_stale, repeat

log = logging.getLogger(__name__)

NOT_DOWNLOADED = "not_downloaded"
NORM_TOLERANCE = 0.02  # |norm - 1| beyond this: not the L2-normalised vectors the layouts promise


@dataclass(frozen=True)
class ImportConfig:
    """What ``altlens import`` reads and how it writes; validated on creation."""

    layout: str
    folder: str
    model: ModelSpec | None = None
    embeddings: str = "l14"  # datacomp: which of the pool's vector sets (l14: ViT-L-14, b32: ViT-B-32)
    commit_rows: int = 65536
    index_type: str = "auto"
    progress: bool = True
    images: tuple[str, ...] = ()  # img2dataset shards of the pool's images, joined to the rows by uid

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown pool layout {self.layout!r}; allowed: {', '.join(LAYOUTS)}")
        if self.layout == "datacomp" and self.embeddings not in DATACOMP_EMBEDDINGS:
            raise ValueError(f"unknown --embeddings {self.embeddings!r}; allowed: {', '.join(DATACOMP_EMBEDDINGS)}")
        if self.commit_rows < 1:
            raise ValueError(f"commit_rows must be >= 1, got {self.commit_rows}")

    def source(self) -> Source:
        location = path_text(str(Path(self.folder).resolve()))
        return Source(f"{self.layout}:{location}", self.layout, location)


def model_for(layout: str, embeddings: str, name: str | None, pretrained: str | None, checkpoint: str | None,
              device: str = "auto", precision: str = "fp32") -> ModelSpec:
    """The model that made a pool's vectors: DataComp's follow from ``--embeddings`` (OpenAI ViT-L-14 or
    ViT-B-32) unless named (or a config lies beside the checkpoint); any layout needs its weights named, since
    they serve search and new captions."""
    beside = checkpoint is not None and config_beside(Path(checkpoint)) is not None
    if layout == "datacomp" and name is None and not beside:  # a config beside the checkpoint names its own
        if embeddings not in DATACOMP_EMBEDDINGS:
            raise ValueError(f"unknown --embeddings {embeddings!r}; allowed: {', '.join(DATACOMP_EMBEDDINGS)}")
        name = DATACOMP_EMBEDDINGS[embeddings]
    if name is None and checkpoint is None:
        raise ValueError("name the model that made the pool's vectors: --model NAME with --pretrained TAG or "
                         "--checkpoint PATH")
    if pretrained is None and checkpoint is None:
        raise ValueError(f"give the weights of {name}: --pretrained TAG (e.g. openai, from the local cache) or "
                         "--checkpoint PATH")
    return ModelSpec(name=name, pretrained=pretrained, checkpoint=checkpoint, device=device, precision=precision)


def check(cfg: ImportConfig) -> list[PoolFile]:
    """The pool's files, every one checked before the workspace is touched; with ``--images``, a sample of them
    re-embedded with the named model must match the pool's vectors (see :func:`verify_model`)."""
    files = pool_files(cfg.layout, cfg.folder, cfg.embeddings)
    if cfg.images:
        model = load_model(cfg.model or ModelSpec())
        _check_dim(model, files)
        verify_model(files, cfg.layout, image_sources(cfg.images), model)
    return files


def _check_dim(model, files: list[PoolFile]) -> None:
    if model.dim != files[0].dim:
        raise ModelError(f"the pool's vectors are {files[0].dim}-d, the model {model.model_id} makes "
                         f"{model.dim}-d ones: name the model that made them")


def run(ws: Workspace, cfg: ImportConfig) -> dict:
    """Import the pool at ``cfg.folder`` into ``ws``; return counts and the rate."""
    files = pool_files(cfg.layout, cfg.folder, cfg.embeddings)  # check() ran before the workspace was opened
    model = open_workspace_model(ws, cfg.model)
    try:
        _check_dim(model, files)
    except ModelError:
        if not ws.scalar("SELECT count(*) FROM samples"):  # the workspace is new: it keeps no model either
            ws.execute("DELETE FROM meta WHERE key = 'model'")
        raise
    src = cfg.source()
    writer = SampleWriter(ws, model.dim, commit_rows=cfg.commit_rows)
    writer.register_source(src)
    started, counts = time.perf_counter(), {"rows": 0, "skipped_files": 0}
    todo = [(f, _resume_row(ws, f)) for f in files]
    bar = tqdm(desc="import", unit="row", total=sum(f.rows - start for f, start in todo if start is not None),
               disable=not cfg.progress)
    for file, start in todo:
        if start is None:
            counts["skipped_files"] += 1
            continue
        for block in blocks(file, start, cfg.commit_rows):
            table, image, scores = block_rows(ws, block, src, cfg.layout)
            text = block.text if block.text is not None else model.encode_texts(table.column("caption").to_pylist())
            done = block.start + table.num_rows == file.rows
            writer.add_table(table, image, unit_rows(text)[0],
                             progress={"file": str(file.metadata), "source": src.name,
                                       "rows": block.start + table.num_rows, "done": done},
                             extras={"imported_scores": scores})
            writer.flush()  # each block committed before the next is read: its uids are known to the next
            counts["rows"] += table.num_rows
            bar.update(table.num_rows)
        if file.rows == start:  # an empty file, or one whose rows were all committed before
            writer.add_table(_empty_rows(), np.zeros((0, model.dim), np.float16), np.zeros((0, model.dim), np.float16),
                             progress={"file": str(file.metadata), "source": src.name, "rows": start, "done": True})
    writer.flush()
    bar.close()
    if cfg.images:
        counts["images"] = join_images(ws, image_sources(cfg.images), progress=cfg.progress)
    rows_s = time.perf_counter() - started
    for kind in ("image", "text"):
        EmbeddingStore(ws, kind).compact()
    compact_s = time.perf_counter() - started - rows_s
    rebuild_index_if_stale(ws, cfg.index_type)
    wall = time.perf_counter() - started
    counts |= {"rows_s": round(rows_s, 2), "compact_s": round(compact_s, 2),
               "index_s": round(wall - rows_s - compact_s, 2)}
    statuses = dict(ws.rows("SELECT status, count(*) FROM samples WHERE source = ? GROUP BY ALL ORDER BY 1",
                            [src.name]))
    return {"files": len(files), **counts, "statuses": statuses, "wall_s": round(wall, 2),
            "rows_per_s": round(counts["rows"] / wall, 1) if wall else 0.0}


def _resume_row(ws: Workspace, file: PoolFile) -> int | None:
    """The first row of ``file`` not yet committed (None: all of it is); a file changed since a partial import
    is refused, since its rows would no longer line up with those committed."""
    row = ws.row("SELECT size, mtime, n_samples, done_at FROM ingest_files WHERE path = ?", [str(file.metadata)])
    if row is None:
        return 0
    stat = file.metadata.stat()
    same = row[0] == stat.st_size and abs(row[1] - stat.st_mtime) < 1e-6
    if not same:
        raise SourceError(f"{file.metadata} changed since an earlier import of it began; import the changed pool "
                          "into a new workspace")
    return None if row[3] is not None else int(row[2])


def block_rows(ws: Workspace, block: Block, src: Source, layout: str) -> tuple[pa.Table, np.ndarray, pa.Table]:
    """A block as writer columns, its image vectors (zeros where unusable) and its imported scores (by
    position). Statuses: ``ok``; ``bad_row`` (a uid the layout does not allow); ``duplicate_key`` (a uid seen
    before, in this block or the workspace); ``bad_vector`` (NaN, infinite or not L2-normalised)."""
    meta, n, names = block.meta, block.meta.num_rows, COLUMNS[layout]
    keys = _keys(meta, names, block)
    uids, status, reason = _uids(ws, meta, names, keys, src.name)
    image, usable = unit_rows(block.image)
    bad_vec = (status == "ok") & ~usable
    status[bad_vec] = "bad_vector"
    reason[bad_vec] = "the pool's image vector is not finite or not L2-normalised"
    caption, caption_status = _captions(meta, column(meta, names.caption), n)
    table = pa.table({
        "uid": uids, "source": repeat(src.name, n), "key": keys, "status": pa.array(status),
        "reason": pa.array(reason, pa.string()), "path": pa.nulls(n, pa.string()),
        "member_offset": pa.nulls(n, pa.int64()), "member_size": pa.nulls(n, pa.int64()),
        "width": _ints(meta, names.width, n), "height": _ints(meta, names.height, n),
        "format": pa.nulls(n, pa.string()), "sha256": _strings(meta, names.sha256, n),
        "url": _strings(meta, names.url, n), "meta_json": pa.nulls(n, pa.string()),
        "caption_status": caption_status, "thumb": pa.nulls(n, pa.string()),
        "image_state": repeat(NOT_DOWNLOADED, n), "caption": caption})
    return table, image, _scores(meta, layout, status)


def _keys(meta: pa.Table, names: Columns, block: Block) -> pa.Array:
    """Each row's key: the pool's name for its image where the layout has one, else ``FILE-STEM:ROW``."""
    rows = pc.binary_join_element_wise(pa.scalar(f"{block.file.stem}:"), pc.cast(
        pa.array(np.arange(block.start, block.start + meta.num_rows)), pa.string()), "")
    name = column(meta, names.key)
    return rows if name is None else pc.coalesce(pc.cast(meta.column(name), pa.string()).combine_chunks(), rows)


def _uids(ws: Workspace, meta: pa.Table, names: Columns, keys: pa.Array, source: str):
    """(uid, status, reason) per row: the pool's uid where it is usable; where the pool has none, altlens's
    own (from source and key); a malformed uid is ``bad_row`` and a repeated one ``duplicate_key``, and both
    get a uid of altlens's own so the row is kept."""
    n = len(keys)
    status, reason = np.full(n, "ok", dtype=object), np.full(n, None, dtype=object)
    name = column(meta, names.uid)
    if name is None:
        return _made_uids(source, keys, np.ones(n, bool)), status, reason
    uids = pc.cast(meta.column(name), pa.string()).combine_chunks()
    if "0-9a-f" in names.uid_pattern:
        uids = pc.utf8_lower(uids)
    valid = pc.fill_null(pc.match_substring_regex(uids, names.uid_pattern), False).to_numpy(zero_copy_only=False)
    status[~valid], reason[~valid] = "bad_row", f"the pool's uid is not {names.uid_rule}"
    values = uids.to_numpy(zero_copy_only=False).astype(object)
    _, first = np.unique(np.where(valid, values, ""), return_index=True)
    repeated = valid.copy()
    repeated[first] = False
    if valid.any():
        known = ws.numpy("SELECT uid FROM samples WHERE uid IN (SELECT unnest(?))",
                         [pc.filter(uids, pa.array(valid)).to_pylist()])["uid"]
        repeated |= valid & np.isin(values, np.asarray(known, dtype=object))
    status[repeated], reason[repeated] = "duplicate_key", "the pool's uid appeared before"
    unusable = ~valid | repeated
    return pc.if_else(pa.array(unusable), _made_uids(source, keys, unusable), uids), status, reason


def _made_uids(source: str, keys: pa.Array, rows: np.ndarray) -> pa.Array:
    """A uid of altlens's own for the ``rows`` whose pool uid is missing or cannot be used."""
    out = np.full(len(rows), None, dtype=object)
    for i in np.flatnonzero(rows):
        out[i] = make_uid(source, keys[i].as_py())
    return pa.array(out, pa.string())


def _captions(meta: pa.Table, name: str | None, n: int) -> tuple[pa.Array, pa.Array]:
    """Caption text (never null) and its caption status, as the indexer's decode gives them."""
    if name is None:
        return repeat("", n), repeat("missing", n)
    values = meta.column(name)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise SourceError(f"caption column {name!r} holds {values.type}, not text; altlens reads text captions only")
    values = pc.cast(values, pa.string()).combine_chunks()
    has_nul = pc.fill_null(pc.match_substring(values, "\x00"), False)
    text = pc.fill_null(pc.replace_substring(values, "\x00", "\ufffd"), "")
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    status = pc.case_when(pc.make_struct(pc.is_null(values), has_nul, empty,
                                         pc.greater(pc.utf8_length(text), LONG_CAPTION)),
                          "missing", "repaired", "empty", "long", "ok")
    return text, status


def _ints(meta: pa.Table, names: tuple[str, ...], n: int) -> pa.Array:
    name = column(meta, names)
    if name is None or not pa.types.is_integer(meta.schema.field(name).type) and \
            not pa.types.is_floating(meta.schema.field(name).type):
        return pa.nulls(n, pa.int32())
    return pc.cast(meta.column(name), pa.int32(), safe=False).combine_chunks()


def _strings(meta: pa.Table, names: tuple[str, ...], n: int) -> pa.Array:
    name = column(meta, names)
    return pa.nulls(n, pa.string()) if name is None else pc.cast(meta.column(name), pa.string()).combine_chunks()


def _scores(meta: pa.Table, layout: str, status: np.ndarray) -> pa.Table:
    """Each numeric metadata column of the usable rows as (name, position, value); the name says its origin."""
    parts = []
    ok = status == "ok"
    for name in score_columns(meta.schema, layout):
        values = pc.cast(meta.column(name), pa.float64()).to_numpy(zero_copy_only=False)
        keep = np.flatnonzero(ok & np.isfinite(values))
        parts.append(pa.table({"name": repeat(f"{layout}.{name}", len(keep)), "_row": keep,
                               "value": values[keep]}))
    return pa.concat_tables(parts) if parts else pa.table({"name": pa.array([], pa.string()),
                                                            "_row": pa.array([], pa.int64()),
                                                            "value": pa.array([], pa.float64())})


def unit_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float16 rows, usable mask): rows as the pool shipped them where all are finite and of unit length
    (within ``NORM_TOLERANCE``), else normalised, with unusable rows (NaN, infinite, far from unit) zeroed."""
    v32 = np.asarray(vectors, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", v32, v32))
    usable = np.isfinite(norms) & (np.abs(norms - 1) <= NORM_TOLERANCE)
    if vectors.dtype == np.float16 and usable.all():
        return vectors, usable
    fixed = np.where(usable[:, None], v32 / np.where(usable, norms, 1)[:, None], 0)
    return fixed.astype(np.float16), usable


def _empty_rows() -> pa.Table:
    return pa.table({c: pa.array([], TABLE_TYPES.get(c, pa.string())) for c in TABLE_COLUMNS})

