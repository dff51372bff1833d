"""Captioners: a registry of named factories that turn ``--captioner`` into an object with one interface.

Every captioner has ``producer`` (an id stored with each caption), ``params``,
``preprocess(image) -> tensor`` and ``caption(pixels, num, seed) -> num captions per image``:

- ``openclip:MODEL[:TAG]`` / ``checkpoint:PATH`` / omitted (the workspace's own model, if it is a CoCa):
  open_clip CoCa, DataCompDR recipe (top-p 0.9, text up to the first period);
- ``hf:PATH_OR_ID``: a Hugging Face image-to-text model (BLIP, GIT, ...) from a local path or cache;
- anything a plugin registers under the ``altlens.captioners`` entry point (the demo's ``demo``).
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from curation.registry import Registry
from indexer.caption_decode import CocaDecoder
from indexer.models import ModelError, ModelSpec, load_model

SAMPLINGS = ("top_p", "beam", "diverse_beam")


class Sampling(Protocol):
    """What a captioner reads of the ``altlens caption`` settings."""

    sampling: str
    top_p: float
    seed: int
    device: str
    precision: str


class Captioner(Protocol):
    producer: str
    params: dict

    def preprocess(self, image): ...

    def caption(self, pixels: torch.Tensor, num: int, seed: int) -> list[list[str]]: ...


class GenerativeCaptioner:
    """A model with ``generate`` / ``generate_diverse`` (open_clip CoCa, or a plugin's model): ``num``
    captions per image by top-p sampling, beam search or diverse beam search."""

    def __init__(self, model, cfg: Sampling, model_id: str, preprocess, seq_len: int | None):
        self.model, self.cfg = model, cfg
        tag = f"top_p{cfg.top_p}" if cfg.sampling == "top_p" else cfg.sampling
        self.producer = f"{model_id}/{tag}"
        self.params = {"sampling": cfg.sampling, "top_p": cfg.top_p if cfg.sampling == "top_p" else None,
                       "seq_len": seq_len, "seed": cfg.seed, "postprocess": "text before the first period"}
        self.preprocess = preprocess

    def caption(self, pixels: torch.Tensor, num: int, seed: int) -> list[list[str]]:
        if self.cfg.sampling == "diverse_beam":
            return self.model.generate_diverse(pixels, num)
        if self.cfg.sampling == "beam":
            best = self.model.generate(pixels, sampling="beam")
            return [[text] * num for text in best] if num == 1 else self._beam_then_sample(pixels, best, num, seed)
        flat = self.model.generate(pixels.repeat_interleave(num, dim=0), top_p=self.cfg.top_p, seed=seed)
        return [flat[i * num:(i + 1) * num] for i in range(len(pixels))]

    def _beam_then_sample(self, pixels, best, num, seed):
        """Beam search yields one caption per image; fill the other slots by top-p so none repeat it."""
        extra = self.model.generate(pixels.repeat_interleave(num - 1, dim=0), top_p=self.cfg.top_p, seed=seed)
        return [[best[i]] + extra[i * (num - 1):(i + 1) * (num - 1)] for i in range(len(pixels))]


def open_clip_captioner(model, cfg: Sampling) -> GenerativeCaptioner:
    if not model.can_caption:
        raise ModelError(f"{model.name} is not a CoCa model and cannot caption; pass --captioner "
                         "(a separate captioner, e.g. hf:PATH)")
    return GenerativeCaptioner(CocaDecoder(model), cfg, model.model_id, model.preprocess,
                               getattr(model.model, "context_length", None))


def _openclip_factory(arg: str | None, ws_model, cfg: Sampling) -> Captioner:
    if arg is None:
        return open_clip_captioner(ws_model, cfg)
    kind, _, rest = arg.partition(":")
    if not rest:
        raise ModelError(f"captioner {arg!r} needs a value: openclip:MODEL[:TAG] or checkpoint:PATH")
    if kind == "checkpoint":
        spec = ModelSpec(checkpoint=rest, device=cfg.device, precision=cfg.precision)
    else:
        name, _, tag = rest.partition(":")
        spec = ModelSpec(name=name, pretrained=tag or None, device=cfg.device, precision=cfg.precision)
    return open_clip_captioner(load_model(spec), cfg)


def _hf_factory(arg: str, ws_model, cfg: Sampling) -> Captioner:
    from curation.captions.hf import HFCaptioner
    return HFCaptioner(arg.partition(":")[2], cfg)


# A factory takes (the --captioner value, the workspace's embedding model, the CaptionConfig) and returns a
# Captioner. Plugins add theirs under the ``altlens.captioners`` entry point (the demo's is ``demo``).
CAPTIONERS: Registry[Callable] = Registry("captioner", "altlens.captioners")
for _name, _factory in (("openclip", _openclip_factory), ("checkpoint", _openclip_factory), ("hf", _hf_factory)):
    CAPTIONERS.register(_name, _factory)


def make_captioner(arg: str | None, ws_model, cfg: Sampling) -> Captioner:
    """The captioner named by ``--captioner`` (``PREFIX:VALUE`` or a plugin's name), or the workspace's CoCa."""
    if arg is None:
        return _openclip_factory(None, ws_model, cfg)
    factory = CAPTIONERS.find(arg.partition(":")[0])
    if factory is None:
        raise ModelError(f"unknown captioner {arg!r}; use one of: " + ", ".join(CAPTIONERS.names()) +
                         " (as NAME:VALUE; or leave it out for the workspace's CoCa)")
    return factory(arg, ws_model, cfg)
