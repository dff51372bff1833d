"""``altlens import datacomp``: a DataComp-layout pool (parquet + npz, float16) -> a workspace with the pool's
uids, vectors and scores; presets against hand-computed answers; a ``datacomp-subset`` file DataComp's
resharder would load; bad input refused in one line or kept as a per-row status."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_ARGS, run_cli, tiny_spec
from pools import datacomp_rows, unit, write_datacomp

from curation.export.select import SelectionRule, save_selection
from indexer import importer
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore


def imported(pool, ws, *extra):
    return run_cli("import", "datacomp", str(pool), "-w", str(ws), *TINY_ARGS, *extra)


def subset_of(ws, name, out, *select):
    run_cli("select", "-w", str(ws), "--name", name, "--keep-duplicates", *select)
    run_cli("export", "-w", str(ws), "--selection", name, "--out", str(out), "--format", "datacomp-subset")
    return np.load(out / "subset.npy")


def as_pairs(uids) -> np.ndarray:
    """What DataComp's own code makes of a uid list (divmod of the 128-bit number), sorted."""
    pairs = np.array([divmod(int(u, 16), 2 ** 64) for u in uids], np.dtype("u8,u8"))
    return np.sort(pairs)


def datacomp_cut(scores, fraction: float) -> float:
    """DataComp's get_threshold: the scores sorted high to low, the one at position int(n * fraction)."""
    return float(-np.sort(-np.asarray(scores))[int(len(scores) * fraction)])


def test_import_select_export_subset_round_trip(tmp_path):
    pool = write_datacomp(tmp_path / "pool", sizes=(9, 6, 5))
    ws, pool_dir = tmp_path / "ws", tmp_path / "pool"
    imported(pool_dir, ws)
    with Workspace(ws, read_only=True) as w:
        rows = w.rows("SELECT uid, status, image_state, url, width FROM samples ORDER BY id")
        assert [r[0] for r in rows] == pool["uids"], "the pool's uid is the workspace uid, in pool order"
        assert {r[1] for r in rows} == {"ok"} and {r[2] for r in rows} == {"not_downloaded"}
        assert rows[0][3] == pool["rows"][0]["url"][0] and rows[0][4] == pool["rows"][0]["original_width"][0]
        stored = np.asarray(EmbeddingStore(w, "image").load(), np.float32)
        assert np.abs(stored - pool["l14_img"].astype(np.float32)).max() < 2e-3, "vectors as shipped (fp16)"
        texts = np.asarray(EmbeddingStore(w, "text").load(), np.float32)
        assert np.abs(texts - pool["l14_txt"].astype(np.float32)).max() < 2e-3
        names = {r[0] for r in w.rows("SELECT DISTINCT name FROM imported_scores")}
        assert {"datacomp.clip_l14_similarity_score", "datacomp.original_width"} <= names
    scores = np.concatenate([r["clip_l14_similarity_score"] for r in pool["rows"]])
    cut = datacomp_cut(scores, 0.3)
    expected = [u for u, s in zip(pool["uids"], scores) if s >= cut]
    subset = subset_of(ws, "top30", tmp_path / "out", "--preset", "datacomp-clip-score")
    assert subset.dtype == np.dtype("u8,u8"), "resharder.py asserts this dtype"
    assert np.array_equal(subset, np.sort(subset)), "searched with np.searchsorted: sorted"
    assert np.array_equal(subset, as_pairs(expected)) and len(expected) == 7

    again = tmp_path / "ws2"
    imported(pool_dir, again)
    second = subset_of(again, "top30", tmp_path / "out2", "--preset", "datacomp-clip-score")
    assert (tmp_path / "out" / "subset.npy").read_bytes() == (tmp_path / "out2" / "subset.npy").read_bytes()
    assert np.array_equal(second, subset)


def test_a_killed_import_resumes_to_the_same_workspace(tmp_path, monkeypatch):
    write_datacomp(tmp_path / "pool", sizes=(10, 7))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    cfg = importer.ImportConfig("datacomp", str(tmp_path / "pool"), tiny_spec(), commit_rows=4, progress=False)
    with Workspace(whole, create=True) as ws:
        importer.run(ws, cfg)
    calls = {"n": 0}
    real_flush = importer.SampleWriter.flush

    def dying_flush(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        real_flush(self)

    monkeypatch.setattr(importer.SampleWriter, "flush", dying_flush)
    with Workspace(cut, create=True) as ws, pytest.raises(KeyboardInterrupt):
        importer.run(ws, cfg)
    with Workspace(cut) as ws:
        assert 0 < ws.scalar("SELECT count(*) FROM samples") < 17, "the kill left part of the pool"
    monkeypatch.setattr(importer.SampleWriter, "flush", real_flush)
    with Workspace(cut) as ws:
        report = importer.run(ws, cfg)
        assert report["rows"] < 17, "the second run only read what the first had not committed"
    query = "SELECT id, uid, key, status, width, url FROM samples ORDER BY id"
    with Workspace(whole, read_only=True) as a, Workspace(cut, read_only=True) as b:
        assert a.rows(query) == b.rows(query)
        assert a.rows("SELECT name, sample_id, value FROM imported_scores ORDER BY ALL") == \
            b.rows("SELECT name, sample_id, value FROM imported_scores ORDER BY ALL")
        assert np.array_equal(EmbeddingStore(a, "image").load(), EmbeddingStore(b, "image").load())
        assert np.array_equal(EmbeddingStore(a, "text").load(), EmbeddingStore(b, "text").load())


def test_basic_and_laion_presets_on_crafted_rows(tmp_path):
    """Each crafted row breaks exactly one rule of DataComp's basic filter."""
    rng = np.random.default_rng(1)
    rows = datacomp_rows(rng, 6, 0)
    rows["text"] = ["a brown dog asleep on a sofa", "two words", "a red bicycle against a wall",
                    "a tall lighthouse on a cliff", "un chien brun endormi sur le canapé du salon",
                    "a small boat on a calm lake"]
    rows["original_width"] = np.array([640, 640, 199, 903, 640, 400])
    rows["original_height"] = np.array([480, 480, 480, 300, 480, 300])  # row 3: aspect 3.01
    rows["clip_b32_similarity_score"] = np.array([0.30, 0.35, 0.29, 0.31, 0.33, 0.27])
    (tmp_path / "pool" / "metadata").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "pool" / "metadata" / "00000000.parquet")
    vecs = {k: unit(rng, 6, 32).astype(np.float16) for k in ("l14_img", "l14_txt", "b32_img", "b32_txt")}
    np.savez(tmp_path / "pool" / "metadata" / "00000000.npz", **vecs)
    ws = tmp_path / "ws"
    imported(tmp_path / "pool", ws)
    basic = subset_of(ws, "basic", tmp_path / "basic", "--preset", "datacomp-basic")
    assert np.array_equal(basic, as_pairs([rows["uid"][0], rows["uid"][5]]))
    laion = subset_of(ws, "laion", tmp_path / "laion", "--preset", "laion2b")
    assert np.array_equal(laion, as_pairs([rows["uid"][i] for i in (0, 1, 2, 3)]))


def test_presets_combine_with_other_rules(tmp_path):
    write_datacomp(tmp_path / "pool", sizes=(12,))
    ws_dir = tmp_path / "ws"
    imported(tmp_path / "pool", ws_dir)
    with Workspace(ws_dir) as ws:
        alone = save_selection(ws, SelectionRule("a", preset="datacomp-clip-score", fraction=0.5))
        first = ws.scalar("SELECT min(sample_id) FROM selection_members WHERE name = 'a'")
        ws.execute("INSERT INTO labels VALUES (nextval('label_ids'), ?, 'alignment', 'bad', 'me', 'cli', now())",
                   [first])
        both = save_selection(ws, SelectionRule("b", preset="datacomp-clip-score", fraction=0.5))
        assert alone["selected"] == 7 and both["selected"] == 6, "the label rule applies after the preset"
        with pytest.raises(ValueError, match="no score named"):
            save_selection(ws, SelectionRule("c", preset="datacomp-clip-score", preset_score="nsfw"))


def test_imported_scores_are_shown_filtered_and_selected_like_altlens_own(tmp_path):
    from app.curate import Curate
    from app.handlers import Handlers

    pool = write_datacomp(tmp_path / "pool", sizes=(9, 7))
    ws_dir = tmp_path / "ws"
    imported(tmp_path / "pool", ws_dir)
    b32 = np.concatenate([r["clip_b32_similarity_score"] for r in pool["rows"]])
    name = "datacomp.clip_b32_similarity_score"
    cut = float(np.sort(b32)[5])
    with Workspace(ws_dir) as ws:
        h = Handlers(ws)
        c = Curate(h, read_only=False)
        source = f"imported:{name}"
        assert source in [v for _, v in c.score_choices()] and c.default_source().startswith("imported:")
        _, counts, *_ = h.filter(source, cut)
        assert counts.startswith(f"kept {int((b32 >= cut).sum())} · dropped 5 "), counts
        assert name in h.threshold_scale(source, source, cut)["note"]
        tiles, ids, *_ = h.browse("all", 0, source=source, order="score_desc")
        assert ids[0] == int(np.argmax(b32)) and tiles[0][1].endswith(f"{name} {b32.max():.3f}"), tiles[0]
        facts = dict(h.sample(3)[2])
        assert facts[f"{name} (imported)"] == f"{b32[3]:.3f}" and facts["image"] == "not downloaded"
        preview = c.preview("b32", source, cut, False, "any", 0, "hybrid")[0]
        assert preview.endswith(f"→ {int((b32 >= cut).sum())} selected"), preview
    subset = subset_of(ws_dir, "b32", tmp_path / "out", "--min-score", f"{name}={cut}")
    assert np.array_equal(subset, as_pairs([u for u, v in zip(pool["uids"], b32) if v >= cut]))
    bad = run_cli("select", "-w", str(ws_dir), "--name", "x", "--min-score", "no-equals-sign", check=False)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr and "Traceback" not in bad.stderr
    unknown = run_cli("select", "-w", str(ws_dir), "--name", "x", "--min-score", "nsfw=0.5", check=False)
    assert unknown.returncode != 0 and "no score named 'nsfw'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert f"{name}: 16 samples" in run_cli("stats", "-w", str(ws_dir)).stdout


def test_image_based_preset_keeps_samples_nearest_a_target_centroid(tmp_path):
    """Vectors drawn around three centres; the targets are images near centre 1, so the preset keeps the
    English rows whose nearest centre (largest inner product) is 1, as hand-computed here."""
    rng = np.random.default_rng(5)
    centres = unit(rng, 3, 32)
    around = rng.integers(0, 3, 30)
    vecs = centres[around] + 0.35 * unit(rng, 30, 32)
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float16)
    rows = datacomp_rows(rng, 30, 0)
    rows["text"][4] = "un chien brun endormi sur le canapé du salon"
    (tmp_path / "pool" / "metadata").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "pool" / "metadata" / "00000000.parquet")
    np.savez(tmp_path / "pool" / "metadata" / "00000000.npz", l14_img=vecs, l14_txt=vecs)
    np.save(tmp_path / "centres.npy", centres)
    targets = centres[[1, 1]] + 0.1 * unit(rng, 2, 32)
    np.save(tmp_path / "targets.npy", targets.astype(np.float32))
    np.save(tmp_path / "picked.npy", np.array([1, 1]))
    ws = tmp_path / "ws"
    imported(tmp_path / "pool", ws)
    nearest = np.argmax(vecs.astype(np.float32) @ centres.T, axis=1)
    keep = [u for i, u in enumerate(rows["uid"]) if nearest[i] == 1 and i != 4]
    assert 4 <= len(keep) < 30 and nearest[4] in (0, 1, 2)
    by_vectors = subset_of(ws, "near1", tmp_path / "a", "--preset", "image-based", "--centroids",
                           str(tmp_path / "centres.npy"), "--targets", str(tmp_path / "targets.npy"))
    assert np.array_equal(by_vectors, as_pairs(keep))
    by_number = subset_of(ws, "near1b", tmp_path / "b", "--preset", "image-based", "--centroids",
                          str(tmp_path / "centres.npy"), "--targets", str(tmp_path / "picked.npy"))
    assert np.array_equal(by_number, by_vectors)
    with Workspace(ws, read_only=True) as w:
        assert w.scalar("SELECT count(*) FROM centroid_assignments") == 30, "assigned once per centroids file"
    np.save(tmp_path / "wide.npy", unit(rng, 3, 48))
    for extra, message in ((["--centroids", str(tmp_path / "wide.npy"), "--targets", str(tmp_path / "picked.npy")],
                            "[K, 32] float array"),
                           (["--centroids", str(tmp_path / "centres.npy")], "needs --targets"),
                           (["--targets", str(tmp_path / "picked.npy")], "needs --centroids")):
        proc = run_cli("select", "-w", str(ws), "--name", "bad", "--preset", "image-based", *extra, check=False)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("damage, message", [
    ("rows", "rows, its metadata parquet has"),
    ("key", "has no 'l14_img' array"),
    ("dtype", "dtype"),
    ("missing_npz", "missing"),
])
def test_inconsistent_pool_files_are_refused_in_one_line(tmp_path, damage, message):
    write_datacomp(tmp_path / "pool", sizes=(5, 4))
    npz = tmp_path / "pool" / "metadata" / "00000001.npz"
    rng = np.random.default_rng(3)
    if damage == "missing_npz":
        npz.unlink()
    else:
        n = 3 if damage == "rows" else 4
        dtype = np.float64 if damage == "dtype" else np.float16
        key = "b32_img" if damage == "key" else "l14_img"
        np.savez(npz, **{key: unit(rng, n, 32).astype(dtype)})
    proc = run_cli("import", "datacomp", str(tmp_path / "pool"), "-w", str(tmp_path / "ws"), *TINY_ARGS, check=False)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("altlens: error:") and message in line and "00000001" in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ws").exists(), "nothing is written before every file checks out"


def test_bad_rows_keep_a_status_and_lose_nothing(tmp_path):
    pool = write_datacomp(tmp_path / "pool", sizes=(8,))
    table = pq.read_table(tmp_path / "pool" / "metadata" / "00000000.parquet").to_pydict()
    table["uid"][1] = "not-a-hex-uid"
    table["uid"][2] = table["uid"][0]  # a duplicate uid
    pq.write_table(pa.table(table), tmp_path / "pool" / "metadata" / "00000000.parquet")
    arrays = dict(np.load(tmp_path / "pool" / "metadata" / "00000000.npz"))
    arrays["l14_img"][3] = np.nan
    np.savez(tmp_path / "pool" / "metadata" / "00000000.npz", **arrays)
    ws = tmp_path / "ws"
    imported(tmp_path / "pool", ws)
    with Workspace(ws, read_only=True) as w:
        status = [r[0] for r in w.rows("SELECT status FROM samples ORDER BY id")]
        assert status == ["ok", "bad_row", "duplicate_key", "bad_vector", "ok", "ok", "ok", "ok"]
        uids = [r[0] for r in w.rows("SELECT uid FROM samples ORDER BY id")]
        assert len(set(uids)) == 8 and uids[0] == pool["uids"][0] and uids[4:] == pool["uids"][4:]
        assert w.scalar("SELECT count(*) FROM imported_scores WHERE sample_id IN (1, 2, 3)") == 0
    stats = run_cli("stats", "-w", str(ws)).stdout
    assert "bad_vector" in stats and "seen 8, ok 5, failed 3" in stats
    shutil.rmtree(ws)


def test_rows_without_images_show_as_placeholders_in_the_browser_view(tmp_path):
    from app.handlers import PLACEHOLDER, Handlers

    write_datacomp(tmp_path / "pool", sizes=(6,))
    imported(tmp_path / "pool", tmp_path / "ws")
    with Workspace(tmp_path / "ws") as ws:
        tiles, ids, *_ = Handlers(ws).browse("all", 0, source="alt")
        assert len(ids) == 6 and {path for path, _ in tiles} == {str(PLACEHOLDER)}


def test_a_truncated_clip_retrieval_npy_is_refused_in_one_line(tmp_path):
    rng = np.random.default_rng(4)
    for folder in ("img_emb", "text_emb", "metadata"):
        (tmp_path / "cr" / folder).mkdir(parents=True)
    pq.write_table(pa.table({"image_path": [f"{i:04d}" for i in range(6)], "caption": ["a dog"] * 6}),
                   tmp_path / "cr" / "metadata" / "metadata_0.parquet")
    np.save(tmp_path / "cr" / "text_emb" / "text_emb_0.npy", unit(rng, 6, 32).astype(np.float16))
    image = tmp_path / "cr" / "img_emb" / "img_emb_0.npy"
    np.save(image, unit(rng, 6, 32).astype(np.float16))
    image.write_bytes(image.read_bytes()[:-40])
    proc = run_cli("import", "clip-retrieval", str(tmp_path / "cr"), "-w", str(tmp_path / "ws"), *TINY_ARGS,
                   check=False)
    assert proc.returncode == 2 and "img_emb_0.npy: truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ws").exists()


def _checkpoint(folder: Path, seed: int) -> Path:
    """The tiny config with seeded random weights, saved where altlens finds the config beside it."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from conftest import TINY_CONFIG
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / TINY_CONFIG.name
    shutil.copy(TINY_CONFIG, config)
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    weights = config.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in open_clip.create_model(config.stem).state_dict().items()}, str(weights))
    return weights


def _pool_with_shards(tmp_path: Path, checkpoint: Path) -> tuple[list[str], list[str]]:
    """A DataComp pool of 10 rows whose vectors the checkpoint made from real images, and one shard holding
    the images of the first 7 (uid in each .json, as img2dataset writes it); returns (uids, shard keys)."""
    import json
    import tarfile

    from conftest import add_member, good_samples
    from indexer.decode import DecodeConfig, decode_sample
    from indexer.models import ModelSpec, load_model
    import torch
    model = load_model(ModelSpec(checkpoint=str(checkpoint)))
    samples = good_samples(10, seed=21)
    rng = np.random.default_rng(2)
    rows = datacomp_rows(rng, 10, 100)
    pixels = [decode_sample({"__key__": k, "__uid__": u, "image": d, "ext": "jpg"}, DecodeConfig(), model.preprocess)
              ["pixels"] for (k, d, _), u in zip(samples, rows["uid"])]
    image = np.asarray(model.encode_images(torch.stack(pixels)), np.float16)
    text = np.asarray(model.encode_texts(rows["text"]), np.float16)
    (tmp_path / "pool" / "metadata").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "pool" / "metadata" / "00000000.parquet")
    np.savez(tmp_path / "pool" / "metadata" / "00000000.npz", l14_img=image, l14_txt=text)
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "00000.tar", "w") as tar:
        for (key, data, caption), uid in list(zip(samples, rows["uid"]))[:7]:
            add_member(tar, f"{key}.jpg", data)
            add_member(tar, f"{key}.txt", caption.encode())
            add_member(tar, f"{key}.json", json.dumps({"uid": uid.upper()}).encode())
        add_member(tar, "stranger.jpg", samples[9][1])
        add_member(tar, "stranger.json", json.dumps({"uid": "f" * 32}).encode())
    return rows["uid"], [k for k, _, _ in samples[:7]]


def test_images_join_the_rows_by_uid_after_the_model_is_confirmed(tmp_path):
    checkpoint = _checkpoint(tmp_path / "model", seed=3)
    uids, _ = _pool_with_shards(tmp_path, checkpoint)
    args = ("import", "datacomp", str(tmp_path / "pool"), "--checkpoint", str(checkpoint),
            "--images", str(tmp_path / "shards" / "00000.tar"))
    report = run_cli(*args[:3], "-w", str(tmp_path / "ws"), *args[3:]).stdout
    assert '"joined": 7' in report and '"not_in_pool": 1' in report
    with Workspace(tmp_path / "ws", read_only=True) as ws:
        rows = ws.rows("SELECT uid, image_state, thumb IS NOT NULL, member_size > 0 FROM samples ORDER BY id")
        assert [r[0] for r in rows] == uids
        assert [r[1] for r in rows] == [None] * 7 + ["not_downloaded"] * 3
        assert all(r[2] and r[3] for r in rows[:7]) and all((ws.thumbs_dir / t).is_file() for (t,) in
                                                              ws.rows("SELECT thumb FROM samples WHERE thumb IS NOT NULL"))
    run_cli("select", "-w", str(tmp_path / "ws"), "--name", "seen", "--keep-duplicates", "--caption-policy", "alt")
    refused = run_cli("export", "-w", str(tmp_path / "ws"), "--selection", "seen", "--out", str(tmp_path / "wds"),
                      "--format", "webdataset", check=False)
    assert refused.returncode == 2 and "3 samples of selection 'seen' have no image at hand" in refused.stderr

    wrong = _checkpoint(tmp_path / "other", seed=4)
    proc = run_cli("import", "datacomp", str(tmp_path / "pool"), "-w", str(tmp_path / "ws2"), "--checkpoint",
                   str(wrong), "--images", str(tmp_path / "shards" / "00000.tar"), check=False)
    assert proc.returncode == 2 and "median cosine" in proc.stderr and "wrong model" in proc.stderr
    assert not (tmp_path / "ws2").exists()


def test_a_uid_repeated_in_a_later_file_is_a_duplicate_not_a_crash(tmp_path):
    pool = write_datacomp(tmp_path / "pool", sizes=(4, 4))
    second = tmp_path / "pool" / "metadata" / "00000001.parquet"
    table = pq.read_table(second).to_pydict()
    table["uid"][2] = pool["uids"][1]
    pq.write_table(pa.table(table), second)
    imported(tmp_path / "pool", tmp_path / "ws", "--commit-every", "3")
    with Workspace(tmp_path / "ws", read_only=True) as ws:
        status = [r[0] for r in ws.rows("SELECT status FROM samples ORDER BY id")]
        assert status == ["ok"] * 6 + ["duplicate_key", "ok"]


def test_preset_selection_and_subset_export_hold_no_python_object_per_row(tmp_path):
    """Issue 29: on the path a 12.8 M-row pool takes from a preset to a subset file (select, save, export) no
    stage holds a Python object per row: each step's traced peak stays far under the ~100+ bytes a row that a
    list or dict entry per row costs (the export read every member's uid into a dict before: 94 bytes per pool
    row, over 300 per member; now 37 per pool row)."""
    import tracemalloc

    from curation.export.export import ExportConfig
    from curation.export.export import run as export
    n = 60_000
    pool = write_datacomp(tmp_path / "pool", sizes=(n // 2, n // 2))
    with Workspace(tmp_path / "ws", create=True) as ws:
        importer.run(ws, importer.ImportConfig("datacomp", str(tmp_path / "pool"), tiny_spec(), progress=False))
        steps = {
            "select": lambda: save_selection(ws, SelectionRule("top30", preset="datacomp-clip-score",
                                                               drop_duplicates=False, labels="any")),
            "export": lambda: export(ws, ExportConfig("top30", str(tmp_path / "out"), format="datacomp-subset",
                                                      progress=False)),
        }
        peaks = {}
        for name, step in steps.items():
            tracemalloc.start()
            step()
            peaks[name] = tracemalloc.get_traced_memory()[1] / n
            tracemalloc.stop()
    scores = np.concatenate([r["clip_l14_similarity_score"] for r in pool["rows"]])
    cut = datacomp_cut(scores, 0.3)
    kept = [u for u, s in zip(pool["uids"], scores) if s >= cut]
    assert np.array_equal(np.load(tmp_path / "out" / "subset.npy"), as_pairs(kept))
    assert max(peaks.values()) < 60, {k: f"{v:.0f} bytes a row" for k, v in peaks.items()}


def test_cluster_summaries_hold_no_python_object_per_row(tmp_path):
    """Issue 29: ``map``'s cluster summaries read membership as arrays, aggregate scores and flagged shares in
    DuckDB and count terms on a bounded draw of captions a cluster; before, they held a dict per clustered row,
    every caption's text and a reward dict (613 traced bytes a row on this pool; 27 now)."""
    import tracemalloc

    from curation.structure.summaries import cluster_table, summarise_clusters
    n = 60_000
    write_datacomp(tmp_path / "pool", sizes=(n // 2, n // 2))
    with Workspace(tmp_path / "ws", create=True) as ws:
        importer.run(ws, importer.ImportConfig("datacomp", str(tmp_path / "pool"), tiny_spec(), progress=False))
        ws.execute("INSERT INTO clusters SELECT id, id % 12, (id * 7919 % 1000) / 1000.0 FROM samples")
        tracemalloc.start()
        assert summarise_clusters(ws, max_diversity_rows=200, max_term_texts=200) == 12
        per_row = tracemalloc.get_traced_memory()[1] / n
        tracemalloc.stop()
        table = {r["cluster"]: r for r in cluster_table(ws)}
        first = ws.numpy("SELECT sample_id FROM clusters WHERE cluster = 3 ORDER BY distance, sample_id LIMIT 6")
    assert per_row < 60, f"{per_row:.0f} traced bytes a row"
    assert sum(r["size"] for r in table.values()) == n and table[3]["exemplars"] == first["sample_id"].tolist()
    assert table[3]["terms"] and table[3]["diversity"]["image"] > 1
