"""Captions of demo scenes in phrasings the product code has never seen, each right or wrong in one known way.

The contrast bench and tests index every scene several times, once per caption:
the correct description and one per error kind. Error kinds change exactly one
thing: an object's colour, shape, size or position, the background, the binding
(two objects swap colours), or the whole caption (another scene's, "unrelated").
Phrasings use other connectives, word orders and position words than the demo's
alt-text and captioner ("at left", "up top", "backdrop", "coloured red").
"""
from __future__ import annotations

import random

from demo.world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES

ERROR_KINDS = ("colour", "shape", "size", "position", "background", "binding", "unrelated")
WHERE = {"left": ("at left", "on the left side", "to the left"), "right": ("at right", "on the right side", "to the right"),
         "top": ("up top", "near the top edge", "at the top"), "bottom": ("down low", "near the bottom edge", "at the bottom"),
         "centre": ("in the middle", "at the centre", "centred")}


def _where(position: str, style: int) -> str:
    return WHERE[position][style % 3]


def _listing(parts: list[str], joiner: str) -> str:
    return parts[0] if len(parts) == 1 else f" {joiner} ".join(parts)


def describe(scene: dict, style: int) -> str:
    """One of four phrasings of a scene (objects largest first, as the truth lists them)."""
    objects, bg = scene["objects"], scene["background"]
    if style == 0:
        parts = [f"{o['size']} {o['colour']} {o['shape']} placed {_where(o['position'], style)}" for o in objects]
        return f"{_listing(parts, 'plus')}, all over a {bg} pattern"
    if style == 1:
        parts = [f"a {o['colour']} {o['shape']} ({o['size']}) {_where(o['position'], style)}" for o in objects]
        return f"There is {_listing(parts, 'and also')}. Backdrop: {bg}."
    if style == 2:
        parts = [f"a {o['size']} {o['shape']} coloured {o['colour']}, {_where(o['position'], style)}" for o in objects]
        return f"{bg.capitalize()} backdrop with {_listing(parts, 'next to')}"
    parts = [f"{o['colour']} {o['shape']} ({o['size']}, {_where(o['position'], style)})" for o in objects]
    return f"Picture of {len(objects)} shape{'s' if len(objects) > 1 else ''}: {'; '.join(parts)}; {bg} ground"


def corrupt(scene: dict, kind: str, rng: random.Random, other: dict) -> dict | None:
    """The scene changed in one way of ``kind`` (None when the scene cannot show that error)."""
    objects = [dict(o) for o in scene["objects"]]
    changed = {"objects": objects, "background": scene["background"]}
    target = rng.choice(objects)
    if kind == "colour":
        target["colour"] = rng.choice([c for c in COLOURS if c != target["colour"]])
    elif kind == "shape":
        target["shape"] = rng.choice([s for s in SHAPES if s != target["shape"]])
    elif kind == "size":
        target["size"] = rng.choice([s for s in SIZES if s != target["size"]])
    elif kind == "position":
        free = [p for p in POSITIONS if p not in {o["position"] for o in objects}]
        if not free:
            return None
        target["position"] = rng.choice(free)
    elif kind == "background":
        changed["background"] = rng.choice([b for b in BACKGROUNDS if b != scene["background"]])
    elif kind == "binding":
        pairs = [(a, b) for a in objects for b in objects if a is not b and a["colour"] != b["colour"]]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        a["colour"], b["colour"] = b["colour"], a["colour"]
    elif kind == "unrelated":
        return other
    else:
        raise ValueError(f"unknown error kind {kind!r}; allowed: {', '.join(ERROR_KINDS)}")
    return changed


HARD_KINDS = ("colour", "shape", "size", "position", "background", "binding")


def hard_negative(scene: dict, rng: random.Random, kinds: tuple[str, ...] = HARD_KINDS) -> tuple[str, dict]:
    """The scene wrong in one way, of a kind drawn from ``kinds`` the scene can show (NegCLIP-style training)."""
    for kind in rng.sample(list(kinds), len(kinds)):
        wrong = corrupt(scene, kind, rng, scene)
        if wrong is not None:
            return kind, wrong
    return "colour", corrupt(scene, "colour", rng, scene)


def caption_set(scene: dict, style: int, rng: random.Random, other: dict) -> dict[str, str]:
    """kind -> caption for one scene: the correct one and every error kind the scene can show."""
    out = {"correct": describe(scene, style)}
    for kind in ERROR_KINDS:
        wrong = corrupt(scene, kind, rng, other)
        if wrong is not None:
            out[kind] = describe(wrong, style)
    return out
