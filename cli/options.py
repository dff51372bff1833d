"""Options every command shares, and how commands print their reports."""
from __future__ import annotations

import json

import typer

WORKSPACE = typer.Option(..., "--workspace", "-w", help="Workspace directory.")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")
PRECISION = typer.Option("fp32", help="fp32, bf16 (weights cast once; CPU or GPU), fp16 (GPU), or auto: bf16 "
                         "where the CPU computes it (amx_bf16, avx512_bf16) or on CUDA, checked against fp32 "
                         "at load (cosine >= 0.99, else fp32), fp32 elsewhere.")


def echo_json(report) -> None:
    """A command's report as one JSON line (what scripts read)."""
    typer.echo(json.dumps(report, default=str))
ENGINE = typer.Option("local", help="local (this process) or ray (Ray Data: decode tasks, model actors; "
                                    "pip install 'altlens[ray]').")
RAY_ADDRESS = typer.Option(None, help="An existing Ray cluster (auto, ray://HOST:10001); default: start a local one.")
RAY_WORKERS = typer.Option(1, min=1, help="Model actors on Ray (one GPU each where there are GPUs).")
