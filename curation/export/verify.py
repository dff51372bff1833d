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


TEXT_CHECK_SAMPLES = 64
TEXT_MIN_COSINE = 0.99


def verify_export(out: str | Path, model=None) -> dict:
    """Re-read every file the manifest lists: checksums, sample counts, and per-sample members for shards.
    With ``model`` (the workspace's embedding model), also re-embed the captions of up to
    TEXT_CHECK_SAMPLES exported samples and require each exported text vector to be its own caption's."""
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
    known = FORMATS.find(manifest["format"])
    if known is None:
        raise ExportError(f"the manifest names format {manifest['format']!r}, which this altlens does not know")
    total = sum(e["samples"] for e in manifest["files"] if known.sharded or e["file"].startswith(known.counted))
    if manifest["format"] == "datacomp-subset":
        _verify_subset(out / "subset.npy")
    if manifest["format"] == "clip-retrieval":
        _verify_parts(out, manifest["files"])
    if total != manifest["samples"]:
        raise ExportError(f"the manifest lists {total} samples in its files, the plan {manifest['samples']}")
    report = {"files": len(manifest["files"]), "samples": total, "format": manifest["format"]}
    if model is not None:
        report["text_vectors_checked"] = check_text_vectors(out, manifest, model)
    return report


def check_text_vectors(out: Path, manifest: dict, model) -> int:
    """Each exported text vector of a few samples against its caption embedded again by ``model``; a vector
    that is another text's (a corrupted store) is named with its sample. Returns how many were checked."""
    if manifest.get("embedding_model") != model.model_id:
        raise ExportError(f"the export's vectors come from {manifest.get('embedding_model')}, the workspace's model "
                          f"is {model.model_id}: check it with the workspace it was exported from")
    pairs = _text_pairs(out, manifest)
    if not pairs:
        return 0
    names, texts, vectors = zip(*pairs)
    again = model.encode_texts(list(texts))
    stored = np.asarray(vectors, np.float32)
    stored /= np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
    cosine = (again * stored).sum(axis=1)
    worst = int(np.argmin(cosine))
    if not cosine[worst] >= TEXT_MIN_COSINE:
        raise ExportError(f"{names[worst]}: its text vector is not its caption's (cosine {cosine[worst]:.3f} to the "
                          f"caption embedded again; {int((cosine < TEXT_MIN_COSINE).sum())} of {len(cosine)} "
                          "checked are off)")
    return len(cosine)


def _text_pairs(out: Path, manifest: dict) -> list[tuple[str, str, np.ndarray]]:
    """(where, caption, exported vector) for up to TEXT_CHECK_SAMPLES samples of the export's first file that
    carries text vectors: clip-retrieval parts (text_emb row i is metadata caption i) and datacompdr shards
    (text_emb row 0 is the .txt caption when there is one, rows 1.. the syn_text list)."""
    pairs: list[tuple[str, str, np.ndarray]] = []
    if manifest["format"] == "clip-retrieval":
        import pyarrow.parquet as pq
        part = next((e["file"] for e in manifest["files"] if e["file"].startswith("text_emb/")), None)
        if part is None:
            return []
        vectors = np.load(out / part, mmap_mode="r", allow_pickle=False)
        meta = out / part.replace("text_emb/text_emb_", "metadata/metadata_").replace(".npy", ".parquet")
        table = pq.read_table(meta, columns=["uid", "caption"]).slice(0, TEXT_CHECK_SAMPLES).to_pylist()
        return [(f"{part} row {i} (uid {r['uid']})", r["caption"], np.asarray(vectors[i]))
                for i, r in enumerate(table) if r["caption"]]
    if manifest["format"] != "datacompdr":
        return []
    shard = next((out / e["file"] for e in manifest["files"] if e["file"].endswith(".tar")), None)
    if shard is None:
        return []
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext in ("txt", "npz", "syn.json"):
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
            if len(members) > TEXT_CHECK_SAMPLES:
                break
    for key, got in list(members.items())[:TEXT_CHECK_SAMPLES]:
        if not {"txt", "npz", "syn.json"} <= set(got):
            continue
        rows = np.load(io.BytesIO(got["npz"]), allow_pickle=False)["text_emb"]
        texts = [got["txt"].decode("utf-8", "replace")] + json.loads(got["syn.json"]).get("syn_text", [])
        for i, (text, vector) in enumerate(zip(texts, rows)):
            if text and i < len(rows):
                pairs.append((f"{shard.name} sample {key} caption {i}", text, vector))
    return pairs


def _verify_subset(path: Path) -> None:
    subset = np.load(path, allow_pickle=False)
    if subset.dtype != np.dtype("u8,u8") or (len(subset) > 1 and not np.all(subset[:-1] < subset[1:])):
        raise ExportError(f"{path.name}: not a sorted u8,u8 array of distinct uids (DataComp's resharder needs one)")


def _verify_parts(out: Path, entries: list[dict]) -> None:
    """Each part's image vectors, text vectors and metadata have the same rows, as the manifest says."""
    import pyarrow.parquet as pq
    for entry in entries:
        path = out / entry["file"]
        rows = pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else \
            np.load(path, mmap_mode="r", allow_pickle=False).shape[0]
        if rows != entry["samples"]:
            raise ExportError(f"{entry['file']}: {rows} rows, the manifest says {entry['samples']}")


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
