"""Images of an imported pool: img2dataset shards -> the pool rows they belong to (by the uid in each sample's
``.json``), a check that the named model made the pool's vectors, and thumbnails.

Nothing is re-embedded but a sample of ``VERIFY_SAMPLES`` images: their vectors from the named model must
match the pool's (median cosine at least ``MIN_MEDIAN_COSINE``), else the import is refused before anything is
written. Joining is per shard: its members' offsets, sizes and thumbnails go into the matching rows in one
transaction with the shard's done mark, so a killed join resumes at the next shard.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from indexer.decode import DecodeConfig, decode_sample
from indexer.errors import ModelError, SourceError
from indexer.pools import COLUMNS, PoolFile, column, vectors
from indexer.sources import Source, resolve_source
from indexer.store import Workspace, now

log = logging.getLogger(__name__)

VERIFY_SAMPLES = 64
MIN_MEDIAN_COSINE = 0.99
JOIN_BATCH = 256


def image_sources(args: tuple[str, ...]) -> list[Source]:
    """The ``--images`` arguments as tar-shard sources (a folder or table is refused: the join reads shards)."""
    sources = [resolve_source(a) for a in args]
    for src in sources:
        if src.kind != "wds":
            raise SourceError(f"--images {src.location}: give img2dataset tar shards (the join reads each "
                              "sample's uid from its .json)")
    return sources


def _pool_uid(raw: dict) -> str | None:
    try:
        meta = json.loads(raw.get("json") or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    uid = meta.get("uid") if isinstance(meta, dict) else None
    return str(uid).lower() if isinstance(uid, str) and uid else None


def _samples(sources: list[Source], skip_shard=lambda shard: False):
    """Raw shard samples that carry a pool uid, with shard markers passed through."""
    for src in sources:
        for raw in src.read(skip_shard=skip_shard):
            if "__key__" not in raw:
                yield raw
                continue
            uid = _pool_uid(raw)
            if uid is not None:
                raw["__uid__"] = uid
                yield raw


def verify_model(files: list[PoolFile], layout: str, sources: list[Source], model) -> dict:
    """Re-embed up to ``VERIFY_SAMPLES`` of the images and compare with the pool's vectors for the same uids;
    a median cosine under ``MIN_MEDIAN_COSINE`` means the wrong model or weights, and is refused."""
    decoded = []
    for raw in _samples(sources):
        if "__key__" in raw:
            sample = decode_sample(raw, DecodeConfig(), model.preprocess)
            if sample["status"] == "ok":
                decoded.append(sample)
        if len(decoded) >= VERIFY_SAMPLES:
            break
    if not decoded:
        raise SourceError("no image in --images carries a uid in its .json (img2dataset writes it there)")
    wanted = pa.array([s["__uid__"] for s in decoded])
    shipped = {}
    for file in files:
        uids = pq.read_table(file.metadata, columns=[column(pq.read_schema(file.metadata), COLUMNS[layout].uid)])
        rows = pc.index_in(wanted, value_set=pc.utf8_lower(pc.cast(uids.column(0), pa.string())))
        found = [(i, r) for i, r in enumerate(rows.to_pylist()) if r is not None and i not in shipped]
        if found:
            image = vectors(file.image, file.image_key)
            for i, r in found:
                shipped[i] = np.asarray(image[r], np.float32)
        if len(shipped) == len(decoded):
            break
    if not shipped:
        raise SourceError("none of the --images uids are rows of the pool")
    order = sorted(shipped)
    mine = model.encode_images(torch.stack([decoded[i]["pixels"] for i in order]))
    theirs = np.stack([shipped[i] for i in order])
    theirs /= np.maximum(np.linalg.norm(theirs, axis=1, keepdims=True), 1e-12)
    cosines = np.sum(np.asarray(mine, np.float32) * theirs, axis=1)
    median = float(np.median(cosines))
    if median < MIN_MEDIAN_COSINE:
        raise ModelError(f"{len(order)} images re-embedded with {model.model_id} match the pool's vectors at median "
                         f"cosine {median:.3f} (< {MIN_MEDIAN_COSINE}): the wrong model or weights for this pool")
    return {"verified_images": len(order), "median_cosine": round(median, 4)}


def join_images(ws: Workspace, sources: list[Source], thumb_size: int = 256, workers: int = 2,
                progress: bool = True) -> dict:
    """Give imported rows their images: each shard's members whose uid is a workspace row get its path, offset,
    size, format, sha256 and a thumbnail, and ``image_state`` NULL (image at hand)."""
    cfg = DecodeConfig(thumb_size=thumb_size, thumb_dir=str(ws.thumbs_dir))
    done = {r[0] for r in ws.rows("SELECT path FROM ingest_files WHERE done_at IS NOT NULL")}
    counts = {"joined": 0, "not_in_pool": 0, "unreadable": 0}
    batch: list[dict] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="thumbs") as pool, \
            tqdm(desc="images", unit="img", disable=not progress) as bar:
        for raw in _samples(sources, skip_shard=lambda shard: shard in done):
            marker = None if "__key__" in raw else raw
            if marker is None:
                batch.append(raw)
            if len(batch) >= JOIN_BATCH or (marker and ("__shard_done__" in marker or "__shard_error__" in marker)):
                _commit(ws, _decoded_rows(ws, pool, cfg, batch, counts), marker, counts)
                bar.update(len(batch))
                batch = []
    return counts


def _decoded_rows(ws: Workspace, pool: ThreadPoolExecutor, cfg: DecodeConfig, raws: list[dict],
                  counts: dict) -> list[dict]:
    """The samples of ``raws`` that are rows of the workspace, decoded (with thumbnails); the others are
    counted, never decoded."""
    if not raws:
        return []
    known = set(ws.numpy("SELECT uid FROM samples WHERE uid IN (SELECT unnest(?))",
                         [[r["__uid__"] for r in raws]])["uid"].tolist())
    mine = [r for r in raws if r["__uid__"] in known]
    counts["not_in_pool"] += len(raws) - len(mine)
    decoded = list(pool.map(lambda r: decode_sample(r, cfg), mine))
    counts["unreadable"] += sum(1 for s in decoded if s["status"] != "ok")
    return [s for s in decoded if s["status"] == "ok"]


def _commit(ws: Workspace, ok: list[dict], marker: dict | None, counts: dict) -> None:
    staged = pa.table({"uid": [s["__uid__"] for s in ok], "path": [s["__path__"] for s in ok],
                       "member_offset": pa.array([s["__offset__"] for s in ok], pa.int64()),
                       "member_size": pa.array([s["__size__"] for s in ok], pa.int64()),
                       "format": pa.array([s["format"] for s in ok], pa.string()),
                       "sha256": pa.array([s["sha256"] for s in ok], pa.string()),
                       "thumb": pa.array([s.get("thumb") for s in ok], pa.string()),
                       "width": pa.array([s["width"] for s in ok], pa.int32()),
                       "height": pa.array([s["height"] for s in ok], pa.int32())})
    with ws.transaction() as cur:
        cur.register("_altlens_images", staged)
        try:
            cur.execute("""UPDATE samples SET path = i.path, member_offset = i.member_offset,
                           member_size = i.member_size, format = i.format, sha256 = i.sha256, thumb = i.thumb,
                           width = coalesce(samples.width, i.width), height = coalesce(samples.height, i.height),
                           image_state = NULL FROM _altlens_images i WHERE samples.uid = i.uid""")
        finally:
            cur.unregister("_altlens_images")
        if marker is not None:
            shard = marker.get("__shard_done__") or marker["__shard_error__"]
            stat = Path(shard).stat()
            joined = cur.execute("SELECT count(*) FROM samples WHERE path = ?", [shard]).fetchall()[0][0]
            cur.execute("""INSERT INTO ingest_files VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET
                           n_samples = excluded.n_samples, error = excluded.error, done_at = excluded.done_at""",
                        [shard, marker.get("source", ""), stat.st_size, stat.st_mtime, joined,
                         marker.get("error"), now() if "__shard_done__" in marker else None])
    counts["joined"] += len(ok)
    ws.release()
