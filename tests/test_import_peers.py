"""The clip-retrieval round trip on the peer's own files: clip-retrieval's real ``clip_inference`` embeds
img2dataset-style shards with a random-weights checkpoint; altlens imports its output and indexes the same
shards itself, and the two workspaces agree (uids, rows, vectors to float16 rounding, search neighbours)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, TINY_CONFIG, add_member, good_samples, run_cli

from curation.views.search import Searcher
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore

PEERS = ROOT / ".venv" / "peers"
RUNNER = ROOT / "tests" / "peers" / "clip_inference.py"


@pytest.fixture(scope="module")
def clip_retrieval_output(tmp_path_factory):
    """(shards, checkpoint, clip-retrieval's output folder, the uids written into the shards' json)."""
    if not (PEERS / "clip_retrieval").is_dir():
        pytest.fail("clip-retrieval is not installed for the tests: run 'make peers' (make test does)")
    import open_clip
    import torch
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("cr")
    samples = good_samples(14, seed=11)
    uids = [f"{(i + 1) * 0x9E3779B97F4A7C15:032x}"[-32:] for i in range(len(samples))]
    for s in range(2):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for (key, data, caption), uid in list(zip(samples, uids))[s * 7:(s + 1) * 7]:
                add_member(tar, f"{key}.jpg", data)
                add_member(tar, f"{key}.txt", caption.encode())
                add_member(tar, f"{key}.json", json.dumps({"uid": uid, "url": f"https://example.com/{key}"}).encode())
    config = root / "model" / TINY_CONFIG.name
    config.parent.mkdir()
    shutil.copy(TINY_CONFIG, config)
    open_clip.add_model_config(config)
    torch.manual_seed(7)
    model = open_clip.create_model(config.stem)
    checkpoint = config.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    out = root / "cr-out"
    proc = subprocess.run([sys.executable, str(RUNNER), str(PEERS), str(config), str(checkpoint),
                           str(root / "{00000..00001}.tar"), str(out)], capture_output=True, text=True, timeout=600,
                          cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [root / "00000.tar", root / "00001.tar"], checkpoint, out, uids


def test_clip_retrieval_output_imports_and_matches_indexing(clip_retrieval_output, tmp_path):
    shards, checkpoint, out, uids = clip_retrieval_output
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet").to_pydict()
    theirs = np.load(out / "img_emb" / "img_emb_0.npy").astype(np.float32)
    their_text = np.load(out / "text_emb" / "text_emb_0.npy").astype(np.float32)
    assert sorted(meta["uid"]) == sorted(uids), "clip-retrieval carried the shards' uids into its metadata"

    run_cli("import", "clip-retrieval", str(out), "-w", str(tmp_path / "imp"), "--checkpoint", str(checkpoint))
    run_cli("index", *map(str, shards), "-w", str(tmp_path / "idx"), "--checkpoint", str(checkpoint))
    with Workspace(tmp_path / "imp", read_only=True) as imp, Workspace(tmp_path / "idx", read_only=True) as idx:
        rows = imp.rows("SELECT uid, key, status FROM samples ORDER BY id")
        assert [r[0] for r in rows] == meta["uid"] and [r[1] for r in rows] == meta["image_path"]
        assert {r[2] for r in rows} == {"ok"}
        mine = np.asarray(EmbeddingStore(imp, "image").load(), np.float32)
        assert np.abs(mine - theirs).max() < 2e-3
        assert np.abs(np.asarray(EmbeddingStore(imp, "text").load(), np.float32) - their_text).max() < 2e-3
        assert imp.rows("SELECT text FROM captions ORDER BY id") == [(c,) for c in meta["caption"]]

        # altlens's own indexing of the same images with the same weights gives clip-retrieval's vectors
        order = {u: i for i, u in enumerate(meta["uid"])}
        indexed = dict(idx.rows("SELECT json_extract_string(meta_json, '$.uid'), id FROM samples"))
        assert set(indexed) == set(order)
        own = np.asarray(EmbeddingStore(idx, "image").load(), np.float32)[[indexed[u] for u in meta["uid"]]]
        assert np.abs(own - theirs).max() < 5e-3, "same model, same preprocessing: the same vectors"

        # search over either workspace finds the same neighbours
        uid_of_idx = {i: u for u, i in indexed.items()}
        a, b = Searcher(imp), Searcher(idx)
        for number in range(len(uids)):
            near_imp = [h["uid"] for h in a.similar(number, k=3)]
            near_idx = [uid_of_idx[h["id"]] for h in b.similar(indexed[meta["uid"][number]], k=3)]
            assert near_imp == near_idx


READER = """
import json, sys
import numpy as np
from embedding_reader import EmbeddingReader
reader = EmbeddingReader(embeddings_folder=sys.argv[1] + "/img_emb", metadata_folder=sys.argv[1] + "/metadata",
                         meta_columns=["uid", "caption"], file_format="parquet_npy")
vectors, uids, captions = [], [], []
for emb, meta in reader(batch_size=5, start=0, end=reader.count, show_progress=False):
    vectors.append(emb)
    uids += meta["uid"].tolist()
    captions += meta["caption"].tolist()
np.save(sys.argv[2], np.concatenate(vectors))
print(json.dumps({"count": int(reader.count), "dim": int(reader.dimension), "uids": uids, "captions": captions}))
"""


# clip-retrieval's own ``clip-retrieval index`` (clip_retrieval/clip_index.py, autofaiss underneath), run as its
# script. autofaiss 2.18 pins numpy<2: under numpy 2 its metrics file fails on a numpy float (json cannot write
# np.float32) after the index is saved. This wrapper teaches json numpy scalars and changes nothing else.
CLIP_INDEX = """
import json, runpy, sys
import numpy as np
default = json.JSONEncoder.default
json.JSONEncoder.default = lambda self, o: o.item() if isinstance(o, np.generic) else default(self, o)
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_clip_retrieval_export_reads_in_embedding_reader_and_imports_back(clip_retrieval_output, tmp_path):
    shards, checkpoint, out, uids = clip_retrieval_output
    ws = tmp_path / "ws"
    run_cli("import", "clip-retrieval", str(out), "-w", str(ws), "--checkpoint", str(checkpoint))
    run_cli("select", "-w", str(ws), "--name", "all", "--keep-duplicates", "--caption-policy", "alt")
    run_cli("export", "-w", str(ws), "--selection", "all", "--out", str(tmp_path / "exp"), "--format", "clip-retrieval")
    assert json.loads(run_cli("verify-export", str(tmp_path / "exp")).stdout)["samples"] == len(uids)
    proc = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "exp"), str(tmp_path / "read.npy")],
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(PEERS), "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    read = json.loads(proc.stdout.strip().splitlines()[-1])
    assert read["count"] == len(uids) and read["dim"] == 32 and read["uids"] == sorted(uids)
    with Workspace(ws, read_only=True) as w:
        by_uid = dict(w.rows("SELECT uid, id FROM samples"))
        stored = np.asarray(EmbeddingStore(w, "image").load(), np.float32)[[by_uid[u] for u in read["uids"]]]
        alts = dict(w.rows("SELECT uid, text FROM captions WHERE source_kind = 'alt'"))
    assert np.abs(np.load(tmp_path / "read.npy") - stored).max() < 2e-3
    assert read["captions"] == [alts[u] for u in read["uids"]]

    index_dir = tmp_path / "cr-index"  # clip-retrieval index builds its image and text indexes from the export
    proc = subprocess.run([sys.executable, "-c", CLIP_INDEX, str(PEERS / "clip_retrieval" / "clip_index.py"),
                           str(tmp_path / "exp"), str(index_dir), "--max_index_memory_usage", "1G",
                           "--current_memory_available", "2G", "--nb_cores", "2"],
                          capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(PEERS), "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    import faiss
    exported = np.load(tmp_path / "exp" / "img_emb" / "img_emb_0.npy").astype(np.float32)
    for kind in ("image", "text"):
        built = faiss.read_index(str(index_dir / f"{kind}.index"))
        assert built.ntotal == len(uids) and built.d == 32
    _, nearest = faiss.read_index(str(index_dir / "image.index")).search(exported, 1)
    assert np.array_equal(nearest[:, 0], np.arange(len(uids))), "each exported row finds itself, in export order"
    assert pq.read_table(index_dir / "metadata").column("uid").to_pylist() == read["uids"]

    back = tmp_path / "back"
    run_cli("import", "clip-retrieval", str(tmp_path / "exp"), "-w", str(back), "--checkpoint", str(checkpoint))
    with Workspace(back, read_only=True) as w:
        assert [r[0] for r in w.rows("SELECT uid FROM samples ORDER BY id")] == read["uids"]
        assert np.abs(np.asarray(EmbeddingStore(w, "image").load(), np.float32) - stored).max() < 2e-3
