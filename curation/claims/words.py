"""Claims in any caption, from the language alone: a claim is a content word a picture could contradict.

A caption is split into words; function words (articles, prepositions, pronouns,
auxiliaries: a list of the language, not of the world) are not claims, nor are
names (capitalised words inside a sentence: "Eiffel Tower", "Acme"), nor numbers
in digits. Everything else is a candidate claim: "a brown labrador running on a
sandy beach" claims brown, labrador, running, sandy, beach. Which candidates the
image can actually judge is decided per workspace by the contrast sets
(:mod:`curation.claims.sets`): a word with no alternative there makes no variant.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")
# Function words of English: they carry grammar, not content, so swapping one never tests the picture.
STOP_WORDS = frozenset("""
a an the this that these those some any each every either neither no nor not both all few many much more most
other another such own same so than too very just only also even still yet already again ever never always
i me my mine we us our ours you your yours he him his she her hers it its they them their theirs one ones
who whom whose which what whatever whoever where when why how there here
is am are was were be been being do does did doing done have has had having get gets got
will would shall should can could may might must ought
of on in at to for from by with without within into onto upon over under above below across along around
about against among between beside besides beyond behind before after during through throughout toward
towards via per off out up down near like unlike than as until till since
and or but if then else because while whereas although though unless whether
s t d ll m re ve
""".split())
MAX_CHARS = 2000  # claims are read from the start of very long captions only
MARK = re.compile(r"([^\w\s])\1*")  # a punctuation mark (a run of one mark counts once: "..." is ".")


@dataclass(frozen=True)
class Token:
    """A word of a caption: where it stands, as written, and its lookup form."""

    start: int
    end: int
    text: str
    word: str


def tokens(text: str) -> list[Token]:
    """Every word of ``text`` (up to ``MAX_CHARS``), with its span and its lower-cased form."""
    return [Token(m.start(), m.end(), m.group(0), m.group(0).lower()) for m in WORD.finditer(text[:MAX_CHARS])]


def slots(text: str) -> list[str]:
    """``text`` as the sequence a word's slot is read from: lower-cased words and the punctuation marks between
    them, framed by ``<s>`` and ``</s>``. Marks are part of a slot: with words alone, "(large, at left)" and
    "placed at left" put "large" and "placed" between the same words, and "large" -> "placed" was mined as a
    contrast pair; with the brackets and the comma they share nothing."""
    text = text[:MAX_CHARS]
    out, last = ["<s>"], 0
    for token in tokens(text):
        out += [mark.group(0)[0] for mark in MARK.finditer(text, last, token.start)] + [token.word]
        last = token.end
    return out + [mark.group(0)[0] for mark in MARK.finditer(text, last)] + ["</s>"]


def title_cased(text: str) -> bool:
    """Most words capitalised ("Vintage Oak Dresser With Brass Handles", or all capitals): capitals say
    nothing about names there."""
    words = [m.group(0) for m in WORD.finditer(text[:MAX_CHARS]) if len(m.group(0)) > 2]
    return len(words) >= 3 and sum(w[0].isupper() for w in words) >= 0.6 * len(words)


def is_name(token: Token, text: str, titled: bool | None = None) -> bool:
    """A capitalised word inside a sentence, or one of several capitalised words in a row: a name, a brand, a
    place ("Acme", "Eiffel Tower"). A lone capital at the start of a sentence is just the sentence starting, and
    in a title-cased caption no capital marks a name. ``titled``: :func:`title_cased` of ``text``, if known."""
    if not token.text[0].isupper() or (title_cased(text) if titled is None else titled):
        return False
    before = text[:token.start].rstrip()
    if before and before[-1] not in ".!?:;|-\u2013\u2014(":
        return True
    rest = text[token.end:]
    after = WORD.match(text, token.end + len(rest) - len(rest.lstrip()))
    return bool(after and after.group(0)[0].isupper())


def claim_tokens(text: str) -> list[Token]:
    """The candidate claims of a caption, in order: content words that are not names."""
    titled = title_cased(text)
    return [t for t in tokens(text) if t.word not in STOP_WORDS and len(t.word) > 1 and not is_name(t, text, titled)]


def content_words(text: str) -> list[str]:
    """Lower-cased content words (names included), for vocabularies and contexts."""
    return [t.word for t in tokens(text) if t.word not in STOP_WORDS and len(t.word) > 1]


def replace_word(text: str, token: Token, word: str) -> str:
    """``text`` with ``token`` replaced by ``word``, keeping an initial capital."""
    if token.text[0].isupper():
        word = word[:1].upper() + word[1:]
    return text[:token.start] + word + text[token.end:]
