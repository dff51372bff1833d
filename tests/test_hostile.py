"""Hostile inputs, generated here: every input is accounted for, nothing outside the roots is read, the run never
crashes or hangs, and its peak memory stays bounded.

Files outside a source are FIFOs or hold a unique secret: opening a FIFO would
hang the run (the timeout would fail the test), and the secret's sha256 must not
appear in the workspace.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import TINY_ARGS, add_member, good_samples
from PIL import Image

from indexer.paths import read_member, text_path
from indexer.store import Workspace

PEAK_RSS_MB = 1400  # the whole `altlens index` process, torch included (a run over 12 good images peaks near 1,060)


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def make_inputs(root: Path) -> dict[str, str]:
    """Folder, tables and shards full of what crawls and attackers produce; returns key fragment -> status."""
    good = good_samples(6, seed=41)
    outside = root / "outside"
    outside.mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(good[5][1])
    os.mkfifo(outside / "pipe")
    expect = {}

    src = root / "src"
    (src / "files").mkdir(parents=True)
    for key, data, caption in good[:3]:
        (src / "files" / f"{key}.jpg").write_bytes(data)
        (src / "files" / f"{key}.txt").write_text(caption)
        expect[f"files/{key}"] = "ok"
    os.makedirs(os.fsencode(src), exist_ok=True)
    with open(os.path.join(os.fsencode(src), b"caf\xe9.jpg"), "wb") as fh:  # a name that is not UTF-8
        fh.write(good[3][1])
    with open(os.path.join(os.fsencode(src), b"caf\xe9.txt"), "wb") as fh:
        fh.write("a caf\u00e9 sign".encode())
    expect["caf\\xe9"] = "ok"
    (src / "back\\slash.jpg").write_bytes(good[4][1])
    expect["back\\\\slash"] = "ok"
    (src / "link_in.jpg").symlink_to(src / "files" / f"{good[0][0]}.jpg")
    expect["link_in"] = "ok"
    (src / "escape.jpg").symlink_to(outside / "secret.jpg")
    expect["escape"] = "outside_source"
    (src / "etc.jpg").symlink_to("/etc/passwd")
    expect["etc"] = "outside_source"
    (src / "fifo_out.jpg").symlink_to(outside / "pipe")
    expect["fifo_out"] = "outside_source"
    os.mkfifo(src / "fifo.jpg")
    expect["fifo"] = "not_a_file"
    for name, (w, h), status in (("wide", (600_000, 1), "extreme_aspect"), ("tall", (1, 60_000), "extreme_aspect"),
                                 ("banner", (400, 20), "ok")):
        (src / f"{name}.png").write_bytes(png(w, h))
        expect[name] = status
    (src / "ctrl.jpg").write_bytes(good[0][1])
    (src / "ctrl.txt").write_bytes(b"a \x00 bell\x07 and \x1b[31mred\x1b[0m")
    expect["ctrl"] = "ok"
    (src / "bigcap.jpg").write_bytes(good[1][1])
    (src / "bigcap.txt").write_text("long caption " * 80_000)  # about 1 MB
    expect["bigcap"] = "ok"

    table_dir = root / "tab"
    (table_dir / "imgs").mkdir(parents=True)
    for key, data, _ in good[:2]:
        (table_dir / "imgs" / f"{key}.jpg").write_bytes(data)
    os.mkfifo(table_dir / "imgs" / "pipe.jpg")
    (table_dir / "imgs" / "link_out.jpg").symlink_to(outside / "pipe")
    rows = [{"image": f"imgs/{good[0][0]}.jpg", "caption": "ok one"},
            {"image": f"imgs/{good[1][0]}.jpg", "caption": "x" * 1_000_000},
            {"image": "/etc/passwd", "caption": "absolute"},
            {"image": "../outside/secret.jpg", "caption": "climbs out"},
            {"image": "/dev/zero", "caption": "endless"},
            {"image": "imgs/pipe.jpg", "caption": "a fifo"},
            {"image": "imgs/link_out.jpg", "caption": "a link out"},
            {"image": "imgs/nul\u0000.jpg", "caption": "nul"},
            {"image": "https://example.com/a.jpg", "caption": "remote"}]
    lines = [json.dumps(r) for r in rows] + ['{"image": "imgs/\\ud800.jpg", "caption": "lone surrogate"}']
    (table_dir / "t.jsonl").write_text("\n".join(lines) + "\n")
    for key, status in ((f"imgs/{good[0][0]}.jpg", "ok"), (f"imgs/{good[1][0]}.jpg", "ok"),
                        ("/etc/passwd", "outside_source"), ("../outside/secret.jpg", "outside_source"),
                        ("/dev/zero", "outside_source"), ("imgs/pipe.jpg", "not_a_file"),
                        ("imgs/link_out.jpg", "outside_source"), ("row000000007", "bad_row"),
                        ("https://example.com/a.jpg", "remote_url"), ("row000000009", "bad_row")):
        expect[f"t.jsonl:{key}"] = status
    (table_dir / "t.csv").write_text("image,caption\n" + f"imgs/{good[0][0]}.jpg,\"{'y' * 1_500_000}\"\n")
    expect[f"t.csv:imgs/{good[0][0]}.jpg"] = "ok"

    shards = root / "shards"
    shards.mkdir()
    write_tar(shards / "good.tar", good[:3])
    whole = (shards / "good.tar").read_bytes()
    offsets = member_offsets(shards / "good.tar")
    (shards / "cuthead.tar").write_bytes(whole[:offsets[4][0] + 100])  # inside the third sample's header
    (shards / "cutdata.tar").write_bytes(whole[:offsets[2][1] + 200])  # inside the second image's data
    with tarfile.open(shards / "nested.tar", "w") as tar:
        add_member(tar, "inner.tar", whole)
        add_member(tar, f"{good[0][0]}.jpg", good[0][1])
        add_member(tar, "../../evil.jpg", good[1][1])
        add_member(tar, "\udcff\udcfe.jpg", good[2][1])  # a member name that is not UTF-8
    for shard, keys in (("good", [0, 1, 2]), ("cuthead", [0, 1]), ("cutdata", [0])):
        for i in keys:
            expect[f"{shard}/{good[i][0]}"] = "ok"
    expect[f"cutdata/{good[1][0]}"] = "truncated"
    expect[f"nested/{good[0][0]}"] = "ok"
    expect["nested/inner"] = "missing_image"  # a tar inside a shard is never opened: a sample without an image
    expect["nested/../../evil"] = "ok"
    expect["nested/\\xff\\xfe"] = "ok"
    return expect


def write_tar(path: Path, samples) -> None:
    with tarfile.open(path, "w") as tar:
        for key, data, caption in samples:
            add_member(tar, f"{key}.jpg", data)
            add_member(tar, f"{key}.txt", caption.encode())


def member_offsets(path: Path) -> list[tuple[int, int]]:
    with tarfile.open(path) as tar:
        return [(m.offset, m.offset_data) for m in tar]


def index_cli(*args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, int]:
    """Run `altlens index` in a child that reports its own peak RSS (MB): VmHWM, which belongs to the child's
    address space (ru_maxrss would carry the parent's peak across exec)."""
    code = ("import atexit, sys\n"
            "def peak():\n"
            "    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "    print('PEAK_RSS_KB', hwm.split()[1], file=sys.stderr)\n"
            "atexit.register(peak)\n"
            "from cli.main import main\n"
            f"sys.argv = ['altlens', 'index', *{list(args)!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    peak = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return proc, peak // 1024


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    expect = make_inputs(root)
    sources = [str(root / "src"), str(root / "tab" / "t.jsonl"), str(root / "tab" / "t.csv"),
               str(root / "shards" / "*.tar")]
    proc, peak = index_cli(*sources, "-w", str(root / "ws"), *TINY_ARGS, "--batch-size", "4", "--commit-every", "8")
    return root, expect, proc, peak


def statuses(ws_path: Path) -> dict[str, tuple]:
    with Workspace(ws_path, read_only=True) as ws:
        rows = ws.rows("SELECT source, key, status, reason, sha256, url, path FROM samples")
    out = {}
    for source, key, status, reason, sha, url, path in rows:
        if source.endswith((".jsonl", ".csv")):
            key = f"{Path(source).name}:{key}"
        assert key not in out, f"two samples keyed {key!r}"
        out[key] = (status, reason, sha, url, path)
    return out


def test_every_hostile_input_is_accounted_for(hostile):
    root, expect, proc, _ = hostile
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    found = statuses(root / "ws")
    got = {key: found[key][0] for key in expect if key in found}
    assert got == expect, {k: (expect[k], found.get(k, ("missing",))[:2]) for k in expect if got.get(k) != expect[k]}
    assert len(found) == len(expect), sorted(set(found) - set(expect))
    with Workspace(root / "ws", read_only=True) as ws:
        for src in ws.source_stats():
            assert src["seen"] == src["ok"] + src["failed"]
        errors = dict(ws.rows("SELECT path, error FROM ingest_files WHERE error IS NOT NULL"))
    assert any("cuthead.tar" in p and "byte" in e for p, e in errors.items()), errors
    assert any("cutdata.tar" in p and "byte" in e for p, e in errors.items()), errors
    assert not any("good.tar" in p for p in errors), "intact shards carry no error"


def test_nothing_outside_the_roots_is_read(hostile):
    root, _, proc, _ = hostile
    secret = hashlib.sha256((root / "outside" / "secret.jpg").read_bytes()).hexdigest()
    found = statuses(root / "ws")
    assert secret not in {row[2] for row in found.values()}, "the secret outside the source was read"
    assert not any(row[0] == "outside_source" and row[2] for row in found.values())
    thumbs = {p.name for p in (root / "ws" / "thumbs").rglob("*.webp")}
    assert len(thumbs) == sum(1 for row in found.values() if row[0] == "ok")
    assert not (root / "evil.jpg").exists() and not (root.parent / "evil.jpg").exists()
    assert found["t.jsonl:https://example.com/a.jpg"][3] == "https://example.com/a.jpg", "the url is recorded"


def test_odd_names_are_stable_and_reversible(hostile):
    root, _, _, _ = hostile
    found = statuses(root / "ws")
    stored = found["caf\\xe9"][4]
    assert os.fsencode(text_path(stored)).endswith(b"caf\xe9.jpg")
    assert read_member(stored, None, None) == (Path(os.fsdecode(os.path.join(os.fsencode(root / "src"),
                                                                            b"caf\xe9.jpg")))).read_bytes()
    assert text_path(found["back\\\\slash"][4]).endswith("back\\slash.jpg")
    with Workspace(root / "ws", read_only=True) as ws:
        caption = ws.scalar("SELECT c.text FROM captions c JOIN samples s ON s.id = c.sample_id "
                            "WHERE s.key = 'ctrl'")
        long_status = ws.scalar("SELECT caption_status FROM samples WHERE key = 'bigcap'")
    assert "\x00" not in caption and "bell" in caption
    assert long_status == "long"


def test_memory_stays_bounded_and_a_rerun_adds_nothing(hostile):
    root, _, _, peak = hostile
    assert peak < PEAK_RSS_MB, f"peak RSS {peak} MB"
    before = statuses(root / "ws")
    sources = [str(root / "src"), str(root / "tab" / "t.jsonl"), str(root / "tab" / "t.csv"),
               str(root / "shards" / "*.tar")]
    proc, _ = index_cli(*sources, "-w", str(root / "ws"), *TINY_ARGS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert statuses(root / "ws") == before


def test_allow_root_lets_a_named_folder_in(tmp_path):
    good = good_samples(2, seed=43)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "a.jpg").write_bytes(good[0][1])
    table = tmp_path / "tab" / "t.jsonl"
    table.parent.mkdir()
    table.write_text(json.dumps({"image": str(shared / "a.jpg"), "caption": "shared"}) + "\n")
    proc, _ = index_cli(str(table), "-w", str(tmp_path / "ws"), *TINY_ARGS, "--allow-root", str(shared))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Workspace(tmp_path / "ws", read_only=True) as ws:
        assert ws.rows("SELECT status FROM samples") == [("ok",)]
    proc, _ = index_cli(str(table), "-w", str(tmp_path / "ws2"), *TINY_ARGS, "--allow-root", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
