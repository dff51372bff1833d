"""altlens index against clip-retrieval's ``clip_inference`` on the same shard with the same weights, one run.

    pip install --no-deps --target DIR clip-retrieval all_clip fire termcolor clip-anytorch 'setuptools<70'
    python bench/clip_retrieval_compare.py --lib DIR [--n 512] [--model ViT-B-32] [--batch-size 64]

Both read two WebDataset tars of N/2 demo JPEGs each (256 px) with alt-texts and embed images and captions with the
same random-weight checkpoint (clip-retrieval loads it as ``open_clip:NAME/PATH``, without JIT). altlens
also decodes, makes thumbnails and writes DuckDB; clip-retrieval writes .npy files. Each runs once after a
warm-up run on a small shard, alternating, and the bench prints samples/s for each and their ratio (goal:
altlens >= 2.5x). clip-retrieval's package imports modules its inference never uses (wandb,
sentence_transformers); when they are missing, empty stand-ins are registered so that the import works.
Prints; never fails on time.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_compare import random_checkpoint  # noqa: E402
from index_throughput import write_shard  # noqa: E402

from curation.pipeline import run_stage  # noqa: E402
from indexer.index import IndexConfig  # noqa: E402
from indexer.models import ModelSpec  # noqa: E402


def clip_inference(shim: Path):
    """clip-retrieval's inference entry point. Its package __init__ imports the web UI (flask); a shim package
    in ``shim`` (first on the path, also for the data loader's worker processes) points at the real modules
    without it, beside empty stand-ins for modules the inference path imports but never uses."""
    import importlib.util
    import os
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None:
        raise SystemExit("clip-retrieval is not installed: pip install --no-deps --target DIR clip-retrieval all_clip "
                         "fire termcolor clip-anytorch 'setuptools<70', then pass --lib DIR")
    (shim / "clip_retrieval").mkdir(parents=True)
    (shim / "clip_retrieval" / "__init__.py").write_text(
        f"__path__.append({list(spec.submodule_search_locations)[0]!r})\n")
    for unused, body in (("wandb", ""), ("sentence_transformers", "SentenceTransformer = None\n")):
        if importlib.util.find_spec(unused) is None:
            (shim / f"{unused}.py").write_text(body)
    sys.path.insert(0, str(shim))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(shim), *sys.path[1:]])
    from clip_retrieval.clip_inference.main import main
    return main


def run_clip_retrieval(main, name: str, folder: Path, out: Path, model: str, checkpoint: Path,
                       batch_size: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    main(input_dataset=str(folder / f"{name}{{0..1}}.tar"), output_folder=str(out), input_format="webdataset", cache_path=None,
         batch_size=batch_size, num_prepro_workers=2, enable_text=True, enable_image=True, enable_metadata=False,
         write_batch_size=10**6, wds_image_key="jpg", wds_caption_key="txt", clip_model=f"open_clip:{model}/{checkpoint}",
         mclip_model="", use_mclip=False, use_jit=False, distribution_strategy="sequential",
         output_partition_count=1, enable_wandb=False)
    return time.perf_counter() - t0


def run_altlens(name: str, folder: Path, ws: Path, checkpoint: Path, batch_size: int) -> float:
    shutil.rmtree(ws, ignore_errors=True)
    t0 = time.perf_counter()
    run_stage("index", ws, IndexConfig(sources=(str(folder / f"{name}0.tar"), str(folder / f"{name}1.tar")), model=ModelSpec(checkpoint=str(checkpoint)),
                                       batch_size=batch_size, progress=False))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lib", help="a folder clip-retrieval was installed into with pip --target")
    args = ap.parse_args()
    if args.lib:
        sys.path.insert(0, args.lib)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inference = clip_inference(tmp / "shim")
        checkpoint = random_checkpoint(args.model, tmp)
        for name, n in (("warm", 2 * args.batch_size), ("shard", args.n)):  # two shards: one per reader worker
            for part in range(2):
                write_shard(tmp / f"{name}{part}.tar", n // 2)
        run_clip_retrieval(inference, "warm", tmp, tmp / "cr-warm", args.model, checkpoint, args.batch_size)
        run_altlens("warm", tmp, tmp / "ws-warm", checkpoint, args.batch_size)
        cr = run_clip_retrieval(inference, "shard", tmp, tmp / "cr", args.model, checkpoint, args.batch_size)
        al = run_altlens("shard", tmp, tmp / "ws", checkpoint, args.batch_size)
        written = sorted(p.name for p in (tmp / "cr").rglob("*.npy"))
    print(f"{args.n} samples, {args.model} fp32, batch {args.batch_size}; clip-retrieval wrote {written}")
    print(f"clip-retrieval clip_inference  {args.n / cr:7.1f} samples/s  ({cr:.1f} s)")
    print(f"altlens index                  {args.n / al:7.1f} samples/s  ({al:.1f} s)")
    ratio = cr / al
    print(f"altlens / clip-retrieval       {ratio:7.2f}x   goal >= 2.5x  {'ok' if ratio >= 2.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
