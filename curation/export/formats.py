"""Export formats: a registry of how a selection's samples are written (plugins add theirs as
``altlens.export_formats`` entry points).

- ``datacompdr``: WebDataset shards with image bytes, the chosen caption, ``syn.json``, ``npz``
  embeddings in DataCompDR row order, ``json`` provenance, ``url.txt``;
- ``webdataset``: img2dataset's layout (image, ``txt``, ``json``);
- ``parquet``: one table; ``uids``: a sorted uid list (DataComp subset-file style).

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


def write_parquet(out: Path, source: SampleSource, ordered: list[int]) -> list[dict]:
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


def write_uids(out: Path, source: SampleSource, ordered: list[int]) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    uids = sorted(r[0] for r in source.ws.rows("SELECT uid FROM samples WHERE list_contains(?, id)", [ordered]))
    atomic_write(out / "uids.npy", lambda fh: np.save(fh, np.array(uids, dtype="<U32"), allow_pickle=False))
    atomic_write(out / "uids.parquet", lambda fh: pq.write_table(pa.table({"uid": uids}), fh))
    return [{"file": f, "sha256": file_sha256(out / f), "samples": len(uids)} for f in ("uids.npy", "uids.parquet")]


FORMATS: Registry[ExportFormat] = Registry("export format", "altlens.export_formats")
for _fmt in (ExportFormat("datacompdr", members=datacompdr_members, required=("txt", "json", "npz", "syn.json")),
             ExportFormat("webdataset", members=webdataset_members, required=("txt", "json")),
             ExportFormat("parquet", write_files=write_parquet),
             ExportFormat("uids", write_files=write_uids)):
    FORMATS.register(_fmt.name, _fmt)


def format_names() -> list[str]:
    return FORMATS.names()


def export_format(name: str) -> ExportFormat:
    found = FORMATS.find(name)
    if found is None:
        raise ValueError(f"unknown format {name!r}; allowed: {', '.join(FORMATS.names())}")
    return found
