"""Labels with history, the learned reward and its queue, on a copy of the demo workspace."""
from __future__ import annotations

import pytest

from conftest import writable_copy
from curation.labels import add_label, current, history
from curation.reward import apply_reward, review_queue, train_reward
from curation.reward_sim import held_out_auroc, simulate_labels
from indexer.store import Workspace


@pytest.fixture()
def demo_copy(demo_ws, tmp_path):
    return writable_copy(demo_ws, tmp_path)  # tests write labels: never into the shared session workspace


def test_labels_keep_history_and_validate(demo_copy):
    with Workspace(demo_copy) as ws:
        add_label(ws, 3, "alignment", "bad", who="ann", view="browser")
        add_label(ws, 3, "alignment", "good", who="bob", view="review")
        add_label(ws, 3, "tag", "needs recaption")
        assert current(ws)[3] == "good"
        assert [h["value"] for h in history(ws, 3)] == ["bad", "good", "needs recaption"]
        for kind, value in (("alignment", "maybe"), ("colour", "red"), ("tag", "<script>")):
            with pytest.raises(ValueError):
                add_label(ws, 3, kind, value)
        with pytest.raises(ValueError, match="no ok sample"):
            add_label(ws, 10**9, "alignment", "good")


def test_reward_refuses_with_too_few_labels(demo_copy):
    with Workspace(demo_copy) as ws:
        add_label(ws, 1, "alignment", "good")
        with pytest.raises(ValueError, match="need at least 8 'good' and 8 'bad'"):
            train_reward(ws)


@pytest.fixture(scope="module")
def simulated(demo_ws, tmp_path_factory):
    """A curator simulated from the truth labels 200 samples chosen by the queue, then the reward is applied."""
    target = writable_copy(demo_ws, tmp_path_factory.mktemp("reward"))
    with Workspace(target) as ws:
        model = simulate_labels(ws, budget=200)
        result = held_out_auroc(ws, model)
        applied = apply_reward(ws, model)
    print(result)
    return target, result, applied


def test_simulated_labels_train_and_apply_a_reward(simulated):
    target, result, applied = simulated
    assert result["labels"] == 200 and 0.5 < result["cv_auroc"] <= 1.0
    with Workspace(target, read_only=True) as ws:
        assert ws.get_meta("active_reward") == applied["version"]
        assert ws.scalar("SELECT count(*) FROM rewards WHERE version = ?", [applied["version"]]) == \
            ws.scalar("SELECT count(*) FROM samples WHERE status = 'ok'")
        provenance = ws.scalar("SELECT provenance FROM reward_versions WHERE version = ?", [applied["version"]])
        assert '"cv_auroc"' in provenance and '"labels": 200' in provenance
        useful = review_queue(ws, "useful", n=10)
        assert len(useful) == 10 and not set(useful) & set(current(ws))
        assert len(review_queue(ws, "lowest", n=5)) == 5


def test_learned_reward_beats_clip_score(simulated):
    _, result, _ = simulated
    assert result["learned_auroc"] > result["clip_score_auroc"]
