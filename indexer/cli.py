"""The ``altlens`` command line: a thin layer over the config dataclasses of each component."""
from __future__ import annotations

import json
import logging
import sys
from typing import List, Optional

import typer

from indexer.models import ModelError, ModelSpec
from indexer.sources import SourceError
from indexer.store import WorkspaceError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="altlens: curate image-caption datasets (index, score, cluster, review, export).")
USER_ERRORS = (ModelError, SourceError, WorkspaceError, ValueError, FileNotFoundError)

WorkspaceOpt = typer.Option(..., "--workspace", "-w", help="Workspace directory.")


def model_spec(model, pretrained, checkpoint, device="auto", precision="fp32") -> ModelSpec | None:
    if model is None and pretrained is None and checkpoint is None and device == "auto" and precision == "fp32":
        return None
    return ModelSpec(name=model, pretrained=pretrained, checkpoint=checkpoint, device=device, precision=precision)


@app.command()
def index(
    sources: List[str] = typer.Argument(..., help="Folders, table files (.jsonl/.csv/.parquet) or tar shards (globs, {a..b})."),
    workspace: str = WorkspaceOpt,
    model: Optional[str] = typer.Option(None, help="open_clip model name, a config .json, or local-dir:DIR."),
    pretrained: Optional[str] = typer.Option(None, help="Pretrained tag (from the local cache; 'none' = random)."),
    checkpoint: Optional[str] = typer.Option(None, help="Local weights (.safetensors or a state dict)."),
    batch_size: int = typer.Option(64, min=1),
    precision: str = typer.Option("fp32", help="fp32 or bf16 (autocast)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    workers: int = typer.Option(2, min=1, help="Decode threads."),
    index_type: str = typer.Option("auto", help="FAISS index: auto (flat up to 100k, else hnsw), flat, hnsw, ivf."),
    image_column: Optional[str] = typer.Option(None, help="Table column with image paths."),
    caption_column: Optional[str] = typer.Option(None, help="Table column with captions."),
    commit_every: int = typer.Option(1024, min=1, help="Samples per atomic commit (what a crash can cost)."),
):
    """Index images and their alt-text into a workspace (resumable; only new inputs are processed)."""
    from indexer.index import IndexConfig, run_index

    cfg = IndexConfig(sources=tuple(sources), workspace=workspace,
                      model=model_spec(model, pretrained, checkpoint, device, precision),
                      batch_size=batch_size, workers=workers, index_type=index_type,
                      image_column=image_column, caption_column=caption_column, commit_rows=commit_every)
    report = run_index(cfg)
    typer.echo(json.dumps(report))


@app.command()
def stats(workspace: str = WorkspaceOpt, as_json: bool = typer.Option(False, "--json", help="One JSON object.")):
    """Samples by status and by source."""
    from curation.views.stats import workspace_stats, format_stats
    from indexer.store import Workspace

    with Workspace(workspace, read_only=True) as ws:
        result = workspace_stats(ws)
    typer.echo(json.dumps(result) if as_json else format_stats(result))


@app.command()
def search(
    workspace: str = WorkspaceOpt,
    text: str = typer.Option(..., help="What to look for."),
    k: int = typer.Option(10, "-k", min=1, max=10000),
    as_json: bool = typer.Option(False, "--json"),
    device: str = typer.Option("auto"),
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


def main() -> None:
    """Entry point: user mistakes become one clear line on stderr and exit code 2, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for module in ("curation.cli", "app.cli"):
        try:
            __import__(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    try:
        code = app(standalone_mode=False)  # click returns (not raises) an Exit's code in this mode
    except USER_ERRORS as exc:
        typer.echo(f"altlens: error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own message
        import click
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
