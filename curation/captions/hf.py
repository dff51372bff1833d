"""Hugging Face models through transformers, local only: image-to-text captioners and the LLM caption fuser.

Both load with ``local_files_only=True`` from a path or the local cache; a
missing model is one clear error, never a download.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from indexer.caption_decode import clean_generated
from indexer.errors import ModelError

log = logging.getLogger(__name__)

FUSION_PROMPT = (
    "Merge the information of two sentences about the same image into one.\n"
    "Sentence 1 comes from the web page the image was found on: it may know things the image cannot show "
    "(names, brands, places, collections) but is often noisy or ungrammatical.\n"
    "Sentence 2 was written by a captioning model: it is well formed but may miss or get details wrong.\n"
    "Write one fluent sentence that keeps the knowledge of sentence 1 in the structure of sentence 2. "
    "Do not just join the two sentences.\n"
    "Sentence 1: {alt}\nSentence 2: {syn}\nMerged sentence:"
)
MAX_PROMPT_TOKENS = 256


def _load(loader, path: str, what: str):
    try:
        return loader(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load {what} {path!r} from a local path or the local cache "
                         f"(nothing is downloaded): {exc}") from exc


def _producer_id(kind: str, path: str) -> str:
    folder = Path(path)
    digest = hashlib.sha256()
    if folder.is_dir():
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("config.json")):
            digest.update(f.read_bytes()[: 1 << 20])
    else:
        digest.update(path.encode())
    return f"{kind}:{folder.name or path}@{digest.hexdigest()[:12]}"


class HFCaptioner:
    """BLIP, GIT, VisionEncoderDecoder and other transformers image-to-text models."""

    def __init__(self, path: str, cfg):
        import transformers as tf
        if not path:
            raise ModelError("hf captioner needs a path or model id: --captioner hf:PATH_OR_ID")
        self.cfg = cfg
        self.image_processor = _load(tf.AutoImageProcessor.from_pretrained, path, "image processor")
        self.tokenizer = _load(tf.AutoTokenizer.from_pretrained, path, "tokenizer")
        self.model = self._model(tf, path).eval()
        self.producer = f"{_producer_id('hf', path)}/{cfg.sampling}"
        self.params = {"sampling": cfg.sampling, "top_p": cfg.top_p, "max_new_tokens": 30,
                       "postprocess": "text before the first period"}

    @staticmethod
    def _model(tf, path: str):
        errors = []
        for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM"):
            auto = getattr(tf, name, None)
            if auto is None:
                continue
            try:
                return auto.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError, KeyError) as exc:
                errors.append(f"{name}: {exc}")
        raise ModelError(f"cannot load an image-to-text model from {path!r}: {'; '.join(errors)[:500]}")

    def preprocess(self, image):
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    @torch.inference_mode()
    def caption(self, pixels: torch.Tensor, num: int, seed: int) -> list[list[str]]:
        torch.manual_seed(seed)
        kwargs = {"max_new_tokens": 30, "num_return_sequences": num}
        if self.cfg.sampling == "top_p":
            kwargs.update(do_sample=True, top_p=self.cfg.top_p, top_k=0)
        elif self.cfg.sampling == "beam":
            kwargs.update(num_beams=max(3, num))
        else:
            kwargs.update(num_beams=2 * num, num_beam_groups=num, diversity_penalty=1.0)
        out = self.model.generate(pixel_values=pixels, **kwargs)
        texts = [clean_generated(t) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        return [texts[i * num:(i + 1) * num] for i in range(len(pixels))]


class LLMFuser:
    """CapsFusion with a local causal LM: beam 3, up to 80 new tokens, alt-text cut first if the prompt is long."""

    def __init__(self, path: str):
        import transformers as tf
        if not path:
            raise ModelError("the llm fuser needs a path or model id: --fuser llm:PATH_OR_ID")
        self.tokenizer = _load(tf.AutoTokenizer.from_pretrained, path, "tokenizer")
        self.model = _load(tf.AutoModelForCausalLM.from_pretrained, path, "causal LM").eval()
        self.version = _producer_id("llm", path)

    def prompt(self, alt: str, syn: str) -> str:
        """The fusion prompt, cutting the alt-text first (then the synthetic caption) to fit 256 tokens."""
        alt_ids = self.tokenizer(alt, add_special_tokens=False)["input_ids"]
        syn_ids = self.tokenizer(syn, add_special_tokens=False)["input_ids"]
        frame = len(self.tokenizer(FUSION_PROMPT.format(alt="", syn=""))["input_ids"])
        room = MAX_PROMPT_TOKENS - frame
        if len(alt_ids) + len(syn_ids) > room:
            alt_ids = alt_ids[: max(0, room - len(syn_ids))]
            syn_ids = syn_ids[: room - len(alt_ids)]
        return FUSION_PROMPT.format(alt=self.tokenizer.decode(alt_ids), syn=self.tokenizer.decode(syn_ids))

    @torch.inference_mode()
    def fuse(self, batch: list[dict], images, texts) -> list[dict]:
        out = []
        for row in batch:
            syn = row["syn_texts"][0]
            enc = self.tokenizer(self.prompt(row["alt"], syn), return_tensors="pt")
            gen = self.model.generate(**enc, num_beams=3, max_new_tokens=80, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            text = self.tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            text = text.strip().split("\n")[0].strip() or syn
            out.append({"text": text, "base_idx": 0, "fuser": self.version, "prompt_tokens": int(enc["input_ids"].shape[1])})
        return out
