"""The read, decode and model steps of indexing, shared by the local engine (:mod:`indexer.index`) and the
Ray engine (:mod:`indexer.engine_ray`): raw samples -> named samples -> decoded samples -> embeddings."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from indexer.decode import DecodeConfig, decode_sample
from indexer.sources import make_uid


def keyed(raws: Iterator[dict], source: str, known: set[str], seen: dict[str, int],
          skipped: list[int] | None = None) -> Iterator[dict]:
    """Raw samples of ``source`` with their uid, minus those whose key is ``known`` (counted in ``skipped[0]``);
    a key repeated within what ``seen`` has seen becomes ``KEY#dupN`` with a duplicate_key error naming the
    file it came from. Shard markers pass through."""
    for raw in raws:
        if "__key__" not in raw:
            yield raw
            continue
        key = raw["__key__"]
        if key in seen:
            seen[key] += 1
            raw["__key__"] = key = f"{key}#dup{seen[key]}"
            where = raw.get("__path__")
            raw["__error__"] = ("duplicate_key", f"key {raw['__key__'].split('#')[0]!r} appeared before"
                                + (f"; this one is {where}" if where else ""))
        seen.setdefault(key, 0)
        if key in known:
            if skipped is not None:
                skipped[0] += 1
            continue
        raw["__uid__"] = make_uid(source, key)
        yield raw


def decode_batch(raws: list[dict], decode_cfg: DecodeConfig, preprocess) -> list[dict]:
    """Decode each raw sample (markers pass through); both engines' decode step."""
    return [decode_sample(r, decode_cfg, preprocess) if "__key__" in r else r for r in raws]


def embed_batch(model, batch: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Image embeddings for ok samples (zeros for failed ones) and alt-text embeddings for all; both engines'
    model step. Takes the pixels out of the samples."""
    samples = [s for s in batch if "__key__" in s]
    images = np.zeros((len(samples), model.dim), dtype=np.float32)
    ok = [i for i, s in enumerate(samples) if s["status"] == "ok"]
    if ok:
        images[ok] = model.encode_images(torch.stack([samples[i].pop("pixels") for i in ok]))
    texts = model.encode_texts([s["caption"] for s in samples]) if samples else np.zeros((0, model.dim))
    return images, texts
