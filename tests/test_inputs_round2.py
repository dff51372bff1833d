"""Issue 31's second adversarial run, one test per input finding: dotted shard names, compressed shards, a
damaged parquet page, symlink loops, content kept as a person sees it (16-bit grey, EXIF orientation, non-text
captions), huge numbers from the browser, and records that name what they dropped."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_ARGS, add_member, good_samples, run_cli
from PIL import Image

from indexer.store import Workspace


def index(ws: Path, *sources, check: bool = True):
    return run_cli("index", *map(str, sources), "-w", str(ws), *TINY_ARGS, "--batch-size", "4", check=check)


def rows(ws: Path, sql: str = "SELECT key, status, reason FROM samples ORDER BY key") -> list[tuple]:
    with Workspace(ws, read_only=True) as w:
        return w.rows(sql)


def shard(path: Path, samples) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, data, caption in samples:
            add_member(tar, f"{key}.jpg", data)
            add_member(tar, f"{key}.txt", caption.encode())
    return path


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("altlens: error:") and all(n in line for n in needles), line


# ---------------------------------------------------------------- 2: shard names that share a first part

def test_dotted_shard_names_keep_their_samples_apart(tmp_path):
    good = good_samples(6, seed=3)
    same_keys = [(f"{i:04d}", d, c) for i, (_, d, c) in enumerate(good)]
    (tmp_path / "s").mkdir()
    a = shard(tmp_path / "s" / "data.a.tar", same_keys[:3])
    b = shard(tmp_path / "s" / "data.b.tar", same_keys[3:])
    index(tmp_path / "ws", tmp_path / "s" / "data.*.tar")
    found = rows(tmp_path / "ws")
    assert [r[1] for r in found] == ["ok"] * 6, found
    assert {r[0] for r in found} == {f"data.{x}/{i:04d}" for x, i in (("a", 0), ("a", 1), ("a", 2),
                                                                       ("b", 3), ("b", 4), ("b", 5))}
    one_by_one = tmp_path / "ws2"
    index(one_by_one, a)
    second = index(one_by_one, b)
    assert json.loads(second.stdout)["samples"] == 3, second.stdout
    assert rows(one_by_one, "SELECT count(*) FROM samples WHERE status = 'ok'") == [(6,)]


def test_a_run_that_adds_fewer_samples_than_it_read_says_so_and_names_the_file(tmp_path):
    key, data, _ = good_samples(1, seed=4)[0]
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "anim.jpg").write_bytes(data)
    Image.open(io.BytesIO(data)).save(folder / "anim.webp", format="WEBP")
    proc = index(tmp_path / "ws", folder)
    assert json.loads(proc.stdout)["duplicate_key"] == 1
    assert "reused a key" in proc.stderr and "duplicate_key" in proc.stderr
    (dup,) = [r for r in rows(tmp_path / "ws") if r[1] == "duplicate_key"]
    assert "anim.webp" in dup[2], dup
    again = index(tmp_path / "ws", folder)
    assert json.loads(again.stdout)["already_indexed"] == 2 and "were skipped" in again.stderr


# ---------------------------------------------------------------- 3: compressed shards

@pytest.mark.parametrize("name", ["zipped.tar.gz", "zipped.tgz", "renamed.tar"])
def test_compressed_shards_are_refused_at_index_time_in_one_line(tmp_path, name):
    plain = shard(tmp_path / "plain.tar", good_samples(2, seed=5))
    (tmp_path / name).write_bytes(gzip.compress(plain.read_bytes()))
    proc = index(tmp_path / "ws", tmp_path / name, check=False)
    one_line_error(proc, "gzip-compressed", "gunzip -k", name)
    assert not (tmp_path / "ws" / "altlens.duckdb").exists() or rows(tmp_path / "ws",
                                                                     "SELECT count(*) FROM samples") == [(0,)]


# ---------------------------------------------------------------- 4: a damaged parquet data page

def test_a_damaged_parquet_row_group_keeps_every_readable_row_and_is_recorded(tmp_path):
    good = good_samples(4, seed=6)
    (tmp_path / "t" / "imgs").mkdir(parents=True)
    n = 90
    for i in range(n):
        (tmp_path / "t" / "imgs" / f"{i:03d}.jpg").write_bytes(good[i % 4][1])
    table = pa.table({"image": [f"imgs/{i:03d}.jpg" for i in range(n)],
                      "caption": [f"caption number {i} " + "x" * 40 for i in range(n)]})
    path = tmp_path / "t" / "t.parquet"
    pq.write_table(table, path, row_group_size=30, compression="none", use_dictionary=False)
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(1).column(1)  # the caption column of the middle row group
    raw = bytearray(path.read_bytes())
    raw[column.data_page_offset:column.data_page_offset + 24] = b"\xff" * 24
    path.write_bytes(bytes(raw))
    proc = index(tmp_path / "ws", path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    keys = [r[0] for r in rows(tmp_path / "ws")]
    assert len(keys) == 60 and "imgs/000.jpg" in keys and "imgs/089.jpg" in keys and "imgs/045.jpg" not in keys
    stats = run_cli("stats", "-w", str(tmp_path / "ws"), "--json").stdout
    (error,) = [e["error"] for e in json.loads(stats)["shard_errors"]]
    assert "t.parquet row group 1 (rows 30-59)" in error and "30 rows not read" in error
    human = run_cli("stats", "-w", str(tmp_path / "ws")).stdout
    assert "row group 1" in human
    rerun = index(tmp_path / "ws", path)
    assert json.loads(rerun.stdout)["samples"] == 0 and "Traceback" not in rerun.stderr


# ---------------------------------------------------------------- 5: symlink loops

def test_symlink_loops_are_a_per_sample_status_and_the_good_images_stay(tmp_path):
    good = good_samples(2, seed=7)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(good[0][1])
    os.symlink(folder / "pong.jpg", folder / "ping.jpg")
    os.symlink(folder / "ping.jpg", folder / "pong.jpg")
    (folder / "other.jpg").write_bytes(good[1][1])
    os.symlink(folder / "tick.txt", folder / "tock.txt")
    os.symlink(folder / "tock.txt", folder / "tick.txt")
    os.symlink(folder / "tick.txt", folder / "other.txt")  # a sidecar that loops
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "good.jpg").write_bytes(good[0][1])
    os.symlink(tmp_path / "t" / "b.jpg", tmp_path / "t" / "a.jpg")
    os.symlink(tmp_path / "t" / "a.jpg", tmp_path / "t" / "b.jpg")
    (tmp_path / "t" / "t.jsonl").write_text('{"image": "a.jpg", "caption": "loop"}\n'
                                            '{"image": "good.jpg", "caption": "fine"}\n')
    proc = index(tmp_path / "ws", folder, tmp_path / "t" / "t.jsonl")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    status = {k: (s, r) for k, s, r in rows(tmp_path / "ws")}
    assert status["good"][0] == "ok" and status["other"][0] == "ok"
    for key in ("ping", "pong", "a.jpg"):
        assert status[key][0] == "unreadable" and "symlink loop" in status[key][1], status[key]
    assert status["good.jpg"][0] == "ok"


# ---------------------------------------------------------------- 6: content as a person sees it

def test_16_bit_grey_and_exif_orientation_are_kept_as_a_viewer_shows_them(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 96).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(folder / "deep.png")
    Image.fromarray((ramp // 257).astype(np.uint8), mode="L").save(folder / "flat.png")
    half = np.zeros((32, 64, 3), np.uint8)
    half[:, 32:] = 255  # left black, right white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise: the white half ends at the bottom
    Image.fromarray(half).save(folder / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(half).transpose(Image.Transpose.ROTATE_270).save(folder / "upright.jpg", quality=95)
    index(tmp_path / "ws", folder)
    with Workspace(tmp_path / "ws", read_only=True) as ws:
        info = {k: (w, h, t) for k, w, h, t in ws.rows("SELECT key, width, height, thumb FROM samples")}
        from indexer.vectors import EmbeddingStore
        vectors = np.asarray(EmbeddingStore(ws, "image").load(), np.float32)
        ids = dict(ws.rows("SELECT key, id FROM samples"))
    thumb = lambda key: np.asarray(Image.open(tmp_path / "ws" / "thumbs" / info[key][2]).convert("L"), np.float64)
    assert abs(thumb("deep").mean() - thumb("flat").mean()) < 3, "scaled to 8 bits, not clipped to white"
    assert thumb("deep").mean() < 200
    assert info["turned"][:2] == (32, 64), "sides as shown"
    turned = thumb("turned")
    assert turned[: turned.shape[0] // 3].mean() < 60 and turned[-turned.shape[0] // 3:].mean() > 195
    cosine = float(vectors[ids["turned"]] @ vectors[ids["upright"]])
    assert cosine > 0.99, cosine


def test_captions_that_are_not_text_are_refused_or_recorded(tmp_path):
    good = good_samples(1, seed=8)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.jpg").write_bytes(good[0][1])
    (tmp_path / "t" / "b.jpg").write_bytes(good[0][1])
    table = pa.table({"image": ["a.jpg"], "caption": [{"en": "a red cat"}]})
    pq.write_table(table, tmp_path / "t" / "struct.parquet")
    proc = index(tmp_path / "ws", tmp_path / "t" / "struct.parquet", check=False)
    one_line_error(proc, "caption column 'caption'", "struct.parquet", "struct<en: string>", "not text")
    (tmp_path / "t" / "t.jsonl").write_text('{"image": "a.jpg", "caption": {"en": "a red cat"}}\n'
                                            '{"image": ["a.jpg"], "caption": "a list of paths"}\n'
                                            '{"image": "b.jpg", "caption": "a red cat"}\n')
    index(tmp_path / "ws2", tmp_path / "t" / "t.jsonl")
    found = rows(tmp_path / "ws2", "SELECT status, reason FROM samples ORDER BY status, reason")
    assert ("bad_row", "the 'caption' column holds a dict, not text") in found
    assert ("bad_row", "the 'image' column holds a list, not an image path") in found
    assert sum(1 for s, _ in found if s == "ok") == 1


# ---------------------------------------------------------------- 7: numbers too large for a float

def test_huge_numbers_from_the_browser_get_one_line(demo_ws):
    from app.handlers import Handlers, UserError, as_float, as_int
    from curation.views.atlas import AtlasError

    for convert in (as_int, as_float):
        with pytest.raises(UserError) as caught:
            convert(10 ** 400, "page")
        assert len(str(caught.value)) < 120 and "\n" not in str(caught.value)
    with pytest.raises(UserError):
        as_int(float("inf"), "page")
    with Workspace(demo_ws[0], read_only=True) as ws:
        atlas = Handlers(ws).atlas
        for box in ([-10 ** 400, 10 ** 400, -1, 1], [-1e400, 1e400, -1, 1]):
            with pytest.raises(AtlasError):
                atlas.window(box)
        with pytest.raises(AtlasError):
            atlas.region(lasso={"x": [0, 10 ** 400, 1], "y": [0, 1, 2]})


# ---------------------------------------------------------------- 9: records that name what they dropped

def test_a_second_image_member_of_a_shard_sample_is_recorded(tmp_path):
    (a, first, caption), (_, second, _) = good_samples(2, seed=9)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add_member(tar, f"{a}.jpg", first)
        add_member(tar, f"{a}.JPG", second)
        add_member(tar, f"{a}.txt", caption.encode())
    index(tmp_path / "ws", tmp_path / "s.tar")
    ((key, status, reason),) = rows(tmp_path / "ws")
    assert key == f"s/{a}" and status == "ok"
    assert reason and f"{a}.JPG" in reason and "not indexed" in reason, reason


@pytest.mark.parametrize("args, message", [
    (["index", "some-folder"], "Missing option '--workspace'"),
    (["index", "-w", "ws", "--batch-size", "many", "some-folder"], "Invalid value for '--batch-size'"),
])
def test_a_usage_mistake_is_a_usage_line_not_a_traceback(tmp_path, args, message):
    """typer vendors its own click, whose usage errors are not click's: they once escaped as a full traceback."""
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-800:]
