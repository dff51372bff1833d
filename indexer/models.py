"""The one module that owns torch and open_clip at inference: load a model, embed images and texts, caption.

A model is named by an open_clip config name plus a pretrained tag, by a local
checkpoint file (``--checkpoint``; the config comes from ``--model`` or a JSON
config beside the file), or by ``local-dir:DIR``. Nothing is downloaded unless
``ALTLENS_ALLOW_DOWNLOAD=1`` is set: these machines are offline, and a curation
tool should never fetch weights behind the user's back.
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from indexer.errors import ModelError
from indexer.files import file_sha256

if os.environ.get("ALTLENS_ALLOW_DOWNLOAD") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402
from open_clip.transformer import text_global_pool  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_MODEL = "MobileCLIP2-S0"
DEFAULT_PRETRAINED = "dfndr2b"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTO_MIN_COSINE = 0.99  # auto keeps a faster precision only if it agrees this well with fp32 on its probe
# weights are cast to this once at load, not run under autocast: on this project's CPU autocast re-cast every
# weight on every call (1.8 M page faults per 128 pairs) and ran 2.4x slower than bf16 weights
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelSpec:
    """What to load. ``pretrained='none'`` asks for random weights (tests, mechanics only)."""

    name: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ModelError(f"unknown precision {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise ModelError(f"unknown device {self.device!r}; allowed: {', '.join(DEVICES)}")
        if self.checkpoint and self.pretrained not in (None, "none"):
            raise ModelError("give either --pretrained or --checkpoint, not both")

    def as_record(self) -> dict:
        """The spec as stored in a workspace (device and precision are per run, not per model)."""
        return {"name": self.name, "pretrained": self.pretrained, "checkpoint": self.checkpoint}

    def normalized(self) -> "ModelSpec":
        """Explicit weights: the default model and tag when nothing is named; a named config needs weights."""
        if self.name is None and self.checkpoint is None:
            return replace(self, name=DEFAULT_MODEL, pretrained=self.pretrained or DEFAULT_PRETRAINED)
        if self.checkpoint is None and self.pretrained is None and not (self.name or "").startswith("local-dir:"):
            raise ModelError(f"--model {self.name} needs weights: --pretrained TAG, --checkpoint PATH, "
                             "or --pretrained none for random weights (tests only)")
        return self


def register_config(path: str | Path) -> str:
    """Register an open_clip JSON model config and return the model name (the file stem)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model config {str(path)!r} does not exist")
    try:
        json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"model config {str(path)!r} is not valid JSON: {exc}") from exc
    open_clip.add_model_config(path)
    return path.stem


def config_beside(checkpoint: Path) -> Path | None:
    for candidate in (checkpoint.with_suffix(".json"), checkpoint.parent / "open_clip_config.json"):
        if candidate.is_file():
            return candidate
    return None


def resolve_name(spec: ModelSpec) -> str:
    """The open_clip model name to build, registering JSON configs as needed."""
    name = spec.name
    if name and name.endswith(".json"):
        return register_config(name)
    if name and name.startswith("local-dir:"):
        return name
    if spec.checkpoint and not name:
        config = config_beside(Path(spec.checkpoint))
        if config is None:
            raise ModelError(f"checkpoint {spec.checkpoint!r} has no config beside it; pass --model NAME or a config .json")
        name = register_config(config) if config.name != "open_clip_config.json" else _register_hf_style(config)
    name = name or DEFAULT_MODEL
    if name not in open_clip.list_models():
        known = ", ".join(sorted(open_clip.list_models())[:12])
        raise ModelError(f"unknown model {name!r}; use an open_clip name ({known}, ...), a config .json or local-dir:DIR")
    return name


def _register_hf_style(config: Path) -> str:
    """Register the ``model_cfg`` of an ``open_clip_config.json`` under its folder's name."""
    try:
        model_cfg = json.loads(config.read_text())["model_cfg"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ModelError(f"{config} is not an open_clip_config.json with a model_cfg: {exc}") from exc
    name = config.parent.name
    open_clip.factory._MODEL_CONFIGS[name] = model_cfg  # what add_model_config does per file
    return name


def cpu_has_bf16(unknown: bool = True) -> bool:
    """Whether this CPU computes bf16 natively (Linux flags; where they cannot be read, ``unknown``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return unknown
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_precision(device: str, has_bf16: bool | None = None) -> str:
    """What ``--precision auto`` tries: on CUDA bf16 (fp16 where the GPU lacks it); on a CPU bf16 when it
    computes bf16 (amx_bf16 or avx512_bf16; on AMX Xeons bf16 weights ran ViT-B-32 about 2x fp32, on CPUs
    without them about 8x slower), else fp32. ``has_bf16`` overrides the CPU's flags (tests)."""
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if (cpu_has_bf16(unknown=False) if has_bf16 is None else has_bf16) else "fp32"


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def load_state_dict(path: str | Path) -> dict:
    """Weights from a safetensors file or a torch state dict (never unpickled beyond tensors)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


@contextmanager
def _quiet_open_clip():
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


class EmbeddingModel:
    """A loaded open_clip model: L2-normalised image/text embeddings and, for CoCa, captions."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec = spec.normalized()
        self.name = resolve_name(spec)
        self.device = pick_device(spec.device)
        self.precision = auto_precision(self.device) if spec.precision == "auto" else spec.precision
        self.dtype = DTYPES[self.precision]
        if self.dtype is torch.float16 and self.device != "cuda":
            raise ModelError("--precision fp16 is for GPUs; on a CPU use bf16")
        if spec.precision == "bf16" and self.device == "cpu" and not cpu_has_bf16():
            log.warning("this CPU has no bf16 instructions (avx512_bf16 or amx_bf16): bf16 weights run several "
                        "times slower than fp32 here (ViT-B-32: 2 vs 17 img/s on such a CPU); use fp32")
        self.model, self.preprocess = self._build()
        self.tokenizer = open_clip.get_tokenizer(self.name)
        if spec.precision == "auto" and self.precision != "fp32":
            self._check_against_fp32()
        else:
            self.model.eval().to(self.device, dtype=self.dtype)
        self.dim = int(self.encode_texts(["a"]).shape[1])
        self.model_id = self._model_id()

    def _build(self):
        spec = self.spec
        pretrained = None if spec.pretrained in (None, "none") or spec.checkpoint else spec.pretrained
        try:
            with _quiet_open_clip():  # it warns "no pretrained weights" even when a checkpoint follows
                model, _, preprocess = open_clip.create_model_and_transforms(self.name, pretrained=pretrained)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelError(
                f"could not load {self.name!r} with pretrained={pretrained!r}: {exc}. Weights are never "
                "downloaded here: put them in the local cache, or pass --checkpoint PATH") from exc
        decoder = getattr(model, "text_decoder", None)
        if pretrained is None and decoder is not None:
            # open_clip 3.3.0 creates CoCa's caption projection with torch.empty and never initialises it:
            # random-weight models would caption from uninitialised memory (NaNs, seen in tests); its own
            # init_parameters() is broken too, so use the std it intends
            torch.nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)
        if spec.checkpoint:
            missing, unexpected = model.load_state_dict(load_state_dict(spec.checkpoint), strict=False)
            if missing or unexpected:
                raise ModelError(f"checkpoint {spec.checkpoint!r} does not fit {self.name!r}: "
                                 f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        if self.name.startswith("MobileCLIP"):
            from timm.utils import reparameterize_model
            model = reparameterize_model(model)
        return model, preprocess

    def _check_against_fp32(self) -> None:
        """``--precision auto``: embed a probe (a drawn picture through the model's own preprocessing, and a
        few captions) in fp32, then with a copy of the weights cast to the chosen precision; below cosine
        AUTO_MIN_COSINE on any of them, keep the fp32 weights (never cast back: that would round them) and say
        so in one line."""
        import copy

        from PIL import Image, ImageDraw
        chosen, self.precision, self.dtype = self.precision, "fp32", torch.float32
        self.model.eval().to(self.device, dtype=torch.float32)
        picture = Image.new("RGB", (224, 224), (120, 160, 200))
        ImageDraw.Draw(picture).ellipse((40, 60, 170, 190), fill=(220, 80, 40))
        pixels = torch.stack([self.preprocess(picture), self.preprocess(picture.rotate(90))])
        texts = ["a photo of a dog on a beach", "a red chair next to a window", "two people walking in snow"]
        reference = np.concatenate([self.encode_images(pixels), self.encode_texts(texts)])
        full = self.model
        self.model, self.precision, self.dtype = copy.deepcopy(full).to(dtype=DTYPES[chosen]), chosen, DTYPES[chosen]
        probe = np.concatenate([self.encode_images(pixels), self.encode_texts(texts)])
        agreement = float((reference * probe).sum(axis=1).min())
        if agreement >= AUTO_MIN_COSINE:
            return
        log.warning("--precision auto: %s agrees with fp32 only to cosine %.4f on this model (under %.2f); "
                    "running in fp32", chosen, agreement, AUTO_MIN_COSINE)  # NaN lands here too
        self.model, self.precision, self.dtype = full, "fp32", torch.float32

    def _model_id(self) -> str:
        if self.spec.checkpoint:
            return f"{self.name}@sha256:{file_sha256(self.spec.checkpoint, 12)}"
        tag = self.spec.pretrained
        return f"{self.name}@{'random' if tag in (None, 'none') else tag}"

    def pixels_in(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels on the model's device, in its weights' dtype."""
        return pixels.to(self.device, dtype=self.dtype)

    @property
    def can_caption(self) -> bool:
        return hasattr(self.model, "generate") and hasattr(self.model, "text_decoder")

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """[B, 3, H, W] preprocessed pixels -> [B, D] float32, L2-normalised."""
        return self.model.encode_image(self.pixels_in(pixels), normalize=True).float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], max_chars: int = 2000, chunk: int = 128) -> np.ndarray:
        """Texts -> [B, D] float32, L2-normalised. Very long texts are cut before tokenising. Texts are sorted by
        token length and encoded in chunks, each at its own longest length (see :func:`encode_trimmed`)."""
        tokens = self.tokenizer([t[:max_chars] for t in texts])
        if not len(tokens):
            return np.zeros((0, self.dim), dtype=np.float32)
        order = torch.argsort((tokens != 0).sum(1), stable=True)
        parts = []
        for start in range(0, len(order), chunk):
            rows = order[start:start + chunk]
            parts.append((rows, encode_trimmed(self.model, tokens[rows].to(self.device)).float().cpu()))
        out = torch.empty((len(tokens), parts[0][1].shape[1]), dtype=torch.float32)
        for rows, feats in parts:
            out[rows] = feats
        return out.numpy()


def encode_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens, normalize=True)`` with the padding columns cut off first.

    Captions are far shorter than the 77-token context, and the text tower costs
    as much per padding token as per word. For open_clip's CLIP class (causal mask,
    pooled at the end-of-text token) padding after the end token never reaches the
    pooled position, so cutting it gives the same embedding up to float rounding.
    Other text towers (a Hugging Face encoder, a class token) run at full length.
    """
    length = int((tokens != 0).sum(1).max()) if tokens.numel() else 0
    trimmable = (isinstance(model, open_clip.CLIP) and getattr(model, "attn_mask", None) is not None
                 and getattr(model, "text_pool_type", "argmax") in ("argmax", "eos"))
    if not trimmable or length >= tokens.shape[1] or length == 0:
        return model.encode_text(tokens, normalize=True)
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return torch.nn.functional.normalize(x, dim=-1)


def run_spec(device: str = "auto", precision: str = "fp32") -> ModelSpec | None:
    """The spec to reopen a workspace's own model with on this run's device and precision (None: defaults)."""
    return None if (device, precision) == ("auto", "fp32") else ModelSpec(device=device, precision=precision)


def load_model(spec: ModelSpec) -> EmbeddingModel:
    return EmbeddingModel(spec)


def open_workspace_model(ws, spec: ModelSpec | None) -> EmbeddingModel:
    """The model a workspace was indexed with, bound on first use; a different model is refused.

    A workspace holds one embedding space: every vector in it must come from the
    same model, so later commands (search, caption scores) reload it from here.
    """
    record = ws.get_meta("model")
    run = spec or ModelSpec()
    if record is None:
        model = load_model(run)
        ws.set_meta("model", _record(ws, model))
        return model
    stored = ModelSpec(name=record["name"], pretrained=record["pretrained"], checkpoint=record["checkpoint"],
                       device=run.device, precision=run.precision)
    _register_stored_config(ws, record)
    asked = spec is not None and any(v is not None for v in spec.as_record().values())
    if asked and _canonical(spec.normalized()) != _canonical(stored):
        raise ModelError(f"workspace {ws.root} was indexed with {record['model_id']}; index with the same "
                         "model (or leave out --model/--pretrained/--checkpoint) or use a new workspace")
    model = load_model(stored)
    if model.model_id != record["model_id"]:
        raise ModelError(f"checkpoint {record['checkpoint']} changed since this workspace was indexed "
                         f"(now {model.model_id}, was {record['model_id']})")
    return model


def _canonical(spec: ModelSpec) -> tuple:
    name = Path(spec.name).stem if spec.name and spec.name.endswith(".json") else spec.name
    checkpoint = str(Path(spec.checkpoint).resolve()) if spec.checkpoint else None
    if checkpoint and name is None:
        config = config_beside(Path(checkpoint))
        name = config.stem if config is not None and config.name != "open_clip_config.json" else name
    return name, None if checkpoint else spec.pretrained, checkpoint


def _record(ws, model: EmbeddingModel) -> dict:
    """What a workspace keeps about its model, with a copy of a custom config so it reloads anywhere."""
    config = open_clip.get_model_config(model.name)
    ws.model_dir.mkdir(parents=True, exist_ok=True)
    (ws.model_dir / f"{model.name}.json").write_text(json.dumps(config, indent=2))
    checkpoint = str(Path(model.spec.checkpoint).resolve()) if model.spec.checkpoint else None
    return {"name": model.name, "pretrained": None if checkpoint else model.spec.pretrained,
            "checkpoint": checkpoint, "model_id": model.model_id, "dim": model.dim}


def _register_stored_config(ws, record: dict) -> None:
    config = ws.model_dir / f"{record['name']}.json"
    if record["name"] not in open_clip.list_models() and config.is_file():
        open_clip.add_model_config(config)


def bound_torch_threads() -> int:
    """Give a server's model work (text search, contrast, concept prompts) half the cores, at least one.
    A curator often runs a CLI job beside the server; torch's threads, one per core by default, then contend
    with the job's at every operation: on 2 cores beside ``altlens score``, text search p95 went from 6.5 ms
    quiet to 274 ms with two threads, 14.8 ms with one (bench/search_beside_job.py)."""
    threads = max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    return threads
