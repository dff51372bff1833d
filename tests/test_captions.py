"""Caption sources and scores: mechanics with tiny random models, quality with the shipped demo checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_coca_spec, tiny_spec, write_folder

from curation.captions.caption import CaptionConfig
from curation.captions.captioners import GenerativeCaptioner
from curation.captions.fuse import FuseConfig
from curation.captions.fusion_rules import (
    compose,
    conflict_alternatives,
    extract_knowledge,
    junk_reason,
    overruled,
    plan_fusion,
)
from curation.claims.sets import ContrastSets
from curation.pipeline import run_stage
from curation.scores.score import score_workspace
from indexer.index import IndexConfig
from indexer.models import ModelError
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore


@pytest.fixture()
def coca_ws(tmp_path):
    write_folder(tmp_path / "src", n_good=10, bad=True)
    run_stage("index", tmp_path / "ws", IndexConfig(sources=(str(tmp_path / "src"),), model=tiny_coca_spec(),
                          progress=False))
    return tmp_path / "ws"


def caption(ws, **kw):
    return run_stage("caption", ws, CaptionConfig(progress=False, batch_size=4, **kw))


def test_captions_are_incremental_with_provenance(coca_ws):
    first = caption(coca_ws, num=3)
    assert first["captioned"] == 13 and first["failed"] == 0  # 10 good + 3 ok oddities (no caption, bad utf-8, long)
    assert caption(coca_ws, num=3)["captioned"] == 0
    assert caption(coca_ws, num=4)["captioned"] == 13
    with Workspace(coca_ws, read_only=True) as ws:
        rows = ws.dicts("SELECT sample_id, idx, producer, params, text FROM captions WHERE source_kind = 'syn'")
        assert len(rows) == 13 * 4
        per_sample = {}
        for r in rows:
            per_sample.setdefault(r["sample_id"], []).append(r["idx"])
        assert all(sorted(v) == [0, 1, 2, 3] for v in per_sample.values())
        params = json.loads(rows[0]["params"])
        assert params["sampling"] == "top_p" and params["top_p"] == 0.9
        assert rows[0]["producer"].startswith("altlens-tiny-coca@random/top_p0.9")
        assert ws.scalar("SELECT count(*) FROM captions WHERE source_kind = 'alt'") == 17, "alt-text untouched"
        assert EmbeddingStore(ws, "text").load().shape[0] == ws.scalar("SELECT count(*) FROM captions")


def test_diverse_beam_gives_distinct_captions(coca_ws):
    caption(coca_ws, num=3, sampling="diverse_beam", limit=5)
    with Workspace(coca_ws, read_only=True) as ws:
        groups = ws.rows("""SELECT list(text) FROM captions WHERE producer LIKE '%/diverse_beam'
                            GROUP BY sample_id""")
    assert len(groups) == 5
    assert all(len(set(texts)) == 3 for (texts,) in groups), groups


def test_failing_captioner_batch_is_recorded_and_run_goes_on(coca_ws, monkeypatch):
    real = GenerativeCaptioner.caption
    calls = {"n": 0}

    def flaky(self, pixels, num, seed):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("captioner ran out of memory")
        return real(self, pixels, num, seed)
    monkeypatch.setattr(GenerativeCaptioner, "caption", flaky)
    report = caption(coca_ws, num=1)
    assert report["failed"] == 4 and report["captioned"] == 9
    with Workspace(coca_ws, read_only=True) as ws:
        reasons = ws.rows("SELECT reason FROM producer_failures")
    assert len(reasons) == 4 and "out of memory" in reasons[0][0]
    monkeypatch.undo()
    assert caption(coca_ws, num=1)["captioned"] == 4, "failed samples are retried next run"


def test_unknown_captioner_and_missing_local_model_are_clear(coca_ws, tmp_path):
    with pytest.raises(ModelError, match="unknown captioner 'blip2'"):
        caption(coca_ws, captioner="blip2")
    with pytest.raises(ModelError, match="nothing is downloaded"):
        caption(coca_ws, captioner=f"hf:{tmp_path / 'no-such-model'}")
    with pytest.raises(ValueError, match="unknown sampling"):
        CaptionConfig(sampling="greedy")


def test_clip_model_without_decoder_refuses_to_caption(tmp_path):
    write_folder(tmp_path / "src", n_good=2, bad=False)
    run_stage("index", tmp_path / "ws", IndexConfig(sources=(str(tmp_path / "src"),), model=tiny_spec(),
                          progress=False))
    with pytest.raises(ModelError, match="cannot caption"):
        caption(tmp_path / "ws")


def test_hf_captioner_mechanics(coca_ws, tmp_path):
    from hf_tiny import tiny_image_captioner
    path = tiny_image_captioner(tmp_path / "tiny-vit-gpt2")
    report = caption(coca_ws, captioner=f"hf:{path}", num=2)
    assert report["captioned"] == 13 and report["producer"].startswith("hf:tiny-vit-gpt2@")
    with Workspace(coca_ws, read_only=True) as ws:
        assert ws.scalar("SELECT count(*) FROM captions WHERE producer = ?", [report["producer"]]) == 26


def test_demo_captioner_through_the_caption_command(coca_ws, tmp_path):
    report = caption(coca_ws, captioner="demo", num=3, sampling="diverse_beam", limit=4)
    assert report["captioned"] == 4 and report["producer"].startswith("altlens-demo-captioner@sha256:")
    with Workspace(coca_ws, read_only=True) as ws:
        groups = ws.rows("SELECT list(text) FROM captions WHERE producer = ? GROUP BY sample_id", [report["producer"]])
    assert len(groups) == 4 and all(len(set(texts)) == 3 for (texts,) in groups), groups
    assert caption(coca_ws, captioner="demo", num=1, limit=2)["captioned"] == 2
    with pytest.raises(ModelError, match="cannot load the demo captioner"):
        caption(coca_ws, captioner=f"demo:{tmp_path / 'missing.safetensors'}")


def test_llm_fuser_mechanics_and_prompt_cut(coca_ws, tmp_path):
    from hf_tiny import tiny_causal_lm

    from curation.captions.hf import LLMFuser
    path = tiny_causal_lm(tmp_path / "tiny-lm")
    fuser = LLMFuser(str(path))
    prompt = fuser.prompt("red star " * 500, "a blue star on the left")
    assert len(fuser.tokenizer(prompt)["input_ids"]) <= 256
    assert "Sentence 2: a blue star on the left" in prompt, "the alt-text is cut first"
    caption(coca_ws, num=2)
    report = run_stage("fuse", coca_ws, FuseConfig(fuser=f"llm:{path}", progress=False))
    assert report["fused"] == 13 and report["producer"].startswith("llm:tiny-lm@")


def kinds(*groups: tuple[str, ...]) -> ContrastSets:
    """Contrast sets as mining would store them, written by hand: each word's alternatives are its group."""
    return ContrastSets({w: [(v, 0.9) for v in group if v != w] for group in groups for w in group})


SHAPES = kinds(("red", "blue", "green", "yellow", "purple"), ("star", "circle", "square"), ("gray", "dotted"))
THINGS = kinds(("labrador", "poodle", "terrier"), ("beach", "forest", "street"), ("sofa", "armchair"))


def test_rules_fusion_pieces():
    assert junk_reason("IMG_2041.JPG") == "file name"
    assert junk_reason("click here for best price") == "spam"
    assert junk_reason("stickers, decals, wall art, kids room, gift ideas") == "keyword list"
    assert junk_reason("a red star, a blue circle, a green square and a cross") is None, "phrases, not tags"
    assert junk_reason("Home | Shop | Contact") == "navigation"
    assert junk_reason("") == "empty"
    assert junk_reason("Acme red star sticker, from the Lisbon market") is None
    know = extract_knowledge("Acme red star sticker on gray paper, Mira Okafor, from the Lisbon market", SHAPES)
    assert know.brand == "Acme" and know.medium == "sticker"
    assert "from the Lisbon market" in know.phrases and "Mira Okafor" in know.phrases
    assert extract_knowledge("IMG_2041.JPG", SHAPES).items() == []
    assert conflict_alternatives("a large yellow star on the left", "purple star", SHAPES) == [
        "a large purple star on the left"]
    assert conflict_alternatives("a red square and a blue star", "green circle, blue star", SHAPES) == [
        "a green square and a blue star", "a red square and a green star", "a red circle and a blue star",
        "a red square and a blue circle"], "one claim at a time; the image decides, round after round"
    fused = compose("a large purple star on the left", know)
    assert fused.startswith("Acme sticker of a large purple star") and fused.endswith("from the Lisbon market")
    options, _, junk = plan_fusion("DSC00123.jpg", "a red circle", SHAPES)
    assert options == ["a red circle"] and junk == "file name"


def test_fusion_conflicts_on_any_kind_of_word():
    """No colour or shape: a dog breed and a place, as web alt-text states them."""
    base = "a brown terrier running on a sandy beach"
    alt = "Rex the labrador playing in the forest, photo by Ann Lee"
    assert conflict_alternatives(base, alt, THINGS) == ["a brown labrador running on a sandy beach",
                                                        "a brown terrier running on a sandy forest"]
    know = extract_knowledge(alt, THINGS)
    assert know.medium == "photo" and "by Ann Lee" in know.phrases
    assert overruled("a poodle on the sofa", "a terrier on the sofa", THINGS) == ["poodle"]
    assert overruled("a poodle on the sofa", "a poodle on the sofa", THINGS) == []


def test_untrusted_captions_stored_verbatim_and_scored(tmp_path):
    nasty = ["<img src=x onerror=alert(1)>", "<script>alert('x')</script>", "Ω≈ç√ 日本語のキャプション مرحبا",
             "x" * 1_000_000, "", "IMG_0001.JPG"]
    src = tmp_path / "src"
    write_folder(src, n_good=len(nasty), bad=False)
    for i, text in enumerate(nasty):
        sub = "a" if i % 2 else "b"
        (src / sub / f"{i:08d}.txt").write_text(text)
    run_stage("index", tmp_path / "ws", IndexConfig(sources=(str(src),), model=tiny_coca_spec(), progress=False))
    caption(tmp_path / "ws", num=1)
    with Workspace(tmp_path / "ws") as ws:
        score_workspace(ws)
        stored = dict(ws.rows("""SELECT c.text, cs.clip_score FROM captions c JOIN caption_scores cs
                                 ON cs.caption_id = c.id WHERE c.source_kind = 'alt'"""))
    for text in nasty:
        assert text in stored and stored[text] is not None and stored[text] >= 0


def test_scores_match_their_definitions(coca_ws):
    caption(coca_ws, num=3)
    run_stage("fuse", coca_ws, FuseConfig(progress=False))
    with Workspace(coca_ws) as ws:
        first = score_workspace(ws)
        assert first["captions_scored"] == 13 * 5
        assert score_workspace(ws) == {"captions_scored": 0, "samples_with_agreement": 0, "rewards_written": 0}
        images = EmbeddingStore(ws, "image").load().astype(np.float32)
        texts = EmbeddingStore(ws, "text").load().astype(np.float32)
        rows = ws.rows("""SELECT c.id, c.sample_id, cs.clip_score, cs.cycle FROM captions c
                          JOIN caption_scores cs ON cs.caption_id = c.id""")
        for cid, sid, clip, cycle in rows:
            assert clip == pytest.approx(2.5 * max(float(images[sid] @ texts[cid]), 0.0), abs=1e-4)
            assert cycle in (0.0, 0.5, 1.0)
        sid, agreement = ws.rows("SELECT sample_id, agreement FROM sample_scores LIMIT 1")[0]
        alt = ws.scalar("SELECT id FROM captions WHERE sample_id = ? AND source_kind = 'alt'", [sid])
        syn = [r[0] for r in ws.rows("SELECT id FROM captions WHERE sample_id = ? AND source_kind = 'syn'", [sid])]
        mean = texts[syn].mean(0)
        assert agreement == pytest.approx(float(texts[alt] @ mean / np.linalg.norm(mean)), abs=1e-4)
        version = ws.get_meta("active_reward")
        assert ws.scalar("SELECT kind FROM reward_versions WHERE version = ?", [version]) == "clip_score:alt"
        reward = ws.scalar("SELECT value FROM rewards WHERE sample_id = ? AND version = ?", [sid, version])
        assert reward == ws.scalar("SELECT clip_score FROM caption_scores WHERE caption_id = ?", [alt])


# ---------------------------------------------------------------- quality on the demo world


@pytest.fixture(scope="module")
def quality(demo_ws):
    from demo.quality import caption_quality
    root, summary = demo_ws
    assert summary["caption"]["captioned"] > 0 and summary["fuse"]["fused"] > 0
    with Workspace(root, read_only=True) as ws:
        q = caption_quality(ws)
    print(json.dumps(q, indent=1))
    return q


def test_demo_reward_filters_misaligned_and_swapped(quality):
    """The issue's filtering thresholds, on a held-out demo world built with the shipped checkpoint."""
    assert quality["auroc_misaligned_vs_correct"] >= 0.98
    assert quality["auroc_swapped_vs_correct"] >= 0.80


def test_demo_fused_captions_recall_more_facts(quality):
    recall = quality["fact_recall"]
    assert recall["fused"] > recall["alt"] and recall["fused"] > recall["syn"]


def test_demo_captioner_inherits_the_planted_default(quality):
    default = quality["planted_default"]
    assert default["captions_say_share"] > default["images_have_share"] + 0.1
