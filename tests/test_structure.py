"""Clusters, map, near-duplicates, default behaviours and diversity: mechanics and demo-world quality."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_spec, write_folder
from PIL import Image, ImageEnhance

from curation.pipeline import run_stage
from curation.structure.clusters import ClusterConfig, cluster_and_layout, default_k
from curation.structure.defaults import DefaultsQuery, distribution, parse_axis
from curation.structure.diversity import phrases, vendi
from curation.structure.duplicates import find_duplicates
from curation.structure.map import MapConfig
from curation.structure.map import run as run_map
from curation.structure.mapview import map_frame, render_map
from curation.structure.summaries import cluster_table, distinctive_terms
from indexer.index import IndexConfig
from indexer.store import Workspace


@pytest.fixture()
def tiny_ws(tmp_path):
    src = tmp_path / "src"
    write_folder(src, n_good=40, bad=False)
    original = src / "b" / "00000000.jpg"
    (src / "copy.jpg").write_bytes(original.read_bytes())
    (src / "copy.txt").write_text("the same bytes again")
    brighter = ImageEnhance.Brightness(Image.open(original)).enhance(1.08)
    brighter.save(src / "brighter.jpg", quality=75)
    run_stage("index", tmp_path / "ws", IndexConfig(sources=(str(src),), model=tiny_spec(), progress=False))
    return tmp_path / "ws"


def test_vendi_score_bounds_and_dual_form():
    rng = np.random.default_rng(0)
    assert vendi(np.ones((10, 8))) == pytest.approx(1.0)
    assert vendi(np.eye(6)) == pytest.approx(6.0)
    x = rng.normal(size=(50, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kernel = np.linalg.eigvalsh(x @ x.T / 50)
    kernel = kernel[kernel > 1e-12]
    assert vendi(x) == pytest.approx(float(np.exp(-(kernel * np.log(kernel)).sum())), rel=1e-6)


def test_map_mechanics_every_sample_placed(tiny_ws):
    with Workspace(tiny_ws) as ws:
        report = cluster_and_layout(ws, ClusterConfig(clusters=4, fit_max=20))
        assert report["clusters"] == 4 and report["samples"] == 42
        n = ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok'")
        assert ws.scalar("SELECT count(*) FROM map_coords") == n == ws.scalar("SELECT count(*) FROM clusters")
        fitted = np.array(ws.rows("SELECT x, y FROM map_coords"))
        assert np.isfinite(fitted).all()
        frame = map_frame(ws)
        image = render_map(frame, "cluster", 320, 240)
        assert image.size == (320, 240) and np.asarray(image).std() > 0
        with pytest.raises(ValueError, match="unknown colouring"):
            render_map(frame, "rainbow")
    assert default_k(3000) == 27 and default_k(1_000_000) == 500


def test_placed_points_sit_among_their_fitted_neighbours():
    from curation.structure.clusters import place_from_neighbours
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16))
    labels = rng.integers(0, 3, 300)
    x = centres[labels] + 0.05 * rng.normal(size=(300, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    fit = np.arange(0, 300, 3)
    fitted = np.array([[10.0 * c, -5.0 * c] for c in labels[fit]], dtype=np.float32)
    rest = np.setdiff1d(np.arange(300), fit)
    placed = place_from_neighbours(x, fit, fitted, rest, ClusterConfig(pca_dim=8))
    expected = np.array([[10.0 * c, -5.0 * c] for c in labels[rest]])
    assert np.abs(placed - expected).max() < 1.0, "each point lands on its own cluster's fitted spot"


def test_duplicates_find_copies_not_lookalikes(tiny_ws):
    with Workspace(tiny_ws) as ws:
        report = find_duplicates(ws)
        groups = {}
        for gid, key, rep in ws.rows("""SELECT d.group_id, s.key, d.representative FROM dup_groups d
                                        JOIN samples s ON s.id = d.sample_id"""):
            groups.setdefault(gid, []).append((key, rep))
    members = [sorted(k for k, _ in g) for g in groups.values()]
    assert ["b/00000000", "brighter", "copy"] in members
    assert all(sum(rep for _, rep in g) == 1 for g in groups.values()), "one representative per group"
    assert report["duplicates_to_drop"] == sum(len(g) - 1 for g in groups.values())


def test_structure_summaries_and_terms(tiny_ws):
    with Workspace(tiny_ws) as ws:
        report = run_map(ws, MapConfig(layout=ClusterConfig(clusters=3)))
        table = cluster_table(ws)
    assert report["summaries"] == 3 and sum(r["size"] for r in table) == 42
    assert all(r["diversity"]["image"] >= 1.0 for r in table)
    assert (tiny_ws / "maps" / "map_cluster.png").is_file() and (tiny_ws / "maps" / "map_reward.png").is_file()
    terms = distinctive_terms({0: ["red star red star"], 1: ["blue square blue square"]})
    assert terms[0][0] == "red" and terms[1][0] == "blue"
    assert "yellow star" in phrases(["a yellow star on the left", "the yellow star"])


def test_defaults_inputs_are_validated():
    assert parse_axis("colour=yellow, Red ,blue") == ("colour", ("yellow", "red", "blue"))
    for bad in ("colour", "colour=yellow", "=a,b"):
        with pytest.raises(ValueError, match="--axis"):
            parse_axis(bad)
    with pytest.raises(ValueError, match="concept"):
        DefaultsQuery("star'; DROP TABLE samples; --", "colour", ("a", "b"))
    with pytest.raises(ValueError, match="source"):
        DefaultsQuery("star", "colour", ("a", "b"), source="web")
    d = distribution(__import__("collections").Counter({"yellow": 9, "red": 1}), ("yellow", "red", "blue"))
    assert d["default"] and d["top"] == "yellow" and 0 < d["entropy"] < 1


# ---------------------------------------------------------------- quality on the demo world


@pytest.fixture(scope="module")
def map_q(demo_ws):
    from demo.map_quality import map_quality
    root, summary = demo_ws
    assert summary["map"]["clusters"] >= 2
    with Workspace(root, read_only=True) as ws:
        q = map_quality(ws)
    print(json.dumps(q, indent=1, default=str))
    return q


def test_demo_planted_duplicates_are_found(map_q):
    assert map_q["duplicates"]["precision"] >= 0.95 and map_q["duplicates"]["recall"] >= 0.95


def test_demo_clusters_follow_shape_and_background(map_q):
    assert map_q["nmi"]["shape_and_background"] >= 0.5


def test_demo_planted_default_is_found_and_suggested(map_q):
    assert map_q["default"]["caption_side"]["default"] and not map_q["default"]["image_side"]["default"]
    assert map_q["default"]["suggestion_rank"] is not None and map_q["default"]["suggestion_rank"] < 3


def test_demo_set_difference_names_what_differs(demo_ws):
    from curation.structure.diversity import set_difference
    from indexer.models import open_workspace_model
    from indexer.vectors import EmbeddingStore
    root, _ = demo_ws
    with Workspace(root, read_only=True) as ws:
        rows = ws.rows("""SELECT s.id, t.scene_json, c.text FROM samples s JOIN demo_truth t ON t.uid = s.uid
                          JOIN captions c ON c.sample_id = s.id AND c.source_kind = 'fused'""")
        has_star = [any(o["shape"] == "star" for o in json.loads(scene)["objects"]) for _, scene, _ in rows]
        starry = [(i, text) for (i, _, text), star in zip(rows, has_star) if star]
        other = [(i, text) for (i, _, text), star in zip(rows, has_star) if not star]
        images = EmbeddingStore(ws, "image").load()
        model = open_workspace_model(ws, None)
        top = set_difference(model, images[[i for i, _ in starry]], images[[i for i, _ in other]],
                             [t for _, t in starry], [t for _, t in other], top=3)
    assert any("star" in t["phrase"] for t in top), top
    assert top[0]["gap"] > 0


@pytest.mark.parametrize("cell_size", [32, 1024])
def test_cluster_local_duplicate_search_keeps_the_global_search_recall(demo_ws, cell_size):
    """Candidates searched only in each image's own cell and its nearest cells (the map's clusters, split into
    cells of about ``cell_size``) against the global exact search on the demo world: no false candidates, recall
    of candidates >= 0.99 even with cells of 32 images, and every pixel-confirmed near-duplicate pair found."""
    from curation.structure import duplicates as dup
    from curation.structure.clusters import ok_embeddings
    root, _ = demo_ws
    with Workspace(root, read_only=True) as ws:
        ids, vectors = ok_embeddings(ws)
        labels, centroids = dup.map_clusters(ws, ids)
        thumbs = {i: ws.thumbs_dir / t for i, t in ws.rows("SELECT id, thumb FROM samples WHERE thumb IS NOT NULL")}
    assert labels is not None and len(np.unique(labels)) >= 5
    cells, centres, owner = dup.cells_of(vectors, labels, dup.DupConfig(cell_size=cell_size))
    assert (len(np.unique(cells)) > len(np.unique(labels))) == (np.bincount(labels).max() >= 1.5 * cell_size)
    assert len(centres) == len(owner) and all(owner[cells[i]] == labels[i] for i in range(len(labels)))
    exact = {(a, b): s for a, b, s in dup.candidate_pairs(ids, vectors, dup.DupConfig(search="global"))}
    cfg = dup.DupConfig(search="clusters", cell_size=cell_size)
    local = {(a, b): s for a, b, s in dup.candidate_pairs(ids, vectors, cfg, labels, centroids, progress=False)}
    assert len(exact) >= 100, "enough pairs to measure recall"
    assert set(local) <= set(exact) and all(abs(local[p] - exact[p]) < 1e-4 for p in local)
    assert len(local) / len(exact) >= 0.99, (len(local), len(exact))
    prints = {i: dup.fingerprint(p) for i, p in thumbs.items()}
    confirmed = {p for p in exact if dup.local_difference(prints[p[0]], prints[p[1]]) <= cfg.max_local_diff}
    assert confirmed and confirmed <= set(local)
    with pytest.raises(ValueError, match="altlens map"):
        dup.candidate_pairs(ids, vectors, dup.DupConfig(search="clusters"))


@pytest.mark.parametrize("search", ["global", "clusters"])
def test_a_crowd_of_copies_stays_one_group_with_bounded_candidates(search):
    """400 copies of one picture (cosine > 0.99 to each other) among 600 unrelated rows: each row proposes at
    most MAX_CANDIDATES pairs in each cell it searches (the list no longer grows with the square of the crowd:
    all 79,800 pairs before), the copies still form one group, and no unrelated row is paired."""
    from curation.structure.duplicates import MAX_CANDIDATES, DupConfig, _union_find, candidate_pairs
    rng = np.random.default_rng(4)
    base = rng.normal(size=64)
    crowd = base + 0.05 * rng.normal(size=(400, 64))
    others = rng.normal(size=(600, 64))
    vectors = np.vstack([crowd, others]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1000) + 10
    labels = np.r_[np.zeros(400, np.int64), rng.integers(1, 4, 600)]
    centroids = np.stack([vectors[labels == c].mean(0) for c in range(4)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    cfg = DupConfig(search=search, cell_size=128)
    pairs = candidate_pairs(ids, vectors, cfg, labels, centroids, progress=False)
    cells = 1 if search == "global" else cfg.probes + 1  # the cluster-local search: per cell a row probes
    assert len(pairs) <= 400 * MAX_CANDIDATES * cells < 400 * 399 / 2, len(pairs)
    assert all(a < b and a - 10 < 400 and b - 10 < 400 for a, b, _ in pairs), "only the copies pair"
    groups = _union_find(pairs)
    assert [sorted(m) for m in groups.values()] == [list(range(10, 410))]
