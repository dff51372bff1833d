"""The demo world: seeded scenes of coloured shapes with known truth, noisy alt-text and planted defaults.

Everything here is plain Python + Pillow so that it can be used by the demo
command, the demo-model trainer and the quality tests alike. A scene is a dict
(``objects`` + ``background``); its canonical caption is what a perfect
captioner would say; its alt-text is what a messy web page would say, with a
known noise kind per sample.
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
COLOURS = {
    "red": (215, 38, 38),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 25),
    "green": (35, 165, 55),
    "blue": (35, 85, 225),
    "purple": (135, 55, 190),
    "pink": (250, 135, 195),
    "white": (248, 248, 248),
}
SIZES = {"small": 0.09, "medium": 0.14, "large": 0.2}
POSITIONS = {
    "left": (0.22, 0.5),
    "right": (0.78, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "centre": (0.5, 0.5),
}
POSITION_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
BACKGROUNDS = ("gray", "striped", "dotted", "checkered")
NOISE_KINDS = ("correct", "partial", "swapped", "unrelated", "junk", "empty")

# Knowledge a camera cannot see: alt-text carries it, fusion should keep it.
BRANDS = ("Acme", "Globex", "Initech", "Hooli", "Vandelay", "Umbrella")
PLACES = ("Lisbon market", "Kyoto craft fair", "Oaxaca bazaar", "Brooklyn flea", "Marrakesh souk")
COLLECTIONS = ("Bauhaus collection", "Mira Okafor", "Spring catalog", "Tate archive")
JUNK = (
    "IMG_{n}.JPG",
    "DSC{n}.jpg",
    "click here for best price",
    "buy cheap stickers online free shipping best deals",
    "stickers, decals, wall art, kids room, cheap, sale, gift",
    "untitled-{n}.png",
    "image",
    "Home | Shop | Contact",
)


@dataclass(frozen=True)
class Topic:
    """A kind of picture a web crawl holds many of (a shop's product shots, a photographer's series):
    its background, its subject's shape, the shapes around the subject and the colours it uses."""

    name: str
    background: str
    subject: str
    extras: tuple[str, ...]
    palette: tuple[str, ...]


# Web data is topical, not factorial: most pictures belong to one of a few kinds,
# so there are regions for a map to find. Every shape, colour and background still
# appears outside its topics, so minority attributes exist.
TOPICS = (
    Topic("night sky", "dotted", "star", ("circle", "star"), ("yellow", "white", "blue")),
    Topic("tile shop", "checkered", "square", ("square", "hexagon"), ("red", "white", "orange")),
    Topic("road signs", "striped", "triangle", ("triangle", "diamond"), ("green", "yellow", "orange")),
    Topic("nursery prints", "gray", "circle", ("circle", "cross"), ("pink", "purple", "white")),
    Topic("honeycomb", "dotted", "hexagon", ("hexagon", "square"), ("blue", "green", "purple")),
    Topic("jewellery", "striped", "diamond", ("diamond", "star"), ("red", "pink", "purple")),
    Topic("first aid", "checkered", "cross", ("cross", "triangle"), ("blue", "red", "green")),
    Topic("party stickers", "gray", "star", ("star", "diamond"), ("orange", "purple", "yellow")),
)


@dataclass(frozen=True)
class WorldConfig:
    """How scenes are drawn. ``star_yellow`` and ``square_large`` plant the defaults; ``topical`` is the
    share of scenes drawn from a topic, ``on_topic`` the share of their objects that follow it, and
    ``subject_large`` how often a topic's subject is drawn large."""

    image_size: int = 96
    star_yellow: float = 0.35
    square_large: float = 0.4
    max_objects: int = 3
    topical: float = 0.0
    on_topic: float = 0.95
    subject_large: float = 0.6


# The captioner's training distribution: stars are yellow and squares large far
# more often than in the demo dataset, so a captioner trained on it inherits
# these default behaviours.
# The demo models learn from factorial scenes (every combination equally often) and
# are evaluated on them (EVAL_WORLD); the demo dataset is topical like a web crawl.
TRAIN_WORLD = WorldConfig(star_yellow=0.9, square_large=0.85)
EVAL_WORLD = WorldConfig()
DEMO_WORLD = WorldConfig(topical=0.9)


@dataclass(frozen=True)
class NoiseConfig:
    """Fractions of each alt-text noise kind (normalised) and of knowledge items."""

    correct: float = 0.45
    partial: float = 0.13
    swapped: float = 0.14
    unrelated: float = 0.12
    junk: float = 0.1
    empty: float = 0.06
    knowledge: float = 0.7
    exact_dups: float = 0.02
    near_dups: float = 0.02
    # Different pictures of one thing (a second product shot, another frame): the scene drawn again with new
    # jitter, zoom and JPEG quality, and an alt-text of its own noise kind. Off unless asked for, so that the
    # worlds the tests and models were tuned on stay as they are; ``altlens demo`` plants them.
    semantic_dups: float = 0.0
    # A concept the reward does not cover: a stock-photo watermark ("SAMPLE" tiled over the picture), drawn on
    # this share of images (decided by a separate seeded draw, so the rest of the world is unchanged).
    watermarked: float = 0.0

    def weights(self) -> list[float]:
        return [getattr(self, k) for k in NOISE_KINDS]


def random_scene(rng: random.Random, world: WorldConfig = DEMO_WORLD) -> dict:
    """Draw one scene: 1..max_objects objects at distinct positions, and a background (``topic`` is truth only)."""
    n = rng.randint(1, world.max_objects)
    positions = rng.sample(list(POSITIONS), n)
    topic = rng.choice(TOPICS) if world.topical and rng.random() < world.topical else None
    objects = []
    for k, pos in enumerate(positions):
        follow = topic is not None and rng.random() < world.on_topic
        shape = (topic.subject if k == 0 else rng.choice(topic.extras)) if follow else rng.choice(SHAPES)
        palette = list(topic.palette) if follow else list(COLOURS)
        colour = _pick(rng, palette, "yellow" if shape == "star" else None, world.star_yellow)
        if follow and k == 0 and shape != "square":
            size = _pick(rng, list(SIZES), "large", world.subject_large)
        else:
            size = _pick(rng, list(SIZES), "large" if shape == "square" else None, world.square_large)
        objects.append({"shape": shape, "colour": colour, "size": size, "position": pos})
    objects.sort(key=lambda o: -SIZES[o["size"]])
    scene = {"objects": objects, "background": topic.background if topic else rng.choice(BACKGROUNDS)}
    if topic is not None:
        scene["topic"] = topic.name
    return scene


def _pick(rng: random.Random, values: list[str], favourite: str | None, p: float) -> str:
    if favourite is not None and rng.random() < p:
        return favourite
    if favourite is not None:
        return rng.choice([v for v in values if v != favourite] or values)
    return rng.choice(values)


def object_phrase(obj: dict, with_position: bool = True, with_size: bool = True) -> str:
    words = ([obj["size"]] if with_size else []) + [obj["colour"], obj["shape"]]
    phrase = "a " + " ".join(words)
    return f"{phrase} {POSITION_PHRASE[obj['position']]}" if with_position else phrase


def canonical_caption(scene: dict) -> str:
    """The clean caption a perfect captioner would write, largest object first."""
    parts = [object_phrase(o) for o in scene["objects"]]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed}, on a {scene['background']} background"


@dataclass(frozen=True)
class CaptionHabits:
    """Default behaviours planted in the demo captioner's training captions.

    The people (or the older model) who wrote those captions call a star yellow
    and a square large most of the time, whatever the picture shows -- the way web
    captions say "gold star" for any star sticker. A captioner trained on them
    inherits the habit; the CLIP is trained on faithful captions, so the image
    side still shows the truth. This is what the defaults view has to find.
    """

    star_says_yellow: float = 0.9
    square_says_large: float = 0.85


def habit_caption(scene: dict, rng: random.Random, habits: CaptionHabits = CaptionHabits()) -> str:
    """The canonical caption as a writer with ``habits`` would put it (objects keep their true order)."""
    objects = []
    for obj in scene["objects"]:
        obj = dict(obj)
        if obj["shape"] == "star" and rng.random() < habits.star_says_yellow:
            obj["colour"] = "yellow"
        if obj["shape"] == "square" and rng.random() < habits.square_says_large:
            obj["size"] = "large"
        objects.append(obj)
    return canonical_caption({**scene, "objects": objects})


def varied_caption(scene: dict, rng: random.Random, habits: CaptionHabits = CaptionHabits(),
                   canonical_share: float = 0.4) -> str:
    """One of the ways different writers put the same picture, as the habitual writer would: the full caption
    ``canonical_share`` of the time, else a thinner one (size, position or background left out, or only the
    largest object named). Nothing false is added (the habits aside), and the largest object stays first.
    The captioner learns from these, so that sampling it gives different captions of one image, as a real
    captioner does."""
    full = habit_caption(scene, rng, habits)
    if rng.random() < canonical_share:
        return full
    objects = [dict(o) for o in scene["objects"]]
    for obj in objects:  # the habits again, for the thinner wording
        if obj["shape"] == "star" and rng.random() < habits.star_says_yellow:
            obj["colour"] = "yellow"
        if obj["shape"] == "square" and rng.random() < habits.square_says_large:
            obj["size"] = "large"
    if len(objects) > 1 and rng.random() < 0.35:
        objects = objects[:1]
    with_size, with_position = rng.random() < 0.5, rng.random() < 0.5
    parts = [object_phrase(o, with_position=with_position, with_size=with_size) for o in objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed}, on a {scene['background']} background" if rng.random() < 0.6 else listed


def largest_shape(scene: dict) -> str:
    return scene["objects"][0]["shape"]


# ---------------------------------------------------------------- drawing

def render(scene: dict, size: int = 96, jitter_seed: int = 0) -> Image.Image:
    """Draw a scene at ``size`` px (supersampled 2x for smooth edges)."""
    rng = random.Random(jitter_seed)
    big = size * 2
    img = _background(scene["background"], big)
    draw = ImageDraw.Draw(img)
    for obj in scene["objects"]:
        cx, cy = POSITIONS[obj["position"]]
        cx += rng.uniform(-0.04, 0.04)
        cy += rng.uniform(-0.04, 0.04)
        r = SIZES[obj["size"]] * rng.uniform(0.92, 1.08)
        angle = rng.uniform(-0.25, 0.25)
        _draw_shape(draw, obj["shape"], cx * big, cy * big, r * big, angle, COLOURS[obj["colour"]])
    return img.resize((size, size), Image.LANCZOS)


def _background(kind: str, n: int) -> Image.Image:
    img = Image.new("RGB", (n, n), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    step = max(n // 8, 4)
    if kind == "striped":
        img.paste((150, 150, 175), (0, 0, n, n))
        for y in range(0, n, step):
            draw.rectangle((0, y, n, y + step // 2 - 1), fill=(85, 85, 110))
    elif kind == "dotted":
        img.paste((170, 160, 135), (0, 0, n, n))
        for y in range(step // 2, n, step):
            for x in range(step // 2, n, step):
                draw.ellipse((x - step // 6, y - step // 6, x + step // 6, y + step // 6), fill=(95, 85, 70))
    elif kind == "checkered":
        img.paste((60, 60, 60), (0, 0, n, n))
        for y in range(0, n, step):
            for x in range(0, n, step):
                if (x // step + y // step) % 2 == 0:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=(105, 105, 105))
    return img


def _polygon(cx: float, cy: float, r: float, k: int, angle: float, inner: float | None = None):
    points = []
    steps = 2 * k if inner else k
    for i in range(steps):
        radius = r * (inner if inner and i % 2 else 1.0)
        a = angle - math.pi / 2 + 2 * math.pi * i / steps
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx, cy, r, angle, fill) -> None:
    outline = (20, 20, 20)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=2)
        return
    if shape == "cross":
        w = r * 0.38
        for dx, dy in ((r, w), (w, r)):
            draw.rectangle((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill)
        return
    sides = {"square": (4, math.pi / 4), "triangle": (3, 0.0), "hexagon": (6, 0.0), "diamond": (4, 0.0)}
    if shape == "star":
        pts = _polygon(cx, cy, r * 1.1, 5, angle, inner=0.45)
    else:
        k, base = sides[shape]
        scale = 1.15 if shape == "square" else 1.1
        pts = _polygon(cx, cy, r * scale, k, base + angle)
        if shape == "diamond":
            pts = [(cx + (x - cx) * 0.7, y) for x, y in pts]
    draw.polygon(pts, fill=fill, outline=outline, width=2)


def watermark(img: Image.Image, seed: int = 0) -> Image.Image:
    """A stock-photo watermark: the word SAMPLE in translucent white, tiled over the whole picture."""
    base = img.convert("RGBA")
    over = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    w, h = base.size
    shift = seed % 20
    for y in range(-h, h, 20):
        for x in range(-w, w, 44):
            draw.text((x + y + shift, y + x // 3), "SAMPLE", fill=(255, 255, 255, 160))
    return Image.alpha_composite(base, over).convert("RGB")


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ---------------------------------------------------------------- alt-text

def alt_text(scene: dict, kind: str, rng: random.Random, other: dict, knowledge: list[str]) -> str:
    """Render a web-style alt-text of ``kind`` for ``scene`` (``other`` feeds 'unrelated')."""
    if kind == "empty":
        return ""
    if kind == "junk":
        return rng.choice(JUNK).format(n=rng.randint(1000, 9999))
    objects = [dict(o) for o in scene["objects"]]
    if kind == "unrelated":
        objects = [dict(o) for o in other["objects"]]
    elif kind == "partial":
        keep = rng.randint(1, len(objects) - 1)
        objects = rng.sample(objects, keep)
    elif kind == "swapped":
        _swap_one_attribute(objects, rng)
    return _web_style(objects, scene if kind != "unrelated" else other, rng, knowledge)


def _swap_one_attribute(objects: list[dict], rng: random.Random) -> None:
    obj = rng.choice(objects)
    if rng.random() < 0.5:
        obj["colour"] = rng.choice([c for c in COLOURS if c != obj["colour"]])
    else:
        obj["shape"] = rng.choice([s for s in SHAPES if s != obj["shape"]])


def swap_caption(scene: dict, rng: random.Random) -> str:
    """The canonical caption of the scene with exactly one colour or shape changed."""
    objects = [dict(o) for o in scene["objects"]]
    _swap_one_attribute(objects, rng)
    return canonical_caption({"objects": objects, "background": scene["background"]})


def _web_style(objects: list[dict], scene: dict, rng: random.Random, knowledge: list[str]) -> str:
    things = [f"{o['colour']} {o['shape']}" for o in objects]
    if rng.random() < 0.5 and len(objects) == 1:
        things = [f"{objects[0]['size']} {things[0]}"]
    listed = " and ".join(things) if len(things) < 3 else ", ".join(things[:-1]) + " and " + things[-1]
    brand = next((k for k in knowledge if k in BRANDS), None)
    rest = [k for k in knowledge if k not in BRANDS]
    head = f"{brand} {listed} sticker" if brand else rng.choice((listed, f"{listed} sticker", f"{listed} print"))
    if rng.random() < 0.4:
        head += f" on {scene['background']} paper"
    for k in rest:
        head += f", from the {k}" if k in PLACES else f", {k}"
    return head


def knowledge_items(rng: random.Random, p: float) -> list[str]:
    """0-2 facts a camera cannot see (a brand, a place, a collection or artist)."""
    if rng.random() >= p:
        return []
    pools = [BRANDS, PLACES, COLLECTIONS]
    picked = rng.sample(pools, rng.choice((1, 1, 2)))
    return [rng.choice(pool) for pool in picked]
