"""``altlens verify-export``: re-read an export against its manifest; and read a few samples back for the UI."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from curation.export.formats import FORMATS
from curation.export.policy import ExportError
from indexer.files import file_sha256


def verify_export(out: str | Path) -> dict:
    """Re-read every file the manifest lists: checksums, sample counts, and per-sample members for shards."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        raise ExportError(f"{out} has no manifest.json: the export never finished")
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        path = out / entry["file"]
        if not path.exists():
            raise ExportError(f"{entry['file']}: listed in the manifest but missing")
        if file_sha256(path) != entry["sha256"]:
            raise ExportError(f"{entry['file']}: checksum mismatch")
        if path.suffix == ".tar":
            _verify_tar(path, entry, manifest["format"])
    total = sum(e["samples"] for e in manifest["files"]) if manifest["format"] in ("datacompdr", "webdataset") \
        else manifest["files"][0]["samples"]
    if total != manifest["samples"]:
        raise ExportError(f"the manifest lists {total} samples in its files, the plan {manifest['samples']}")
    return {"files": len(manifest["files"]), "samples": total, "format": manifest["format"]}


def _verify_tar(path: Path, entry: dict, fmt: str) -> None:
    keys: dict[str, set[str]] = {}
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                keys.setdefault(key, set()).add(ext)
                if ext == "npz":
                    arrays = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
                    if arrays["image_emb"].ndim != 2 or arrays["text_emb"].ndim != 2:
                        raise ExportError(f"{path.name}: {member.name} has arrays of the wrong rank")
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise ExportError(f"{path.name}: unreadable ({exc})") from exc
    if len(keys) != entry["samples"]:
        raise ExportError(f"{path.name}: {len(keys)} samples, manifest says {entry['samples']}")
    known = FORMATS.find(fmt)
    if known is None:
        raise ExportError(f"{path.name}: the manifest names format {fmt!r}, which this altlens does not know")
    needed = set(known.required)
    for key, exts in keys.items():
        if not needed <= exts:
            raise ExportError(f"{path.name}: sample {key} lacks {sorted(needed - exts)}")


def read_back(out: Path, manifest: dict, n: int = 8) -> list[list[str]]:
    """A few written samples read back from an export's first file: [key, caption] (uid for parquet)."""
    first = manifest["files"][0] if manifest["files"] else None
    if first is None:
        return []
    path = Path(out) / first["file"]
    if path.suffix == ".tar":
        rows = []
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".txt") and not member.name.endswith(".url.txt"):
                    rows.append([member.name.rsplit(".", 1)[0], tar.extractfile(member).read().decode("utf-8", "replace")])
                if len(rows) >= n:
                    break
        return rows
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path).slice(0, n).to_pylist()
        return [[str(r.get("uid")), str(r.get("caption") or r.get("text") or "")] for r in table]
    return []
