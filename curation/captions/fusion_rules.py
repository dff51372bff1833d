"""Caption fusion (CapsFusion-style): alt-text knowledge + a synthetic caption's structure -> one fused caption.

The ``rules`` fuser (offline default) works in four steps:

1. drop junk alt-text whole (file names, spam, keyword lists, navigation, one generic word);
2. take as base the sample's synthetic caption that best matches the image;
3. where alt-text and base use different words of one kind (the workspace's
   contrast sets say "striped" and "dotted", or "beach" and "forest", are of a
   kind), build the alternatives and let the image decide by cosine with the
   embedding model;
4. carry over what the image cannot contradict: names and brands, places, named
   collections or artists, and what kind of picture it is (a print, a sticker, ...).

What counts as visual is what the contrast sets can judge, so no list of colours
or shapes lives here. It never concatenates the two texts. ``RULES_VERSION`` goes
into the producer id.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from curation.claims.sets import ContrastSets
from curation.claims.words import STOP_WORDS, replace_word

RULES_VERSION = "rules-v2"

# What kind of picture an image is: a property of images in general, which alt-text knows and a camera cannot.
IMAGE_MEDIA = {"photo", "photograph", "illustration", "drawing", "painting", "render", "rendering", "poster",
               "print", "sticker", "postcard", "card", "decal", "logo", "icon", "screenshot", "diagram", "sketch",
               "watercolor", "watercolour", "engraving", "collage", "mockup"}
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
    if len(items) >= 4 and all(0 < len(i.split()) <= 3 and not set(i.lower().split()) & STOP_WORDS for i in items):
        return "keyword list"  # phrases joined by commas hold function words ("a red star, a blue circle"); tags do not
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


def extract_knowledge(alt: str, sets: ContrastSets) -> Knowledge:
    """Brands, media, provenance phrases and named clauses from an alt-text (empty for junk); a clause with a
    word the contrast sets can judge describes the picture, its capitalised words are a brand or a name."""
    know = Knowledge()
    if junk_reason(alt):
        return know
    for clause in re.split(r"\s*[,;|:]\s*|\s+[-–—]\s+", alt.strip()):
        if not clause:
            continue
        words = WORD.findall(clause)
        if know.medium is None:
            know.medium = next((w.lower() for w in words if w.lower() in IMAGE_MEDIA), None)
        provenance = [_trim_visual(m.group(0).strip(), sets) for m in PROVENANCE.finditer(clause)]
        know.phrases += [p for p in provenance if p and p not in know.phrases]
        rest = PROVENANCE.sub(" ", clause)
        rest_words = WORD.findall(rest)
        visual = any(sets.judged(w) for w in words)
        if not visual and any(w[0].isupper() for w in rest_words):
            named = " ".join(rest_words)
            if named.lower() not in GENERIC and named not in know.phrases:
                know.phrases.append(named)
        elif know.brand is None:
            know.brand = _brand(rest_words, sets)
    return know


def _trim_visual(phrase: str, sets: ContrastSets) -> str:
    words = phrase.split()
    while words and (sets.judged(words[-1]) or words[-1].lower() in IMAGE_MEDIA):
        words.pop()
    return " ".join(words) if len(words) > 1 else ""


def _brand(words: list[str], sets: ContrastSets) -> str | None:
    """Capitalised words of a visual clause that are neither common, judged by the images, nor a medium."""
    names = [w for w in words if w[0].isupper() and w.lower() not in COMMON_CAPITALISED | IMAGE_MEDIA
             and not sets.judged(w)]
    return " ".join(names) if names else None


def conflict_alternatives(base: str, alt: str, sets: ContrastSets) -> list[str]:
    """Versions of ``base`` with one claim replaced by the alt-text's claim of the same kind where they differ
    ("a yellow star on a dotted background" + alt "purple star, striped" -> "a purple star on a dotted
    background", "a yellow star on a striped background"). The image decides which, if any, is right
    (see :mod:`curation.captions.fuse`)."""
    base_claims = sets.claims(base)
    present = {t.word for t in base_claims}
    out: list[str] = []
    for claim in sets.claims(alt):
        if claim.word in present:
            continue
        for own in base_claims:
            if sets.same_kind(claim.word, own.word):
                swapped = replace_word(base, own, claim.word)
                if swapped != base and swapped not in out:
                    out.append(swapped)
    return out


def overruled(alt: str, fused: str | None, sets: ContrastSets) -> list[str]:
    """The alt-text's claims the fused caption replaced by another word of their kind: where fusion let the
    image decide against the alt-text."""
    if fused is None:
        return []
    fused_words = {t.word for t in sets.claims(fused)}
    return [w for w in dict.fromkeys(c.word for c in sets.claims(alt))
            if w not in fused_words and any(sets.same_kind(w, f) for f in fused_words)]


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


def plan_fusion(alt: str, base: str, sets: ContrastSets) -> tuple[list[str], Knowledge, str | None]:
    """Candidates for the visual part (base first) and the alt-text's knowledge."""
    junk = junk_reason(alt)
    if junk:
        return [base], Knowledge(), junk
    return [base] + conflict_alternatives(base, alt, sets), extract_knowledge(alt, sets), None
