"""The demo captioner: a small CNN image encoder + transformer decoder over the demo world's words.

Why a separate captioner and not a CoCa: on two CPU cores, open_clip's ViT image
tower learns shape far too slowly (a supervised shape probe reached 34% after 200
steps at 64 px / patch 8, 33% at 48 px / patch 4, 31% for a small Swin) while a small
CNN reached 80% in the same 200 steps. CoCa in open_clip needs a ViT (its decoder
reads the ViT's tokens), so the demo pairs a ResNet-tower CLIP (open_clip config,
loaded with ``--checkpoint``) with this captioner. Real users caption with an
open_clip CoCa or a Hugging Face image-to-text model; this class exists for the demo.

The checkpoint is ``altlens-demo-captioner.safetensors`` (fp16) with a JSON config
beside it holding the architecture and the vocabulary. Decoding offers the same
three modes as the CoCa path: top-p sampling, beam search and diverse beam search.
"""
from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save
from tqdm import tqdm

from demo.world import BACKGROUNDS, COLOURS, POSITION_PHRASE, SHAPES, SIZES, varied_caption

CAPTIONER_NAME = "altlens-demo-captioner"
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
WORD = re.compile(r"\w+|[^\w\s]")
MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's, so one preprocessed tensor serves both models
STD = (0.26862954, 0.26130258, 0.27577711)


def world_vocabulary() -> list[str]:
    words = {"a", "and", "on", "background", ","}
    for phrase in (*SHAPES, *COLOURS, *SIZES, *BACKGROUNDS, *POSITION_PHRASE.values()):
        words.update(WORD.findall(phrase))
    return list(SPECIALS) + sorted(words)


@dataclass(frozen=True)
class CaptionerConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 128)
    width: int = 128
    layers: int = 3
    heads: int = 4
    context: int = 40
    vocab: tuple[str, ...] = field(default_factory=lambda: tuple(world_vocabulary()))


class DemoCaptionModel(nn.Module):
    """CNN (stride-2 blocks) -> grid tokens; causal transformer decoder cross-attends to them."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.cfg = cfg
        blocks, cin = [], 3
        for cout in cfg.channels:
            blocks += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.cnn = nn.Sequential(*blocks)
        grid = cfg.image_size // 2 ** len(cfg.channels)
        self.image_proj = nn.Linear(cin, cfg.width)
        self.image_pos = nn.Parameter(torch.randn(grid * grid, cfg.width) * 0.02)
        self.token_emb = nn.Embedding(len(cfg.vocab), cfg.width)
        self.token_pos = nn.Parameter(torch.randn(cfg.context, cfg.width) * 0.02)
        layer = nn.TransformerDecoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.layers)
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, len(cfg.vocab))
        self.index = {w: i for i, w in enumerate(cfg.vocab)}

    # ------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, UNK) for w in WORD.findall(text.lower())]

    def decode(self, ids: list[int]) -> str:
        words = [self.cfg.vocab[i] for i in ids if i > UNK]
        return re.sub(r" ([,.])", r"\1", " ".join(words))

    def batch_tokens(self, texts: list[str]) -> torch.Tensor:
        rows = torch.zeros((len(texts), self.cfg.context + 1), dtype=torch.long)
        for r, text in enumerate(texts):
            ids = [BOS] + self.encode(text)[: self.cfg.context - 1] + [EOS]
            rows[r, : len(ids)] = torch.tensor(ids)
        return rows

    # ------------------------------------------------------------ network
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = self.cnn(pixels)  # [B, C, g, g]
        return self.image_proj(grid.flatten(2).transpose(1, 2)) + self.image_pos

    def logits(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.token_emb(tokens) + self.token_pos[:n]
        mask = torch.triu(torch.full((n, n), float("-inf"), device=tokens.device), 1)
        return self.head(self.norm(self.decoder(x, memory, tgt_mask=mask, tgt_is_causal=True)))

    def loss(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        out = self.logits(self.image_tokens(pixels), tokens[:, :-1])
        return F.cross_entropy(out.flatten(0, 1).float(), tokens[:, 1:].flatten(), ignore_index=PAD)

    # ------------------------------------------------------------ decoding
    @torch.inference_mode()
    def generate(self, pixels: torch.Tensor, sampling: str = "top_p", top_p: float = 0.9, seed: int = 0,
                 temperature: float = 1.0) -> list[str]:
        """One caption per image: nucleus sampling (the DataCompDR recipe) at ``temperature``, or beam search
        (3 beams)."""
        self.eval()
        if sampling == "beam":
            return [self.decode(ranked[0]) for ranked in self._beam(pixels, beams=3, groups=1)]
        gen = torch.Generator().manual_seed(seed)
        memory = self.image_tokens(pixels)
        seqs = torch.full((len(pixels), 1), BOS, dtype=torch.long)
        done = torch.zeros(len(pixels), dtype=torch.bool)
        for _ in range(self.cfg.context - 1):
            probs = (self.logits(memory, seqs)[:, -1].float() / max(temperature, 1e-3)).softmax(-1)
            probs[:, [PAD, BOS, UNK]] = 0
            nxt = _nucleus(probs, top_p, gen)
            nxt[done] = PAD
            seqs = torch.cat([seqs, nxt[:, None]], 1)
            done |= nxt == EOS
            if done.all():
                break
        return [self.decode(_until_eos(row[1:].tolist())) for row in seqs]

    @torch.inference_mode()
    def generate_diverse(self, pixels: torch.Tensor, num: int, beams_per_group: int = 2,
                         penalty: float = 1.0) -> list[list[str]]:
        """``num`` captions per image from diverse beam search: one beam group each, later groups pay
        ``penalty`` for every token an earlier group chose at the same step (Hamming diversity)."""
        self.eval()
        return [[self.decode(s) for s in seqs] for seqs in self._beam(pixels, beams_per_group, num, penalty)]

    def _beam(self, pixels: torch.Tensor, beams: int, groups: int, penalty: float = 0.0) -> list[list[list[int]]]:
        memory = self.image_tokens(pixels)
        out = []
        for i in range(len(pixels)):
            chosen: list[list[int]] = []  # tokens picked per step by earlier groups
            results = []
            for _ in range(groups):
                # widen each later group by one beam per earlier group, so a non-repeat is found
                ranked = self._one_beam(memory[i:i + 1], beams + len(results), chosen, penalty)
                best = next((c for c in ranked if c not in results), ranked[0])  # no exact repeats
                results.append(best)
                for step, tok in enumerate(best):
                    while len(chosen) <= step:
                        chosen.append([])
                    chosen[step].append(tok)
            out.append(results)
        return out

    def _one_beam(self, memory: torch.Tensor, beams: int, chosen: list[list[int]], penalty: float) -> list[list[int]]:
        """Beam search for one image; finished sequences, best (length-normalised log-prob) first."""
        live = [([BOS], 0.0)]
        finished = []
        for step in range(self.cfg.context - 1):
            seqs = torch.tensor([s for s, _ in live])
            logp = self.logits(memory.expand(len(live), -1, -1), seqs)[:, -1].float().log_softmax(-1)
            logp[:, [PAD, BOS, UNK]] = -math.inf
            if step < len(chosen):
                for tok in chosen[step]:
                    logp[:, tok] -= penalty
            scores = logp + torch.tensor([sc for _, sc in live])[:, None]
            top = scores.flatten().topk(min(beams, scores.numel()))
            live = []
            for value, flat in zip(top.values.tolist(), top.indices.tolist()):
                row, tok = divmod(flat, logp.shape[1])
                seq = [*seqs[row].tolist(), tok]
                if tok == EOS:
                    finished.append((seq[1:-1], value / len(seq)))
                else:
                    live.append((seq, value))
            if not live or len(finished) >= beams:
                break
        finished += [(s[1:], v / len(s)) for s, v in live]
        return [seq for seq, _ in sorted(finished, key=lambda f: -f[1])]


def _nucleus(probs: torch.Tensor, top_p: float, gen: torch.Generator) -> torch.Tensor:
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p
    sorted_p = sorted_p * keep
    pick = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=gen)
    return order.gather(1, pick)[:, 0]


def _until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS)] if EOS in ids else ids


# ---------------------------------------------------------------- files

def preprocess_for(cfg: CaptionerConfig):
    from torchvision import transforms as T
    return T.Compose([T.Resize(cfg.image_size, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(cfg.image_size), T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(),
                      T.Normalize(MEAN, STD)])


def save_fp16(model: nn.Module, weights: Path) -> Path:
    """A model's weights as fp16 safetensors, written atomically (temp file, fsync, rename)."""
    from indexer.files import atomic_write
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda fh: fh.write(save(state)))
    return weights


def save_captioner(model: DemoCaptionModel, out: Path) -> Path:
    weights = save_fp16(model, out / f"{CAPTIONER_NAME}.safetensors")
    weights.with_suffix(".json").write_text(json.dumps(asdict(model.cfg), indent=1) + "\n")
    return weights


def load_captioner(path: str | Path) -> DemoCaptionModel:
    """Load a demo captioner checkpoint (config JSON beside it); a missing or bad file is a ValueError."""
    path = Path(path)
    config = path.with_suffix(".json")
    if not path.is_file() or not config.is_file():
        raise ValueError(f"demo captioner {str(path)!r} needs the .safetensors file and its .json config beside it")
    raw = json.loads(config.read_text())
    cfg = CaptionerConfig(**{**raw, "channels": tuple(raw["channels"]), "vocab": tuple(raw["vocab"])})
    model = DemoCaptionModel(cfg)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------- training

def train_captioner(cfg, pixels: torch.Tensor, scenes: list[dict]) -> float:
    """Train on the CLIP's rendered scenes, captioned with the planted habits (see
    :class:`demo.world.CaptionHabits`) and a fresh wording drawn every time a scene comes up
    (:func:`demo.world.varied_caption`), so that the model learns several ways to say one picture and top-p
    sampling gives different captions; write the checkpoint; return minutes."""
    torch.manual_seed(cfg.seed + 3)
    model = DemoCaptionModel(CaptionerConfig())
    rng = random.Random(cfg.seed + 4)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.captioner_lr, weight_decay=0.01)
    start = time.time()
    model.train()
    bar = tqdm(range(cfg.captioner_steps), desc="train demo captioner", unit="step")
    for step in bar:
        lr = cfg.captioner_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / cfg.captioner_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(scenes), (cfg.captioner_batch,))
        tokens = model.batch_tokens([varied_caption(scenes[i], rng) for i in idx.tolist()])
        # bf16 autocast took 20 s a step on this machine against under 1 s in fp32 (see TrainConfig.precision)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=getattr(cfg, "precision", "fp32") == "bf16"):
            loss = model.loss(pixels[idx].float(), tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    save_captioner(model, Path(cfg.out_dir))
    return (time.time() - start) / 60
