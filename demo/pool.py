"""A small pool in DataComp's layout made from the demo world, so ``altlens import datacomp`` can be tried offline.

    write_pool(out, n=400, downloaded=0.75, seed=0)

``out/metadata/0000000N.parquet`` with DataComp's columns and a ``.npz`` of the same stem holding the demo
CLIP's float16 image and text vectors under both ``l14_*`` and ``b32_*`` (the demo model stands in for
OpenAI's ViT-L-14 and ViT-B-32; pass its checkpoint to the import). ``clip_*_similarity_score`` is the cosine
of those two vectors, as DataComp computes its scores. ``out/shards/0000N.tar`` holds the images of the
``downloaded`` share, img2dataset style, with the uid in each sample's ``.json``; the rest of the rows have no
image, as rows whose download failed. Original widths and heights are drawn at random (the demo's images are
small renders), so the size rules of ``datacomp-basic`` have something to cut.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from demo.build import demo_model_spec
from demo.samples import generate_samples, sample_image

FILES = 2  # parquet + npz pairs, so the import's matching by file stem is exercised
SHARD_SIZE = 200


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def write_pool(out: Path, n: int = 400, downloaded: float = 0.75, seed: int = 0) -> dict:
    """Write the pool under ``out`` (refused if ``out/metadata`` exists); return its paths and counts."""
    import torch

    from indexer.decode import DecodeConfig, decode_sample
    from indexer.models import load_model
    out = Path(out)
    if (out / "metadata").exists():
        raise FileExistsError(f"{out / 'metadata'} exists; choose an empty folder for the pool")
    samples = generate_samples(n, seed)
    rng = np.random.default_rng(seed)
    uids = [rng.bytes(16).hex() for _ in samples]
    images = [sample_image(s) for s in samples]
    have = np.sort(rng.choice(n, size=int(round(n * downloaded)), replace=False))
    model = load_model(demo_model_spec())
    image_vectors, text_vectors = [], []
    for start in tqdm(range(0, n, 64), desc="embed demo pool", unit="batch"):
        batch = range(start, min(n, start + 64))
        pixels = [decode_sample({"__key__": samples[i].key, "image": images[i], "ext": "jpg"}, DecodeConfig(),
                                model.preprocess)["pixels"] for i in batch]
        image_vectors.append(np.asarray(model.encode_images(torch.stack(pixels)), np.float32))
        text_vectors.append(np.asarray(model.encode_texts([samples[i].alt for i in batch]), np.float32))
    image_emb, text_emb = np.concatenate(image_vectors), np.concatenate(text_vectors)
    cosine = (image_emb * text_emb).sum(axis=1)
    meta = out / "metadata"
    meta.mkdir(parents=True)
    bounds = np.linspace(0, n, FILES + 1).astype(int)
    for number, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = range(lo, hi)
        table = pa.table({
            "uid": [uids[i] for i in rows],
            "url": [f"https://shapes.example/{samples[i].key}.jpg" for i in rows],
            "text": [samples[i].alt for i in rows],
            "original_width": rng.integers(120, 1600, hi - lo).astype(np.int64),
            "original_height": rng.integers(120, 1200, hi - lo).astype(np.int64),
            "clip_b32_similarity_score": cosine[lo:hi].astype(np.float64),
            "clip_l14_similarity_score": cosine[lo:hi].astype(np.float64),
            "face_bboxes": pa.array([[] for _ in rows], pa.list_(pa.list_(pa.float64()))),
            "sha256": [hashlib.sha256(images[i]).hexdigest() for i in rows],
        })
        pq.write_table(table, meta / f"{number:08d}.parquet")
        vectors = {"img": image_emb[lo:hi].astype(np.float16), "txt": text_emb[lo:hi].astype(np.float16)}
        np.savez(meta / f"{number:08d}.npz", **{f"{arch}_{kind}": v for arch in ("l14", "b32")
                                              for kind, v in vectors.items()})
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(have), SHARD_SIZE)):
        with tarfile.open(shards / f"{number:05d}.tar", "w") as tar:
            for j, i in enumerate(have[start:start + SHARD_SIZE]):
                key = f"{number:05d}{j:04d}"  # img2dataset's keys: shard number, then place in the shard
                _add(tar, f"{key}.jpg", images[i])
                _add(tar, f"{key}.txt", samples[i].alt.encode())
                _add(tar, f"{key}.json", json.dumps({"uid": uids[i], "url": f"https://shapes.example/"
                                                     f"{samples[i].key}.jpg", "key": key}).encode())
    return {"pool": str(out), "rows": n, "with_images": int(len(have)), "parquet_files": FILES,
            "shards": sorted(str(p) for p in shards.glob("*.tar"))}
