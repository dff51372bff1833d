"""Crashes and bad disks: kill -9 at seeded random moments in every command, a damaged database, a full disk,
and what the server answers to whom."""
from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import served
from conftest import writable_copy

from demo import CLIP_CHECKPOINT
from demo.build import write_demo_shards
from demo.samples import generate_samples
from indexer.store import Workspace

EXE = Path(sys.executable).parent / "altlens"


def command_lines(ws: Path, shards: list[Path], out: Path) -> list[tuple[str, list[str]]]:
    return [("index", ["index", *map(str, shards), "-w", str(ws), "--checkpoint", str(CLIP_CHECKPOINT),
                       "--batch-size", "8", "--commit-every", "16"]),
            ("caption", ["caption", "-w", str(ws), "--captioner", "demo", "--num", "3", "--batch-size", "8"]),
            ("fuse", ["fuse", "-w", str(ws), "--batch-size", "16"]),
            ("score", ["score", "-w", str(ws)]),
            ("map", ["map", "-w", str(ws)]),
            ("select", ["select", "-w", str(ws), "--name", "kept", "--min-reward", "0.3"]),
            ("export", ["export", "-w", str(ws), "--selection", "kept", "--out", str(out), "--shard-size", "10"])]


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"altlens {args[0]} failed:\n{proc.stderr[-2000:]}"
    return time.perf_counter() - t0


def counts(ws_path: Path) -> dict:
    """What must come out the same after a killed and re-run command (texts may differ: sampling seeds follow the
    batch a caption was drawn in)."""
    with Workspace(ws_path, read_only=True) as ws:
        out = {table: ws.scalar(f"SELECT count(*) FROM {table}") for table in (
            "samples", "caption_scores", "sample_scores", "sample_source_scores", "caption_contrast", "clusters",
            "map_coords", "cluster_summaries", "selection_members")}
        out["captions"] = dict(ws.rows("SELECT source_kind, count(*) FROM captions GROUP BY 1 ORDER BY 1"))
        out["status"] = dict(ws.rows("SELECT status, count(*) FROM samples GROUP BY 1 ORDER BY 1"))
        out["per_sample_syn"] = ws.scalar("""SELECT count(DISTINCT n) FROM (SELECT count(*) AS n FROM captions
                                             WHERE source_kind = 'syn' GROUP BY sample_id)""")
        out["rewards"] = dict(ws.rows("SELECT version, count(*) FROM rewards GROUP BY 1 ORDER BY 1"))
        for kind in ("image", "text"):
            rows = ws.scalar(f"SELECT count(*) FROM {'samples' if kind == 'image' else 'captions'}")
            assert ws.scalar("SELECT sum(n) FROM emb_chunks WHERE kind = ?", [kind]) == rows, "embeddings row-aligned"
    return out


def leftovers(*folders: Path) -> list[str]:
    return [str(p) for folder in folders for p in folder.rglob("*") if ".tmp-" in p.name]


def test_kill9_in_every_command_then_rerun_matches_a_clean_run(tmp_path):
    shards = write_demo_shards(generate_samples(40, seed=515), tmp_path / "src", shard_size=20)
    rng = random.Random(1729)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for (name, clean_args), (_, killed_args) in zip(command_lines(clean, shards, tmp_path / "clean-out"),
                                                    command_lines(killed, shards, tmp_path / "killed-out")):
        took = run(clean_args)
        proc = subprocess.Popen([str(EXE), *killed_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.9) * took)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run(killed_args)
        assert counts(killed) == counts(clean), f"after a kill -9 in '{name}'"
        assert not leftovers(killed, tmp_path / "killed-out"), f"temp files left after '{name}'"
    verified = subprocess.run([str(EXE), "verify-export", str(tmp_path / "killed-out")], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr


def workspace_copy(demo_ws, folder: Path) -> Path:
    return writable_copy(demo_ws, folder)


def test_damaged_database_is_one_line_and_exit_2(demo_ws, tmp_path):
    root = workspace_copy(demo_ws, tmp_path)
    db = root / "altlens.duckdb"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    for args in (["stats", "-w", str(root)], ["score", "-w", str(root)], ["label", "-w", str(root), "--sample", "1",
                                                                        "--tag", "x"]):
        proc = subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-1500:]
        assert "Traceback" not in proc.stderr and "damaged" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.fixture()
def small_disk(tmp_path):
    """A 20 MB tmpfs: a real full disk. Skipped where mounting is not allowed (never simulated)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode()[:200]}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def fill(mount: Path) -> None:
    """Fill the disk to the last byte."""
    with open(mount / "ballast", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
        except OSError:
            pass


@pytest.mark.parametrize("command", [["score", "--recompute", "--no-contrast"], ["map"], ["select", "--name", "s2"],
                                     ["export", "--selection", "s1", "--out", "{disk}/out"],
                                     ["index", "{source}", "-w", "{disk}/new-ws"]])
def test_full_disk_is_one_line_and_keeps_the_previous_state(demo_ws, small_disk, command):
    root = small_disk / "ws"
    shutil.copytree(demo_ws[0], root)
    subprocess.run([str(EXE), "select", "-w", str(root), "--name", "s1"], check=True, capture_output=True)
    before = counts(root)
    fill(small_disk)
    args = [a.replace("{disk}", str(small_disk)).replace("{source}", str(demo_ws[0] / "source")) for a in command]
    if args[0] != "index":
        args = [args[0], "-w", str(root), *args[1:]]
    proc = subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=600)
    (small_disk / "ballast").unlink()
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and "space" in proc.stderr.lower()
    assert counts(root) == before, "the previous state stays intact"
    assert not leftovers(small_disk), "no temp files left"


def test_a_never_scored_workspace_exports_or_says_what_to_run(tmp_path):
    shards = write_demo_shards(generate_samples(12, seed=616), tmp_path / "src", shard_size=12)
    ws = tmp_path / "ws"
    run(["index", *map(str, shards), "-w", str(ws), "--checkpoint", str(CLIP_CHECKPOINT)])
    needs = subprocess.run([str(EXE), "select", "-w", str(ws), "--name", "good", "--min-reward", "0.5"],
                           capture_output=True, text=True)
    assert needs.returncode == 2 and "run 'altlens score" in needs.stderr and "Traceback" not in needs.stderr
    run(["select", "-w", str(ws), "--name", "all"])
    run(["export", "-w", str(ws), "--selection", "all", "--out", str(tmp_path / "out"), "--format", "webdataset"])
    assert subprocess.run([str(EXE), "verify-export", str(tmp_path / "out")]).returncode == 0


def test_busy_port_is_one_line(demo_ws, tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([str(EXE), "serve", "-w", str(demo_ws[0]), "--port", str(port)], capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 2 and f"127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def status_of(url: str, path: str, cookie: str | None = None, method: str = "GET") -> int:
    headers = {"Cookie": cookie} if cookie else {}
    request = urllib.request.Request(url.rstrip("/") + path, method=method, headers=headers,
                                     data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


PRIVATE = ["/config", "/gradio_api/info", "/gradio_api/queue/status", "/gradio_api/startup-events",
           "/gradio_api/heartbeat/abc", "/monitoring", "/monitoring/summary", "/gradio_api/file=/etc/passwd",
           "/openapi.json", "/docs", "/gradio_api/upload", "/reset"]


def test_routes_answer_only_after_login(demo_ws, tmp_path):
    root = workspace_copy(demo_ws, tmp_path)
    with served(root, "--auth", "ann:s3cret") as url:
        assert status_of(url, "/") == 200, "the login page"
        for path in PRIVATE:
            assert status_of(url, path) in (401, 404), path
            assert status_of(url, path, method="POST") in (401, 404, 405), path
        assert status_of(url, "/gradio_api/cancel", method="POST") == 401
        request = urllib.request.Request(url + "login", data=b"username=ann&password=s3cret", method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            cookie = "; ".join(h.split(";")[0] for h in resp.headers.get_all("Set-Cookie"))
        assert status_of(url, "/config", cookie) == 200
        assert status_of(url, "/gradio_api/file=/etc/passwd", cookie) == 403, "only thumbnails are files"


def test_beyond_loopback_without_auth_is_read_only(demo_ws, tmp_path):
    root = workspace_copy(demo_ws, tmp_path)
    with served(root, "--host", "0.0.0.0") as url:
        log = next(root.parent.glob("serve-*.log")).read_text()
        assert "without --auth" in log and "read-only" in log
        from gradio_client import Client
        client = Client(url.replace("0.0.0.0", "127.0.0.1"), verbose=False)
        client.predict("lowest reward first", "0", "", api_name="/queue")
        with pytest.raises(Exception, match="read-only"):
            client.predict(api_name="/act")
    with Workspace(root, read_only=True) as ws:
        assert ws.scalar("SELECT count(*) FROM labels") == 0
