"""Semantic dedup mechanics: block-wise similarities equal the full matrix, each group keeps the member its
policy prefers, one run answers every eps, and a selection applies it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli, writable_copy

from curation.export.select import SelectionRule, preview_selection, save_selection
from curation.structure.semdedup import EPS_GRID, SemDedupConfig, earlier_among, earlier_max, keep_order, semdedup
from indexer.store import Workspace


def test_blocks_give_the_same_answer_as_the_full_matrix():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    full = x @ x.T
    want = np.array([-np.inf] + [full[:i, i].max() for i in range(1, 300)])
    which = np.array([-1] + [int(full[:i, i].argmax()) for i in range(1, 300)])
    for memory_mb in (1e-3, 256):  # one row a block, or everything at once
        best, got = earlier_max(x, memory_mb)
        assert np.allclose(best, want, atol=1e-6) and np.array_equal(got, which)
    # queries against rows of other clusters, in one keep order over everything
    rank = rng.permutation(300)
    queries, others = np.arange(0, 100), np.arange(50, 300)
    earlier = rank[others][:, None] < rank[queries][None, :]
    masked = np.where(earlier, full[np.ix_(others, queries)], -np.inf)
    for memory_mb in (1e-3, 256):
        best, got = earlier_among(x[queries], rank[queries], x[others], rank[others], memory_mb)
        assert np.allclose(best, masked.max(0), atol=1e-6)
        assert np.array_equal(np.where(np.isfinite(best), got, -1), np.where(earlier.any(0), masked.argmax(0), -1))


def test_keep_orders():
    distance = np.array([0.3, 0.1, 0.2, 0.1])
    reward = np.array([0.5, 0.9, 0.9, np.nan])
    assert keep_order("caption", distance, reward, 0).tolist() == [1, 2, 0, 3], "reward first, then centrality"
    assert keep_order("central", distance, reward, 0).tolist() == [1, 3, 2, 0]
    assert sorted(keep_order("random", distance, reward, 5).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="keep"):
        SemDedupConfig(keep="newest")


def test_caption_policy_keeps_the_best_captioned_member_and_select_applies_any_eps(demo_ws, tmp_path):
    root = writable_copy(demo_ws, tmp_path)
    with Workspace(root) as ws:
        ok = ws.scalar("SELECT count(*) FROM clusters k JOIN samples s ON s.id = k.sample_id AND s.status = 'ok'")
        assert ws.get_meta("semdedup")["keep"] == "caption", "the demo runs semdedup (a pipeline stage)"
        assert ws.scalar("SELECT count(*) FROM semdedup") == ok > 0
        ws.execute("DELETE FROM semdedup")
        ws.execute("DELETE FROM meta WHERE key = 'semdedup'")
        with pytest.raises(ValueError, match="no semantic dedup yet"):
            preview_selection(ws, SelectionRule(name="x", semdedup_eps=0.05))
        report = semdedup(ws, SemDedupConfig(keep="caption", memory_mb=1), progress=False)
        removed = [row["removed"] for row in report["curve"]]
        assert removed == sorted(removed) and removed[-1] > removed[0], "a looser eps removes more"
        rows = ws.dicts("""SELECT d.sample_id, d.duplicate_of, d.max_sim, d.rank, r.value AS reward,
                                  o.rank AS other_rank, ro.value AS other_reward, k.cluster, ko.cluster AS other_cluster
                           FROM semdedup d LEFT JOIN rewards r ON r.sample_id = d.sample_id AND r.version = 1
                           LEFT JOIN semdedup o ON o.sample_id = d.duplicate_of
                           LEFT JOIN rewards ro ON ro.sample_id = d.duplicate_of AND ro.version = 1
                           JOIN clusters k ON k.sample_id = d.sample_id
                           LEFT JOIN clusters ko ON ko.sample_id = d.duplicate_of""")
        dups = [r for r in rows if r["max_sim"] is not None and r["max_sim"] >= 0.95]
        assert dups and all(r["other_rank"] < r["rank"] and r["cluster"] == r["other_cluster"] for r in dups), \
            "probes 0: within a cluster"
        assert all((r["other_reward"] or 0) >= (r["reward"] or 0) for r in dups), "the kept one has the better caption"
        for eps in (0.02, 0.05):
            rule = SelectionRule(name=f"sd{int(eps * 100)}", semdedup_eps=eps, drop_duplicates=False, labels="any")
            step = preview_selection(ws, rule)["steps"][-1]
            expected = ws.scalar("SELECT count(*) FROM semdedup WHERE max_sim >= ?", [1 - eps])
            assert step["step"].startswith(f"semantic duplicates (eps {eps:g}") and step["removed"] == expected
            assert save_selection(ws, rule)["selected"] == step["remaining"]
        with pytest.raises(ValueError, match="keeps by 'caption', not 'central'"):
            preview_selection(ws, SelectionRule(name="x", semdedup_eps=0.05, semdedup_keep="central"))
    with Workspace(root, read_only=True) as ws:
        from curation.structure.semdedup import per_cluster
        hardest = per_cluster(ws, 0.05, limit=10**6)
        assert sum(r["removed"] for r in hardest) == ws.scalar("SELECT count(*) FROM semdedup WHERE max_sim >= 0.95")
        assert sum(r["size"] for r in hardest) == ws.scalar("SELECT count(*) FROM semdedup")
        assert [r["share"] for r in hardest] == sorted((r["share"] for r in hardest), reverse=True)
    out = json.loads(run_cli("semdedup", "-w", str(root), "--keep", "central", "--probes", "2").stdout)
    assert out["keep"] == "central" and len(out["curve"]) == len(EPS_GRID)


def test_planted_semantic_duplicates_are_found_and_the_best_captioned_copy_stays(reduce_world):
    """The demo world's planted semantic duplicates (a scene drawn again: objects moved, resized, turned, another
    JPEG quality; an alt-text of its own) against semdedup at the default eps."""
    from curation.structure.semdedup import DEFAULT_EPS
    from demo.map_quality import semdedup_quality
    with Workspace(reduce_world) as ws:
        semdedup(ws, SemDedupConfig(keep="central"), progress=False)
        central = semdedup_quality(ws, DEFAULT_EPS)
        semdedup(ws, SemDedupConfig(keep="caption"), progress=False)
        caption = semdedup_quality(ws, DEFAULT_EPS)
    assert caption["planted_pairs"] >= 30 and caption["groups_judged"] >= 10
    assert caption["precision"] >= 0.9, caption
    assert caption["best_caption_kept"] >= 0.9 > central["best_caption_kept"], (caption, central)
    noise = caption["planted_members_by_alt_noise"]
    assert noise["correct"]["kept"] > noise["correct"]["dropped"]
    assert all(noise[k]["dropped"] >= noise[k]["kept"] for k in ("unrelated", "junk", "empty") if k in noise)


def test_planted_semantic_duplicate_recall_at_the_default_eps(reduce_world):
    """Recall of the planted pairs at the default eps, beside the precision it costs (a tighter eps loses
    redraws the demo CLIP moves to cosine 0.90-0.95; a looser one merges scenes that differ in one object)."""
    from curation.structure.semdedup import DEFAULT_EPS
    from demo.map_quality import semdedup_quality
    with Workspace(reduce_world) as ws:
        semdedup(ws, SemDedupConfig(keep="caption"), progress=False)
        q = semdedup_quality(ws, DEFAULT_EPS)
    assert q["recall"] >= 0.9 and q["precision"] >= 0.9, q


def test_groups_largest_first_and_a_curator_overrules_the_kept_member(reduce_world, tmp_path):
    import shutil

    from curation.structure.semdedup import groups, overrule
    root = tmp_path / "ws"
    shutil.copytree(reduce_world, root)
    with Workspace(root) as ws:
        semdedup(ws, SemDedupConfig(keep="caption"), progress=False)
        found = groups(ws, 0.05, limit=5)
        sizes = [g["size"] for g in found["page"]]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] >= 2
        assert found["in_groups"] - found["groups"] == ws.scalar("SELECT count(*) FROM semdedup WHERE max_sim >= 0.95")
        group = found["page"][0]
        kept = [m for m in group["members"] if m["kept"]]
        assert len(kept) == 1 and kept[0]["id"] == group["kept"] == group["members"][0]["id"]
        other = group["members"][1]["id"]
        rule = SelectionRule(name="sd", semdedup_eps=0.05, drop_duplicates=False, labels="any")
        before = set(r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok'"))
        save_selection(ws, rule)
        members = {r[0] for r in ws.rows("SELECT sample_id FROM selection_members WHERE name = 'sd'")}
        assert group["kept"] in members and other not in members
        assert overrule(ws, other, 0.05, who="ana") == {"group": group["group"], "kept": other,
                                                          "instead_of": group["kept"]}
        again = [g for g in groups(ws, 0.05, limit=50)["page"] if g["group"] == group["group"]][0]
        assert again["kept"] == other and again["overruled"] and again["size"] == group["size"]
        from indexer.vectors import EmbeddingStore
        vectors = np.asarray(EmbeddingStore(ws, "image").load(), np.float32)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        for m in again["members"]:  # cosines to the member kept now, not to the one the policy kept
            assert m["cos_to_kept"] == pytest.approx(float(unit[m["id"]] @ unit[other]), abs=1e-3), m
        assert again["members"][0]["id"] == other and again["members"][0]["cos_to_kept"] == pytest.approx(1, abs=1e-3)
        save_selection(ws, rule, replace=True)
        members2 = {r[0] for r in ws.rows("SELECT sample_id FROM selection_members WHERE name = 'sd'")}
        assert members2 == (members - {group["kept"]}) | {other}, "one swapped for the other, nothing else"
        overrule(ws, group["kept"], 0.05)  # back to the policy's choice
        assert not [g for g in groups(ws, 0.05, limit=50)["page"] if g["group"] == group["group"]][0]["overruled"]
        with pytest.raises(ValueError, match="in no semantic-duplicate group"):
            singles = before - {m["id"] for g in groups(ws, 0.05, limit=10**6)["page"] for m in g["members"]}
            overrule(ws, min(singles), 0.05)


def _walk(parent: dict[int, int]) -> dict[int, int]:
    """Each member's root by walking its duplicate_of chain one step at a time (the rule, written plainly)."""
    out = {}
    for start in parent:
        node = start
        while node in parent:
            node = parent[node]
        out[start] = node
    return out


def test_groups_follow_chains_with_arrays_not_a_python_object_per_member(tmp_path):
    """Issue 29: the selection's semantic-dedup step resolves every removed sample's kept root in numpy (pointer
    doubling over the duplicate_of chains). On 128 k members in chains up to 7 long (as central/reward keep
    orders make them) the roots equal a plain walk's, an overrule moves the kept member, and finding what to
    drop holds well under one Python object per member: a dict per member costs over 100 bytes each."""
    import tracemalloc

    import pyarrow as pa

    from curation.structure.semdedup import _at_eps, overrule, removed_ids
    rng = np.random.default_rng(0)
    n = 160_000
    ids = np.arange(n, dtype=np.int64)
    is_root = np.zeros(n, bool)  # runs of 2 to 8 consecutive ids form a group; each id points at the one before
    starts = np.cumsum(rng.integers(2, 9, n))
    is_root[0], is_root[starts[starts < n]] = True, True
    parent = ids - 1
    members = ids[~is_root]
    dup_of = parent[~is_root]
    with Workspace(tmp_path / "ws", create=True) as ws:
        ws.insert_arrow("semdedup", pa.table({
            "sample_id": members, "cluster": np.zeros(len(members), np.int32), "rank": np.zeros(len(members), np.int32),
            "max_sim": np.ones(len(members)), "duplicate_of": dup_of, "keep": ["central"] * len(members)}))
        ws.set_meta("semdedup", {"keep": "central"})
        expected = _walk(dict(zip(members.tolist(), dup_of.tolist())))
        g = _at_eps(ws, 0.05)
        assert np.array_equal(g.members, members)
        assert np.array_equal(g.roots, np.array([expected[m] for m in members.tolist()]))
        tracemalloc.start()
        dropped = removed_ids(ws, 0.05)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert isinstance(dropped, np.ndarray) and np.array_equal(dropped, members)
        assert peak / len(members) < 100, f"{peak / len(members):.0f} bytes per member"
        member = int(members[5])
        root = expected[member]
        assert overrule(ws, member, 0.05)["group"] == root
        after = removed_ids(ws, 0.05)
        assert member not in set(after.tolist()) and root in set(after.tolist()) and len(after) == len(members)


def test_a_large_cluster_is_split_into_cells_that_cover_it_once_and_keep_near_copies_together():
    from curation.structure.semdedup import cells
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 32)).astype(np.float32) * 0.35 + 1.0  # one blob, as one map cluster
    copies = rng.choice(np.arange(1, 3000), 60, replace=False)
    x[copies] = x[copies - 1] + rng.normal(scale=0.01, size=(60, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert [(a.tolist(), b.tolist()) for a, b in cells(x[:200], 256, 1, 0)] == [(list(range(200)),) * 2]
    split = list(cells(x, 256, 1, 0))
    members = np.concatenate([a for a, _ in split])
    assert len(split) >= 8 and np.array_equal(np.sort(members), np.arange(3000)), "each row in exactly one cell"
    assert all(np.isin(a, b).all() and len(b) > len(a) for a, b in split), "a cell is compared with itself and one more"
    compared_with = {int(i): set(b.tolist()) for a, b in split for i in a}
    together = np.mean([int(c - 1) in compared_with[int(c)] or int(c) in compared_with[int(c - 1)] for c in copies])
    assert together >= 0.95, together
    with pytest.raises(ValueError, match="cell"):
        SemDedupConfig(cell=1)
