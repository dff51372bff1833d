"""Runs clip-retrieval's real ``clip_inference`` (installed with ``make peers``) on WebDataset shards with an
open_clip config + checkpoint: ``python clip_inference.py LIB CONFIG CHECKPOINT SHARDS OUT``.

clip-retrieval's package ``__init__`` imports its web front end; a shim package points at the real modules
without it, beside empty stand-ins for two modules its inference imports but never uses. The config is
registered with open_clip first, so ``open_clip:NAME/CHECKPOINT`` loads these weights.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile


def run(lib: str, config: str, checkpoint: str, shards: str, out: str) -> None:
    sys.path.insert(0, lib)
    import open_clip
    open_clip.add_model_config(config)
    shim = tempfile.mkdtemp(prefix="cr-shim-")
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None:
        raise SystemExit(f"clip-retrieval is not installed in {lib}: run 'make peers'")
    os.makedirs(f"{shim}/clip_retrieval")
    with open(f"{shim}/clip_retrieval/__init__.py", "w") as fh:
        fh.write(f"__path__.append({list(spec.submodule_search_locations)[0]!r})\n")
    for unused, body in (("wandb", ""), ("sentence_transformers", "SentenceTransformer = None\n")):
        if importlib.util.find_spec(unused) is None:
            with open(f"{shim}/{unused}.py", "w") as fh:
                fh.write(body)
    sys.path.insert(0, shim)
    os.environ["PYTHONPATH"] = os.pathsep.join([shim, lib, *sys.path[2:]])
    from clip_retrieval.clip_inference.main import main
    name = os.path.splitext(os.path.basename(config))[0]
    main(input_dataset=shards, output_folder=out, input_format="webdataset", cache_path=None, batch_size=8,
         num_prepro_workers=1, enable_text=True, enable_image=True, enable_metadata=True, write_batch_size=10**6,
         wds_image_key="jpg", wds_caption_key="txt", clip_model=f"open_clip:{name}/{checkpoint}", mclip_model="",
         use_mclip=False, use_jit=False, distribution_strategy="sequential", output_partition_count=1,
         enable_wandb=False)


if __name__ == "__main__":
    run(*sys.argv[1:6])
