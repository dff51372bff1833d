"""The DataComp baselines as selection presets: preset name -> the steps a selection applies first.

- ``datacomp-clip-score``: the top ``fraction`` (0.3) by a score, the threshold taken over the whole pool as
  DataComp's ``get_threshold`` does (the scores sorted high to low, the one at position ``int(n * fraction)``;
  kept when ``score >= threshold``, so ties and that one row stay). The score is the pool's own ViT-L-14
  similarity where it was imported, else the workspace model's alt-text cosine.
- ``datacomp-basic``: English, more than 2 words and more than 5 characters, both sides at least 200 px,
  aspect ratio at most 3.
- ``laion2b``: ViT-B-32 similarity at least 0.28, and English.
- ``image-based``: English alt-text of more than 1 word and 5 characters whose image's nearest centre (largest
  inner product, as DataComp assigns them) in a centroids file is one of the target centres: those nearest to
  a target set's image embeddings (DataComp: ImageNet-1k's training images), or listed by number. Each
  sample's centre is computed once per centroids file and kept in ``centroid_assignments``.

English is the alt-text's most likely language by py3langid (langid.py's model, shipped in the package),
computed once per sample and kept in ``caption_languages``. DataComp used fasttext's lid.176 for ``basic``
and gcld3 for the LAION recipe; the three disagree on short or mixed captions, so counts differ a little
from DataComp's own.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from indexer.schema import ALT
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore, nearest_centroid

IMAGE_BASED = "image-based"
PRESETS = ("datacomp-clip-score", "datacomp-basic", "laion2b", IMAGE_BASED)
FILE_FREE_PRESETS = PRESETS[:3]  # what the browser offers: image-based names files on the server
OWN_COSINE = "altlens.alt_cosine"  # the workspace model's cosine between an image and its alt-text
L14_SCORE, B32_SCORE = "datacomp.clip_l14_similarity_score", "datacomp.clip_b32_similarity_score"
LAION_MIN = 0.28
MIN_SIDE, MAX_ASPECT, MIN_WORDS, MIN_CHARS = 200, 3.0, 2, 5  # basic: > 2 words, > 5 chars
LANGUAGE_BLOCK = 50_000
ASSIGN_BLOCK = 200_000  # samples given their nearest centre per transaction


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
    """The cut of the top ``fraction`` over the whole pool, as DataComp computes it: the scores sorted high to
    low, the one at position ``int(n * fraction)`` (the last one when that is past the end)."""
    sql, params = score_sql(ws, name)
    n = int(ws.scalar(f"SELECT count(*) FROM ({sql}) WHERE isfinite(value)", params))
    if not n:
        raise ValueError(f"the score {name!r} has no values yet")
    return float(ws.scalar(f"SELECT value FROM ({sql}) WHERE isfinite(value) ORDER BY value DESC LIMIT 1 OFFSET ?",
                           [*params, min(int(n * fraction), n - 1)]))


def preset_steps(ws: Workspace, preset: str, fraction: float = 0.3, score: str | None = None,
                 centroids: str | None = None, targets: str | None = None) -> list[tuple]:
    """The preset as selection steps: (what it removes, SQL condition on ``s``, parameters)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    if preset == IMAGE_BASED:
        return [english_step(ws), _caption_length_step(1), image_based_step(ws, centroids, targets)]
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


def _caption_length_step(words: int = MIN_WORDS) -> tuple:
    return (f"alt-text of {words} word{'s' if words > 1 else ''} or fewer, or {MIN_CHARS} characters or fewer",
            f"""s.id IN (SELECT sample_id FROM captions WHERE source_kind = '{ALT}' AND length(text) > ?
                AND len(string_split_regex(trim(text), '\\s+')) > ?)""", [MIN_CHARS, words])


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


def load_centroids(path: str | None, dim: int) -> tuple[np.ndarray, str]:
    """(centres as float32 [K, dim], a name for them: the file's hash) from a ``.npy``; refused in one line
    when the file is missing, not an array of ``dim``-wide finite rows."""
    if not path:
        raise ValueError("--preset image-based needs --centroids FILE.npy (the pool's cluster centres, one per row)")
    centres = _array(path, "--centroids")
    if centres.ndim != 2 or centres.shape[1] != dim or not len(centres) or not np.issubdtype(centres.dtype, np.floating):
        raise ValueError(f"{path}: centroids must be a [K, {dim}] float array (the workspace's vectors are "
                         f"{dim}-d), got {centres.dtype} {list(centres.shape)}")
    centres = np.asarray(centres, np.float32)
    if not np.isfinite(centres).all():
        raise ValueError(f"{path}: centroids hold NaN or infinite values")
    return centres, hashlib.sha256(centres.tobytes()).hexdigest()[:16]


def target_centres(path: str | None, centres: np.ndarray) -> np.ndarray:
    """The centres picked: the nearest centre of each row of a float array of target image embeddings, or the
    centre numbers of a 1-d integer array; sorted, unique."""
    if not path:
        raise ValueError("--preset image-based needs --targets FILE.npy: embeddings of the images you want more "
                         "of (DataComp used ImageNet-1k's training set) or the numbers of the centres to keep")
    targets = _array(path, "--targets")
    if targets.ndim == 1 and np.issubdtype(targets.dtype, np.integer):
        if len(targets) and (targets.min() < 0 or targets.max() >= len(centres)):
            raise ValueError(f"{path}: centre numbers must lie in 0..{len(centres) - 1}")
        return np.unique(targets.astype(np.int64))
    if targets.ndim != 2 or targets.shape[1] != centres.shape[1] or not np.issubdtype(targets.dtype, np.floating):
        raise ValueError(f"{path}: targets must be [N, {centres.shape[1]}] float embeddings or 1-d centre numbers, "
                         f"got {targets.dtype} {list(targets.shape)}")
    if not np.isfinite(targets).all():
        raise ValueError(f"{path}: targets hold NaN or infinite values")
    return np.unique(nearest_centroid(targets, centres).astype(np.int64))


def image_based_step(ws: Workspace, centroids: str | None, targets: str | None) -> tuple:
    images = EmbeddingStore(ws, "image").load()
    if not images.size:
        raise ValueError("no image embeddings yet; index or import the pool first")
    centres, name = load_centroids(centroids, images.shape[1])
    picked = target_centres(targets, centres)
    assign_centres(ws, images, centres, name)
    return (f"image nearest a centre other than the {len(picked)} target centres of {len(centres)}",
            "s.id IN (SELECT sample_id FROM centroid_assignments WHERE centroids = ? AND centroid IN "
            "(SELECT unnest(?)))", [name, picked.tolist()])


def assign_centres(ws: Workspace, images: np.ndarray, centres: np.ndarray, name: str) -> int:
    """Record each sample's nearest centre (under ``name``) for the rows not yet assigned; returns how many."""
    done = ws.scalar("SELECT max(sample_id) FROM centroid_assignments WHERE centroids = ?", [name])
    start = 0 if done is None else int(done) + 1
    for lo in range(start, len(images), ASSIGN_BLOCK):
        hi = min(lo + ASSIGN_BLOCK, len(images))
        nearest = nearest_centroid(images[lo:hi], centres)
        with ws.transaction() as cur:
            ws.insert_arrow("centroid_assignments", pa.table({
                "centroids": pa.repeat(pa.scalar(name), hi - lo),
                "sample_id": np.arange(lo, hi, dtype=np.int64), "centroid": nearest}), cur=cur)
    return max(0, len(images) - start)


def _array(path: str, flag: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{flag} {path}: not a NumPy .npy array ({exc})") from None
