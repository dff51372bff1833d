"""Export formats: a registry of how a selection's samples are written (plugins add theirs as
``altlens.export_formats`` entry points).

- ``datacompdr``: WebDataset shards with image bytes, the chosen caption, ``syn.json``, ``npz``
  embeddings in DataCompDR row order, ``json`` provenance, ``url.txt``;
- ``webdataset``: img2dataset's layout (image, ``txt``, ``json``);
- ``parquet``: one table; ``uids``: the sorted uid strings (``uids.npy`` of ``<U32``, and a parquet);
- ``datacomp-subset``: ``subset.npy``, the sorted ``u8,u8`` array of (upper, lower) 64 bits of each 32-hex uid
  that DataComp's ``resharder.py --subset-file`` loads (it asserts that dtype).

Shard formats give each sample's members; whole-file formats write their files
themselves. Everything is byte-deterministic: tar headers carry fixed times and
owners, JSON is key-sorted, npz members have a fixed date.
"""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from curation.export.policy import SampleSource
from curation.registry import Registry
from indexer.files import atomic_write, file_sha256


@dataclass(frozen=True)
class ExportFormat:
    """How one format writes: ``members`` (tar shards, per sample) or ``write_files`` (whole files)."""

    name: str
    members: Callable[[SampleSource, dict], list[tuple[str, bytes]]] | None = None
    write_files: Callable[[Path, SampleSource, list[int]], list[dict]] | None = None
    required: tuple[str, ...] = ()  # member extensions every sample of a shard must have
    counted: str = ""  # whole-file formats: the files (by name prefix) whose samples add up to the export's

    @property
    def sharded(self) -> bool:
        return self.members is not None


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (as numpy.load reads it) with fixed zip dates, so identical arrays give identical bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def datacompdr_members(source: SampleSource, item: dict) -> list[tuple[str, bytes]]:
    """The files of one sample in a datacompdr shard, in a fixed order."""
    s, uid = item["sample"], item["sample"]["uid"]
    ext = source.image_ext(s)
    chosen = item["chosen"]
    out = [(f"{uid}.{ext}", source.image_bytes(s))]
    syn_json = {"syn_text": [c["text"] for c in item["syn"].get(item["main_syn"], [])]}
    for producer, caps in sorted(item["syn"].items()):
        if producer != item["main_syn"]:
            syn_json[f"syn_text_{_slug(producer)}"] = [c["text"] for c in caps]
    if item["fused"]:
        syn_json["syn_text_fused"] = [c["text"] for c in item["fused"]]
    text_rows = [chosen["id"] if chosen else item["alt"]["id"]] + \
        [c["id"] for c in item["syn"].get(item["main_syn"], [])]
    image_emb, params = source.image_embeddings(item)
    arrays = {"image_emb": image_emb, "text_emb": np.asarray(source.texts[text_rows], dtype=np.float32)}
    out += [(f"{uid}.json", canonical_json(source.metadata(item))), (f"{uid}.npz", npz_bytes(arrays)),
            (f"{uid}.syn.json", canonical_json(syn_json)), (f"{uid}.txt", (chosen["text"] if chosen else "").encode())]
    if params is not None:
        out.append((f"{uid}.paug.json", canonical_json({"param_aug": params})))
    if s["url"]:
        out.append((f"{uid}.url.txt", s["url"].encode("utf-8", "replace")))
    return sorted(out)


def _slug(producer: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in producer)[:80]


def webdataset_members(source: SampleSource, item: dict) -> list[tuple[str, bytes]]:
    s = item["sample"]
    ext = source.image_ext(s)
    meta = {"uid": s["uid"], "key": s["key"], "url": s["url"], "sha256": s["sha256"], "width": s["width"],
            "height": s["height"], "caption_source": (item["chosen"] or {}).get("source_kind"),
            "caption_chosen_by": item["chosen_by"]}
    return sorted([(f"{s['uid']}.{ext}", source.image_bytes(s)),
                   (f"{s['uid']}.txt", ((item["chosen"] or {}).get("text") or "").encode()),
                   (f"{s['uid']}.json", canonical_json(meta))])


def write_parquet(out: Path, source: SampleSource, ordered: np.ndarray) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = []
    for start in range(0, len(ordered), 1024):
        for item in source.rows(ordered[start:start + 1024]):
            s = item["sample"]
            rows.append({"uid": s["uid"], "key": s["key"], "source": s["source"], "url": s["url"], "sha256": s["sha256"],
                         "caption": (item["chosen"] or {}).get("text"), "alt": (item["alt"] or {}).get("text"),
                         "syn": [c["text"] for c in item["syn"].get(item["main_syn"], [])],
                         "fused": item["fused"][0]["text"] if item["fused"] else None,
                         "reward": s["reward"], "agreement": s["agreement"],
                         "alt_clip_score": (item["alt"] or {}).get("clip_score")})
    table = pa.Table.from_pylist(rows)
    atomic_write(out / "samples.parquet", lambda fh: pq.write_table(table, fh))
    return [{"file": "samples.parquet", "sha256": file_sha256(out / "samples.parquet"), "samples": len(rows)}]


def write_uids(out: Path, source: SampleSource, ordered: np.ndarray) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    uids = sorted(r[0] for r in source.ws.rows("SELECT uid FROM samples WHERE list_contains(?, id)", [ordered]))
    atomic_write(out / "uids.npy", lambda fh: np.save(fh, np.array(uids, dtype="<U32"), allow_pickle=False))
    atomic_write(out / "uids.parquet", lambda fh: pq.write_table(pa.table({"uid": uids}), fh))
    return [{"file": f, "sha256": file_sha256(out / f), "samples": len(uids)} for f in ("uids.npy", "uids.parquet")]


SUBSET_DTYPE = np.dtype("u8,u8")


def write_datacomp_subset(out: Path, source: SampleSource, ordered: np.ndarray) -> list[dict]:
    """``subset.npy``: each selected uid as (upper 64 bits, lower 64 bits), sorted, computed in DuckDB (no
    Python object per row). A uid that is not 32 hex digits cannot be in a DataComp subset and is refused."""
    ws = source.ws
    where = "FROM samples WHERE id IN (SELECT unnest(?))"
    bad = ws.scalar(f"SELECT any_value(uid) {where} AND NOT regexp_full_match(uid, '[0-9a-f]{{32}}')", [ordered])
    if bad is not None:
        raise ValueError(f"uid {bad!r} is not 32 hex digits: a DataComp subset file names DataComp uids "
                         "(import the pool with 'altlens import datacomp')")
    halves = ws.numpy(f"""SELECT ('0x' || substr(uid, 1, 16))::UBIGINT AS hi, ('0x' || substr(uid, 17, 16))::UBIGINT
                          AS lo {where} ORDER BY hi, lo""", [ordered])
    subset = np.empty(len(halves["hi"]), SUBSET_DTYPE)
    subset["f0"], subset["f1"] = halves["hi"], halves["lo"]
    atomic_write(out / "subset.npy", lambda fh: np.save(fh, subset, allow_pickle=False))
    return [{"file": "subset.npy", "sha256": file_sha256(out / "subset.npy"), "samples": len(subset)}]


CLIP_RETRIEVAL_PART_ROWS = 1_000_000  # rows per part, as LAION's parts (about 1 M rows each)


def write_clip_retrieval(out: Path, source: SampleSource, ordered: np.ndarray) -> list[dict]:
    """clip-retrieval's ``inference`` layout: ``img_emb/img_emb_{N}.npy``, ``text_emb/text_emb_{N}.npy`` (float16,
    L2-normalised: the image and the main caption by the selection's policy) and ``metadata/metadata_{N}.parquet``
    (``image_path``, ``caption``, ``uid``, ``url``, ``key``, ``sha256``, ``reward``), row i of the three one sample;
    ``N`` zero-padded to the digits of the part count. ``clip-retrieval index`` and embedding-reader's
    ``parquet_npy`` read it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from indexer.vectors import write_npy_blocks
    parts = [ordered[i:i + CLIP_RETRIEVAL_PART_ROWS] for i in range(0, len(ordered), CLIP_RETRIEVAL_PART_ROWS)]
    digits = len(str(len(parts) - 1)) if len(parts) > 1 else 1
    dim = source.images.shape[1]
    entries = []
    for number, part in enumerate(parts):
        suffix = f"{number:0{digits}d}"
        meta, images, texts = [], [], []
        for start in range(0, len(part), 1024):
            for item in source.rows(part[start:start + 1024]):
                s, chosen = item["sample"], item["chosen"] or item["alt"]
                meta.append({"image_path": s["key"], "caption": (chosen or {}).get("text"), "uid": s["uid"],
                             "url": s["url"], "key": s["key"], "sha256": s["sha256"], "reward": s["reward"]})
                images.append(s["id"])
                texts.append(chosen["id"])
        names = (f"img_emb/img_emb_{suffix}.npy", f"text_emb/text_emb_{suffix}.npy",
                 f"metadata/metadata_{suffix}.parquet")
        for name, rows, store in ((names[0], images, source.images), (names[1], texts, source.texts)):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            write_npy_blocks(out / name, (len(rows), dim),
                             (_unit(store[rows[i:i + 65536]]) for i in range(0, len(rows), 65536)))
        (out / names[2]).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out / names[2], lambda fh: pq.write_table(pa.Table.from_pylist(meta), fh))
        entries += [{"file": n, "sha256": file_sha256(out / n), "samples": len(part)} for n in names]
    return entries


def _unit(rows) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


FORMATS: Registry[ExportFormat] = Registry("export format", "altlens.export_formats")
for _fmt in (ExportFormat("datacompdr", members=datacompdr_members, required=("txt", "json", "npz", "syn.json")),
             ExportFormat("webdataset", members=webdataset_members, required=("txt", "json")),
             ExportFormat("parquet", write_files=write_parquet, counted="samples.parquet"),
             ExportFormat("uids", write_files=write_uids, counted="uids.npy"),
             ExportFormat("datacomp-subset", write_files=write_datacomp_subset, counted="subset.npy"),
             ExportFormat("clip-retrieval", write_files=write_clip_retrieval, counted="metadata/")):
    FORMATS.register(_fmt.name, _fmt)


def format_names() -> list[str]:
    return FORMATS.names()


def export_format(name: str) -> ExportFormat:
    found = FORMATS.find(name)
    if found is None:
        raise ValueError(f"unknown format {name!r}; allowed: {', '.join(FORMATS.names())}")
    return found
