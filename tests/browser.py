"""Start ``altlens serve`` on a free port and drive Debian's Chromium through Playwright (never a downloaded browser)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(workspace: Path, *extra: str):
    """``altlens serve`` in a subprocess; yields its base URL and stops it afterwards."""
    port = free_port()
    exe = Path(sys.executable).parent / "altlens"
    log = open(workspace.parent / f"serve-{port}.log", "w")
    proc = subprocess.Popen([str(exe), "serve", "-w", str(workspace), "--port", str(port), *extra],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"altlens serve exited: {(workspace.parent / f'serve-{port}.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status in (200, 401):
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise TimeoutError("altlens serve did not answer within 180 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    from playwright.sync_api import sync_playwright
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise RuntimeError("Debian's chromium is not installed; run 'make browser' (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def event_index(url: str, api_name: str) -> int:
    """The index Gradio's queue knows an event by, from the served page's config."""
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def post(url: str, body: dict) -> dict:
    """POST a JSON body, the JSON answer back."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


class QueueSession:
    """One browser session speaking Gradio's queue protocol: join events, read every answer from one stream."""

    def __init__(self, base: str, fn_index: int):
        self.base, self.fn_index, self.hash = base, fn_index, uuid.uuid4().hex[:11]
        self.sent: dict[str, float] = {}
        self.done: dict[str, tuple[bool, float]] = {}  # event id -> (success, seconds from join)
        self.errors: dict[str, str] = {}  # event id -> the message of a refused one
        self._lock = threading.Lock()
        self._stream = threading.Thread(target=self._read, daemon=True)
        self._stream.start()

    def join(self, data: list, event_data) -> str:
        t0 = time.perf_counter()
        out = post(self.base + "gradio_api/queue/join", {"data": data, "event_data": event_data,
                                                          "fn_index": self.fn_index, "session_hash": self.hash})
        with self._lock:
            self.sent[out["event_id"]] = t0
        return out["event_id"]

    def _read(self) -> None:
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}gradio_api/queue/data?session_hash={self.hash}",
                                            timeout=600) as resp:
                    for raw in resp:
                        line = raw.decode().strip()
                        if not line.startswith("data:"):
                            continue
                        message = json.loads(line[5:])
                        if message.get("msg") == "process_completed":
                            with self._lock:
                                t0 = self.sent.get(message["event_id"], time.perf_counter())
                                self.done[message["event_id"]] = (bool(message.get("success")),
                                                                  time.perf_counter() - t0)
                                if not message.get("success"):
                                    self.errors[message["event_id"]] = str((message.get("output") or {})
                                                                           .get("error"))
            except OSError:
                time.sleep(0.2)

    def wait(self, event_id: str, timeout: float) -> tuple[bool, float] | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if event_id in self.done:
                    return self.done[event_id]
            time.sleep(0.01)
        return None
