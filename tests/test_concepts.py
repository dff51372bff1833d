"""Concept scores on the demo world's planted watermark: zero-shot start, a classifier from 40 tags, the review
queue, selection rules, and imported heads that score as plain torch does."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli
from sklearn.metrics import roc_auc_score

from curation.export.select import SelectionRule, load_selection, preview_selection, save_selection
from curation.review import concepts
from curation.review.labels import add_label
from indexer.models import open_workspace_model
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore


@pytest.fixture
def ws_root(concept_world, tmp_path):
    target = tmp_path / "ws"
    shutil.copytree(concept_world, target)
    return target


def truth(ws: Workspace) -> dict[int, bool]:
    return dict(ws.rows("""SELECT s.id, t.watermark FROM samples s JOIN demo_truth t ON t.uid = s.uid
                           WHERE s.status = 'ok'"""))


def test_a_classifier_from_40_tags_finds_the_watermark_and_beats_its_zero_shot_start(ws_root):
    with Workspace(ws_root) as ws:
        marked = truth(ws)
        model = open_workspace_model(ws, None)
        start = concepts.add(ws, "watermark", "a photo with a watermark", model)
        assert start["version"] == 1 and start["samples"] == len(marked)
        rng = np.random.default_rng(0)
        with_, without = (rng.choice(sorted(i for i, m in marked.items() if m is want), 20, replace=False).tolist()
                          for want in (True, False))
        assert concepts.tag(ws, "watermark", with_, True) == 20 and concepts.tag(ws, "watermark", without, False) == 20
        trained = concepts.train(ws, "watermark")
        held_out = sorted(set(marked) - set(with_) - set(without))
        y = [marked[i] for i in held_out]
        zero, learned = concepts.scores(ws, "watermark", 1), concepts.scores(ws, "watermark")
        zero_auroc = roc_auc_score(y, [zero[i] for i in held_out])
        learned_auroc = roc_auc_score(y, [learned[i] for i in held_out])
        assert trained["version"] == 2 and trained["tags"] == 40 and trained["zero_shot_auroc"] is not None
        assert learned_auroc >= 0.95 and learned_auroc > zero_auroc, (learned_auroc, zero_auroc)
        assert trained["cv_auroc"] >= 0.9 and set(trained["cv_auroc_by_features"]) == {"image", "image+alt-text"}
        assert (ws_root / "concepts" / "watermark-v2.json").is_file()

        queue = concepts.queue(ws, "watermark", n=10)
        assert len(queue) == 10 and not {q["sample_id"] for q in queue} & set(with_ + without)
        assert {q["why"] for q in queue} == {"uncertain", "random"}

        rule = SelectionRule("clean", concepts=("watermark<0.5",), drop_duplicates=False, labels="any")
        step = preview_selection(ws, rule)["steps"][-1]
        assert step["step"] == "concept watermark < 0.5 (v2)"
        kept = save_selection(ws, rule)["selected"]
        members = [r[0] for r in ws.rows("SELECT sample_id FROM selection_members WHERE name = 'clean'")]
        assert len(members) == kept and np.mean([marked[i] for i in members]) < 0.05 < np.mean(list(marked.values()))
        assert load_selection(ws, "clean")[0].concepts == ("watermark<0.5",)
        listed = concepts.listing(ws)[0]
        assert listed["tagged_with"] == 20 and [v["kind"] for v in listed["versions"]] == ["trained", "zero-shot"]


def test_tags_and_rules_are_checked(ws_root):
    with Workspace(ws_root) as ws:
        with pytest.raises(ValueError, match="no concept"):
            concepts.tag(ws, "logo", [0], True)
        concepts.add(ws, "logo")
        with pytest.raises(ValueError, match="good, bad"):
            add_label(ws, 0, "concept:logo", "maybe")
        with pytest.raises(ValueError, match="at least 8"):
            concepts.train(ws, "logo")
        with pytest.raises(ValueError, match="no scores yet"):
            preview_selection(ws, SelectionRule("x", concepts=("logo>0.2",)))
    for bad in ("logo=0.5", "Logo<1", "logo<", "drop table<1"):
        with pytest.raises(ValueError, match="concept"):
            SelectionRule("x", concepts=(bad,))


class Head(torch.nn.Module):
    def __init__(self, dim: int, out: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                          torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, out))

    def forward(self, x):
        return self.layers(x)


def test_an_imported_head_scores_as_plain_torch_and_a_mismatched_one_is_refused(ws_root, tmp_path):
    from safetensors.torch import save_file
    with Workspace(ws_root) as ws:
        record = ws.get_meta("model")
        ids = np.array([r[0] for r in ws.rows("SELECT id FROM samples WHERE status = 'ok' ORDER BY id")])
        x = torch.from_numpy(np.asarray(EmbeddingStore(ws, "image").load()[ids], dtype=np.float32))
        dim = x.shape[1]
        head = Head(dim).eval()
        with torch.no_grad():
            want = head(x)[:, 0].numpy()
        torch.save(head.state_dict(), tmp_path / "head.pt")
        save_file(head.state_dict(), str(tmp_path / "head.safetensors"), metadata={"model": record["name"]})
        for path in ("head.pt", "head.safetensors"):
            out = concepts.import_head(ws, "aesthetic", tmp_path / path)
            got = concepts.scores(ws, "aesthetic", out["version"])
            assert np.allclose([got[int(i)] for i in ids], want, atol=1e-5), path
        two = Head(dim, out=2).eval()
        with torch.no_grad():
            prob = torch.softmax(two(x), 1)[:, 1].numpy()
        torch.save(two.state_dict(), tmp_path / "two.pt")
        got = concepts.scores(ws, "nsfw", concepts.import_head(ws, "nsfw", tmp_path / "two.pt")["version"])
        assert np.allclose([got[int(i)] for i in ids], prob, atol=1e-5)

        torch.save(Head(dim + 1).state_dict(), tmp_path / "wide.pt")
        with pytest.raises(ValueError, match=f"takes {dim + 1}-d embeddings"):
            concepts.import_head(ws, "aesthetic", tmp_path / "wide.pt")
        save_file(head.state_dict(), str(tmp_path / "other.safetensors"), metadata={"model": "ViT-L-14"})
        with pytest.raises(ValueError, match="made for 'ViT-L-14'"):
            concepts.import_head(ws, "aesthetic", tmp_path / "other.safetensors")
        with pytest.raises(ValueError, match="made for 'ViT-H-14'"):
            concepts.import_head(ws, "aesthetic", tmp_path / "head.pt", model="ViT-H-14")
        (tmp_path / "junk.pt").write_bytes(b"not a torch file")
        with pytest.raises(ValueError, match="not a torch state dict"):
            concepts.import_head(ws, "aesthetic", tmp_path / "junk.pt")


def test_the_concept_commands(ws_root, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n3\n")
    run_cli("concept", "add", "blurry", "-w", str(ws_root))
    tagged = json.loads(run_cli("concept", "tag", "blurry", "-w", str(ws_root), "--with", f"@{ids}",
                                "--without", "4,5").stdout)
    assert tagged == {"with": 3, "without": 2}
    listed = json.loads(run_cli("concept", "list", "-w", str(ws_root)).stdout)
    assert listed[0]["name"] == "blurry" and listed[0]["tagged_with"] == 3
    refused = run_cli("concept", "train", "blurry", "-w", str(ws_root), check=False)
    assert refused.returncode == 2 and "at least 8" in refused.stderr
