"""The Ray engine gives the workspace the local engine gives: same uids, statuses, captions and embeddings,
even when a model worker dies in the middle of the stage (a real local Ray cluster of 2 CPUs)."""
from __future__ import annotations

import shutil
import tarfile

import numpy as np
import pytest

from indexer.engine_ray import KILL_ENV
from indexer.index import IndexConfig, run
from indexer.models import ModelSpec
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore
from tests.conftest import TINY_CONFIG, add_member, write_folder, write_shards

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny test CLIP with its random weights saved once, so every worker process loads the same model."""
    import open_clip
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp("tiny-weights")
    config = folder / TINY_CONFIG.name
    shutil.copy(TINY_CONFIG, config)
    open_clip.add_model_config(config)
    model = open_clip.create_model(config.stem)
    weights = config.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return ModelSpec(checkpoint=str(weights))


def snapshot(root):
    """Everything a later stage reads from an indexed workspace, keyed by uid."""
    with Workspace(root, read_only=True) as ws:
        samples = {r[0]: r[1:] for r in ws.rows(
            "SELECT uid, id, key, status, reason, sha256, width, height, caption_status, thumb FROM samples")}
        captions = {r[0]: r[1:] for r in ws.rows(
            "SELECT uid, id, source_kind, producer, idx, text, status FROM captions")}
        images, texts = EmbeddingStore(ws, "image").load(), EmbeddingStore(ws, "text").load()
        shards = {r[0]: r[1:] for r in ws.rows("SELECT path, n_samples, error, done_at IS NOT NULL "
                                                "FROM ingest_files")}
    return samples, captions, images, texts, shards


def index_with(root, sources, spec, **engine):
    with Workspace(root, create=True) as ws:
        return run(ws, IndexConfig(sources=tuple(map(str, sources)), model=spec, batch_size=8,
                                   commit_rows=8, progress=False, **engine))


def assert_same(local, remote, root_local, root_remote):
    samples_l, captions_l, images_l, texts_l, shards_l = local
    samples_r, captions_r, images_r, texts_r, shards_r = remote
    assert samples_l.keys() == samples_r.keys()
    for uid, row in samples_l.items():
        assert row[1:] == samples_r[uid][1:], uid  # key, status, reason, sha, size, caption status, thumb
    assert {u: c[1:] for u, c in captions_l.items()} == {u: c[1:] for u, c in captions_r.items()}
    for uid, row in samples_l.items():
        a, b = images_l[row[0]], images_r[samples_r[uid][0]]
        np.testing.assert_allclose(a, b, atol=2e-3)  # fp16 storage rounding
        ca, cb = texts_l[captions_l[uid][0]], texts_r[captions_r[uid][0]]
        np.testing.assert_allclose(ca, cb, atol=2e-3)
        if row[-1]:
            assert (root_local / "thumbs" / row[-1]).read_bytes() == (root_remote / "thumbs" / row[-1]).read_bytes()
    assert shards_l == shards_r


def test_ray_engine_matches_local_with_a_worker_killed_mid_stage(tmp_path, ray_cluster, tiny_checkpoint, monkeypatch):
    shards, _ = write_shards(tmp_path / "shards", n_shards=3, per_shard=6)
    with tarfile.open(shards[1]) as tar:
        first = next(n for n in tar.getnames() if n.endswith(".jpg"))
        image = tar.extractfile(first).read()
    with tarfile.open(shards[1], "a") as tar:  # a key seen earlier in the same shard
        add_member(tar, first, image)
    folder = tmp_path / "folder"
    write_folder(folder, n_good=10)
    sources = [tmp_path / "shards" / "{00000..00002}.tar", folder]

    report_l = index_with(tmp_path / "local", sources, tiny_checkpoint)
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ENV, f"1:{marker}")  # the actor meeting block 1 exits; Ray restarts it, redoes the block
    report_r = index_with(tmp_path / "ray", sources, tiny_checkpoint, engine="ray", block_rows=4)
    assert marker.exists(), "the model worker was not killed"
    assert not (tmp_path / "ray" / "staging").exists()
    assert report_r["samples"] == report_l["samples"] and report_r["ok"] == report_l["ok"]
    local, remote = snapshot(tmp_path / "local"), snapshot(tmp_path / "ray")
    assert any(row[2] == "duplicate_key" for row in local[0].values())
    assert len(local[0]) == report_l["samples"]
    assert_same(local, remote, tmp_path / "local", tmp_path / "ray")

    # resumable as the local engine: a second run adds nothing
    monkeypatch.delenv(KILL_ENV)
    again = index_with(tmp_path / "ray", sources, tiny_checkpoint, engine="ray", block_rows=4)
    assert again["samples"] == 0
    assert snapshot(tmp_path / "ray")[0] == remote[0]


def test_ray_engine_finishes_a_partly_indexed_source(tmp_path, ray_cluster, tiny_checkpoint):
    """A run that stopped half-way (here: half the shards indexed locally) is finished by Ray without adding a
    row twice, and ends where one local run ends."""
    shards, _ = write_shards(tmp_path / "shards", n_shards=2, per_shard=6, bad=False)
    index_with(tmp_path / "local", [tmp_path / "shards" / "*.tar"], tiny_checkpoint)
    partial = tmp_path / "ray"
    index_with(partial, [tmp_path / "shards" / shards[0].name], tiny_checkpoint)
    index_with(partial, [tmp_path / "shards" / "*.tar"], tiny_checkpoint, engine="ray")
    local, remote = snapshot(tmp_path / "local"), snapshot(partial)
    assert local[0].keys() == remote[0].keys()
    assert_same(local, remote, tmp_path / "local", partial)


def test_ray_captions_match_local_with_a_worker_killed(tmp_path, ray_cluster, tiny_checkpoint, monkeypatch):
    """altlens caption --engine ray writes the caption rows and vectors the local engine writes (same batches,
    same seeds), with the model worker killed on one block and the block redone."""
    from curation.captions.caption import CaptionConfig
    from curation.pipeline import run_stage
    write_shards(tmp_path / "shards", n_shards=2, per_shard=9)
    index_with(tmp_path / "local", [tmp_path / "shards" / "*.tar"], tiny_checkpoint)
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    cfg = dict(captioner="demo", num=3, batch_size=4, progress=False)
    local = run_stage("caption", tmp_path / "local", CaptionConfig(**cfg))
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ENV, f"1:{marker}")
    remote = run_stage("caption", tmp_path / "ray", CaptionConfig(**cfg, engine="ray", block_batches=1))
    assert marker.exists(), "the model worker was not killed"
    assert local["captioned"] == remote["captioned"] == 18 and remote["failed"] == 0
    rows = {}
    for name in ("local", "ray"):
        with Workspace(tmp_path / name, read_only=True) as ws:
            texts = EmbeddingStore(ws, "text").load()
            rows[name] = {(uid, idx): (text, params, texts[cid].astype(np.float32)) for cid, uid, idx, text, params in
                          ws.rows("SELECT id, uid, idx, text, params FROM captions WHERE source_kind = 'syn'")}
    assert rows["local"].keys() == rows["ray"].keys() and len(rows["local"]) == 18 * 3
    for key, (text, params, vector) in rows["local"].items():
        assert rows["ray"][key][:2] == (text, params)
        np.testing.assert_allclose(rows["ray"][key][2], vector, atol=2e-3)
    again = run_stage("caption", tmp_path / "ray", CaptionConfig(**cfg, engine="ray"))
    assert again["captioned"] == 0 and again["skipped_already_done"] == 18


def test_ray_contrast_matches_local(demo_ws, tmp_path, ray_cluster):
    """score --engine ray: every caption's contrast and the claim it lost, as the local run stored them."""
    from curation.claims.sets import ContrastSets
    from curation.scores.contrast import score_contrast
    from indexer.models import open_workspace_model
    from tests.conftest import writable_copy
    root = writable_copy(demo_ws, tmp_path)
    query = "SELECT caption_id, contrast, variants, lost_claim, lost_to FROM caption_contrast ORDER BY 1"
    with Workspace(root) as ws:
        local = ws.rows(query)
        report = score_contrast(ws, open_workspace_model(ws, None), ContrastSets.load(ws), recompute=True,
                                progress=False, ray={"address": None, "workers": 1})
        remote = ws.rows(query)
    assert report["captions"] == len(local) > 300 and report["texts_encoded"] > 0
    assert [(r[0], r[2]) for r in remote] == [(r[0], r[2]) for r in local]
    close = [abs(a[1] - b[1]) < 1e-4 if a[1] is not None else b[1] is None for a, b in zip(local, remote)]
    assert all(close)
    same_loss = [a[3:] == b[3:] for a, b in zip(local, remote) if a[1] is not None and abs(a[1]) > 1e-3]
    assert all(same_loss)
