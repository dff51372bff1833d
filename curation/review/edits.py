"""Captions written by a curator: text -> a new caption row of source kind ``curator``, embedded and scored.

A curator who corrects a caption never overwrites anything: the alt-text and the
model captions stay as they were. The new caption gets the next caption id, its
text embedding (the workspace model, like every other caption), and its
clip_score against the sample's image at once, so the card, the scores and the
export see it immediately. Export's ``best`` policy prefers the latest curator
caption of a sample over every other source.
"""
from __future__ import annotations

import json
import unicodedata

import numpy as np
import pyarrow as pa

from curation.scores.alignment import clip_score
from indexer.schema import CURATOR
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore
from indexer.writer import insert_captions

MAX_CHARS = 1000


def clean_caption(text: str) -> str:
    """The caption as stored: whitespace runs become one space; control characters are refused, not dropped
    silently; 1 to :data:`MAX_CHARS` characters."""
    if not isinstance(text, str):
        raise ValueError("a caption is text")
    if any(unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\t\n\r" for ch in text):
        raise ValueError("a caption cannot hold control characters")
    text = " ".join(text.split())
    if not text:
        raise ValueError("write the caption first (it is empty)")
    if len(text) > MAX_CHARS:
        raise ValueError(f"a caption is at most {MAX_CHARS} characters, this one has {len(text)}")
    return text


def add_curator_caption(ws: Workspace, sample_id: int, text: str, model, who: str = "local",
                        edited_from: int | None = None) -> dict:
    """Store ``text`` as the curator's caption of ``sample_id`` (embedded with ``model``, scored against the
    image); returns the caption id, its clip_score and cosine. ``edited_from`` records which caption it
    corrects, if any."""
    text = clean_caption(text)
    row = ws.dicts("SELECT id, uid FROM samples WHERE id = ? AND status = 'ok'", [int(sample_id)])
    if not row:
        raise ValueError(f"no ok sample with id {sample_id}")
    images = EmbeddingStore(ws, "image").load()
    if int(sample_id) >= len(images):
        raise ValueError(f"sample {sample_id} has no image embedding yet")
    vector = np.asarray(model.encode_texts([text]), dtype=np.float32)
    cosine = float(vector[0] @ np.asarray(images[int(sample_id)], dtype=np.float32))
    idx = int(ws.scalar("SELECT count(*) FROM captions WHERE sample_id = ? AND source_kind = ?",
                        [int(sample_id), CURATOR]))
    record = {"sample_id": int(sample_id), "uid": row[0]["uid"], "source_kind": CURATOR,
              "producer": f"curator:{(who or 'local')[:64]}", "idx": idx, "text": text,
              "params": json.dumps({"edited_from": edited_from} if edited_from is not None else {})}
    insert_captions(ws, [record], vector)
    score = float(clip_score(np.array([cosine]))[0])
    with ws.transaction() as cur:
        ws.insert_arrow("caption_scores", pa.table({"caption_id": [record["id"]], "clip_score": [score],
                                                    "cosine": [cosine], "cycle": pa.nulls(1, pa.float64()),
                                                    "computed_at": [now()]}), cur=cur)
    return {"caption_id": record["id"], "clip_score": round(score, 4), "cosine": round(cosine, 4), "idx": idx}
