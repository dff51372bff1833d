"""Caption fusion (CapsFusion-style): alt-text knowledge + a synthetic caption's structure -> one fused caption.

The ``rules`` fuser (offline default) works in four steps:

1. drop junk alt-text whole (file names, spam, keyword lists, navigation, one generic word);
2. take as base the sample's synthetic caption that best matches the image;
3. where alt-text and base disagree on something visual (a colour or shape of
   the same thing), build the alternatives and let the image decide by cosine
   with the embedding model;
4. carry over what the image cannot contradict: proper nouns and brands, places,
   named collections or artists, the medium (sticker, print, ...), non-count numbers.

It never concatenates the two texts. ``RULES_VERSION`` goes into the producer id.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

RULES_VERSION = "rules-v1"

COLOURS = {"red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black", "brown", "gray",
           "grey", "violet", "cyan", "magenta", "beige", "gold", "silver", "teal", "turquoise", "navy", "maroon"}
SHAPES = {"circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart", "rectangle", "oval",
          "pentagon", "octagon", "ring", "crescent", "arrow", "sphere", "cube"}
COUNTS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "single", "pair"}
SIZES = {"small", "medium", "large", "big", "tiny", "huge"}
PLACEMENT = {"left", "right", "top", "bottom", "centre", "center", "middle", "background", "foreground",
             "paper", "surface"}
VISUAL = COLOURS | SHAPES | COUNTS | SIZES | PLACEMENT
MEDIA = {"sticker", "print", "poster", "postcard", "mug", "shirt", "t-shirt", "card", "painting", "drawing",
         "illustration", "photo", "photograph", "decal", "tile", "badge", "magnet", "fabric", "quilt", "logo"}
COMMON_CAPITALISED = {"a", "an", "the", "this", "these", "that", "photo", "image", "picture", "view", "close",
                      "closeup", "new", "free", "best", "my", "our", "home", "shop", "buy", "click", "sale",
                      "set", "pack", "and", "with", "on", "in", "of", "for", "from"}
SPAM = ("click here", "free shipping", "best price", "best deals", "buy now", "buy cheap", "order now",
        "shop now", "discount", "lowest price", "cheap", "for sale")
GENERIC = {"image", "photo", "picture", "untitled", "img", "thumbnail", "default", "placeholder", "null", "none"}
FILENAME = re.compile(r"^\s*[\w\-. ]*\.(jpe?g|png|gif|webp|bmp|tiff?)\s*$", re.I)
CAMERA = re.compile(r"^\s*(IMG|DSC|DSCN|DCIM|PXL|MVIMG|GOPR|P)[_-]?\d{3,}", re.I)
PROVENANCE = re.compile(r"\b(from|at|in|by)\s+((?:the\s+)?[A-Z][\w'&.-]*(?:\s+[A-Z][\w'&.-]*)*(?:\s+[a-z][\w-]*){0,2})")
WORD = re.compile(r"[A-Za-z][\w'&-]*|\d+")


def junk_reason(alt: str) -> str | None:
    """Why an alt-text carries nothing worth keeping, or None if it may."""
    text = alt.strip()
    low = text.lower()
    if not text:
        return "empty"
    if FILENAME.match(text) or CAMERA.match(text):
        return "file name"
    if any(phrase in low for phrase in SPAM):
        return "spam"
    if text.count("|") >= 2:
        return "navigation"
    items = [i.strip() for i in text.split(",")]
    if len(items) >= 4 and all(0 < len(i.split()) <= 3 for i in items) and not (set(low.split()) & (SHAPES | COLOURS)):
        return "keyword list"
    if low.strip(".!") in GENERIC:
        return "generic"
    return None


@dataclass
class Knowledge:
    """What an alt-text knows that the camera cannot see."""

    brand: str | None = None
    medium: str | None = None
    phrases: list[str] = field(default_factory=list)

    def items(self) -> list[str]:
        return ([self.brand] if self.brand else []) + self.phrases


def extract_knowledge(alt: str) -> Knowledge:
    """Brands, media, provenance phrases and named clauses from an alt-text (empty for junk)."""
    know = Knowledge()
    if junk_reason(alt):
        return know
    for clause in re.split(r"\s*[,;|:]\s*|\s+[-–—]\s+", alt.strip()):
        if not clause:
            continue
        words = WORD.findall(clause)
        lowered = {w.lower() for w in words}
        if know.medium is None:
            know.medium = next((w.lower() for w in words if w.lower() in MEDIA), None)
        provenance = [m.group(0).strip() for m in PROVENANCE.finditer(clause)]
        provenance = [_trim_visual(p) for p in provenance]
        know.phrases += [p for p in provenance if p and p not in know.phrases]
        rest = PROVENANCE.sub(" ", clause)
        rest_words = WORD.findall(rest)
        if not (lowered & VISUAL) and any(w[0].isupper() for w in rest_words):
            named = " ".join(rest_words)
            if named.lower() not in GENERIC and named not in know.phrases:
                know.phrases.append(named)
        elif know.brand is None:
            know.brand = _brand(rest_words)
    return know


def _trim_visual(phrase: str) -> str:
    words = phrase.split()
    while words and words[-1].lower() in VISUAL | MEDIA:
        words.pop()
    return " ".join(words) if len(words) > 1 else ""


def _brand(words: list[str]) -> str | None:
    """A capitalised word in a visual clause that is not a common or visual word: a brand or name."""
    names = [w for w in words if w[0].isupper() and w.lower() not in COMMON_CAPITALISED | VISUAL | MEDIA]
    return " ".join(names) if names else None


def visual_pairs(text: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs a text states, in order: 'a large yellow star' -> ('yellow', 'star')."""
    words = [w.lower() for w in WORD.findall(text)]
    pairs = []
    for i, word in enumerate(words[:-1]):
        if word in COLOURS and words[i + 1] in SHAPES:
            pairs.append((word, words[i + 1]))
    return pairs


def conflict_alternatives(base: str, alt: str) -> list[str]:
    """Versions of ``base`` with one object's colour and shape taken from the alt-text where the two disagree.

    Each object the alt-text states and ``base`` does not may stand in for each object ``base``
    states; the image decides which, if any, is right (see :mod:`curation.captions.fuse`).
    """
    base_pairs = visual_pairs(base)
    out = []
    for colour, shape in visual_pairs(alt):
        if (colour, shape) in base_pairs:
            continue
        for b_colour, b_shape in base_pairs:
            swapped = re.sub(rf"\b{b_colour} {b_shape}\b", f"{colour} {shape}", base, count=1)
            if swapped != base and swapped not in out:
                out.append(swapped)
    return out


def compose(visual: str, know: Knowledge) -> str:
    """One sentence: '<Brand> <medium> of <visual description>, <provenance>, <names>'."""
    visual = visual.strip().rstrip(".")
    if know.brand and know.medium:
        lead = f"{know.brand} {know.medium} of {visual}"
    elif know.brand:
        lead = f"{know.brand}: {visual}"
    elif know.medium:
        lead = f"{_article(know.medium)} {know.medium} of {visual}"
    else:
        lead = visual
    return ", ".join([lead] + know.phrases)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass
class FusionPlan:
    """The fused caption of one sample, with what went into it (stored as the caption's params)."""

    text: str
    base: str
    junk: str | None
    knowledge: list[str]
    corrected_from: str | None = None


def plan_fusion(alt: str, base: str) -> tuple[list[str], Knowledge, str | None]:
    """Candidates for the visual part (base first) and the alt-text's knowledge."""
    junk = junk_reason(alt)
    if junk:
        return [base], Knowledge(), junk
    return [base] + conflict_alternatives(base, alt), extract_knowledge(alt), None
