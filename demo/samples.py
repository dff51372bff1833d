"""Demo datasets: seeded samples of the demo world with noisy alt-text and planted duplicates, as JPEG bytes."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import ImageEnhance

from demo.world import (
    DEMO_WORLD,
    NOISE_KINDS,
    NoiseConfig,
    WorldConfig,
    alt_text,
    canonical_caption,
    jpeg_bytes,
    knowledge_items,
    random_scene,
    render,
    watermark,
)


@dataclass
class DemoSample:
    """One generated sample with everything the world knows about it."""

    key: str
    scene: dict
    caption: str
    alt: str
    noise: str
    knowledge: list[str] = field(default_factory=list)
    dup_of: str | None = None
    dup_kind: str | None = None
    jitter: int = 0
    watermark: bool = False


def generate_samples(n: int, seed: int, world: WorldConfig = DEMO_WORLD,
                     noise: NoiseConfig = NoiseConfig()) -> list[DemoSample]:
    """``n`` samples with seeded scenes, alt-text noise and planted duplicates."""
    rng = random.Random(seed)
    samples: list[DemoSample] = []
    seen: set[str] = set()
    for i in range(n):
        key = f"{i:08d}"
        dup = _maybe_duplicate(rng, samples, noise)
        if dup is not None and dup[1] == "semantic":
            src = dup[0]
            kind = rng.choices(NOISE_KINDS, weights=noise.weights())[0]
            if kind == "partial" and len(src.scene["objects"]) < 2:
                kind = "correct"
            know = knowledge_items(rng, noise.knowledge) if kind in ("correct", "partial", "swapped") else []
            alt = alt_text(src.scene, kind, rng, _other_scene(rng, world, src.scene), know)
            samples.append(DemoSample(key, src.scene, src.caption, alt, kind, know, dup_of=src.key,
                                      dup_kind="semantic", jitter=rng.randrange(1 << 30)))
            continue
        if dup is not None:
            src, kind = dup
            know = list(src.knowledge)
            samples.append(DemoSample(key, src.scene, src.caption, src.alt, src.noise, know,
                                      dup_of=src.key, dup_kind=kind, jitter=src.jitter))
            continue
        scene = _fresh_scene(rng, world, seen)
        kind = rng.choices(NOISE_KINDS, weights=noise.weights())[0]
        if kind == "partial" and len(scene["objects"]) < 2:
            kind = "correct"
        know = knowledge_items(rng, noise.knowledge) if kind in ("correct", "partial", "swapped") else []
        other = _other_scene(rng, world, scene)
        alt = alt_text(scene, kind, rng, other, know)
        samples.append(DemoSample(key, scene, canonical_caption(scene), alt, kind, know,
                                  jitter=rng.randrange(1 << 30)))
    marks = random.Random(f"watermark:{seed}")  # its own draw: the world without marks stays the same
    by_key = {s.key: s for s in samples}
    for s in samples:  # a copy carries its original's mark (one shop stamps all its shots)
        s.watermark = by_key[s.dup_of].watermark if s.dup_of else marks.random() < noise.watermarked
    return samples


def _other_scene(rng: random.Random, world: WorldConfig, scene: dict, tries: int = 20) -> dict:
    """The scene an unrelated alt-text describes: from another topic, so that it is really wrong for this
    image (two pictures of one topic can share most of a description)."""
    for _ in range(tries):
        other = random_scene(rng, world)
        if other.get("topic") != scene.get("topic") or "topic" not in scene:
            return other
    return other


def _fresh_scene(rng: random.Random, world: WorldConfig, seen: set[str], tries: int = 50) -> dict:
    """A scene whose content (objects + background) no earlier sample has: in a topical world two
    independent draws can coincide and render as near-identical pictures, which would make the
    planted duplicates an incomplete truth."""
    for _ in range(tries):
        scene = random_scene(rng, world)
        key = repr((sorted(tuple(sorted(o.items())) for o in scene["objects"]), scene["background"]))
        if key not in seen:
            seen.add(key)
            return scene
    return scene


def _maybe_duplicate(rng: random.Random, samples: list[DemoSample], noise: NoiseConfig):
    originals = [s for s in samples[-500:] if s.dup_of is None]
    if not originals:
        return None
    roll = rng.random()
    if roll < noise.exact_dups:
        return rng.choice(originals), "exact"
    if roll < noise.exact_dups + noise.near_dups:
        return rng.choice(originals), "near"
    if roll < noise.exact_dups + noise.near_dups + noise.semantic_dups:
        return rng.choice(originals), "semantic"
    return None


def sample_image(sample: DemoSample, size: int = 96) -> bytes:
    """JPEG bytes of a sample; a near-duplicate is the same picture brightened and re-encoded; a semantic
    duplicate is the scene drawn again (its objects moved, resized and turned a little) and saved at a JPEG
    quality of 70..90. A watermarked sample has :func:`demo.world.watermark` drawn over it. (Zooming or rescaling is left out: the demo CLIP, trained on one pixel grid, reads a
    rescaled background pattern as another background.)"""
    img = render(sample.scene, size, jitter_seed=sample.jitter)
    if sample.watermark:
        img = watermark(img, sample.jitter)
    if sample.dup_kind == "semantic":
        return jpeg_bytes(img, 70 + sample.jitter % 21)
    if sample.dup_kind == "near":
        img = ImageEnhance.Brightness(img).enhance(1.08)
        return jpeg_bytes(img, 75)
    return jpeg_bytes(img, 92)
