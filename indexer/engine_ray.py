"""``altlens index --engine ray``: the same read -> decode -> embed -> write, spread over a Ray cluster.

The stage code is the local engine's (:mod:`indexer.index`): ``keyed`` names the
samples, ``decode_batch`` decodes them, ``embed_batch`` runs the model and the
workspace's ``SampleWriter`` commits. Ray only moves the work:

- the driver splits the sources into blocks: one tar shard a block (read where
  the block runs), or ``block_rows`` rows of a folder or table source (the driver
  lists them; the images are read where the block runs);
- Ray Data decodes each block in a CPU task (``map``), then runs the model in a
  pool of actors (``map_batches`` with a class; one GPU each where there are GPUs);
- each actor writes its block's result -- samples, vectors, thumbnails -- to
  ``staging/`` in the workspace under the block's number, atomically;
- the driver reads the results in block order and commits each block once.
  A worker that dies is restarted and its block redone (the redo overwrites the
  same staging file), and a block that comes back twice is committed once, so no
  row is ever added twice. Thumbnails move into ``thumbs/`` only at commit.

On a cluster the workspace must be on a filesystem every node sees (NFS or the
like), and the sources and checkpoint at the same paths.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np

from indexer.decode import DecodeConfig
from indexer.files import atomic_write
from indexer.sources import Source
from indexer.store import Workspace

log = logging.getLogger(__name__)

# fault injection for the engine-equality test, "N:MARKER": the model actor that meets block N while the file
# MARKER does not exist creates it and exits at once, as a crashed or pre-empted worker would
KILL_ENV = "ALTLENS_RAY_KILL_BLOCK"


def plan_blocks(ws: Workspace, sources: list[Source], writer, block_rows: int) -> list[dict]:
    """Blocks to run, in commit order: ``{"shard": path}`` per tar shard not yet done, or ``{"raws": [...]}``,
    ``block_rows`` light raw samples (paths, sidecars) of a folder or table source."""
    from indexer.index import keyed

    blocks: list[dict] = []
    for src in sources:
        writer.register_source(src)
        if src.kind == "wds":
            for shard in src.shards:
                if not writer.shard_done(shard):  # keys are shard-qualified: a shard's known keys are all it needs
                    known = {r[0] for r in ws.rows("SELECT key FROM samples WHERE source = ? AND path = ?",
                                                    [src.name, shard])}
                    blocks.append({"source": src, "shard": shard, "known": known})
            continue
        known = {r[0] for r in ws.rows("SELECT key FROM samples WHERE source = ?", [src.name])}
        chunk: list[dict] = []
        for raw in keyed(src.read(), src.name, known, {}):
            chunk.append(raw)
            if len(chunk) >= block_rows:
                blocks.append({"source": src, "raws": chunk})
                chunk = []
        if chunk:
            blocks.append({"source": src, "raws": chunk})
    return blocks


def read_block(block: dict) -> list[dict]:
    """The raw samples of a block (a shard is read here, with its markers)."""
    from indexer.index import keyed
    from indexer.shards import read_shards

    if "raws" in block:
        return block["raws"]
    src = block["source"]
    one = Source(src.name, src.kind, src.location, shards=(block["shard"],))
    return list(keyed(read_shards(one, lambda p: False), src.name, block["known"], {}))


def decode_block(row: dict, decode_cfg: DecodeConfig, preprocess, staging: str) -> dict:
    """Ray task body: read and decode one block; its thumbnails go to the block's staging folder."""
    from indexer.index import decode_batch
    block = pickle.loads(row["block"])
    thumbs = Path(staging) / f"block-{row['number']:06d}" / "thumbs"
    shutil.rmtree(thumbs, ignore_errors=True)  # a retried task starts clean
    cfg = DecodeConfig(decode_cfg.max_pixels, decode_cfg.thumb_size, str(thumbs))
    decoded = decode_batch(read_block(block), cfg, preprocess)
    for sample in decoded:
        if "pixels" in sample:
            sample["pixels"] = sample["pixels"].numpy()
    return {"number": row["number"], "decoded": pickle.dumps(decoded, protocol=5)}


class EmbedBlock:
    """Ray actor: loads the workspace's model once, embeds each decoded block and writes its staging file."""

    def __init__(self, record: dict, config: dict, device: str, precision: str, batch_size: int, staging: str,
                 threads: int, kill: str | None = None):
        import open_clip
        import torch

        from indexer.models import ModelSpec, load_model
        if device != "cuda":
            torch.set_num_threads(max(1, threads))
        if record["name"] not in open_clip.list_models():
            open_clip.factory._MODEL_CONFIGS[record["name"]] = config
        self.model = load_model(ModelSpec(name=record["name"] if not record["checkpoint"] else None,
                                          pretrained=record["pretrained"], checkpoint=record["checkpoint"],
                                          device=device, precision=precision))
        if self.model.model_id != record["model_id"]:
            raise RuntimeError(f"worker loaded {self.model.model_id}, the workspace holds {record['model_id']}")
        self.batch_size, self.staging, self.kill = batch_size, Path(staging), kill

    def __call__(self, rows: dict) -> dict:
        import torch

        from indexer.index import embed_batch
        out = []
        for number, payload in zip(rows["number"], rows["decoded"]):
            number = int(number)
            self._maybe_die(number)
            decoded = pickle.loads(payload)
            for sample in decoded:
                if "pixels" in sample:
                    sample["pixels"] = torch.from_numpy(sample["pixels"])
            images, texts = [], []
            for start in range(0, len(decoded), self.batch_size):
                i, t = embed_batch(self.model, decoded[start:start + self.batch_size])
                images.append(i)
                texts.append(t)
            result = {"samples": decoded, "images": np.concatenate(images) if images else None,
                      "texts": np.concatenate(texts) if texts else None}
            path = self.staging / f"block-{number:06d}.pkl"
            atomic_write(path, lambda fh, r=result: pickle.dump(r, fh, protocol=5))
            out.append(str(path))
        return {"number": np.asarray(rows["number"]), "path": np.asarray(out, dtype=object)}

    def _maybe_die(self, number: int) -> None:
        if not self.kill or int(self.kill.split(":", 1)[0]) != number:
            return
        marker = Path(self.kill.split(":", 1)[1])
        if not marker.exists():
            marker.touch()
            os._exit(1)


def ray_results(ws: Workspace, sources: list[Source], cfg, decode_cfg: DecodeConfig, model, writer, run_id: int,
                times):
    """(batch, image vectors, text vectors) per block, in block order, each block exactly once."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ValueError("--engine ray needs Ray: pip install 'altlens[ray]'") from exc
    if model.model_id.endswith("@random"):
        raise ValueError("--engine ray needs saved weights (--checkpoint or --pretrained): random weights "
                         "(--pretrained none) differ in every worker process")
    staging = ws.root / "staging" / f"run-{run_id}"
    shutil.rmtree(ws.root / "staging", ignore_errors=True)  # what an interrupted run left is redone from inputs
    staging.mkdir(parents=True)
    blocks = plan_blocks(ws, sources, writer, cfg.block_rows)
    ws.release()
    if not blocks:
        return
    _start_ray(cfg)
    ds = _pipeline(ws, cfg, decode_cfg, model, blocks, staging)
    committed: set[int] = set()
    t0 = time.perf_counter()
    try:
        for row in ds.iter_rows():
            times.wait_decode += time.perf_counter() - t0
            number = int(row["number"])
            if number in committed:
                continue
            committed.add(number)
            with open(row["path"], "rb") as fh:
                result = pickle.load(fh)
            empty = np.zeros((0, model.dim), dtype=np.float32)
            batch = result["samples"]
            _move_thumbs(staging / f"block-{number:06d}" / "thumbs", ws.thumbs_dir, batch)
            yield batch, _or(result["images"], empty), _or(result["texts"], empty)
            t0 = time.perf_counter()
    finally:
        shutil.rmtree(ws.root / "staging", ignore_errors=True)


def _pipeline(ws: Workspace, cfg, decode_cfg: DecodeConfig, model, blocks: list[dict], staging: Path):
    import ray.data
    import torch

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    record = ws.get_meta("model")
    gpus = 1 if model.device == "cuda" and torch.cuda.is_available() else 0
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // (cfg.ray_workers + 1))
    items = [{"number": i, "block": pickle.dumps(b, protocol=5)} for i, b in enumerate(blocks)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(decode_block, fn_kwargs={"decode_cfg": decode_cfg, "preprocess": model.preprocess,
                                         "staging": str(staging)}, num_cpus=0.5)
    return ds.map_batches(
        EmbedBlock, batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg.ray_workers), num_gpus=gpus, num_cpus=0 if gpus else 1,
        fn_constructor_kwargs={"record": record, "config": _config(model.name), "device": model.device,
                               "precision": model.spec.precision, "batch_size": cfg.batch_size,
                               "staging": str(staging), "threads": threads,
                               "kill": os.environ.get(KILL_ENV)},
        max_restarts=-1, max_task_retries=-1)


def _config(name: str) -> dict:
    import open_clip
    return open_clip.get_model_config(name)


def _start_ray(cfg) -> None:
    import ray
    if ray.is_initialized():
        return
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    log.info("ray: %s", json.dumps(ray.cluster_resources()))


def _or(vectors, empty):
    return empty if vectors is None else vectors


def _move_thumbs(block_thumbs: Path, thumbs: Path, batch: list[dict]) -> None:
    for sample in batch:
        rel = sample.get("thumb")
        if rel and (block_thumbs / rel).is_file():
            (thumbs / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(block_thumbs / rel, thumbs / rel)
