"""Safe access to source files: paths as storable text (reversibly), containment in allowed roots, and reads
bounded to regular files of limited size. Every reader goes through here."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

MAX_FILE_BYTES = 256 << 20  # the largest image read from any source
MAX_SIDECAR_BYTES = 16 << 20  # the largest caption / metadata sidecar read


def path_text(path: str) -> str:
    """A path from the OS (undecodable bytes as surrogates) as storable text, reversibly (see :func:`text_path`)."""
    raw = os.fsencode(path).replace(b"\\", b"\\\\")
    return raw.decode("utf-8", "backslashreplace")


def text_path(text: str) -> str:
    """The OS path a :func:`path_text` string stands for."""
    if "\\" not in text:
        return text
    raw = re.sub(rb"\\(\\|x[0-9a-f]{2})", lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]),
                 text.encode("utf-8"))
    return os.fsdecode(raw)


def contained(path: Path, roots: list[Path]) -> bool:
    """Whether ``path`` (already resolved) lies inside one of ``roots`` (resolved)."""
    return any(path == root or path.is_relative_to(root) for root in roots)


def file_problem(path: str) -> tuple[str, str] | None:
    """Why the file at ``path`` (OS form) must not be read as an image, or None: missing, not a regular file
    (a FIFO, a device, a folder), empty, or larger than ``MAX_FILE_BYTES``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing_image", f"image file {path_text(path)} does not exist"
    except (OSError, ValueError) as exc:
        return "unreadable", f"cannot stat {path_text(path)}: {exc}"
    if not stat.S_ISREG(info.st_mode):
        return "not_a_file", f"{path_text(path)} is not a regular file"
    if info.st_size > MAX_FILE_BYTES:
        return "too_large", f"{path_text(path)} is {info.st_size} bytes (limit {MAX_FILE_BYTES})"
    return None


def read_member(path: str, offset: int | None, size: int | None) -> bytes:
    """The bytes of an image (``path`` as stored, see :func:`path_text`): a whole regular file, or a tar member
    read back by seek; never more than ``MAX_FILE_BYTES``."""
    real = text_path(path)
    if offset is None:
        problem = file_problem(real)
        if problem:
            raise OSError(problem[1])
    with open(real, "rb") as fh:
        if offset is None:
            return fh.read(MAX_FILE_BYTES)
        fh.seek(offset)
        return fh.read(min(size, MAX_FILE_BYTES))
