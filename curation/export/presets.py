"""The DataComp baselines as selection presets: preset name -> the steps a selection applies first.

- ``datacomp-clip-score``: the top ``fraction`` (0.3) by a score, the threshold taken over the whole pool as
  DataComp does (``np.percentile`` with linear interpolation; kept when ``score >= threshold``). The score is
  the pool's own ViT-L-14 similarity where it was imported, else the workspace model's alt-text cosine.
- ``datacomp-basic``: English, more than 2 words and more than 5 characters, both sides at least 200 px,
  aspect ratio at most 3.
- ``laion2b``: ViT-B-32 similarity at least 0.28, and English.

English is the alt-text's most likely language by py3langid (langid.py's model, shipped in the package),
computed once per sample and kept in ``caption_languages``. DataComp used fasttext's lid.176 for ``basic``
and gcld3 for the LAION recipe; the three disagree on short or mixed captions, so counts differ a little
from DataComp's own.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from indexer.schema import ALT
from indexer.store import Workspace

PRESETS = ("datacomp-clip-score", "datacomp-basic", "laion2b")
OWN_COSINE = "altlens.alt_cosine"  # the workspace model's cosine between an image and its alt-text
L14_SCORE, B32_SCORE = "datacomp.clip_l14_similarity_score", "datacomp.clip_b32_similarity_score"
LAION_MIN = 0.28
MIN_SIDE, MAX_ASPECT, MIN_WORDS, MIN_CHARS = 200, 3.0, 2, 5  # basic: > 2 words, > 5 chars
LANGUAGE_BLOCK = 50_000


def score_names(ws: Workspace) -> list[str]:
    """The scores a preset or rule can name: each imported score, and the workspace model's own cosine."""
    return [r[0] for r in ws.rows("SELECT DISTINCT name FROM imported_scores ORDER BY 1")] + [OWN_COSINE]


def score_sql(ws: Workspace, name: str) -> tuple[str, list]:
    """``(SELECT sample_id, value ...)`` for a score name, with its parameters; an unknown name is refused."""
    if name == OWN_COSINE:
        ws.require("caption_scores", "caption scores")
        return (f"""SELECT c.sample_id, cs.cosine AS value FROM captions c JOIN caption_scores cs
                    ON cs.caption_id = c.id WHERE c.source_kind = '{ALT}'""", [])
    if not ws.scalar("SELECT count(*) FROM (SELECT 1 FROM imported_scores WHERE name = ? LIMIT 1)", [name]):
        raise ValueError(f"no score named {name!r}; this workspace has {', '.join(score_names(ws))}")
    return "SELECT sample_id, value FROM imported_scores WHERE name = ?", [name]


def default_score(ws: Workspace, wanted: str) -> str:
    """``wanted`` where the workspace has it, else the workspace model's own alt-text cosine."""
    return wanted if wanted in score_names(ws) else OWN_COSINE


def threshold(ws: Workspace, name: str, fraction: float) -> float:
    """The value the top ``fraction`` of the whole pool reaches (linear interpolation, as np.percentile)."""
    sql, params = score_sql(ws, name)
    value = ws.scalar(f"SELECT quantile_cont(value, ?) FROM ({sql}) WHERE isfinite(value)", [1 - fraction, *params])
    if value is None:
        raise ValueError(f"the score {name!r} has no values yet")
    return float(value)


def preset_steps(ws: Workspace, preset: str, fraction: float = 0.3, score: str | None = None) -> list[tuple]:
    """The preset as selection steps: (what it removes, SQL condition on ``s``, parameters)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    if preset == "datacomp-clip-score":
        name = score or default_score(ws, L14_SCORE)
        cut = threshold(ws, name, fraction)
        sql, params = score_sql(ws, name)
        return [(f"below the top {fraction:.0%} by {name} (>= {cut:.4f})",
                 f"s.id IN (SELECT sample_id FROM ({sql}) WHERE value >= ?)", [*params, cut])]
    if preset == "laion2b":
        name = score or default_score(ws, B32_SCORE)
        sql, params = score_sql(ws, name)
        return [(f"{name} below {LAION_MIN}", f"s.id IN (SELECT sample_id FROM ({sql}) WHERE value >= ?)",
                 [*params, LAION_MIN]), english_step(ws)]
    return [english_step(ws), _caption_length_step(), _image_size_step()]


def english_step(ws: Workspace) -> tuple:
    fill_languages(ws)
    return ("alt-text not English (py3langid)",
            "s.id IN (SELECT sample_id FROM caption_languages WHERE lang = 'en')", [])


def _caption_length_step() -> tuple:
    return (f"alt-text of {MIN_WORDS} words or fewer, or {MIN_CHARS} characters or fewer",
            f"""s.id IN (SELECT sample_id FROM captions WHERE source_kind = '{ALT}' AND length(text) > ?
                AND len(string_split_regex(trim(text), '\\s+')) > ?)""", [MIN_CHARS, MIN_WORDS])


def _image_size_step() -> tuple:
    return (f"a side under {MIN_SIDE} px or aspect over {MAX_ASPECT:g}",
            "s.width >= ? AND s.height >= ? AND greatest(s.width / s.height, s.height / s.width) <= ?",
            [MIN_SIDE, MIN_SIDE, MAX_ASPECT])


def fill_languages(ws: Workspace, progress: bool = True) -> int:
    """Identify the language of every alt-text not yet identified, a block at a time; returns how many."""
    import py3langid

    todo = int(ws.scalar(f"""SELECT count(*) FROM captions c WHERE c.source_kind = '{ALT}'
                             AND c.sample_id NOT IN (SELECT sample_id FROM caption_languages)"""))
    done = 0
    with tqdm(total=todo, desc="language", unit="caption", disable=not progress or todo < LANGUAGE_BLOCK) as bar:
        while done < todo:
            block = ws.numpy(f"""SELECT c.sample_id, c.text FROM captions c WHERE c.source_kind = '{ALT}'
                                 AND c.sample_id NOT IN (SELECT sample_id FROM caption_languages)
                                 ORDER BY c.sample_id LIMIT ?""", [LANGUAGE_BLOCK])
            if not len(block["sample_id"]):
                break
            langs = [py3langid.classify(" ".join(t.split()))[0] if t.strip() else "" for t in block["text"]]
            with ws.transaction() as cur:
                ws.insert_arrow("caption_languages", pa.table({"sample_id": np.asarray(block["sample_id"]),
                                                               "lang": langs}), cur=cur)
            done += len(langs)
            bar.update(len(langs))
    return done
