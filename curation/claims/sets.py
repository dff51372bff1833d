"""Contrast sets: for each word the workspace's images can judge, the words that could stand in its place.

Mined per workspace (:mod:`curation.claims.mining`) and stored in the
``contrast_sets`` table: "striped" -> checkered, dotted, gray; "beach" -> forest,
street, ... A claim is a content word that has alternatives here. Two kinds of
variant test a caption's claims against its image:

- a **substitution** changes one claim to one of its alternatives
  ("a purple star" -> "a yellow star");
- an **exchange** swaps two claims of one kind between the things they describe
  ("a red star and a blue circle" -> "a blue star and a red circle"), which is
  CLIP's known weak spot (attribute binding).

The number of variants per caption is capped; exchanges come first, then one
substitution per claim in turn, so every claim is tested before any is tested twice.
"""
from __future__ import annotations

from dataclasses import dataclass

from curation.claims.words import Token, claim_tokens, replace_word
from indexer.store import Workspace

# Measured on the contrast world (60 scenes, captions of one to three objects): with 6 claims / 32 variants the fix
# of a wrong background was among the variants for 27 of 58 captions, with 12 / 64 for 57 of 58; 12 claims still
# cut the last claims of long captions (a three-object caption has 13 and more), which held background errors to
# AUROC 0.92; 32 claims / 96 variants tests them all (0.98) for 46 variants per caption on average instead of 43.
MAX_CLAIMS = 32
PER_CLAIM = 8
MAX_VARIANTS = 96


@dataclass(frozen=True)
class Variant:
    """A caption with one claim changed: ``claim`` -> ``replacement`` (an exchange reads "red<->blue")."""

    text: str
    claim: str
    replacement: str

    @property
    def exchange(self) -> bool:
        """Two claims swapped between the things they describe (else one claim substituted)."""
        return "<->" in self.claim


class ContrastSets:
    """word -> alternatives, best first (with their similarity)."""

    def __init__(self, alternatives: dict[str, list[tuple[str, float]]]):
        self._alternatives = {w: sorted(alts, key=lambda a: -a[1]) for w, alts in alternatives.items() if alts}

    @classmethod
    def load(cls, ws: Workspace) -> "ContrastSets":
        """The workspace's mined sets (empty before the first mining)."""
        found: dict[str, list[tuple[str, float]]] = {}
        for word, alternative, similarity in ws.rows(
                "SELECT word, alternative, similarity FROM contrast_sets WHERE kept ORDER BY word, similarity DESC"):
            found.setdefault(word, []).append((alternative, similarity))
        return cls(found)

    def __len__(self) -> int:
        return len(self._alternatives)

    def words(self) -> list[str]:
        return sorted(self._alternatives)

    def alternatives(self, word: str) -> list[str]:
        return [a for a, _ in self._alternatives.get(word.lower(), [])]

    def judged(self, word: str) -> bool:
        """Whether the images can judge ``word`` (it has at least one alternative)."""
        return word.lower() in self._alternatives

    def same_kind(self, a: str, b: str) -> bool:
        a, b = a.lower(), b.lower()
        return a != b and (b in self.alternatives(a) or a in self.alternatives(b))

    def claims(self, text: str) -> list[Token]:
        """The claims of ``text`` the images can judge, every occurrence, in order (a repeated word can be right
        in one place and wrong in another)."""
        return [token for token in claim_tokens(text) if token.word in self._alternatives]

    def variants(self, text: str, max_claims: int = MAX_CLAIMS, per_claim: int = PER_CLAIM,
                 max_variants: int = MAX_VARIANTS) -> list[Variant]:
        """Exchanges, then substitutions round-robin over the claims; distinct texts, at most ``max_variants``."""
        claims = self.claims(text)[:max_claims]
        out: dict[str, Variant] = {}
        for i, first in enumerate(claims):
            for second in claims[i + 1:]:
                if self.same_kind(first.word, second.word):
                    swapped = replace_word(replace_word(text, second, first.word), first, second.word)
                    out.setdefault(swapped, Variant(swapped, f"{first.word}<->{second.word}",
                                                    f"{second.word}<->{first.word}"))
        choices = [self.alternatives(c.word)[:per_claim] for c in claims]
        for rank in range(per_claim):
            for claim, alternatives in zip(claims, choices):
                if rank < len(alternatives) and len(out) < max_variants:
                    changed = replace_word(text, claim, alternatives[rank])
                    if changed != text:
                        out.setdefault(changed, Variant(changed, claim.word, alternatives[rank]))
        return list(out.values())[:max_variants]

    def axes(self, min_size: int = 3) -> list[tuple[str, ...]]:
        """Groups of interchangeable words (a word with its alternatives), largest first, without near-repeats:
        the axes along which captions can state one value or another (colour, pattern, place, ...)."""
        groups: list[set[str]] = []
        for word in sorted(self._alternatives, key=lambda w: -len(self._alternatives[w])):
            group = {word, *self.alternatives(word)}
            if len(group) < min_size:
                continue
            if any(len(group & g) / len(group | g) > 0.5 for g in groups):
                continue
            groups.append(group)
        return [tuple(sorted(g)) for g in groups]
