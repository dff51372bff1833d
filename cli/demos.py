"""``altlens demo`` and ``altlens demo-train``: the generated demo world, end to end, and its models."""
from __future__ import annotations

import typer

from cli.options import PRECISION, echo_json


def demo(
    workspace: str = typer.Option("demo-workspace", "--workspace", "-w"),
    n: int = typer.Option(3000, min=1, help="Samples in the demo dataset."),
    seed: int = typer.Option(0),
    precision: str = PRECISION,
    semantic_dups: float = typer.Option(0.03, min=0.0, max=0.5, help="Share of samples that are the scene of an "
                                        "earlier one drawn again, with an alt-text of their own (semantic dedup)."),
    watermarked: float = typer.Option(0.1, min=0.0, max=1.0, help="Share of images with a stock-photo watermark "
                                      "(a concept to tag: 'altlens concept')."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Build the workspace, do not start the UI."),
):
    """Build the demo world offline: shards -> index with the shipped model -> curation -> UI."""
    from demo.build import DemoConfig, build_demo
    from demo.world import NoiseConfig

    summary = build_demo(DemoConfig(workspace=workspace, n=n, seed=seed, precision=precision,
                                    noise=NoiseConfig(semantic_dups=semantic_dups, watermarked=watermarked)))
    echo_json(summary["index"])
    typer.echo(f"demo workspace ready: {summary['workspace']}")
    if not no_serve:
        from app.serve import serve
        serve(summary["workspace"], announce=typer.echo)


def demo_pool(
    out: str = typer.Argument(..., help="Folder for the pool (metadata/ and shards/ are made in it)."),
    n: int = typer.Option(400, min=2, help="Rows in the pool."),
    downloaded: float = typer.Option(0.75, min=0.0, max=1.0, help="Share of rows whose image is in the shards."),
    seed: int = typer.Option(0),
):
    """Write a small pool in DataComp's layout (parquet + npz, img2dataset shards) from the demo world, with the
    demo CLIP's vectors, to try 'altlens import datacomp' offline (README: Start from DataComp or LAION)."""
    from demo.pool import write_pool
    echo_json(write_pool(out, n=n, downloaded=downloaded, seed=seed))


def demo_train(
    out_dir: str = typer.Option(None, help="Where to write the checkpoint (default: the shipped location)."),
    steps: int = typer.Option(1200, min=0, help="CLIP training steps (0: keep --init-from, train the captioner only)."),
    captioner_steps: int = typer.Option(800, min=0, help="Captioner training steps (0: CLIP only)."),
    n_train: int = typer.Option(40000, min=100),
    seed: int = typer.Option(20261128),
    init_from: str = typer.Option(None, help="Continue from this CLIP checkpoint instead of random weights."),
    lr: float = typer.Option(1e-3, help="Peak learning rate of the CLIP."),
    warmup: int = typer.Option(50, min=0, help="Warm-up steps of the CLIP."),
    paraphrase_share: float = typer.Option(0.0, min=0.0, max=1.0,
                                           help="Share of description captions worded by demo.paraphrase."),
    negatives_per_image: int = typer.Option(1, min=1, help="One-detail-wrong captions per image."),
    hard_negative: list[str] = typer.Option(None, "--hard-negative",
                                            help="Kind of one-detail-wrong caption to train against (colour, shape, "
                                                 "size, position, background, binding); repeat the option for "
                                                 "several, name a kind twice to draw it twice as often. Default: "
                                                 "every kind, equally."),
):
    """Train the demo CLIP and captioner on CPU (from scratch, or --init-from a checkpoint); write the model card.
    The shipped CLIP's stages are listed in its model card (demo/model/MODEL_CARD.md)."""
    from demo import MODEL_DIR
    from demo.phrasings import HARD_KINDS
    from demo.train import TrainConfig, train

    unknown = sorted(set(hard_negative or ()) - set(HARD_KINDS))
    if unknown:
        raise typer.BadParameter(f"unknown kind {', '.join(unknown)}; known: {', '.join(HARD_KINDS)}",
                                 param_hint="--hard-negative")

    cfg = TrainConfig(out_dir=out_dir or str(MODEL_DIR), steps=steps, n_train=n_train, seed=seed,
                      captioner_steps=captioner_steps, init_from=init_from, lr=lr, warmup=warmup,
                      paraphrase_share=paraphrase_share, negatives_per_image=negatives_per_image,
                      hard_negatives=tuple(hard_negative) if hard_negative else HARD_KINDS)
    numbers = train(cfg)
    echo_json({k: v for k, v in numbers.items() if k != "caption_examples"})
