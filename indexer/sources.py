"""Readers: turn a source argument (folder, table file, tar shards) into a stream of raw sample dicts.

A raw sample is keyed like WebDataset: ``__key__``, ``__source__``, ``__path__``
(image file or tar shard), ``__offset__``/``__size__`` (tar members), and the
member bytes it already holds: ``image`` (tar only; files are read by the
decoder), ``txt``, ``json``, ``ext``. A problem found while reading (a table row
without an image path) travels as ``__error__`` and becomes a failure status.
Nothing is copied or extracted; tar members are streamed and never unpickled.

Sources are untrusted. A file is read only when it resolves (symlinks followed)
inside its source's folder or a root the user allowed (``--allow-root``), is a
regular file, and is at most ``MAX_FILE_BYTES``; anything else becomes a sample
status and is never opened. URLs in a table are recorded, never fetched. Paths
and keys are stored as text: a file name that is not valid UTF-8 keeps its bytes
as ``\\xNN`` escapes (a backslash itself as ``\\\\``), so every key is stable and
:func:`indexer.paths.text_path` gives the exact name back.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from braceexpand import braceexpand

from indexer.errors import SourceError
from indexer.paths import MAX_SIDECAR_BYTES, contained, path_text, text_path
from indexer.shards import IMAGE_EXTS, compressed_shard, count_shard_samples, read_shards

log = logging.getLogger(__name__)

TABLE_EXTS = (".jsonl", ".csv", ".parquet")
IMAGE_COLUMNS = ("image", "path", "file_name", "filename", "image_path", "file", "img")
CAPTION_COLUMNS = ("caption", "text", "alt", "alt_text", "txt", "title")
URL_COLUMNS = ("url", "image_url", "source_url")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Source:
    """A resolved source: a name (part of every uid), a kind, what to read and the roots its files may be in."""

    name: str
    kind: str
    location: str
    shards: tuple[str, ...] = ()
    image_column: str | None = None
    caption_column: str | None = None
    allow_roots: tuple[str, ...] = ()

    def read(self, skip_shard: Callable[[str], bool] = lambda p: False) -> Iterator[dict]:
        return READERS[self.kind](self, skip_shard)


def make_uid(source: str, key: str) -> str:
    """A stable 32-hex uid (DataComp style: no dots, safe as a WebDataset key)."""
    return hashlib.sha256(f"{source}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def resolve_source(arg: str, image_column: str | None = None, caption_column: str | None = None,
                   allow_roots: tuple[str, ...] = ()) -> Source:
    """Classify ``arg`` as a folder, a table file or tar shards (paths, globs, brace patterns)."""
    path = Path(arg)
    roots = tuple(str(Path(r).resolve()) for r in allow_roots)
    for root in roots:
        if not Path(root).is_dir():
            raise SourceError(f"--allow-root {root!r} is not a folder")
    if path.is_dir():
        return Source(path_text(str(path.resolve())), "folder", path_text(str(path.resolve())), allow_roots=roots)
    if path.suffix.lower() in TABLE_EXTS:
        if not path.is_file():
            raise SourceError(f"table file {arg!r} does not exist")
        schema = _parquet_schema(path)
        if schema is not None:  # checked before the run starts; other tables are checked on their first row
            _columns(schema.names, image_column, caption_column, path, schema)
        return Source(path_text(str(path.resolve())), "table", path_text(str(path.resolve())),
                      image_column=image_column, caption_column=caption_column, allow_roots=roots)
    if ".tar" in arg or arg.lower().endswith(".tgz"):
        shards = sorted({str(Path(p).resolve()) for pattern in braceexpand(arg) for p in _expand_glob(pattern)})
        if not shards:
            raise SourceError(f"no tar shards match {arg!r}")
        missing = [s for s in shards if not Path(s).is_file()]
        if missing:
            raise SourceError(f"tar shard {missing[0]!r} does not exist")
        for shard in shards:
            if (why := compressed_shard(shard)) is not None:
                raise SourceError(why)
        return Source(path_text(str(Path(shards[0]).parent)), "wds", path_text(arg), shards=tuple(shards))
    if not path.exists():
        raise SourceError(f"source {arg!r} does not exist")
    raise SourceError(f"cannot read {arg!r}: give a folder, a table ({', '.join(TABLE_EXTS)}) or .tar shards")


def _expand_glob(pattern: str) -> list[str]:
    return glob.glob(pattern) if glob.has_magic(pattern) else [pattern]


# ---------------------------------------------------------------- folder

def read_folder(src: Source, skip_shard) -> Iterator[dict]:
    """img2dataset 'files' layout: images with optional ``<name>.txt`` and ``<name>.json`` sidecars.
    Symlinks are followed only to files inside the folder or an allowed root."""
    root = Path(text_path(src.location))
    roots = [root.resolve()] + [Path(r) for r in src.allow_roots]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        names = set(filenames)
        for name in sorted(filenames):
            stem, _, ext = name.rpartition(".")
            if ext.lower() not in IMAGE_EXTS or not stem:
                continue
            full = Path(dirpath) / name
            sample = {"__key__": path_text(str(full.relative_to(root).with_suffix(""))), "__source__": src.name,
                      "ext": ext.lower()}
            target, problem = resolved(full)
            if problem:
                sample["__path__"] = path_text(str(full))
                sample["__error__"] = ("unreadable", f"{path_text(str(full))}: {problem}")
                yield sample
                continue
            if not contained(target, roots):
                sample["__error__"] = ("outside_source", f"{path_text(str(full))} leads outside the source folder "
                                                         f"(to {path_text(str(target))}); allow it with --allow-root")
                yield sample
                continue
            sample["__path__"] = path_text(str(full))
            for side in ("txt", "json"):
                if f"{stem}.{side}" in names:
                    sample[side] = read_sidecar(Path(dirpath) / f"{stem}.{side}", roots)
            yield sample


def resolved(path: Path) -> tuple[Path, str | None]:
    """``path`` with its links followed, or, where that fails (a symlink loop, a name too long, a folder it may
    not enter), the path as given and why, in words."""
    try:
        return path.resolve(), None
    except RuntimeError as exc:  # Python 3.11 reports a symlink loop this way
        return path, f"a symlink loop ({exc})"
    except OSError as exc:
        return path, exc.strerror or str(exc)


def read_sidecar(path: Path, roots: list[Path]) -> bytes | None:
    """A caption or metadata sidecar: a regular file inside the roots, at most ``MAX_SIDECAR_BYTES`` read."""
    try:
        target, problem = resolved(path)
        if problem:
            log.warning("skipping sidecar %s: %s", path_text(str(path)), problem)
            return None
        if not contained(target, roots) or not stat.S_ISREG(os.stat(path).st_mode):
            log.warning("skipping sidecar %s: not a regular file inside the source", path_text(str(path)))
            return None
        with open(path, "rb") as fh:
            return fh.read(MAX_SIDECAR_BYTES)
    except OSError as exc:
        log.warning("cannot read %s: %s", path_text(str(path)), exc)
        return None


# ---------------------------------------------------------------- tables

def read_table(src: Source, skip_shard) -> Iterator[dict]:
    """Rows of a .jsonl/.csv/.parquet file; image paths are relative to the table's folder and must stay
    inside it (or an allowed root)."""
    path = Path(text_path(src.location))
    base = path.parent
    rows = _table_rows(path)
    first = next(rows, None)
    if first is None:
        return
    schema = _parquet_schema(path)
    columns = schema.names if schema is not None else list(first[1].keys()) if isinstance(first[1], dict) else []
    image_col, caption_col = _columns(columns, src.image_column, src.caption_column, path, schema)
    url_col = next((c for c in URL_COLUMNS if c in columns), None)
    roots = [base.resolve()] + [Path(r) for r in src.allow_roots]
    damage = []
    for number, row in _chain(first, rows):
        if isinstance(row, dict) and DAMAGE in row:
            log.warning("%s", row[DAMAGE])
            damage.append(row[DAMAGE])
            continue
        yield _table_sample(src, roots, number, row, image_col, caption_col, url_col)
    if damage:
        yield {"__shard_error__": src.location, "source": src.name, "error": "; ".join(damage)[:2000]}


def _chain(first, rest):
    yield first
    yield from rest


def _table_sample(src, roots: list[Path], number, row, image_col, caption_col, url_col) -> dict:
    key = f"row{number:09d}"
    if not isinstance(row, dict):
        return {"__key__": key, "__source__": src.name, "__error__": ("bad_row", repr(str(row)[:200]))}
    rel = row.get(image_col)
    if rel is not None and not isinstance(rel, str):
        return {"__key__": key, "__source__": src.name, "__error__": (
            "bad_row", f"the {image_col!r} column holds a {type(rel).__name__}, not an image path")}
    if not rel:
        return {"__key__": key, "__source__": src.name, "__error__": ("missing_image", f"row has no {image_col!r}")}
    if "\x00" in rel or any("\ud800" <= ch <= "\udfff" for ch in rel):
        return {"__key__": key, "__source__": src.name,
                "__error__": ("bad_row", f"the image path {rel[:200]!r} holds a NUL or a lone surrogate")}
    sample = {"__key__": rel, "__source__": src.name, "ext": Path(rel).suffix.lstrip(".").lower()[:16]}
    caption = row.get(caption_col) if caption_col else None
    if isinstance(caption, (dict, list, bytes)):
        return {"__key__": rel, "__source__": src.name, "__error__": (
            "bad_row", f"the {caption_col!r} column holds a {type(caption).__name__}, not text")}
    if caption is not None:
        sample["txt"] = caption if isinstance(caption, str) else str(caption)  # a number as written
    extra = {k: v for k, v in row.items() if k not in (image_col, caption_col)}
    if url_col and row.get(url_col):
        extra["url"] = row[url_col]
    if URL.match(rel):
        extra.setdefault("url", rel)
        sample["__error__"] = ("remote_url", "altlens never downloads: fetch the images first (for example with "
                                             "img2dataset) and index the result")
    else:
        full, problem = resolved(roots[0] / rel)
        if problem:
            sample["__error__"] = ("unreadable", f"{rel[:200]!r}: {problem}")
        elif contained(full, roots):
            sample["__path__"] = path_text(str(full))
        else:
            sample["__error__"] = ("outside_source", f"{rel[:200]!r} resolves to {path_text(str(full))}, outside the "
                                                     "table's folder; allow it with --allow-root")
    sample["json"] = json.dumps(extra, default=str, ensure_ascii=False).encode("utf-8", "replace")
    return sample


def _columns(columns, image_column, caption_column, path: Path, schema=None) -> tuple[str, str | None]:
    """The image and caption columns of a table (asked for, else the usual names); a parquet caption column
    that is not text is refused in one line naming its type."""
    image_col = _pick_column(columns, image_column, IMAGE_COLUMNS, "image", path)
    caption_col = _pick_column(columns, caption_column, CAPTION_COLUMNS, "caption", path, required=False)
    if schema is not None and caption_col is not None:
        import pyarrow.types as types
        kind = schema.field(caption_col).type
        if not (types.is_string(kind) or types.is_large_string(kind) or types.is_null(kind)):
            raise SourceError(f"caption column {caption_col!r} in {path.name} is {kind}, not text; give a text "
                              "column with --caption-column")
    return image_col, caption_col


def _parquet_schema(path: Path):
    """A parquet file's Arrow schema (None for other tables)."""
    if path.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq
    return pq.ParquetFile(path).schema_arrow


def _pick_column(columns, requested, defaults, what, path, required=True):
    if requested:
        if requested not in columns:
            raise SourceError(f"{what} column {requested!r} is not in {path.name}; columns: {', '.join(columns)}")
        return requested
    found = next((c for c in defaults if c in columns), None)
    if found is None and required:
        raise SourceError(f"no {what} column in {path.name} (looked for {', '.join(defaults)}); "
                          f"columns: {', '.join(columns)}; pass --{what}-column")
    return found


def _table_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, "rb") as fh:
            for number, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    yield number, line.decode("utf-8", "replace")
    elif suffix == ".csv":
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # web captions can be megabytes long
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            yield from enumerate(csv.DictReader(fh))
    else:
        yield from _parquet_rows(path)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """A parquet file's rows a row group at a time, numbered by their place in the file (so a re-run keys them
    the same). A damaged row group keeps the rows read before the damage and yields a ``__damage__`` note
    (row group, rows lost, the error) in place of a row; the next row group is read as usual."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    parquet = pq.ParquetFile(path)
    start = 0
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        read = 0
        try:
            for batch in parquet.iter_batches(batch_size=1024, row_groups=[group]):
                for row in batch.to_pylist():
                    yield start + read, row
                    read += 1
        except (pa.ArrowException, OSError, ValueError) as exc:
            yield start + read, {DAMAGE: (f"{path.name} row group {group} (rows {start}-{start + size - 1}) is "
                                          f"damaged after row {start + read}: {size - read} rows not read "
                                          f"({str(exc)[:200]})")}
        start += size


DAMAGE = "__damage__"  # a table row standing for the damaged part of a file


READERS: dict[str, Callable[[Source, Callable], Iterator[dict]]] = {
    "folder": read_folder,
    "table": read_table,
    "wds": read_shards,
}


def count_inputs(src: Source) -> int | None:
    """How many samples a source holds, when that is cheap to know (None for compressed tars)."""
    if src.kind == "folder":
        return sum(1 for _, _, files in os.walk(text_path(src.location))
                   for f in files if f.rpartition(".")[2].lower() in IMAGE_EXTS and f.rpartition(".")[0])
    if src.kind == "table":
        path = Path(text_path(src.location))
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq
            return pq.ParquetFile(path).metadata.num_rows
        with open(path, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
        return lines - 1 if path.suffix.lower() == ".csv" else lines
    return count_shard_samples(src.shards)
