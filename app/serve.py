"""``altlens serve``: a workspace in the browser, on 127.0.0.1 by default, no share link, no analytics."""
from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

log = logging.getLogger(__name__)


def read_auth(auth: str | None, auth_file: str | None) -> list[tuple[str, str]] | None:
    """USER:PASS, or a file of USER:PASS lines; a malformed entry is a clear error."""
    lines = [auth] if auth else []
    if auth_file:
        path = Path(auth_file)
        if not path.is_file():
            raise FileNotFoundError(f"auth file {auth_file!r} does not exist")
        lines += [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    pairs = []
    for line in lines:
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError("auth entries must look like USER:PASS")
        pairs.append((user, password))
    return pairs or None


def serve(workspace: str, host: str = "127.0.0.1", port: int = 7860, auth: str | None = None,
          auth_file: str | None = None, read_only: bool = False, block: bool = True):
    """Build the app and launch it; returns the running Blocks when ``block`` is False."""
    from app.ui import CSS, build_app
    credentials = read_auth(auth, auth_file)
    app = build_app(workspace, read_only=read_only)
    thumbs = str(app.altlens_workspace.thumbs_dir)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, share=False, auth=credentials, allowed_paths=[thumbs],
               prevent_thread_lock=not block, show_error=False, quiet=not block, footer_links=[], css=CSS)
    return app
