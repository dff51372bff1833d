"""The shipped demo CLIP + captioner: their three numbers re-checked on freshly generated held-out scenes."""
from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_folder

from demo import CAPTIONER_CHECKPOINT as CAPTIONER
from demo import CLIP_CHECKPOINT
from demo.captioner import load_captioner
from demo.evaluate import evaluate_model
from demo.samples import generate_samples, sample_image
from demo.world import DEMO_WORLD, TRAIN_WORLD, NoiseConfig, canonical_caption, habit_caption, random_scene
from indexer.models import ModelSpec, load_model


@pytest.fixture(scope="module")
def demo_model():
    return load_model(ModelSpec(checkpoint=str(CLIP_CHECKPOINT)))


@pytest.fixture(scope="module")
def numbers(demo_model):
    result = evaluate_model(demo_model, n=300, seed=9090, captioner=load_captioner(CAPTIONER))
    print(json.dumps(result, indent=1))
    return result


def test_shipped_checkpoint_separates_true_captions(numbers):
    assert numbers["auroc_random"] >= 0.98
    assert numbers["auroc_swapped"] >= 0.80


def test_shipped_checkpoint_captions_name_the_largest_shape(numbers):
    assert numbers["largest_shape_acc"] >= 0.80


def test_shipped_captioner_says_one_picture_several_ways(numbers):
    """Five top-p captions of an image differ on most images (DataCompDR's value is several different
    captions; the first shipped captioner gave 1.5 distinct of 5, 11% of images with 3 or more)."""
    assert numbers["share_3_distinct"] >= 0.6 and numbers["distinct_of_5"] >= 3.0
    assert numbers["distinct_2"] > 0.25


def test_checkpoint_is_small_and_carded():
    assert CLIP_CHECKPOINT.stat().st_size + CAPTIONER.stat().st_size < 30e6
    card = (CLIP_CHECKPOINT.parent / "MODEL_CARD.md").read_text()
    for needle in ("AUROC", "seed", "minutes", "largest shape"):
        assert needle in card


def test_index_with_the_shipped_checkpoint_like_real_weights(tmp_path):
    write_folder(tmp_path / "src", n_good=4, bad=False)
    run_cli("index", str(tmp_path / "src"), "-w", str(tmp_path / "ws"), "--checkpoint", str(CLIP_CHECKPOINT))
    stats = json.loads(run_cli("stats", "-w", str(tmp_path / "ws"), "--json").stdout)
    assert stats["samples"] == 4 and stats["model"]["model_id"].startswith("altlens-demo-clip@sha256:")


def test_world_is_seeded_and_plants_defaults():
    a = generate_samples(50, seed=3)
    assert [s.alt for s in a] == [s.alt for s in generate_samples(50, seed=3)]
    assert sample_image(a[0]) == sample_image(generate_samples(1, seed=3)[0])
    import random
    rng = random.Random(1)
    train_stars = [o for _ in range(3000) for o in random_scene(rng, TRAIN_WORLD)["objects"] if o["shape"] == "star"]
    demo_stars = [o for _ in range(3000) for o in random_scene(rng, DEMO_WORLD)["objects"] if o["shape"] == "star"]
    yellow = lambda stars: sum(o["colour"] == "yellow" for o in stars) / len(stars)  # noqa: E731
    assert yellow(train_stars) > 0.85 and 0.25 < yellow(demo_stars) < 0.45
    purple = [s for s in (random_scene(rng, DEMO_WORLD) for _ in range(3000))
              if any(o["shape"] == "star" and o["colour"] == "purple" for o in s["objects"])]
    said = [habit_caption(s, rng) for s in purple]
    assert sum("purple star" not in c for c in said) / len(said) > 0.8, "the habit calls most purple stars yellow"
    assert all(canonical_caption(s).count(",") == habit_caption(s, rng).count(",") for s in purple[:50])
    kinds = {s.noise for s in generate_samples(400, seed=4, noise=NoiseConfig())}
    assert kinds == {"correct", "partial", "swapped", "unrelated", "junk", "empty"}
    dups = [s for s in generate_samples(400, seed=4) if s.dup_of]
    assert {s.dup_kind for s in dups} == {"exact", "near"}


def test_training_draws_a_kind_named_twice_twice_as_often(tmp_path):
    """``--hard-negative`` weights the one-detail-wrong captions the demo CLIP trains against (the stages that
    lifted size and position drew those kinds more often); an unknown kind is refused before any work."""
    import random
    from collections import Counter

    from demo.phrasings import hard_negative
    from demo.train import kinds_text

    rng = random.Random(5)
    scenes = [random_scene(rng, TRAIN_WORLD) for _ in range(3000)]
    drawn = Counter(hard_negative(s, rng, ("size", "size", "colour"))[0] for s in scenes)
    assert set(drawn) == {"size", "colour"} and 1.7 < drawn["size"] / drawn["colour"] < 2.3, drawn
    assert kinds_text(("colour", "size", "size", "binding")) == "colour, size (x2), binding"
    proc = run_cli("demo-train", "--out-dir", str(tmp_path), "--hard-negative", "texture", check=False)
    assert proc.returncode != 0 and "unknown kind texture" in proc.stderr and not any(tmp_path.iterdir())
