"""What every number on the screen means: one name per score, its range, and which way is better.

The UI shows :func:`glossary_markdown` beside every table of scores, and the
same names are used in every view and in the CLI's JSON.
"""
from __future__ import annotations

# name -> (what it measures, range, which way is better)
SCORES: dict[str, tuple[str, str, str]] = {
    "alt / syn / fused": ("where a caption comes from: the crawled alt-text, a captioning model, or the fusion of both",
                          "", ""),
    "clip_score": ("how well a caption matches its image: 2.5 × max(cosine of the image and caption embeddings, 0) "
                   "(CLIPScore)", "0 to 2.5", "higher is better"),
    "cycle": ("the caption finds its image again: 1 if it is the image's best caption and the image is among the "
              "caption's nearest images, 0.5 for the second best, else 0 (SynC)", "0, 0.5 or 1", "higher is better"),
    "contrast": ("does the image prefer this caption to the same caption with one claim changed: cosine of the "
                 "caption minus the best changed variant", "about −0.2 to 0.2", "above 0 is right; below 0, a claim "
                                                                                    "lost"),
    "exchange": ("the same as contrast against the caption's exchanges alone (two of its claims swapped between "
                 "the things they describe: \"a red cup and a blue plate\" → \"a blue cup and a red plate\"); "
                 "shown where a caption has two claims of one kind", "about −0.2 to 0.2",
                 "below 0: the image binds the attributes the other way"),
    "claim that lost": ("the word the image rejected and the word it preferred", "", ""),
    "agreement": ("alt-text and synthetic captions say the same: cosine of the alt-text and the mean synthetic "
                  "caption embeddings", "−1 to 1", "higher: more agreement"),
    "reward": ("the active per-sample reward that filtering uses: v1 is the alt-text's clip_score, later versions "
               "are learned from your labels (probability the pair is good)", "its version's range",
               "higher is better"),
    "flagged": ("share of a cluster's samples whose active reward is below the flag threshold "
                "(meta.flag_threshold)", "0 to 1", "lower is better"),
    "image diversity": ("how varied a cluster's images are (Vendi score of their embeddings: the effective number "
                        "of different images)", "1 to cluster size", "higher: more varied"),
    "syn/alt diversity": ("Vendi diversity of the synthetic captions over that of the alt-text", "0 and up",
                          "below 1: the captioner repeats itself"),
    "cosine": ("in Search: how close the query (a text, or another sample's image) is to the image, cosine of "
               "their embeddings", "−1 to 1", "higher: closer"),
    "H": ("entropy of what captions say (or images show) for a concept, in bits", "0 and up",
          "lower in captions than in images: a captioner default"),
}

# the scores beside every caption (the sample panel in each view)
CAPTION_SCORES = ("alt / syn / fused", "clip_score", "cycle", "contrast", "exchange", "claim that lost", "agreement",
                  "reward")


def glossary_markdown(names: tuple[str, ...] | None = None) -> str:
    """A Markdown table of the scores in ``names`` (all when None)."""
    rows = [f"| **{name}** | {meaning} | {span} | {better} |" for name, (meaning, span, better) in SCORES.items()
            if names is None or name in names]
    return "\n".join(["| score | meaning | range | better |", "|---|---|---|---|", *rows])
