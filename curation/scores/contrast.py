"""Counterfactual contrast: does the image prefer a caption to the same text with one claim changed?

For every ok sample's alt-text, best synthetic caption (highest clip_score) and
fused caption, the variants come from the workspace's contrast sets
(:mod:`curation.claims.sets`): one-claim substitutions and attribute exchanges.
``contrast`` = cos(image, caption) - max over variants cos(image, variant). A true
caption beats all its variants (contrast > 0); a caption with one attribute wrong
loses to the variant that corrects it (contrast < 0), which is exactly the error
clip_score alone ranks worst. The claim that lost and what it lost to are stored
for the sample panel, and each contrast-set pair counts how often it decided.
Captions without a claim the images can judge get NULL.

The same margin is also kept per kind of variant: ``substitution`` (one claim
changed) and ``exchange`` (two claims swapped between the things they describe;
NULL without two claims of one kind). ``contrast`` is the lower of the two. Kept
apart they let the learned reward weigh a binding error on its own: on the
contrast bench the exchanges alone rank binding errors at 0.87 and the mixed
minimum at 0.78, since a caption's weakest substitution (a confusable size or
position) often hides the exchange that failed.

Cost: up to ``MAX_VARIANTS`` text encodings per caption, fewer in practice, since
every distinct text is embedded once per run (synthetic captions and their
variants repeat a lot). Stored in ``caption_contrast``, computed where missing.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from curation.claims.sets import ContrastSets
from indexer.engine_ray import BlockActor
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore

CACHE_TEXTS = 200_000  # distinct texts kept embedded during one run


class TextCache:
    """Embeddings of texts seen in this run (oldest dropped first past ``limit``)."""

    def __init__(self, model, limit: int = CACHE_TEXTS):
        self.model, self.limit, self.vectors = model, limit, {}
        self.encoded = 0

    def embed(self, texts: list[str], batch: int = 1024) -> dict[str, np.ndarray]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        for start in range(0, len(missing), batch):
            chunk = missing[start:start + batch]
            self.vectors.update(zip(chunk, np.asarray(self.model.encode_texts(chunk), dtype=np.float32)))
            self.encoded += len(chunk)
        found = {t: self.vectors[t] for t in texts}
        while len(self.vectors) > self.limit:
            self.vectors.pop(next(iter(self.vectors)))
        return found


def captions_to_score(ws: Workspace, recompute: bool, limit_id: int) -> list[tuple[int, int, str]]:
    """(caption id, sample id, text): each ok sample's alt, best synthetic and best fused caption; without
    ``recompute``, those without a contrast row (or with one from before the per-kind margins were kept)."""
    return ws.rows("""WITH ranked AS (
                          SELECT c.id, c.sample_id, c.text, row_number() OVER (PARTITION BY c.sample_id, c.source_kind
                                 ORDER BY cs.clip_score DESC NULLS LAST, c.id) AS rank
                          FROM captions c JOIN samples s ON s.id = c.sample_id AND s.status = 'ok'
                          LEFT JOIN caption_scores cs ON cs.caption_id = c.id WHERE c.id < ?)
                      SELECT id, sample_id, text FROM ranked
                      WHERE rank = 1 AND (? OR id NOT IN (SELECT caption_id FROM caption_contrast
                                                           WHERE contrast IS NULL OR substitution IS NOT NULL
                                                              OR exchange IS NOT NULL)) ORDER BY id""",
                   [limit_id, recompute])


def score_contrast(ws: Workspace, model, sets: ContrastSets, batch: int = 256, progress: bool = True,
                   recompute: bool = False, ray: dict | None = None) -> dict:
    """Fill ``caption_contrast`` where missing (everywhere with ``recompute``, replaced in one transaction).
    ``ray`` ({"address", "workers"}): the batches go to a pool of model actors, 16 batches a block."""
    started = time.perf_counter()
    texts = EmbeddingStore(ws, "text").load()
    rows = captions_to_score(ws, recompute, len(texts))
    images = EmbeddingStore(ws, "image").load()
    batches = [rows[start:start + batch] for start in range(0, len(rows), batch)]
    results, encoded = [], 0
    bar = tqdm(total=len(batches), desc="contrast", unit="batch", disable=not progress or not rows)
    if ray is None:
        ws.release()  # encoding the variants is the long part
        cache = TextCache(model)
        for rows_b in batches:
            results += contrast_batch(rows_b, images, sets, cache)
            bar.update()
        encoded = cache.encoded
    else:
        for part, n in _ray_contrast(ws, batches, images, sets, model, ray):
            results += part["rows"]
            encoded += part["encoded"]
            bar.update(n)
    bar.close()
    table = pa.Table.from_pylist(results, schema=pa.schema([
        ("caption_id", pa.int64()), ("contrast", pa.float64()), ("substitution", pa.float64()),
        ("exchange", pa.float64()), ("claims", pa.int32()), ("variants", pa.int32()),
        ("lost_claim", pa.string()), ("lost_to", pa.string()), ("computed_at", pa.timestamp("us"))]))
    with ws.transaction() as cur:
        if len(table):
            ws.insert_arrow("caption_contrast", table, replace=True, cur=cur)
        count_decisions(cur)
    return {"captions": len(rows), "variants": int(sum(r["variants"] for r in results)),
            "texts_encoded": encoded, "seconds": round(time.perf_counter() - started, 2)}


class ContrastBlock(BlockActor):
    """Ray actor: the workspace's model loaded once; each block's batches scored against their variants (with a
    text cache per actor)."""

    def __init__(self, sets: ContrastSets, **kwargs):
        super().__init__(**kwargs)
        self.sets, self.cache = sets, TextCache(self.model)

    def process(self, number: int, payload: bytes) -> dict:
        import pickle
        batches, images = pickle.loads(payload)
        before = self.cache.encoded
        rows = [r for b in batches for r in contrast_batch(b, images, self.sets, self.cache)]
        return {"rows": rows, "encoded": self.cache.encoded - before, "batches": len(batches)}


def _pass_through(row: dict) -> dict:
    return {"number": row["number"], "decoded": row["block"]}


def _ray_contrast(ws: Workspace, batches: list, images, sets: ContrastSets, model, ray: dict, per_block: int = 16):
    """(result, batches in it) per block of ``per_block`` batches, in order; each block carries its images."""
    from indexer.engine_ray import check_ray, new_staging, stream_blocks
    check_ray(model)
    blocks = []
    for start in range(0, len(batches), per_block):
        part = batches[start:start + per_block]
        ids = sorted({sample_id for b in part for _, sample_id, _ in b})
        blocks.append((part, {i: np.asarray(images[i], dtype=np.float32) for i in ids}))
    if not blocks:
        return
    staging = new_staging(ws, "contrast")
    for _, result in stream_blocks(ws, blocks, _pass_through, {}, ContrastBlock, {"sets": sets}, model,
                                   ray["address"], ray["workers"], staging):
        yield result, result["batches"]


def contrast_batch(rows, images, sets: ContrastSets, cache: TextCache) -> list[dict]:
    """Contrast of each (caption id, sample id, text) row against its variants."""
    variants = {caption_id: sets.variants(text) for caption_id, _, text in rows}
    vectors = cache.embed([t for caption_id, _, text in rows for t in [text] + [v.text for v in variants[caption_id]]])
    stamp, out = now(), []
    for caption_id, sample_id, text in rows:
        image = np.asarray(images[sample_id], dtype=np.float32)
        mine = variants[caption_id]
        row = {"caption_id": caption_id, "contrast": None, "substitution": None, "exchange": None,
               "claims": len(sets.claims(text)), "variants": len(mine), "lost_claim": None, "lost_to": None,
               "computed_at": stamp}
        if mine:
            own = float(image @ vectors[text])
            scores = [float(image @ vectors[v.text]) for v in mine]
            best = int(np.argmax(scores))
            row["contrast"] = own - scores[best]
            for key, wanted in (("substitution", False), ("exchange", True)):
                kind = [score for v, score in zip(mine, scores) if v.exchange == wanted]
                row[key] = own - max(kind) if kind else None
            if row["contrast"] < 0:
                row["lost_claim"], row["lost_to"] = mine[best].claim, mine[best].replacement
        out.append(row)
    return out


def count_decisions(cur) -> None:
    """How often each contrast-set pair decided a caption (the caption lost to that alternative)."""
    cur.execute("UPDATE contrast_sets SET decided = 0")
    cur.execute("""UPDATE contrast_sets SET decided = d.n FROM (
                       SELECT split_part(lost_claim, '<->', 1) AS word, split_part(lost_to, '<->', 1) AS alternative,
                              count(*) AS n
                       FROM caption_contrast WHERE lost_claim IS NOT NULL GROUP BY 1, 2) d
                   WHERE contrast_sets.word = d.word AND contrast_sets.alternative = d.alternative""")
