"""Indexer throughput: end-to-end img/s vs model-only img/s on the same images, from one run.

    python bench/index_throughput.py [--n 512] [--model ViT-B-32] [--batch-size 64] [--precision fp32|bf16]

Writes N demo-world JPEGs (256 px, so decoding costs something) as a tar shard,
indexes them with ``altlens index``'s code path, then times the model work alone
(image tower + text tower on the alt captions, as indexing does) on the same
preprocessed batches. A ratio near 1 means decoding, thumbnails and writes are
hidden behind the model. Prints; never fails on time.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from curation.pipeline import run_stage  # noqa: E402
from demo.samples import generate_samples, sample_image  # noqa: E402
from indexer.index import IndexConfig, model_only_rate  # noqa: E402
from indexer.models import PRECISIONS, ModelSpec, encode_trimmed, load_model  # noqa: E402


def write_shard(path: Path, n: int) -> tuple[list[bytes], list[str]]:
    images, captions = [], []
    with tarfile.open(path, "w") as tar:
        for s in generate_samples(n, seed=11):
            data = sample_image(s, 256)
            images.append(data)
            captions.append(s.alt)
            for name, payload in ((f"{s.key}.jpg", data), (f"{s.key}.txt", s.alt.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return images, captions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    spec = ModelSpec(name=args.model, pretrained=args.pretrained, precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "00000.tar"
        images, captions = write_shard(shard, args.n)
        report = run_stage("index", Path(tmp) / "ws", IndexConfig(sources=(str(shard),), model=spec,
                                                                  batch_size=args.batch_size, workers=args.workers))
        model = load_model(spec)
        pixels = [model.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images]
        model.encode_images(pixels[0].unsqueeze(0))  # warm-up
        model_rate = model_only_rate(model, pixels, args.batch_size, captions)
        image_rate = model_only_rate(model, pixels, args.batch_size)
        trimmed, full = text_rates(model, captions, args.batch_size)
    e2e = report["samples_per_s"]
    print(json.dumps({"model": args.model, "precision": args.precision, "n": args.n, "batch_size": args.batch_size,
                      "end_to_end_img_s": e2e, "model_only_img_s": round(model_rate, 2),
                      "image_tower_only_img_s": round(image_rate, 2), "ratio": round(e2e / model_rate, 3),
                      "text_trimmed_per_s": round(trimmed, 1), "text_full_context_per_s": round(full, 1),
                      "stages": report}))
    print(f"end-to-end {e2e:.1f} img/s, model-only (image + alt-text towers) {model_rate:.1f} img/s, "
          f"ratio {e2e / model_rate:.2f}; image tower alone {image_rate:.1f} img/s")
    print(f"text tower: {trimmed:.0f} captions/s at each batch's longest length, {full:.0f}/s at the full context: "
          f"{trimmed / full:.2f}x")


def text_rates(model, captions: list[str], batch_size: int) -> tuple[float, float]:
    """Captions/s of the text tower trimmed to each batch's longest caption vs over the model's whole context."""
    import time

    import torch
    tokens = model.tokenizer(captions).to(model.device)
    rates = []
    for fn in (lambda t: encode_trimmed(model.model, t), lambda t: model.model.encode_text(t, normalize=True)):
        with torch.inference_mode():
            fn(tokens[:batch_size])
            t0 = time.perf_counter()
            for i in range(0, len(tokens), batch_size):
                fn(tokens[i:i + batch_size])
        rates.append(len(tokens) / (time.perf_counter() - t0))
    return rates[0], rates[1]


if __name__ == "__main__":
    main()
