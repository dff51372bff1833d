"""Many writers at once: curators clicking in the browser while CLI commands write to the same workspace.

Clients are real Gradio API clients on 127.0.0.1 driving the Review view's own
events (start a queue, press good/bad, add a tag); the CLI commands are real
``altlens`` processes. Loops are bounded in count and time.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from browser import served
from conftest import writable_copy

from indexer.store import Workspace

CURATORS = 20
CLICKS = 8  # good/bad presses per curator, plus one tag each
DEADLINE_S = 240


def altlens(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "altlens"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)


def curator(url: str, number: int, stop_at: float) -> dict:
    """One curator: a queue, CLICKS labels (alternating good/bad), a tag; every call timed and checked."""
    from gradio_client import Client
    client = Client(url, verbose=False)
    done = {"acknowledged": [], "tags": 0, "failed": [], "seconds": []}

    def call(api_name, *args):
        t0 = time.perf_counter()
        try:
            out = client.predict(*args, api_name=api_name)
        except Exception as exc:  # a failed call is what this test counts
            done["failed"].append(f"{api_name}: {type(exc).__name__}: {str(exc)[:200]}")
            return None
        done["seconds"].append(time.perf_counter() - t0)
        return out
    out = call("/queue", "lowest reward first", "0", "")
    progress = out[-1] if out else ""
    for click in range(CLICKS):
        if time.time() > stop_at:
            break
        shown = re.search(r"#(\d+)", progress or "")
        action = "/act" if (number + click) % 2 == 0 else "/act_1"  # good, bad
        out = call(action)
        if out is None or shown is None:
            continue
        done["acknowledged"].append((int(shown.group(1)), "good" if action == "/act" else "bad"))
        progress = out[-1]
    if call("/add_tag", f"curator {number}") is not None:
        done["tags"] += 1
    return done


def cli_writers(workspace: Path, stop_at: float, results: dict) -> None:
    """CLI label calls and a full score recompute, running while the curators click."""
    labels, failures = 0, []
    proc = altlens("score", "-w", str(workspace), "--recompute")
    results["score"] = proc.returncode, proc.stderr[-500:]
    while time.time() < stop_at and labels < 6:
        proc = altlens("label", "-w", str(workspace), "--sample", str(labels), "--tag", "from-cli")
        if proc.returncode:
            failures.append(proc.stderr[-300:])
        labels += 1
    results["cli_labels"], results["cli_failures"] = labels, failures


@pytest.mark.browser
def test_twenty_curators_and_cli_writers_at_once(demo_ws, tmp_path):
    root = writable_copy(demo_ws, tmp_path)
    with served(root) as url:
        stop_at = time.time() + DEADLINE_S
        cli: dict = {}
        writer = threading.Thread(target=cli_writers, args=(root, stop_at, cli))
        writer.start()
        with ThreadPoolExecutor(CURATORS) as pool:
            runs = list(pool.map(lambda n: curator(url, n, stop_at), range(CURATORS)))
        writer.join()
    failed = [f for r in runs for f in r["failed"]]
    seconds = np.array([s for r in runs for s in r["seconds"]])
    acknowledged = [a for r in runs for a in r["acknowledged"]]
    print(f"{CURATORS} curators: {len(seconds)} calls, {len(failed)} failed, p50 {np.percentile(seconds, 50):.2f} s, "
          f"p95 {np.percentile(seconds, 95):.2f} s; CLI {cli}")
    assert not failed, failed[:5]
    assert cli["score"][0] == 0, cli["score"]
    assert not cli["cli_failures"], cli["cli_failures"]
    assert len(acknowledged) == CURATORS * CLICKS, "every curator got through every click"
    with Workspace(root, read_only=True) as ws:
        stored = ws.rows("SELECT sample_id, value FROM labels WHERE kind = 'alignment' AND view = 'review'")
        tags = ws.scalar("SELECT count(*) FROM labels WHERE kind = 'tag' AND view = 'review'")
        cli_tags = ws.scalar("SELECT count(*) FROM labels WHERE kind = 'tag' AND view = 'cli'")
        ids = [r[0] for r in ws.rows("SELECT id FROM labels ORDER BY id")]
    assert sorted(stored) == sorted(acknowledged), "every acknowledged label is stored, and nothing else"
    assert tags == sum(r["tags"] for r in runs) == CURATORS
    assert cli_tags == cli["cli_labels"]
    assert len(ids) == len(set(ids)), "label ids are unique"


@pytest.mark.browser
def test_read_only_server_beside_a_cli_writer(demo_ws, tmp_path):
    """A read-only server keeps answering while CLI commands write; they never find the workspace locked."""
    from gradio_client import Client
    root = writable_copy(demo_ws, tmp_path)
    with served(root, "--read-only") as url:
        client = Client(url, verbose=False)
        stop = threading.Event()
        answers, failures = [], []

        def browse():
            while not stop.is_set():
                try:
                    client.predict("reward", 0.6, api_name="/filter")
                    answers.append(1)
                except Exception as exc:  # counted
                    failures.append(str(exc)[:200])
        reader = threading.Thread(target=browse)
        reader.start()
        labelled = altlens("label", "-w", str(root), "--sample", "3", "--alignment", "good")
        scored = altlens("score", "-w", str(root), "--recompute", "--no-contrast")
        stop.set()
        reader.join()
    assert labelled.returncode == 0 and scored.returncode == 0, (labelled.stderr[-500:], scored.stderr[-500:])
    assert answers and not failures, failures[:3]
    with Workspace(root, read_only=True) as ws:
        assert ws.rows("SELECT sample_id, value FROM labels") == [(3, "good")]


def _ring(extent, corners: int) -> dict:
    x0, x1, y0, y1 = extent
    angle = np.linspace(0, 2 * np.pi, corners, endpoint=False)
    return {"x": list((x0 + x1) / 2 + 0.4 * (x1 - x0) * np.cos(angle)),
            "y": list((y0 + y1) / 2 + 0.4 * (y1 - y0) * np.sin(angle))}


@pytest.mark.browser
def test_a_session_firing_forty_lassoes_runs_one_at_a_time_and_another_session_still_gets_in(demo_ws):
    """Issue 31, finding 8: 200 lassoes from one client held every worker. Now a session's extra heavy requests
    are refused as they come up (with a line saying why), and a second session's region is answered."""
    from concurrent.futures import ThreadPoolExecutor

    from browser import QueueSession, event_index

    from curation.views.atlas import Atlas
    root, _ = demo_ws
    with Workspace(root, read_only=True) as ws:
        extent = Atlas(ws).extent
    with served(root, "--read-only") as url:
        region = event_index(url, "map_region")
        first, second = QueueSession(url, region), QueueSession(url, region)
        heavy = {"lasso": _ring(extent, 5_000)}
        with ThreadPoolExecutor(16) as pool:
            sent = list(pool.map(lambda _: first.join(["reward"], heavy), range(40)))
        own = second.join(["reward"], {"lasso": _ring(extent, 40)})
        assert second.wait(own, 120) == second.done.get(own) and second.done[own][0], second.errors.get(own)
        answers = [first.wait(event, 120) for event in sent]
    assert None not in answers, "every request of the busy session gets an answer"
    refused = [event for event in sent if not first.done[event][0]]
    assert 10 <= len(refused) < len(sent), f"{len(refused)} of {len(sent)} refused"
    assert all("still being worked out" in first.errors[event] for event in refused), first.errors
