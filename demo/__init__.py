"""The demo world: a generated dataset with known truth, its shipped models, and the quality measures built on it.

A user of altlens like any other: it plugs its captioner in through the
``altlens.captioners`` entry point and loads its CLIP as an ordinary checkpoint.
Nothing in ``indexer``, ``curation`` or ``app`` imports it.
"""
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"
CLIP_CHECKPOINT = MODEL_DIR / "altlens-demo-clip.safetensors"
CAPTIONER_CHECKPOINT = MODEL_DIR / "altlens-demo-captioner.safetensors"
