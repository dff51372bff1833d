"""``altlens serve``: the app on 127.0.0.1 by default, no share link, no analytics, every route behind the login.

The Gradio app is mounted into a FastAPI app of ours and run by uvicorn, so that
one middleware decides every request. With ``--auth``, only the login page and
static assets answer without a login (Gradio itself leaves its monitoring,
heartbeat, cancel and startup routes open). Bound beyond loopback without
``--auth``, the server is read-only unless ``--allow-unauthenticated-writes``.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from indexer.errors import AltlensError  # noqa: E402

log = logging.getLogger(__name__)

# Paths that answer without a login (the login page itself and the static files it needs).
OPEN_PATHS = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css"}
OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")


class ServeError(AltlensError, OSError):
    """The server cannot start as asked (a busy port, an unreadable auth file)."""


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Fail with one line, before anything is built, when the port cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server may be "
                             "using it; pass --port N)") from None


def exposure(host: str, credentials, read_only: bool, allow_unauthenticated_writes: bool) -> bool:
    """The read-only setting to serve with, warning when the app is reachable from the network without a login."""
    if is_loopback(host) or credentials:
        return read_only
    if read_only or allow_unauthenticated_writes:
        log.warning("serving %s without --auth: anyone who can reach this port can %s the workspace", host,
                    "read" if read_only else "read and change")
        return read_only
    log.warning("serving %s without --auth: anyone who can reach this port can read the workspace; serving it "
                "read-only (pass --auth USER:PASS, or --allow-unauthenticated-writes)", host)
    return True


class LoginRequired:
    """ASGI middleware: with auth on, a request outside the open paths needs Gradio's login cookie (else 401)."""

    def __init__(self, app, gradio_app):
        self.app, self.gradio_app = app, gradio_app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and not self._open(scope["path"]) and self._user(scope) is None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4401})
                return
            body = b'{"detail":"Not authenticated"}'
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    def _user(self, scope) -> str | None:
        header = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie").decode("latin-1")
        cookies = SimpleCookie()
        try:
            cookies.load(header)
        except Exception:  # a malformed cookie header is no login
            return None
        cookie_id = self.gradio_app.cookie_id
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            if name in cookies:
                user = self.gradio_app.tokens.get(cookies[name].value)
                if user is not None:
                    return user
        return None


def warm_up(handlers, announce=log.info) -> None:
    """Compute the Overview and the map's atlas, and load the search model and FAISS index while the first page loads, so neither
    the first page nor the first text search waits for them (they took 1 s and 7.6 s)."""
    started = time.monotonic()
    try:
        with handlers.ws.session():
            handlers.overview("cluster")
            if handlers.ws.get_meta("map") is not None:
                handlers.atlas  # noqa: B018 - the Map's first window needs it
        with handlers.ws.session():
            handlers.searcher.model  # noqa: B018 - loading is the point
        announce(f"altlens: search model ready ({time.monotonic() - started:.1f} s)")
    except Exception as exc:  # the first search will say what is wrong
        log.warning("altlens: could not load the search model ahead of time: %s", exc)


def make_server_app(workspace: str, read_only: bool, credentials):
    """The FastAPI app: the Gradio app mounted at /, behind :class:`LoginRequired` when there are credentials."""
    import fastapi
    import gradio as gr
    from starlette.routing import Mount

    from app.atlas_ui import plotly_js
    from app.handlers import PLACEHOLDER
    from app.ui import CSS, build_app
    blocks = build_app(workspace, read_only=read_only)
    blocks.queue(default_concurrency_limit=4)
    api = fastapi.FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    api = gr.mount_gradio_app(api, blocks, path="/", auth=credentials, allowed_paths=[str(blocks.altlens_workspace
                              .thumbs_dir), str(plotly_js()), str(PLACEHOLDER)], show_error=False, footer_links=[], css=CSS, ssr_mode=False,
                              enable_monitoring=False, pwa=False, mcp_server=False)
    if credentials:
        gradio_app = next(r.app for r in api.routes if isinstance(r, Mount))
        api.add_middleware(LoginRequired, gradio_app=gradio_app)
    api.state.altlens_handlers = blocks.altlens_handlers
    return api


def serve(workspace: str, host: str = "127.0.0.1", port: int = 7860, auth: str | None = None,
          auth_file: str | None = None, read_only: bool = False, allow_unauthenticated_writes: bool = False,
          announce=log.info) -> None:
    """Check the port, build the app and serve it until interrupted; ``announce`` gets the address line."""
    import uvicorn

    from indexer.models import bound_torch_threads
    bound_torch_threads()
    credentials = read_auth(auth, auth_file)
    check_port(host, port)
    read_only = exposure(host, credentials, read_only, allow_unauthenticated_writes)
    api = make_server_app(workspace, read_only, credentials)
    threading.Thread(target=warm_up, args=(api.state.altlens_handlers, announce), daemon=True, name="warm-up").start()
    announce(f"altlens: serving {workspace} on http://{host}:{port}" + (" (read-only)" if read_only else ""))
    uvicorn.Server(uvicorn.Config(api, host=host, port=port, log_level="warning")).run()
