"""WebDataset tar shards (img2dataset layout), streamed: members grouped by key, image offsets recorded for
reading back by seek, nothing extracted, nothing unpickled, damage recorded with its byte offset."""
from __future__ import annotations

import logging
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

from indexer.paths import MAX_FILE_BYTES, MAX_SIDECAR_BYTES, path_text, text_path

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


def read_shards(src, skip_shard) -> Iterator[dict]:
    """img2dataset WebDataset shards; completed shards (recorded in the workspace) are skipped whole."""
    for shard in src.shards:
        shard = path_text(shard)
        if skip_shard(shard):
            continue
        damaged = False
        for sample in read_tar(shard, src.name):
            damaged = damaged or "__shard_error__" in sample
            yield sample
        if not damaged:
            yield {"__shard_done__": shard, "source": src.name}


class _EndAware(tarfile.TarInfo):
    """Notes on the archive which header ended it: tarfile stops silently at a cut, empty or damaged header
    past the first member, and only an all-zero block is a proper end."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.altlens_end = None
            raise
        except tarfile.EmptyHeaderError:
            tar.altlens_end = "ends without an end-of-archive marker (cut short?)"
            raise
        except tarfile.TruncatedHeaderError:
            tar.altlens_end = "is cut inside a member header"
            raise
        except tarfile.InvalidHeaderError as exc:
            tar.altlens_end = f"has a damaged member header ({exc})"
            raise


def read_tar(shard: str, source: str) -> Iterator[dict]:
    """Stream one tar: group consecutive members by key, record each image's data offset and size.

    A shard that is cut or damaged keeps every member read before the damage and
    ends with a ``__shard_error__`` marker naming the byte offset; a sample whose
    image member was cut off gets the status ``truncated``.
    """
    current: dict | None = None
    offset = 0
    try:
        with tarfile.open(text_path(shard), mode="r|*", tarinfo=_EndAware) as tar:
            tar.altlens_end = "ends without an end-of-archive marker (cut short?)"
            for member in tar:
                offset = member.offset
                if not member.isfile():
                    continue
                key, ext = _split_member(member.name)
                key = path_text(_shard_key(shard, key))
                if current is not None and current["__key__"] != key:
                    yield _finished(current)
                    current = None
                if current is None:
                    current = {"__key__": key, "__source__": source, "__path__": shard}
                _add_member(current, tar, member, ext)
            problem, offset = tar.altlens_end, tar.offset
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        problem = f"is damaged after byte {offset}: {exc}"
        if current is not None and "image" not in current and "__error__" not in current:
            current["__error__"] = ("truncated", f"the shard ends inside this sample's members (byte {offset})")
    if current is not None:
        yield _finished(current)
    if problem:
        message = problem if "byte" in problem else f"{problem} at byte {offset}"
        log.warning("tar shard %s %s", shard, message)
        yield {"__shard_error__": shard, "source": source, "error": f"{Path(shard).name} {message}"}


def _finished(sample: dict) -> dict:
    """A shard sample as read: one without an image member says so (its path is the shard, never an image)."""
    if "image" not in sample and "__error__" not in sample:
        sample["__error__"] = ("missing_image", "the shard has no image member for this key")
    return sample


def shard_stem(shard: str) -> str:
    """A shard's name without its ``.tar``: the prefix of its sample keys. Only the suffix goes, so
    ``data.a.tar`` and ``data.b.tar`` key their samples apart (cutting at the first dot merged them)."""
    name = Path(shard).name
    return name[:-4] if name.lower().endswith(".tar") and len(name) > 4 else name


def _shard_key(shard: str, key: str) -> str:
    return f"{shard_stem(shard)}/{key}"


COMPRESSIONS = ((b"\x1f\x8b", "gzip", "gunzip -k"), (b"BZh", "bzip2", "bunzip2 -k"),
                (b"\xfd7zXZ\x00", "xz", "unxz -k"), (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"))


def compressed_shard(shard: str) -> str | None:
    """Why a shard cannot be indexed when it is compressed (by its first bytes, whatever its name), else None.
    altlens reads an image back by seeking to its offset in the shard, which a compressed stream cannot do."""
    try:
        with open(text_path(shard), "rb") as fh:
            head = fh.read(6)
    except OSError:
        return None  # the reader records what it cannot open
    for magic, kind, tool in COMPRESSIONS:
        if head.startswith(magic):
            name = Path(shard).name
            return (f"tar shard {name} is {kind}-compressed: altlens reads each image back by seeking to it in the "
                    f"shard, which a compressed shard cannot do; unpack it first ({tool} {name}) and index the .tar")
    return None


def _split_member(name: str) -> tuple[str, str]:
    dirname, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{dirname}/{stem}" if dirname else stem), ext.lower()


def _add_member(sample: dict, tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> None:
    if ext in IMAGE_EXTS and "image" in sample:  # a second image of one key: recorded, not indexed
        sample.setdefault("__extra_images__", []).append(path_text(member.name)[:200])
        return
    if ext in IMAGE_EXTS:
        if member.size > MAX_FILE_BYTES:
            sample["__error__"] = ("too_large", f"image member is {member.size} bytes (limit {MAX_FILE_BYTES})")
            return
        sample["image"] = tar.extractfile(member).read()
        sample["ext"] = ext
        sample["__offset__"] = member.offset_data
        sample["__size__"] = member.size
    elif ext in ("txt", "json", "url.txt"):
        sample[ext] = tar.extractfile(member).read(MAX_SIDECAR_BYTES)
    # everything else (.pyd, .pkl, .npy, ...) is ignored: never decoded, never unpickled


def count_shard_samples(shards: tuple[str, ...]) -> int | None:
    """How many samples uncompressed shards hold (headers only); None when that would cost a full read."""
    total = 0
    for shard in shards:
        if not shard.endswith(".tar"):
            return None
        try:
            with tarfile.open(text_path(shard), mode="r:") as tar:  # seekable: reads headers, skips data
                keys = {_split_member(m.name)[0] for m in tar if m.isfile()}
        except (tarfile.TarError, OSError):
            return None
        total += len(keys)
    return total
