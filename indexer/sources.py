"""Readers: turn a source argument (folder, table file, tar shards) into a stream of raw sample dicts.

A raw sample is keyed like WebDataset: ``__key__``, ``__source__``, ``__path__``
(image file or tar shard), ``__offset__``/``__size__`` (tar members), and the
member bytes it already holds: ``image`` (tar only; files are read by the
decoder), ``txt``, ``json``, ``ext``. A problem found while reading (a table row
without an image path) travels as ``__error__`` and becomes a failure status.
Nothing is copied or extracted; tar members are streamed and never unpickled.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from braceexpand import braceexpand

from indexer.errors import SourceError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TABLE_EXTS = (".jsonl", ".csv", ".parquet")
IMAGE_COLUMNS = ("image", "path", "file_name", "filename", "image_path", "file", "img")
CAPTION_COLUMNS = ("caption", "text", "alt", "alt_text", "txt", "title")
URL_COLUMNS = ("url", "image_url", "source_url")
MAX_MEMBER_BYTES = 256 << 20


@dataclass(frozen=True)
class Source:
    """A resolved source: a name (part of every uid), a kind and what to read."""

    name: str
    kind: str
    location: str
    shards: tuple[str, ...] = ()
    image_column: str | None = None
    caption_column: str | None = None

    def read(self, skip_shard: Callable[[str], bool] = lambda p: False) -> Iterator[dict]:
        return READERS[self.kind](self, skip_shard)


def make_uid(source: str, key: str) -> str:
    """A stable 32-hex uid (DataComp style: no dots, safe as a WebDataset key)."""
    return hashlib.sha256(f"{source}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def resolve_source(arg: str, image_column: str | None = None, caption_column: str | None = None) -> Source:
    """Classify ``arg`` as a folder, a table file or tar shards (paths, globs, brace patterns)."""
    path = Path(arg)
    if path.is_dir():
        return Source(str(path.resolve()), "folder", str(path.resolve()))
    if path.suffix.lower() in TABLE_EXTS:
        if not path.is_file():
            raise SourceError(f"table file {arg!r} does not exist")
        return Source(str(path.resolve()), "table", str(path.resolve()),
                      image_column=image_column, caption_column=caption_column)
    if ".tar" in arg:
        shards = sorted({str(Path(p).resolve()) for pattern in braceexpand(arg) for p in _expand_glob(pattern)})
        if not shards:
            raise SourceError(f"no tar shards match {arg!r}")
        missing = [s for s in shards if not Path(s).is_file()]
        if missing:
            raise SourceError(f"tar shard {missing[0]!r} does not exist")
        return Source(str(Path(shards[0]).parent), "wds", arg, shards=tuple(shards))
    if not path.exists():
        raise SourceError(f"source {arg!r} does not exist")
    raise SourceError(f"cannot read {arg!r}: give a folder, a table ({', '.join(TABLE_EXTS)}) or .tar shards")


def _expand_glob(pattern: str) -> list[str]:
    return glob.glob(pattern) if glob.has_magic(pattern) else [pattern]


# ---------------------------------------------------------------- folder

def read_folder(src: Source, skip_shard) -> Iterator[dict]:
    """img2dataset 'files' layout: images with optional ``<name>.txt`` and ``<name>.json`` sidecars."""
    root = Path(src.location)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        names = set(filenames)
        for name in sorted(filenames):
            stem, _, ext = name.rpartition(".")
            if ext.lower() not in IMAGE_EXTS or not stem:
                continue
            full = Path(dirpath) / name
            sample = {"__key__": str(full.relative_to(root).with_suffix("")), "__source__": src.name,
                      "__path__": str(full), "ext": ext.lower()}
            for side in ("txt", "json"):
                if f"{stem}.{side}" in names:
                    sample[side] = _read_small(Path(dirpath) / f"{stem}.{side}")
            yield sample


def _read_small(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


# ---------------------------------------------------------------- tables

def read_table(src: Source, skip_shard) -> Iterator[dict]:
    """Rows of a .jsonl/.csv/.parquet file; image paths are relative to the table's folder."""
    path = Path(src.location)
    base = path.parent
    rows = _table_rows(path)
    first = next(rows, None)
    if first is None:
        return
    columns = list(first[1].keys()) if isinstance(first[1], dict) else []
    image_col = _pick_column(columns, src.image_column, IMAGE_COLUMNS, "image", path)
    caption_col = _pick_column(columns, src.caption_column, CAPTION_COLUMNS, "caption", path, required=False)
    url_col = next((c for c in URL_COLUMNS if c in columns), None)
    for number, row in _chain(first, rows):
        yield _table_sample(src, base, number, row, image_col, caption_col, url_col)


def _chain(first, rest):
    yield first
    yield from rest


def _table_sample(src, base, number, row, image_col, caption_col, url_col) -> dict:
    key = f"row{number:09d}"
    if not isinstance(row, dict):
        return {"__key__": key, "__source__": src.name, "__error__": ("bad_row", str(row)[:200])}
    rel = row.get(image_col)
    if not rel or not isinstance(rel, str):
        return {"__key__": key, "__source__": src.name, "__error__": ("missing_image", f"row has no {image_col!r}")}
    full = (base / rel).resolve()
    sample = {"__key__": rel, "__source__": src.name, "__path__": str(full), "ext": full.suffix.lstrip(".").lower()}
    caption = row.get(caption_col) if caption_col else None
    if caption is not None:
        sample["txt"] = caption if isinstance(caption, str) else str(caption)
    extra = {k: v for k, v in row.items() if k not in (image_col, caption_col)}
    if url_col and row.get(url_col):
        extra["url"] = row[url_col]
    sample["json"] = json.dumps(extra, default=str, ensure_ascii=False).encode("utf-8", "replace")
    return sample


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
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            yield from enumerate(csv.DictReader(fh))
    else:
        import pyarrow.parquet as pq
        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield number, row
                number += 1


# ---------------------------------------------------------------- tar shards

def read_shards(src: Source, skip_shard) -> Iterator[dict]:
    """img2dataset WebDataset shards; completed shards (recorded in the workspace) are skipped whole."""
    for shard in src.shards:
        if skip_shard(shard):
            continue
        for sample in read_tar(shard, src.name):
            yield sample
            if "__shard_error__" in sample:
                break
        else:
            yield {"__shard_done__": shard, "source": src.name}


def read_tar(shard: str, source: str) -> Iterator[dict]:
    """Stream one tar: group consecutive members by key, record each image's data offset and size."""
    current: dict | None = None
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_member(member.name)
                if current is not None and current["__key__"] != _shard_key(shard, key):
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": _shard_key(shard, key), "__source__": source, "__path__": shard}
                _add_member(current, tar, member, ext)
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("tar shard %s is damaged after %s: %s", shard, current and current["__key__"], exc)
        if current is not None:
            yield current
        yield {"__shard_error__": shard, "source": source, "error": str(exc)}
        return
    if current is not None:
        yield current


def _shard_key(shard: str, key: str) -> str:
    return f"{Path(shard).name.split('.')[0]}/{key}"


def _split_member(name: str) -> tuple[str, str]:
    dirname, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{dirname}/{stem}" if dirname else stem), ext.lower()


def _add_member(sample: dict, tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> None:
    if ext in IMAGE_EXTS and "image" not in sample:
        if member.size > MAX_MEMBER_BYTES:
            sample["__error__"] = ("too_large", f"image member is {member.size} bytes (limit {MAX_MEMBER_BYTES})")
            return
        sample["image"] = tar.extractfile(member).read()
        sample["ext"] = ext
        sample["__offset__"] = member.offset_data
        sample["__size__"] = member.size
    elif ext in ("txt", "json", "url.txt"):
        sample[ext] = tar.extractfile(member).read(16 << 20)
    # everything else (.pyd, .pkl, .npy, ...) is ignored: never decoded, never unpickled


READERS: dict[str, Callable[[Source, Callable], Iterator[dict]]] = {
    "folder": read_folder,
    "table": read_table,
    "wds": read_shards,
}


def read_member(path: str, offset: int | None, size: int | None) -> bytes:
    """The bytes of an image: a whole file, or a tar member read back by seek."""
    with open(path, "rb") as fh:
        if offset is None:
            return fh.read()
        fh.seek(offset)
        return fh.read(size)


def count_inputs(src: Source) -> int | None:
    """How many samples a source holds, when that is cheap to know (None for compressed tars)."""
    if src.kind == "folder":
        return sum(1 for _, _, files in os.walk(src.location)
                   for f in files if f.rpartition(".")[2].lower() in IMAGE_EXTS and f.rpartition(".")[0])
    if src.kind == "table":
        path = Path(src.location)
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq
            return pq.ParquetFile(path).metadata.num_rows
        with open(path, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
        return lines - 1 if path.suffix.lower() == ".csv" else lines
    total = 0
    for shard in src.shards:
        if not shard.endswith(".tar"):
            return None
        try:
            with tarfile.open(shard, mode="r:") as tar:  # seekable: reads headers, skips data
                keys = {_split_member(m.name)[0] for m in tar if m.isfile()}
        except (tarfile.TarError, OSError):
            return None
        total += len(keys)
    return total
