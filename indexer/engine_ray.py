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
from indexer.stages import decode_batch, embed_batch, keyed
from indexer.store import Workspace

log = logging.getLogger(__name__)

# fault injection for the engine-equality test, "N:MARKER": the model actor that meets block N while the file
# MARKER does not exist creates it and exits at once, as a crashed or pre-empted worker would
KILL_ENV = "ALTLENS_RAY_KILL_BLOCK"


def plan_blocks(ws: Workspace, sources: list[Source], writer, block_rows: int) -> list[dict]:
    """Blocks to run, in commit order: ``{"shard": path}`` per tar shard not yet done, or ``{"raws": [...]}``,
    ``block_rows`` light raw samples (paths, sidecars) of a folder or table source."""
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
    from indexer.shards import read_shards

    if "raws" in block:
        return block["raws"]
    src = block["source"]
    one = Source(src.name, src.kind, src.location, shards=(block["shard"],))
    return list(keyed(read_shards(one, lambda p: False), src.name, block["known"], {}))


def decode_block(row: dict, decode_cfg: DecodeConfig, preprocess, staging: str) -> dict:
    """Ray task body: read and decode one block; its thumbnails go to the block's staging folder."""
    block = pickle.loads(row["block"])
    thumbs = Path(staging) / f"block-{row['number']:06d}" / "thumbs"
    shutil.rmtree(thumbs, ignore_errors=True)  # a retried task starts clean
    cfg = DecodeConfig(decode_cfg.max_pixels, decode_cfg.thumb_size, str(thumbs))
    decoded = decode_batch(read_block(block), cfg, preprocess)
    for sample in decoded:
        if "pixels" in sample:
            sample["pixels"] = sample["pixels"].numpy()
    return {"number": row["number"], "decoded": pickle.dumps(decoded, protocol=5)}


class BlockActor:
    """A Ray actor that loads the workspace's model once, turns each block into a result (:meth:`process`) and
    writes it to the block's staging file, atomically; the driver commits it (see :func:`stream_blocks`)."""

    def __init__(self, record: dict, config: dict, device: str, precision: str, staging: str, threads: int,
                 kill: str | None = None):
        self.model = worker_model(record, config, device, precision, threads)
        self.staging, self.kill = Path(staging), kill

    def process(self, number: int, payload: bytes) -> dict:
        raise NotImplementedError

    def __call__(self, rows: dict) -> dict:
        out = []
        for number, payload in zip(rows["number"], rows["decoded"]):
            number = int(number)
            self._maybe_die(number)
            result = self.process(number, payload)
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


def worker_model(record: dict, config: dict, device: str, precision: str, threads: int):
    """The workspace's model in a worker process, checked to be the very weights the workspace holds."""
    import open_clip
    import torch

    from indexer.models import ModelSpec, load_model
    if device != "cuda":
        torch.set_num_threads(max(1, threads))
    if record["name"] not in open_clip.list_models():
        open_clip.factory._MODEL_CONFIGS[record["name"]] = config
    model = load_model(ModelSpec(name=record["name"] if not record["checkpoint"] else None,
                                 pretrained=record["pretrained"], checkpoint=record["checkpoint"],
                                 device=device, precision=precision))
    if model.model_id != record["model_id"]:
        raise RuntimeError(f"worker loaded {model.model_id}, the workspace holds {record['model_id']}")
    return model


class EmbedBlock(BlockActor):
    """Index: image and alt-text embeddings of a decoded block."""

    def __init__(self, batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.batch_size = batch_size

    def process(self, number: int, payload: bytes) -> dict:
        import torch

        decoded = pickle.loads(payload)
        for sample in decoded:
            if "pixels" in sample:
                sample["pixels"] = torch.from_numpy(sample["pixels"])
        images, texts = [], []
        for start in range(0, len(decoded), self.batch_size):
            i, t = embed_batch(self.model, decoded[start:start + self.batch_size])
            images.append(i)
            texts.append(t)
        return {"samples": decoded, "images": np.concatenate(images) if images else None,
                "texts": np.concatenate(texts) if texts else None}


def check_ray(model) -> None:
    """Refuse clearly what the Ray engine cannot do."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ValueError("--engine ray needs Ray: pip install 'altlens[ray]'") from exc
    if model.model_id.endswith("@random"):
        raise ValueError("--engine ray needs saved weights (--checkpoint or --pretrained): random weights "
                         "(--pretrained none) differ in every worker process")


def stream_blocks(ws: Workspace, items: list, decode, decode_kwargs: dict, actor: type, actor_kwargs: dict,
                  model, address: str | None, workers: int, staging: Path):
    """(number, result) of every block of ``items``, in order, each exactly once: ``decode(row, **decode_kwargs)``
    runs in Ray tasks, ``actor(**actor_kwargs)`` in a pool of ``workers`` model actors (a GPU each where the
    model runs on one). ``staging`` (inside the workspace) is removed at the end, whatever happens."""
    import ray.data
    import torch

    _start_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    gpus = 1 if model.device == "cuda" and torch.cuda.is_available() else 0
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // (workers + 1))
    rows = [{"number": i, "block": pickle.dumps(b, protocol=5)} for i, b in enumerate(items)]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map(decode, fn_kwargs=decode_kwargs, num_cpus=0.5)
    ds = ds.map_batches(
        actor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus, num_cpus=0 if gpus else 1,
        fn_constructor_kwargs={"record": ws.get_meta("model"), "config": _config(model.name), "device": model.device,
                               "precision": model.precision, "staging": str(staging), "threads": threads,
                               "kill": os.environ.get(KILL_ENV), **actor_kwargs},
        max_restarts=-1, max_task_retries=-1)
    ws.release()
    committed: set[int] = set()
    try:
        for row in ds.iter_rows():
            number = int(row["number"])
            if number in committed:
                continue
            committed.add(number)
            with open(row["path"], "rb") as fh:
                yield number, pickle.load(fh)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.parent.rmdir()
        except OSError:
            pass


def new_staging(ws: Workspace, run: str) -> Path:
    """A clean staging folder for one run; what an interrupted run left is removed (its blocks are redone)."""
    shutil.rmtree(ws.root / "staging", ignore_errors=True)
    staging = ws.root / "staging" / run
    staging.mkdir(parents=True)
    return staging


def ray_results(ws: Workspace, sources: list[Source], cfg, decode_cfg: DecodeConfig, model, writer, run_id: int,
                times):
    """(batch, image vectors, text vectors) per block, in block order, each block exactly once."""
    check_ray(model)
    staging = new_staging(ws, f"index-{run_id}")
    blocks = plan_blocks(ws, sources, writer, cfg.block_rows)
    if not blocks:
        return
    results = stream_blocks(ws, blocks, decode_block, {"decode_cfg": decode_cfg, "preprocess": model.preprocess,
                                                       "staging": str(staging)},
                            EmbedBlock, {"batch_size": cfg.batch_size}, model, cfg.ray_address, cfg.ray_workers,
                            staging)
    empty = np.zeros((0, model.dim), dtype=np.float32)
    t0 = time.perf_counter()
    for number, result in results:
        times.wait_decode += time.perf_counter() - t0
        batch = result["samples"]
        _move_thumbs(staging / f"block-{number:06d}" / "thumbs", ws.thumbs_dir, batch)
        yield batch, _or(result["images"], empty), _or(result["texts"], empty)
        t0 = time.perf_counter()


def _config(name: str) -> dict:
    import open_clip
    return open_clip.get_model_config(name)


def _start_ray(address: str | None) -> None:
    import ray
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
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
