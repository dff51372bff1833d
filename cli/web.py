"""``altlens serve``: a workspace in the browser."""
from __future__ import annotations

import typer

from cli.options import WORKSPACE


def serve(
    workspace: str = WORKSPACE,
    host: str = typer.Option("127.0.0.1", help="Interface to bind (127.0.0.1 keeps it on this machine)."),
    port: int = typer.Option(7860, min=1, max=65535),
    auth: str = typer.Option(None, help="USER:PASS required to open the app."),
    auth_file: str = typer.Option(None, help="A file of USER:PASS lines."),
    read_only: bool = typer.Option(False, "--read-only", help="No writes (labels) from the browser."),
    allow_unauthenticated_writes: bool = typer.Option(
        False, help="Beyond 127.0.0.1 without --auth, still accept writes (otherwise read-only)."),
):
    """Serve the curation UI for a workspace."""
    from app.serve import serve as run

    run(workspace, host=host, port=port, auth=auth, auth_file=auth_file, read_only=read_only,
        allow_unauthenticated_writes=allow_unauthenticated_writes, announce=typer.echo)
