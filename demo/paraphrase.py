"""Many ways to word a demo scene, for training the demo CLIP (never the bench's or the tests' phrasings).

A web-trained CLIP has read every wording of "a big red star on the left"; the
demo CLIP had read two (the canonical caption and shop-style alt-text), so a
caption phrased any other way was new grammar to it, and its sense of size and
position did not carry over. :func:`paraphrase` draws a wording from a seed:
word order (colour before or after the shape, size before or after), synonyms
for sizes and places, connectives, object order and how the background is said.
The same seed words a scene and its one-detail-wrong copy the same way, so a
hard negative differs from its positive only in that detail.

These wordings are deliberately disjoint from :mod:`demo.phrasings` (the
contrast bench and tests), so those still measure phrasings the model never saw.
"""
from __future__ import annotations

import random

SIZE_WORDS = {"small": ("small", "tiny", "little"), "medium": ("medium", "medium-sized", "mid-sized"),
              "large": ("large", "big", "huge")}
PLACE_WORDS = {
    "left": ("on the left", "at the left", "on the left-hand side", "in the left part"),
    "right": ("on the right", "at the right", "on the right-hand side", "in the right part"),
    "top": ("at the top", "in the upper part", "high up", "along the top"),
    "bottom": ("at the bottom", "in the lower part", "low in the frame", "along the bottom"),
    "centre": ("in the centre", "in the center", "mid-frame", "right in the centre"),
}
GROUND = ("on a {bg} background", "against a {bg} background", "with a {bg} background",
          "over {bg} paper", "{bg} background")
JOINERS = (" and ", ", ", " with ", " beside ", " as well as ")


def _object(obj: dict, r: random.Random, form: int) -> str:
    size = r.choice(SIZE_WORDS[obj["size"]])
    place = r.choice(PLACE_WORDS[obj["position"]])
    colour, shape = obj["colour"], obj["shape"]
    if form == 0:
        return f"a {size} {colour} {shape} {place}"
    if form == 1:
        return f"a {colour} {shape}, {size}, {place}"
    if form == 2:
        return f"{place}, a {size} {colour} {shape}"
    if form == 3:
        return f"a {size} {shape} in {colour} {place}"
    return f"one {colour} {shape} {place}, {size}"


def paraphrase(scene: dict, seed: int) -> str:
    """A wording of ``scene`` drawn from ``seed``; the same seed words another scene with the same structure
    the same way (word for word, bar the scene's own attributes)."""
    r = random.Random(seed)
    form = r.randrange(5)
    order = list(range(len(scene["objects"])))
    if r.random() < 0.3:
        r.shuffle(order)
    joiner = r.choice(JOINERS)
    parts = [_object(scene["objects"][i], random.Random(seed * 31 + i), form) for i in order]
    ground = r.choice(GROUND).format(bg=scene["background"])
    listed = joiner.join(parts)
    if r.random() < 0.25:
        return f"{ground.capitalize()}: {listed}" if not ground.startswith("on ") else f"{listed} {ground}"
    return f"{listed}, {ground}"
