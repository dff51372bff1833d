"""Local vs Ray indexing of the same shards on this machine, Ray with 1 and with 2 model workers.

    python bench/engine_compare.py [--n 512] [--shards 8] [--model ViT-B-32] [--precision fp32|bf16]

Writes N demo-world JPEGs (256 px) as tar shards and a random-weight checkpoint of
the model (Ray workers must all load the same weights), then indexes the shards
into fresh workspaces with ``--engine local``, ``--engine ray --ray-workers 1`` and
``--ray-workers 2`` (one local Ray started once, its start-up timed apart). It
prints samples/s and each Ray run's overhead against local. On 2 cores a second
worker has no core of its own: expect it to buy little. Prints; never fails.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.index_throughput import write_shard  # noqa: E402
from indexer.index import IndexConfig, run  # noqa: E402
from indexer.models import PRECISIONS, ModelSpec  # noqa: E402
from indexer.store import Workspace  # noqa: E402


def random_checkpoint(name: str, folder: Path) -> Path:
    import open_clip
    from safetensors.torch import save_file
    config = folder / f"{name}.json"
    config.write_text(json.dumps(open_clip.get_model_config(name)))
    open_clip.add_model_config(config)
    import torch
    torch.manual_seed(0)  # the same random space on every run, so runs compare
    model = open_clip.create_model(name)
    weights = config.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    import ray
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        per = args.n // args.shards
        for s in range(args.shards):
            write_shard(tmp / f"{s:05d}.tar", per)  # the same scenes in every shard: decode cost is what counts
        spec = ModelSpec(checkpoint=str(random_checkpoint(args.model, tmp)), precision=args.precision)
        sources = (str(tmp / "*.tar"),)
        results = {}
        for name, engine in (("local", {}), ("ray_1_worker", {"engine": "ray", "ray_workers": 1}),
                             ("ray_2_workers", {"engine": "ray", "ray_workers": 2})):
            if engine and not ray.is_initialized():
                t0 = time.perf_counter()
                ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
                results["ray_start_s"] = round(time.perf_counter() - t0, 2)
            root = tmp / f"ws-{name}"
            t0 = time.perf_counter()
            with Workspace(root, create=True) as ws:
                report = run(ws, IndexConfig(sources=sources, model=spec, batch_size=args.batch_size,
                                             progress=False, **engine))
            wall = time.perf_counter() - t0
            results[name] = {"samples": report["samples"], "wall_s": round(wall, 2),
                             "samples_per_s": round(report["samples"] / wall, 2)}
            shutil.rmtree(root)
        ray.shutdown()
    local = results["local"]["samples_per_s"]
    print(json.dumps({"model": args.model, "precision": args.precision, "n": args.n, "shards": args.shards,
                      **results}, indent=1))
    print(f"ray start-up {results['ray_start_s']:.1f} s (once per cluster, not counted below)")
    for name in ("local", "ray_1_worker", "ray_2_workers"):
        rate = results[name]["samples_per_s"]
        print(f"{name:<14} {rate:7.1f} samples/s  {rate / local:5.2f}x local")


if __name__ == "__main__":
    main()
