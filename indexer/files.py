"""Files others read: written atomically (temp name, fsync, rename), and hashed the same way everywhere."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

TEMP_MARK = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """Where ``path`` is staged before its rename: a hidden name carrying this process's id and this thread's,
    so two threads writing the same file never share a temp file."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}")


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, fsync, then rename over ``path``.
    On any failure (a full disk, a bad value) the temp file is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sweep_temp(folder: Path) -> int:
    """Remove temp files that a killed process left in ``folder`` (not those of a process still running);
    returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        head, mark, tail = path.name.rpartition(TEMP_MARK)
        pid = tail.partition("-")[0]  # "PID-THREAD" (older altlens wrote "PID")
        if not mark or not head.startswith(".") or not pid.isdigit() or _alive(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    """Hex sha256 of a file's bytes (the first ``limit`` hex digits when given), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:limit] if limit else digest.hexdigest()
