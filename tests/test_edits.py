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
