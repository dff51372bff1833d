"""Export a selection: (workspace, selection) -> shards a trainer reads, deterministic, atomic and resumable.

Formats: ``datacompdr`` (WebDataset shards with image bytes, the chosen caption,
``syn.json``, ``npz`` embeddings in DataCompDR row order, ``json`` provenance,
``url.txt``), ``webdataset`` (img2dataset layout), ``parquet`` (one table) and
``uids`` (sorted uid list, DataComp subset-file style).

Samples are sorted by uid and cut into fixed shards, so the same workspace and
selection give byte-identical files: tar headers carry fixed times and owners,
JSON is key-sorted, npz members are stored with a fixed date. Each shard is
written under a staging name, fsynced and renamed, and its stats file follows.
A re-run skips shards whose stats match their bytes. ``manifest.json`` is
written last; only shards it lists count.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from curation.captions.fusion_rules import junk_reason
from curation.export.select import load_selection
from curation.review.chooser import best_of, choose_sources, load_chooser
from curation.scores.rewards import active_reward
from indexer.errors import AltlensError
from indexer.schema import ALT, FUSED, SYN
from indexer.sources import read_member
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore, atomic_write

FORMATS = ("datacompdr", "webdataset", "parquet", "uids")
IMAGE_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


class ExportError(AltlensError, RuntimeError):
    """An export directory that does not match the plan, or a shard that fails verification."""


@dataclass(frozen=True)
class ExportConfig:
    """``altlens export`` settings: which saved selection, where to, in which format."""

    selection: str
    out: str
    format: str = "datacompdr"
    shard_size: int = 10_000
    augmentations: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; allowed: {', '.join(FORMATS)}")
        if self.shard_size < 1 or self.augmentations < 0:
            raise ValueError("--shard-size must be >= 1 and --augmentations >= 0")


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


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- what goes into a sample

def usable_alt(caption: dict) -> bool:
    """Can the alt-text be a main caption? Not when it is empty or junk (a filename, spam)."""
    return bool(caption["text"].strip()) and junk_reason(caption["text"]) is None


class SampleSource:
    """Reads everything a sample's export needs from the workspace, in batches."""

    def __init__(self, ws: Workspace, policy: str, augmentations: int = 0):
        self.ws, self.policy, self.augmentations = ws, policy, augmentations
        self.images = EmbeddingStore(ws, "image").load()
        self.texts = EmbeddingStore(ws, "text").load()
        self.model = ws.get_meta("model") or {}
        self.version = active_reward(ws)
        self.chooser = load_chooser(ws) if policy == "best" else None
        self._augmenter = None

    def rows(self, ids: list[int]) -> list[dict]:
        samples = {r["id"]: r for r in self.ws.dicts(
            """SELECT s.*, r.value AS reward, ss.agreement FROM samples s
               LEFT JOIN rewards r ON r.sample_id = s.id AND r.version = ?
               LEFT JOIN sample_scores ss ON ss.sample_id = s.id
               WHERE list_contains(?, s.id)""", [self.version or -1, ids])}
        captions: dict[int, list[dict]] = {}
        for c in self.ws.dicts("""SELECT c.id, c.sample_id, c.source_kind, c.producer, c.idx, c.text, cs.clip_score
                                  FROM captions c LEFT JOIN caption_scores cs ON cs.caption_id = c.id
                                  WHERE list_contains(?, c.sample_id) ORDER BY c.sample_id, c.source_kind,
                                  c.producer, c.idx""", [ids]):
            captions.setdefault(c["sample_id"], []).append(c)
        prefs = dict(self.ws.rows("""SELECT sample_id, arg_max(value, id) FROM labels WHERE kind = 'preference'
                                     AND list_contains(?, sample_id) GROUP BY 1""", [ids]))
        guesses = self._chooser_guesses(ids, captions, prefs)
        return [self._assemble(samples[i], captions.get(i, []), prefs.get(i), guesses.get(i)) for i in ids]

    def _chooser_guesses(self, ids: list[int], captions: dict, prefs: dict) -> dict[int, str | None]:
        """The caption chooser's source for samples the curator gave no preference (``best`` policy only)."""
        if self.chooser is None:
            return {}
        available = {}
        for i in ids:
            caps = captions.get(i, [])
            if i not in prefs and any(c["source_kind"] == ALT for c in caps):  # the chooser reads alt signals
                available[i] = {c["source_kind"] for c in caps if c["source_kind"] != "alt" or usable_alt(c)}
        return choose_sources(self.ws, self.chooser, available)

    def _assemble(self, s: dict, caps: list[dict], preferred: str | None, guess: str | None = None) -> dict:
        alt = next((c for c in caps if c["source_kind"] == ALT), None)
        syn_by_producer: dict[str, list[dict]] = {}
        for c in caps:
            if c["source_kind"] == SYN:
                syn_by_producer.setdefault(c["producer"], []).append(c)
        main_syn = max(syn_by_producer, key=lambda p: (len(syn_by_producer[p]), p)) if syn_by_producer else None
        fused = [c for c in caps if c["source_kind"] == FUSED]
        chosen, how = self._choose(alt, syn_by_producer.get(main_syn, []), fused, preferred, guess)
        return {"sample": s, "alt": alt, "main_syn": main_syn, "syn": syn_by_producer, "fused": fused,
                "chosen": chosen, "chosen_by": how}

    def _choose(self, alt, syn, fused, preferred, guess) -> tuple[dict | None, str]:
        """The caption that becomes ``<uid>.txt`` and why, by policy.

        ``best``: the curator's preference, else the caption chooser's, else the top clip_score.
        ``fused``: the fused caption. ``alt`` and ``hybrid`` (which adds the synthetic captions beside
        it): the alt-text. Where the policy's caption is missing, or the alt-text is empty or junk, the
        fused caption stands in, else the best synthetic one, so no exported sample is left without text.
        """
        usable = alt if alt and usable_alt(alt) else None
        pools = {"alt": [usable] if usable else [], "syn": syn, "fused": fused}
        if self.policy == "best":
            for source, how in ((preferred, "preference"), (guess, "chooser")):
                if source in pools and pools[source]:
                    return best_of(pools[source]), how
            return best_of([c for c in [usable] + syn + fused if c]), "top_clip_score"
        wanted = "fused" if self.policy == "fused" else "alt"
        for source in (wanted, "fused", "syn"):
            if pools[source]:
                return best_of(pools[source]), "policy" if source == wanted else "fallback"
        return alt, "policy"

    def image_bytes(self, s: dict) -> bytes:
        data = read_member(s["path"], s["member_offset"], s["member_size"])
        if hashlib.sha256(data).hexdigest() != s["sha256"]:
            raise ExportError(f"the image of sample {s['uid']} changed on disk since indexing ({s['path']})")
        return data

    def members(self, item: dict) -> list[tuple[str, bytes]]:
        """The files of one sample in a datacompdr shard, in a fixed order."""
        s, uid = item["sample"], item["sample"]["uid"]
        ext = IMAGE_EXT.get(s["format"], (s["format"] or "jpg").lower())
        chosen = item["chosen"]
        out = [(f"{uid}.{ext}", self.image_bytes(s))]
        syn_json = {"syn_text": [c["text"] for c in item["syn"].get(item["main_syn"], [])]}
        for producer, caps in sorted(item["syn"].items()):
            if producer != item["main_syn"]:
                syn_json[f"syn_text_{_slug(producer)}"] = [c["text"] for c in caps]
        if item["fused"]:
            syn_json["syn_text_fused"] = [c["text"] for c in item["fused"]]
        text_rows = [chosen["id"] if chosen else item["alt"]["id"]] + \
            [c["id"] for c in item["syn"].get(item["main_syn"], [])]
        image_emb, params = self.image_embeddings(item)
        arrays = {"image_emb": image_emb, "text_emb": np.asarray(self.texts[text_rows], dtype=np.float32)}
        out += [(f"{uid}.json", canonical_json(self.metadata(item))), (f"{uid}.npz", npz_bytes(arrays)),
                (f"{uid}.syn.json", canonical_json(syn_json)), (f"{uid}.txt", (chosen["text"] if chosen else "").encode())]
        if params is not None:
            out.append((f"{uid}.paug.json", canonical_json({"param_aug": params})))
        if s["url"]:
            out.append((f"{uid}.url.txt", s["url"].encode("utf-8", "replace")))
        return sorted(out)

    def image_embeddings(self, item: dict) -> tuple[np.ndarray, list | None]:
        s = item["sample"]
        if not self.augmentations:
            return np.asarray(self.images[[s["id"]]], dtype=np.float32), None
        if self._augmenter is None:
            from curation.export.augment import Augmenter
            self._augmenter = Augmenter(self.ws)
        return self._augmenter.embed(self.image_bytes(s), s["uid"], self.augmentations)

    def metadata(self, item: dict) -> dict:
        s = item["sample"]
        scores = {c["source_kind"] + (f"_{c['idx']}" if c["source_kind"] == SYN else ""): c["clip_score"]
                  for c in ([item["alt"]] if item["alt"] else []) + item["syn"].get(item["main_syn"], []) + item["fused"]}
        return {"uid": s["uid"], "sha256": s["sha256"], "key": s["key"], "source": s["source"],
                "width": s["width"], "height": s["height"], "reward": s["reward"], "reward_version": self.version,
                "agreement": s["agreement"], "clip_score": scores,
                "caption_source": (item["chosen"] or {}).get("source_kind"), "caption_chosen_by": item["chosen_by"],
                "caption_producer": (item["chosen"] or {}).get("producer"),
                "embedding_model": self.model.get("model_id"), "syn_producer": item["main_syn"]}


def _slug(producer: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in producer)[:80]


# ---------------------------------------------------------------- shards

def run(ws: Workspace, cfg: ExportConfig) -> dict:
    """Write (or finish writing) the export of a saved selection of ``ws`` (read only); returns the manifest."""
    out = Path(cfg.out)
    rule, ids = load_selection(ws, cfg.selection)
    source = SampleSource(ws, rule.caption_policy, cfg.augmentations)
    uid_of = dict(ws.rows("SELECT id, uid FROM samples WHERE list_contains(?, id)", [ids]))
    ordered = sorted(ids, key=lambda i: uid_of[i])
    plan = {"selection": cfg.selection, "rule": asdict(rule), "format": cfg.format,
            "shard_size": cfg.shard_size, "augmentations": cfg.augmentations, "samples": len(ordered),
            "workspace": str(ws.root), "embedding_model": (ws.get_meta("model") or {}).get("model_id")}
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, plan)
    if cfg.format in ("parquet", "uids"):
        files = WRITERS[cfg.format](out, source, ordered)
    else:
        files = _write_shards(out, source, ordered, cfg)
    manifest = {**plan, "files": files, "written_at": now().isoformat()}
    atomic_write(out / "manifest.json", lambda fh: fh.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))
    return manifest


def _check_plan(out: Path, plan: dict) -> None:
    path = out / "export-plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(plan, sort_keys=True, default=str)):
            raise ExportError(f"{out} holds an export of a different plan; use a new --out folder")
        return
    atomic_write(path, lambda fh: fh.write(canonical_json(plan)))


def _write_shards(out: Path, source: SampleSource, ordered: list[int], cfg: ExportConfig) -> list[dict]:
    files = []
    bar = tqdm(total=len(ordered), desc=f"export {cfg.format}", unit="sample", disable=not cfg.progress)
    for number, start in enumerate(range(0, len(ordered), cfg.shard_size)):
        chunk = ordered[start:start + cfg.shard_size]
        name = f"{number:05d}.tar"
        stats_path = out / f"{number:05d}.stats.json"
        if stats_path.exists() and (out / name).exists():
            stats = json.loads(stats_path.read_text())
            if stats["sha256"] == sha256_file(out / name) and stats["samples"] == len(chunk):
                files.append(stats)
                bar.update(len(chunk))
                continue
        stats = _write_shard(out / name, source, chunk, cfg.format)
        atomic_write(stats_path, lambda fh, st=stats: fh.write(canonical_json(st)))
        files.append(stats)
        bar.update(len(chunk))
    bar.close()
    return files


def _write_shard(path: Path, source: SampleSource, chunk: list[int], fmt: str) -> dict:
    members = 0

    def write(fh) -> None:
        nonlocal members
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for start in range(0, len(chunk), 256):
                for item in source.rows(chunk[start:start + 256]):
                    entries = source.members(item) if fmt == "datacompdr" else _webdataset_members(source, item)
                    for name, data in entries:
                        _add(tar, name, data)
                        members += 1
    atomic_write(path, write)
    return {"file": path.name, "sha256": sha256_file(path), "samples": len(chunk), "members": members,
            "bytes": path.stat().st_size}


def _webdataset_members(source: SampleSource, item: dict) -> list[tuple[str, bytes]]:
    s = item["sample"]
    ext = IMAGE_EXT.get(s["format"], (s["format"] or "jpg").lower())
    meta = {"uid": s["uid"], "key": s["key"], "url": s["url"], "sha256": s["sha256"], "width": s["width"],
            "height": s["height"], "caption_source": (item["chosen"] or {}).get("source_kind"),
            "caption_chosen_by": item["chosen_by"]}
    return sorted([(f"{s['uid']}.{ext}", source.image_bytes(s)),
                   (f"{s['uid']}.txt", ((item["chosen"] or {}).get("text") or "").encode()),
                   (f"{s['uid']}.json", canonical_json(meta))])


def _write_parquet(out: Path, source: SampleSource, ordered: list[int]) -> list[dict]:
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
    return [{"file": "samples.parquet", "sha256": sha256_file(out / "samples.parquet"), "samples": len(rows)}]


def _write_uids(out: Path, source: SampleSource, ordered: list[int]) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    uids = sorted(r[0] for r in source.ws.rows("SELECT uid FROM samples WHERE list_contains(?, id)", [ordered]))
    atomic_write(out / "uids.npy", lambda fh: np.save(fh, np.array(uids, dtype="<U32"), allow_pickle=False))
    atomic_write(out / "uids.parquet", lambda fh: pq.write_table(pa.table({"uid": uids}), fh))
    return [{"file": f, "sha256": sha256_file(out / f), "samples": len(uids)} for f in ("uids.npy", "uids.parquet")]


WRITERS = {"parquet": _write_parquet, "uids": _write_uids}


# ---------------------------------------------------------------- verify

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
        if sha256_file(path) != entry["sha256"]:
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
    needed = {"txt", "json", "npz", "syn.json"} if fmt == "datacompdr" else {"txt", "json"}
    for key, exts in keys.items():
        if not needed <= exts:
            raise ExportError(f"{path.name}: sample {key} lacks {sorted(needed - exts)}")
