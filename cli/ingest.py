"""``altlens index``, ``import``, ``stats`` and ``search``: build a workspace and look into it."""
from __future__ import annotations

import json
from typing import List, Optional

import typer

from cli.options import DEVICE, ENGINE, PRECISION, RAY_ADDRESS, RAY_WORKERS, WORKSPACE, echo_json


def index(
    sources: List[str] = typer.Argument(..., help="Folders, table files (.jsonl/.csv/.parquet) or tar shards (globs, {a..b})."),
    workspace: str = WORKSPACE,
    model: Optional[str] = typer.Option(None, help="open_clip model name, a config .json, or local-dir:DIR."),
    pretrained: Optional[str] = typer.Option(None, help="Pretrained tag (from the local cache; 'none' = random)."),
    checkpoint: Optional[str] = typer.Option(None, help="Local weights (.safetensors or a state dict)."),
    batch_size: int = typer.Option(64, min=1),
    precision: str = PRECISION,
    device: str = DEVICE,
    workers: int = typer.Option(2, min=1, help="Decode threads."),
    index_type: str = typer.Option("auto", help="FAISS index: auto (flat up to 100k, ivf up to 2 M, else ivfpq), flat, hnsw, ivf, ivfpq."),
    image_column: Optional[str] = typer.Option(None, help="Table column with image paths."),
    caption_column: Optional[str] = typer.Option(None, help="Table column with captions."),
    allow_root: List[str] = typer.Option(None, help="A folder outside the source that table rows and symlinks "
                                                    "may point into (repeatable); nothing else outside is read."),
    commit_every: int = typer.Option(1024, min=1, help="Samples per atomic commit (what a crash can cost)."),
    engine: str = ENGINE,
    ray_address: Optional[str] = RAY_ADDRESS,
    ray_workers: int = RAY_WORKERS,
):
    """Index images and their alt-text into a workspace (resumable; only new inputs are processed)."""
    from curation.pipeline import run_stage
    from indexer.index import IndexConfig
    from indexer.models import ModelSpec

    spec = None
    if (model, pretrained, checkpoint, device, precision) != (None, None, None, "auto", "fp32"):
        spec = ModelSpec(name=model, pretrained=pretrained, checkpoint=checkpoint, device=device, precision=precision)
    cfg = IndexConfig(sources=tuple(sources), model=spec, batch_size=batch_size, workers=workers,
                      index_type=index_type, image_column=image_column, caption_column=caption_column,
                      allow_roots=tuple(allow_root or ()),
                      commit_rows=commit_every, engine=engine, ray_address=ray_address, ray_workers=ray_workers)
    echo_json(run_stage("index", workspace, cfg))


def import_(
    layout: str = typer.Argument(..., help="The pool's layout: datacomp or clip-retrieval."),
    folder: str = typer.Argument(..., help="The pool's folder (DataComp: holding metadata/; clip-retrieval: "
                                           "holding img_emb/, text_emb/, metadata/)."),
    workspace: str = WORKSPACE,
    embeddings: str = typer.Option("l14", help="datacomp: which vectors, l14 (OpenAI ViT-L-14) or b32 (ViT-B-32)."),
    model: Optional[str] = typer.Option(None, help="open_clip model that made the vectors (datacomp: default "
                                                   "from --embeddings; clip-retrieval: required)."),
    pretrained: Optional[str] = typer.Option(None, help="Its pretrained tag (from the local cache), e.g. openai."),
    checkpoint: Optional[str] = typer.Option(None, help="Or its local weights (.safetensors or a state dict)."),
    precision: str = PRECISION,
    device: str = DEVICE,
    index_type: str = typer.Option("auto", help="FAISS index: auto (flat up to 100k, ivf up to 2 M, else ivfpq), flat, hnsw, ivf, ivfpq."),
    commit_every: int = typer.Option(65536, min=1, help="Rows per atomic commit (what a crash can cost)."),
    images: List[str] = typer.Option(None, help="img2dataset tar shards of the pool's images (globs, {a..b}; "
                                                "repeatable): joined to the rows by the uid in each .json, after a "
                                                "sample of them confirms the model."),
):
    """Import a pool's own embeddings and metadata (no image is embedded; resumable; nothing is fetched)."""
    from curation.pipeline import run_stage
    from indexer.importer import ImportConfig, model_for

    spec = model_for(layout, embeddings, model, pretrained, checkpoint, device, precision)
    cfg = ImportConfig(layout=layout, folder=folder, model=spec, embeddings=embeddings, commit_rows=commit_every,
                       index_type=index_type, images=tuple(images or ()))
    echo_json(run_stage("import", workspace, cfg))


def stats(workspace: str = WORKSPACE, as_json: bool = typer.Option(False, "--json", help="One JSON object.")):
    """Samples by status and by source."""
    from curation.views.stats import format_stats, workspace_stats
    from indexer.store import Workspace

    with Workspace(workspace, read_only=True) as ws:
        result = workspace_stats(ws)
    typer.echo(json.dumps(result) if as_json else format_stats(result))


def search(
    workspace: str = WORKSPACE,
    text: str = typer.Option(..., help="What to look for."),
    k: int = typer.Option(10, "-k", min=1, max=10000),
    as_json: bool = typer.Option(False, "--json"),
    device: str = DEVICE,
):
    """Nearest images to a text."""
    from curation.views.search import Searcher
    from indexer.store import Workspace

    with Workspace(workspace, read_only=True) as ws:
        hits = Searcher(ws, device=device).text(text, k)
    if as_json:
        typer.echo(json.dumps(hits))
        return
    for h in hits:
        typer.echo(f"{h['score']:.4f}  {h['uid']}  {h['key']}  {h['alt'][:80]!r}")
