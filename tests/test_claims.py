"""Claims from any caption, mined contrast sets, and fusion that lets the image decide on any kind of word."""
from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import numpy as np
import pytest

from curation.claims.mining import MiningConfig, candidate_pairs, frequent_words, slot_similarity, two_step_pairs
from curation.claims.sets import ContrastSets
from curation.claims.words import STOP_WORDS, claim_tokens, slots
from demo.world import BACKGROUNDS, BRANDS, COLOURS, SHAPES, canonical_caption
from indexer.store import Workspace

ROOT = Path(__file__).resolve().parent.parent

# Ordinary web captions with no colour+shape pair: animals, places, furniture, food, clothing.
ANIMALS = ("labrador", "poodle", "tabby cat", "horse", "parrot", "goldfish")
PLACES = ("beach", "forest", "kitchen", "city street", "mountain trail", "garden")
FURNITURE = ("oak dresser", "leather sofa", "rocking chair", "bookshelf", "dining table")
FOOD = ("pizza", "bowl of ramen", "chocolate cake", "fruit salad", "cheeseburger")
CLOTHING = ("denim jacket", "wool scarf", "running shoes", "summer dress", "leather boots")
FORMS = ("a {a} sleeping on the {p}", "{a} running across the {p} at sunset", "close-up of a {f} in a bright room",
         "homemade {d} served on a wooden board", "model wearing a {c} in the {p}", "vintage {f} with brass handles",
         "the {a} next to a {f}", "fresh {d} for dinner", "{c} for sale, size M", "Eiffel Tower lit up at night")


def ordinary_captions(n: int = 200, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(FORMS).format(a=rng.choice(ANIMALS), p=rng.choice(PLACES), f=rng.choice(FURNITURE),
                                     d=rng.choice(FOOD), c=rng.choice(CLOTHING)) for _ in range(n)]


def test_claims_are_found_in_ordinary_captions_and_no_function_word_is_an_alternative():
    captions = ordinary_captions()
    with_claims = [c for c in captions if claim_tokens(c)]
    assert len(with_claims) >= 0.9 * len(captions)
    assert [t.word for t in claim_tokens("Eiffel Tower lit up at night")] == ["lit", "night"], "names are not claims"
    assert [t.word for t in claim_tokens("A brown labrador running on a sandy beach")] == [
        "brown", "labrador", "running", "sandy", "beach"]
    assert [t.word for t in claim_tokens("Vintage Oak Dresser With Brass Handles")] == [
        "vintage", "oak", "dresser", "brass", "handles"], "title case: capitals are not names"
    cfg = MiningConfig(min_count=2)
    vocabulary = frequent_words(captions, cfg)
    pairs = candidate_pairs(vocabulary, slot_similarity(captions, vocabulary), cfg)
    offered = {w for a, b, _ in pairs for w in (a, b)}
    assert offered and not offered & STOP_WORDS, sorted(offered & STOP_WORDS)
    assert ("forest", "garden") in {(a, b) for a, b, _ in pairs} or ("beach", "forest") in {(a, b) for a, b, _ in pairs}


def test_words_two_kept_pairs_apart_are_tested_as_a_pair():
    """"at left" and "near the bottom edge" never share a slot, but "left" ~ "right" ~ "bottom" both passed."""
    vocabulary = ["left", "right", "bottom", "brand", "top"]
    sims = np.eye(len(vocabulary))
    sims[0, 2] = sims[2, 0] = 0.2
    tested = [{"a": "left", "b": "right", "kept": True}, {"a": "bottom", "b": "right", "kept": True},
              {"a": "brand", "b": "right", "kept": False}, {"a": "bottom", "b": "top", "kept": True},
              {"a": "right", "b": "top", "kept": True}]
    pairs = {(a, b): s for a, b, s in two_step_pairs(vocabulary, sims, tested, MiningConfig())}
    assert pairs == {("bottom", "left"): 0.2, ("left", "top"): 0.0}, pairs
    assert not two_step_pairs(vocabulary, sims, tested, MiningConfig(hop_candidates=0))


def test_punctuation_is_part_of_a_slot():
    """Read as words alone, "(large, at left)" puts "large" where "placed" stands in "placed at left"; the
    brackets and the comma say it is another slot, so "large" is offered "small", never "placed"."""
    rng = random.Random(5)
    captions = []
    for _ in range(120):
        size, colour, where = rng.choice(["large", "small", "medium"]), rng.choice(["red", "blue"]), rng.choice(
            ["left", "right"])
        captions += [f"{size} {colour} star placed at {where}", f"{colour} star ({size}, at {where})"]
    assert slots("a star (large, at left).") == ["<s>", "a", "star", "(", "large", ",", "at", "left", ")", ".",
                                                 "</s>"]
    cfg = MiningConfig(min_count=2)
    vocabulary = frequent_words(captions, cfg)
    pairs = {(a, b) for a, b, _ in candidate_pairs(vocabulary, slot_similarity(captions, vocabulary), cfg)}
    assert ("large", "small") in pairs and ("left", "right") in pairs, sorted(pairs)
    assert not {p for p in pairs if "placed" in p}, sorted(pairs)


def test_contrast_sets_are_stored_and_read_back(demo_ws):
    root, summary = demo_ws
    with Workspace(root, read_only=True) as ws:
        sets = ContrastSets.load(ws)
        stored = ws.dicts("SELECT * FROM contrast_sets")
        meta = ws.get_meta("contrast_sets")
    assert summary["score"]["contrast_sets"] == len(sets) > 0
    axes = [set(axis) for axis in sets.axes()]
    colours = next(a for a in axes if "yellow" in a)
    assert len(colours & set(COLOURS)) >= 6 and not colours & set(SHAPES), colours
    assert any(len(a & set(BACKGROUNDS)) >= 3 for a in axes), axes
    assert not set(sets.words()) & {b.lower() for b in BRANDS}, "the image cannot judge a brand"
    dropped = [r for r in stored if not r["kept"]]
    assert dropped and all(r["similarity"] is not None and r["tested"] > 0 for r in stored)
    assert sum(r["decided"] for r in stored) > 0, "swaps that decided a caption are counted"
    assert {r["word"] for r in stored if r["kept"]} == set(sets.words())
    assert meta["model_id"] and meta["pairs_kept"] * 2 == sum(r["kept"] for r in stored)


def test_fusion_lets_the_image_decide_a_background_conflict(demo_ws):
    """Alt-text and synthetic caption disagree on the background only: the fused caption takes the one the
    image shows, whichever of the two said it."""
    from curation.captions.fuse import RulesFuser
    from curation.captions.fusion_rules import Knowledge
    from indexer.models import open_workspace_model
    from indexer.vectors import EmbeddingStore
    root, _ = demo_ws
    with Workspace(root, read_only=True) as ws:
        rows = ws.rows("""SELECT s.id, t.scene_json FROM demo_truth t JOIN samples s ON s.uid = t.uid
                          WHERE s.status = 'ok' AND t.dup_of IS NULL ORDER BY s.id LIMIT 40""")
        fuser = RulesFuser(open_workspace_model(ws, None), ContrastSets.load(ws))
        images = EmbeddingStore(ws, "image").load()
    rng = random.Random(5)
    right = []
    for sample_id, scene_json in rows:
        scene = json.loads(scene_json)
        wrong = {**scene, "background": rng.choice([b for b in BACKGROUNDS if b != scene["background"]])}
        truth, lie = canonical_caption(scene), canonical_caption(wrong)
        for base, alt in ((lie, truth), (truth, lie)):
            plans = [{"visual": base, "base": base, "junk": None, "knowledge": Knowledge()}]
            fuser._correct([{"id": sample_id, "alt": alt}], plans, images)
            right.append(plans[0]["visual"] == truth)
    assert np.mean(right) >= 0.9, f"the image chose the true background in {np.mean(right):.0%} of {len(right)}"


def _demo_words() -> set[str]:
    return set(COLOURS) | set(SHAPES) | set(BACKGROUNDS)


def vocabulary_leaks(source: str) -> list[str]:
    """Demo-world words a module's code names outside docstrings: a word as a value, or two in one collection."""
    words, tree, found = _demo_words(), ast.parse(source), []
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value.lower() in words:
                found.append(f"line {node.lineno}: {node.value!r}")
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            named = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if sum(w.lower() in words for w in named) >= 2:
                found.append(f"line {node.lineno}: {named}")
    return found


def test_product_code_holds_no_demo_vocabulary_list():
    """No list, set or tuple of colour, shape or background words, and no such word as a value, outside demo/
    (docstrings may explain with examples)."""
    for package in ("indexer", "curation", "app", "cli"):
        for path in (ROOT / package).rglob("*.py"):
            assert not vocabulary_leaks(path.read_text()), (path, vocabulary_leaks(path.read_text()))


def test_the_vocabulary_check_can_fail():
    assert vocabulary_leaks("COLOURS = ('yellow', 'red')") and vocabulary_leaks("x = w == 'striped'")
    assert not vocabulary_leaks('"""a yellow star, explained"""\nLABELS = ("good", "bad")')


# The goals, per error kind: AUROC of correct captions against captions wrong in that one way.
GOALS = {"colour": 0.93, "shape": 0.93, "size": 0.93, "position": 0.93, "background": 0.93, "binding": 0.80,
         "unrelated": 0.98}


@pytest.fixture(scope="module")
def contrast_world(tmp_path_factory):
    """A small world of scenes each indexed under eight captions in unseen phrasings (correct, and wrong in
    one known way), scored by the product's own stage; a reward learned from half the scenes' truth."""
    from curation.review.features import features
    from curation.review.labels import add_label
    from curation.review.models import predict
    from curation.review.reward import train_reward
    from demo.contrast_world import build, held_out_scenes, quality, scene_of
    root = tmp_path_factory.mktemp("contrast")
    build(root, n_scenes=60, seed=31, stages=("score",))
    with Workspace(root / "ws") as ws:
        held, scene = held_out_scenes(ws, seed=1), scene_of(ws)
        kind = dict(ws.rows("SELECT s.id, t.noise FROM demo_truth t JOIN samples s ON s.uid = t.uid"))
        for sample_id in sorted(i for i, s in scene.items() if s not in held):
            add_label(ws, sample_id, "alignment", "good" if kind[sample_id] == "correct" else "bad", who="test")
        feats = features(ws)
        learned = dict(zip(feats.ids.tolist(), predict(train_reward(ws), feats.x).tolist()))
        measured = quality(ws, {"learned_reward": learned}, only={i for i, s in scene.items() if s in held})
    print(json.dumps(measured, indent=1))
    return measured


# Kinds the shipped demo CLIP does not yet reach on phrasings it never saw (measured on this 60-scene world with
# the CLIP of demo/model/MODEL_CARD.md; best of contrast and learned reward). History: trained on paraphrases, size
# 0.91 and position 0.86; mining's second round (words two kept pairs apart) lifted position to 0.89; two more
# training stages with size, position and binding drawn more often as hard negatives (model card) lifted size to
# 0.9298 and position to 0.96; reading punctuation as part of a word's slot ("(large, at left)" is not the slot of
# "placed at left", so "large" -> "placed" is no longer mined) lifted size to 0.932. Empty now; strict: a kind put
# back here must really miss.
MISSED: dict[str, float] = {}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.xfail(
    strict=True, reason=f"demo CLIP measured {MISSED[k]} against goal {GOALS[k]}")) if k in MISSED else k
    for k in GOALS])
def test_each_error_kind_meets_its_goal(contrast_world, kind):
    best = max(contrast_world["contrast"][kind], contrast_world["learned_reward"][kind])
    assert best >= GOALS[kind], {name: contrast_world[name][kind] for name in ("clip_score", "contrast",
                                                                              "learned_reward")}


@pytest.mark.parametrize("kind", [k for k in GOALS if k != "unrelated"])
def test_contrast_is_sharper_than_clip_score_on_every_one_detail_error(contrast_world, kind):
    """Whatever the model can tell, contrast tells it better than the plain caption cosine."""
    assert contrast_world["contrast"][kind] >= contrast_world["clip_score"][kind] + 0.05, {
        name: contrast_world[name][kind] for name in ("clip_score", "contrast")}
