"""Budgeted representatives: a share of a selection spread over clusters by a visible rule, picked inside each
cluster by centrality, reward or diversity."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli, writable_copy

from curation.export.budget import ALLOCATE, PICK, budget_pick, quotas
from curation.export.select import SelectionRule, load_selection, preview_selection, save_selection
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore


def test_quotas_add_up_keep_one_each_and_follow_the_weights():
    sizes = np.array([1000, 100, 10, 1, 0])
    for weights in (sizes, np.sqrt(sizes)):
        out = quotas(sizes, 333, weights)
        assert out.sum() == 333 and (out[:4] >= 1).all() and out[4] == 0 and (out <= sizes).all()
    by_size, by_sqrt = quotas(sizes, 333, sizes), quotas(sizes, 333, np.sqrt(sizes))
    assert by_sqrt[2] > by_size[2] and by_sqrt[0] < by_size[0], "√size gives small clusters relatively more"
    assert quotas(np.array([5, 5]), 100, np.array([1.0, 1.0])).tolist() == [5, 5], "never more than a cluster has"
    assert quotas(np.array([50, 50, 50]), 2, np.ones(3)).tolist() == [1, 1, 1], "one each beats the budget"


@pytest.fixture(scope="module")
def ws(demo_ws):
    root, _ = demo_ws
    with Workspace(root, read_only=True) as ws:
        yield ws


def _candidates(ws) -> list[int]:
    return [r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok' ORDER BY id")]


@pytest.mark.parametrize("allocate", ALLOCATE)
@pytest.mark.parametrize("pick", PICK)
def test_a_budget_is_hit_within_one_percent_and_no_cluster_is_emptied(ws, allocate, pick):
    ids = _candidates(ws)
    kept, table = budget_pick(ws, ids, 0.3, allocate, pick)
    assert abs(len(kept) - 0.3 * len(ids)) <= 0.01 * len(ids)
    assert set(kept) <= set(ids) and len(set(kept)) == len(kept)
    clusters = dict(ws.rows("SELECT sample_id, cluster FROM clusters"))
    assert {clusters[i] for i in kept} == {clusters[i] for i in ids}, "every cluster keeps at least one"
    assert sum(r["kept"] for r in table) == len(kept)
    assert all(sum(clusters[i] == r["cluster"] for i in kept) == r["kept"] for r in table)


def test_picks_follow_their_rule(ws):
    ids = _candidates(ws)
    info = {r[0]: (r[1], r[2], r[3]) for r in ws.rows("""SELECT k.sample_id, k.cluster, k.distance, r.value
                                                          FROM clusters k LEFT JOIN rewards r ON r.sample_id =
                                                          k.sample_id AND r.version = 1""")}
    central, _ = budget_pick(ws, ids, 0.3, "size", "central")
    best, _ = budget_pick(ws, ids, 0.3, "size", "reward")
    diverse, _ = budget_pick(ws, ids, 0.3, "size", "diverse")
    images = np.asarray(EmbeddingStore(ws, "image").load(), dtype=np.float32)
    radius = {}
    for name, kept in (("central", central), ("reward", best), ("diverse", diverse)):
        kept_set = set(kept)
        worst = []
        for c in {info[i][0] for i in ids}:
            members = [i for i in ids if info[i][0] == c]
            mine = [i for i in members if i in kept_set]
            rest = [i for i in members if i not in kept_set]
            if name == "central" and rest:
                assert max(info[i][1] for i in mine) <= min(info[i][1] for i in rest)
            if name == "reward" and rest:
                assert min(info[i][2] for i in mine) >= max(info[i][2] for i in rest)
            sims = images[members] @ images[mine].T
            worst.append(float((1 - sims.max(1)).max()))
        radius[name] = float(np.mean(worst))
    assert radius["diverse"] < radius["central"], f"k-center covers its cluster better: {radius}"


def test_a_budget_in_a_saved_selection_and_the_cli(demo_ws, tmp_path):
    root = writable_copy(demo_ws, tmp_path)
    with Workspace(root) as ws:
        rule = SelectionRule(name="third", budget=0.33, allocate="diversity", pick="diverse", labels="any")
        preview = preview_selection(ws, rule)
        assert preview["steps"][-1]["step"].startswith("beyond the budget (33%")
        saved = save_selection(ws, rule)
        assert saved["selected"] == preview["selected"] == len(load_selection(ws, "third")[1])
        assert sum(r["kept"] for r in preview["per_cluster"]) == saved["selected"]
    with pytest.raises(ValueError, match="budget"):
        SelectionRule(name="x", budget=1.5)
    with pytest.raises(ValueError, match="allocate"):
        SelectionRule(name="x", budget=0.5, allocate="evenly")
    out = json.loads(run_cli("select", "-w", str(root), "--name", "half", "--budget", "0.5", "--pick", "reward",
                             "--min-reward", "0.2").stdout)
    assert out["per_cluster"] and out["steps"][-1]["step"].startswith("beyond the budget (50%")
    assert out["selected"] == sum(r["kept"] for r in out["per_cluster"])
