"""Shared fixtures: tiny real datasets in every ingest format, with the bad inputs real crawls contain."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from demo.samples import generate_samples, sample_image

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "tests" / "data" / "altlens-tiny-clip.json"
TINY_ARGS = ["--model", str(TINY_CONFIG), "--pretrained", "none"]


def tiny_spec():
    from indexer.models import ModelSpec
    return ModelSpec(name=str(TINY_CONFIG), pretrained="none")


def run_cli(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real ``altlens`` console script."""
    exe = Path(sys.executable).parent / "altlens"
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"altlens {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def good_samples(n: int, seed: int = 5) -> list[tuple[str, bytes, str]]:
    """(key, jpeg bytes, caption) of demo-world scenes."""
    return [(s.key, sample_image(s, 64), s.alt or "an image") for s in generate_samples(n, seed)]


def truncated_jpeg() -> bytes:
    data = good_samples(1)[0][1]
    return data[: len(data) // 2]


def bomb_png() -> bytes:
    """A tiny file that decodes to 144 M pixels: over Pillow's default limit."""
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    return buf.getvalue()


BAD_IMAGES = {
    "truncated": (truncated_jpeg, "corrupt_image"),
    "notimage": (lambda: b"<html>this is not a jpeg</html>", "not_an_image"),
    "zerobyte": (lambda: b"", "empty_file"),
    "bomb": (bomb_png, "decompression_bomb"),
}


@pytest.fixture(scope="session")
def bomb_bytes() -> bytes:
    return bomb_png()


def write_folder(root: Path, n_good: int = 12, bad: bool = True) -> dict:
    """img2dataset 'files' layout with sidecars; returns what the truth is."""
    root.mkdir(parents=True, exist_ok=True)
    for key, data, caption in good_samples(n_good):
        sub = root / ("a" if int(key) % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"{key}.jpg").write_bytes(data)
        (sub / f"{key}.txt").write_text(caption)
        (sub / f"{key}.json").write_text(json.dumps({"url": f"https://example.com/{key}.jpg"}))
    expect = {"ok": n_good, "failed": {}}
    if bad:
        for name, (make, status) in BAD_IMAGES.items():
            (root / f"{name}.jpg").write_bytes(make())
            expect["failed"][status] = expect["failed"].get(status, 0) + 1
        (root / "nocaption.jpg").write_bytes(good_samples(1, seed=9)[0][1])
        (root / "badutf8.jpg").write_bytes(good_samples(1, seed=10)[0][1])
        (root / "badutf8.txt").write_bytes(b"caf\xe9 \xff\xfe broken")
        (root / "long.jpg").write_bytes(good_samples(1, seed=11)[0][1])
        (root / "long.txt").write_text("word " * 220_000)
        expect["ok"] += 3
    return expect


def write_table(root: Path, fmt: str, n_good: int = 12) -> tuple[Path, dict]:
    """A table in ``fmt`` (jsonl/csv/parquet) with image paths relative to it, plus bad rows."""
    images = root / "imgs"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for key, data, caption in good_samples(n_good):
        (images / f"{key}.jpg").write_bytes(data)
        rows.append({"file_name": f"imgs/{key}.jpg", "text": caption, "url": f"https://example.com/{key}"})
    (images / "notimage.jpg").write_bytes(b"GIF89a but not really")
    rows.append({"file_name": "imgs/notimage.jpg", "text": "spam"})
    rows.append({"file_name": "imgs/does_not_exist.jpg", "text": "gone"})
    rows.append({"file_name": "imgs/00000000.jpg", "text": "the same image listed twice"})
    expect = {"ok": n_good, "failed": {"not_an_image": 1, "missing_image": 1, "duplicate_key": 1}}
    path = root / f"table.{fmt}"
    if fmt == "jsonl":
        lines = [json.dumps(r) for r in rows]
        lines.append('{"file_name": "imgs/00000001.jpg", "text": "lone \\ud800 surrogate"}')
        lines.append("{this is not json")
        path.write_text("\n".join(lines) + "\n")
        expect["failed"]["duplicate_key"] += 1
        expect["failed"]["bad_row"] = 1
    elif fmt == "csv":
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["file_name", "text", "url"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path, expect


def write_shards(root: Path, n_shards: int = 2, per_shard: int = 8, bad: bool = True) -> tuple[list[Path], dict]:
    """img2dataset WebDataset shards (key.jpg, key.txt, key.json), bad members in the last one."""
    root.mkdir(parents=True, exist_ok=True)
    samples = good_samples(n_shards * per_shard)
    shards, expect = [], {"ok": len(samples), "failed": {}}
    for s in range(n_shards):
        path = root / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, data, caption in samples[s * per_shard:(s + 1) * per_shard]:
                add_member(tar, f"{key}.jpg", data)
                add_member(tar, f"{key}.txt", caption.encode())
                add_member(tar, f"{key}.json", json.dumps({"url": f"https://example.com/{key}"}).encode())
                add_member(tar, f"{key}.pyd", b"\x80\x04K\x01.")  # a pickle: must be ignored, never loaded
            if bad and s == n_shards - 1:
                for name, (make, status) in BAD_IMAGES.items():
                    add_member(tar, f"bad{name}.jpg", make())
                    expect["failed"][status] = expect["failed"].get(status, 0) + 1
        shards.append(path)
    return shards, expect


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


TINY_COCA = ROOT / "tests" / "data" / "altlens-tiny-coca.json"


def tiny_coca_spec():
    from indexer.models import ModelSpec
    return ModelSpec(name=str(TINY_COCA), pretrained="none")


@pytest.fixture(scope="session")
def demo_ws(tmp_path_factory):
    """A held-out demo workspace (seed unlike the demo's and the model's), built with the shipped checkpoint
    through the same path as ``altlens demo``: shards -> index -> caption -> fuse -> score."""
    from demo.build import DemoConfig, build_demo
    root = tmp_path_factory.mktemp("demo") / "ws"
    summary = build_demo(DemoConfig(workspace=str(root), n=400, seed=4242, shard_size=150))
    return root, summary


@pytest.fixture(scope="session")
def reduce_world(tmp_path_factory):
    """600 demo samples with planted semantic duplicates: indexed, scored, mapped (no captions)."""
    from demo.build import build_reduce_world
    return build_reduce_world(tmp_path_factory.mktemp("reduce") / "ws", watermarked=0.0)


@pytest.fixture(scope="session")
def concept_world(tmp_path_factory):
    """400 demo samples, a quarter of them watermarked (apart from the semantic duplicates: in the demo CLIP the
    tiled watermark pulls different pictures within cosine 0.95 of each other)."""
    from demo.build import build_reduce_world
    return build_reduce_world(tmp_path_factory.mktemp("concept") / "ws", n=400, seed=12, semantic_dups=0.0,
                              watermarked=0.25)


def writable_copy(demo_ws, folder) -> Path:
    """A copy of the session's demo workspace for tests that write (labels, selections, rewards)."""
    import shutil
    root, _ = demo_ws
    target = Path(folder) / "ws"
    shutil.copytree(root, target)
    return target
