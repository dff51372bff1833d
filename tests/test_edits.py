"""Captions a curator writes: a new caption row (never an overwrite), embedded and scored at once, shown on the
card, and what export's ``best`` policy writes."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from conftest import writable_copy

from app.curate import Curate
from app.handlers import Handlers, UserError
from curation.review.edits import add_curator_caption, clean_caption
from indexer.schema import CURATOR
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore


@pytest.fixture()
def curate(demo_ws, tmp_path):
    ws = Workspace(writable_copy(demo_ws, tmp_path))
    yield Curate(Handlers(ws), read_only=False)
    ws.close()


def _truth(ws, sample_id: int) -> str:
    """The demo world's own description of the sample (what a careful curator would write)."""
    return ws.scalar("SELECT t.canonical FROM demo_truth t JOIN samples s ON s.uid = t.uid WHERE s.id = ?",
                     [sample_id])


def test_clean_caption_refuses_what_is_not_a_caption():
    assert clean_caption("  a red  circle\n on grey ") == "a red circle on grey"
    for bad, message in (("", "empty"), ("   ", "empty"), ("a\x00b", "control"), ("x" * 1001, "at most")):
        with pytest.raises(ValueError, match=message):
            clean_caption(bad)


def test_a_written_caption_is_a_new_row_embedded_and_scored(curate):
    ws = curate.ws
    sample = ws.scalar("SELECT min(id) FROM samples WHERE status = 'ok'")
    before = ws.dicts("SELECT id, source_kind, text FROM captions WHERE sample_id = ? ORDER BY id", [sample])
    right, wrong = _truth(ws, sample), "a photograph of a brown dog asleep on a sofa"
    first = add_curator_caption(ws, sample, wrong, curate.h.model, who="alice")
    second = add_curator_caption(ws, sample, right, curate.h.model, who="alice", edited_from=before[0]["id"])
    after = ws.dicts("SELECT id, source_kind, producer, idx, text FROM captions WHERE sample_id = ? ORDER BY id",
                     [sample])
    assert after[:len(before)] == [dict(b, producer=a["producer"], idx=a["idx"]) for b, a in zip(before, after)]
    mine = [c for c in after if c["source_kind"] == CURATOR]
    assert [c["text"] for c in mine] == [wrong, right] and [c["idx"] for c in mine] == [0, 1]
    assert {c["producer"] for c in mine} == {"curator:alice"}
    texts = EmbeddingStore(ws, "text").load()
    assert len(texts) == second["caption_id"] + 1
    stored = np.asarray(texts[second["caption_id"]], dtype=np.float32)
    assert np.allclose(stored, curate.h.model.encode_texts([right])[0], atol=2e-3)
    image = np.asarray(EmbeddingStore(ws, "image").load()[sample], dtype=np.float32)
    assert second["cosine"] == pytest.approx(float(stored @ image), abs=2e-3)
    assert second["clip_score"] > first["clip_score"], "the image prefers the true caption to an unrelated one"
    assert ws.scalar("SELECT clip_score FROM caption_scores WHERE caption_id = ?",
                     [second["caption_id"]]) == pytest.approx(second["clip_score"], abs=1e-4)


def test_card_shows_it_and_export_best_writes_it(curate):
    ws = curate.ws
    sample = ws.scalar("SELECT max(id) FROM samples WHERE status = 'ok'")
    uid = ws.scalar("SELECT uid FROM samples WHERE id = ?", [sample])
    text = _truth(ws, sample) + ", hand-checked"
    card = curate.write_caption(sample, text, "bob", "browser")
    assert 'data-source="curator"' in card and "hand-checked" in card and "curator:bob" in card
    with pytest.raises(UserError, match="control"):
        curate.write_caption(sample, "bad\x07caption", "bob", "browser")
    with pytest.raises(UserError, match="open a sample"):
        curate.write_caption(None, "x", "bob", "browser")
    curate.save_region("edited", [sample, sample - 1], "map box", "best", False)
    summary, *_ = curate.export("edited", "datacompdr", 100, 0)
    assert "every file verified" in summary
    shard = next((ws.root / "exports" / "edited-datacompdr").glob("*.tar"))
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert members[f"{uid}.txt"].decode() == text
    meta = json.loads(members[f"{uid}.json"])
    assert meta["caption_source"] == CURATOR and meta["caption_chosen_by"] == "curator"
    assert meta["caption_producer"] == "curator:bob" and "curator" in meta["clip_score"]
    emb = np.load(io.BytesIO(members[f"{uid}.npz"]))["text_emb"][0]
    assert np.allclose(emb, curate.h.model.encode_texts([text])[0], atol=2e-3)
    other = ws.scalar("SELECT uid FROM samples WHERE id = ?", [sample - 1])
    assert json.loads(members[f"{other}.json"])["caption_source"] != CURATOR, "only the edited sample changes"


def test_captions_saved_at_once_each_keep_their_own_embedding(curate):
    """Curators saving at the same moment through one server (threads sharing one workspace): every save is
    stored, and each stored caption's vector is its own text's, never a neighbour's (issue 31, finding 1: both
    writers took the same chunk id, and the one refused at COMMIT had replaced the other's vectors)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    ws, model = curate.ws, curate.h.model
    samples = [r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok' ORDER BY id LIMIT 24")]
    texts = {s: f"{_truth(ws, s)}, checked by curator {i}" for i, s in enumerate(samples)}
    start = threading.Barrier(4)

    def save(batch):
        start.wait()
        return [curate.write_caption(s, texts[s], f"c{n}", "browser") for n, s in enumerate(batch)]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(save, [samples[i::4] for i in range(4)]))
    rows = ws.rows("SELECT id, sample_id, text FROM captions WHERE source_kind = ? ORDER BY id", [CURATOR])
    assert sorted(r[1] for r in rows) == sorted(samples), "every save is stored once"
    stored = np.asarray(EmbeddingStore(ws, "text").load(), dtype=np.float32)[[r[0] for r in rows]]
    own = np.asarray(model.encode_texts([r[2] for r in rows]), dtype=np.float32)
    cosines = np.sum(stored * own, axis=1)
    assert cosines.min() > 0.999, f"captions stored with another caption's vector: {np.round(cosines, 3)}"


def test_an_unexpected_failure_reaches_the_curator_as_one_line():
    """A save that fails for a reason no handler expected says what failed (it was an empty toast)."""
    import gradio as gr

    from app.ui import friendly

    class Boom:
        ws = None

        def save(self):
            raise FileNotFoundError("embeddings/text/.chunk.npy.tmp-1")

    with pytest.raises(gr.Error) as caught:
        friendly(Boom().save)()
    assert "FileNotFoundError" in caught.value.message and "try again" in caught.value.message
