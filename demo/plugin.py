"""The demo's captioner as an altlens plugin: ``--captioner demo`` (shipped weights) or ``demo:PATH.safetensors``.

Registered through the ``altlens.captioners`` entry point in pyproject.toml, the
same way a user's own captioner package would plug in.
"""
from __future__ import annotations

from pathlib import Path

from curation.captions.captioners import GenerativeCaptioner
from demo import CAPTIONER_CHECKPOINT
from demo.captioner import load_captioner, preprocess_for
from indexer.files import file_sha256
from indexer.models import ModelError


def captioner(arg: str, ws_model, cfg) -> GenerativeCaptioner:
    """Factory for the captioner registry: the shipped demo captioner, or a retrained one after ``demo:``."""
    path = arg.partition(":")[2]
    weights = Path(path) if path else CAPTIONER_CHECKPOINT
    try:
        model = load_captioner(weights)
    except (ValueError, OSError, RuntimeError) as exc:
        raise ModelError(f"cannot load the demo captioner {str(weights)!r}: {exc}") from exc
    model_id = f"{weights.stem}@sha256:{file_sha256(weights, 12)}"
    return GenerativeCaptioner(model, cfg, model_id, preprocess_for(model.cfg), model.cfg.context)
