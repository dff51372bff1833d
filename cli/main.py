"""``altlens``: registers every command explicitly (name -> function) and turns user errors into one line.

The command modules import nothing heavy at import time, so ``altlens --help``
stays fast; each command imports the library code it runs.
"""
from __future__ import annotations

import errno
import logging
import sys

import typer

from cli import curate, deliver, demos, ingest, review, web
from indexer.errors import AltlensError

COMMANDS = (
    ("index", ingest.index), ("import", ingest.import_), ("stats", ingest.stats), ("search", ingest.search),
    ("caption", curate.caption), ("fuse", curate.fuse), ("score", curate.score), ("map", curate.map_),
    ("semdedup", curate.semdedup), ("defaults", curate.defaults),
    ("label", review.label),
    ("select", deliver.select), ("export", deliver.export), ("verify-export", deliver.verify_export),
    ("serve", web.serve),
    ("demo", demos.demo), ("demo-pool", demos.demo_pool), ("demo-train", demos.demo_train),
)
REWARD_COMMANDS = (("train", review.reward_train), ("apply", review.reward_apply))
CONCEPT_COMMANDS = (("add", review.concept_add), ("tag", review.concept_tag), ("train", review.concept_train),
                    ("import", review.concept_import), ("queue", review.concept_queue), ("list", review.concept_list))
USER_ERRORS = (AltlensError, ValueError, FileNotFoundError)
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def build() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="altlens: curate image-caption datasets (index, score, cluster, review, export).")
    for name, command in COMMANDS:
        app.command(name)(command)
    reward = typer.Typer(help="Learn a reward from curator labels and apply it.", no_args_is_help=True)
    for name, command in REWARD_COMMANDS:
        reward.command(name)(command)
    app.add_typer(reward, name="reward")
    concept = typer.Typer(help="Concept scores: zero-shot from a prompt, trained on tags, or an imported head.",
                          no_args_is_help=True)
    for name, command in CONCEPT_COMMANDS:
        concept.command(name)(command)
    app.add_typer(concept, name="concept")
    return app


def main() -> None:
    """Entry point: user mistakes become one clear line on stderr and exit code 2, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = build()(standalone_mode=False)  # click returns (not raises) an Exit's code in this mode
    except USER_ERRORS as exc:
        typer.echo(f"altlens: error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in DISK_ERRORS and not isinstance(exc, PermissionError):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        typer.echo(f"altlens: error: {exc.strerror or exc}{where}; what this step had not committed was not written: "
                   "free space or fix the permissions and run it again", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # usage errors (a missing option, a bad value) carry their own message
        import click
        if isinstance(exc, (click.ClickException, typer.TyperException)) and hasattr(exc, "show"):
            exc.show()  # typer vendors its own click: its usage errors are TyperExceptions, not click's
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
