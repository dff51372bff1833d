"""README's "Start from DataComp or LAION" works as written: its offline block, run line by line in a fresh
folder (the repository's .venv and demo/ linked in), imports the demo pool, and the subset file it ends with is
DataComp's sorted u8,u8 array holding exactly the top 30% of the pool by its L14 score."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from conftest import ROOT

MARKER = "<!-- try-datacomp"


def readme_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index(MARKER):]
    block = block[block.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("\n```")]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_datacomp_block_runs_as_written(tmp_path):
    lines = readme_lines()
    assert any(" import datacomp " in line for line in lines) and lines[-1].split()[1] == "serve"
    (tmp_path / ".venv").symlink_to(Path(sys.executable).resolve().parent.parent
                                    if not (ROOT / ".venv").exists() else ROOT / ".venv")
    (tmp_path / "demo").symlink_to(ROOT / "demo")
    outputs = []
    for line in lines[:-1]:  # the last serves until stopped; the browser tests cover what it shows
        command = shlex.split(line.split("   #")[0])
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    stats = next(out for line, out in zip(lines, outputs) if " stats " in line)
    assert "400 samples" in stats and "100 have no image at hand" in stats, stats

    uids, scores = [], []
    for path in sorted((tmp_path / "pool" / "metadata").glob("*.parquet")):
        part = pq.read_table(path, columns=["uid", "clip_l14_similarity_score"])
        uids += part.column("uid").to_pylist()
        scores += part.column("clip_l14_similarity_score").to_pylist()
    assert len(uids) == 400
    cut = -np.sort(-np.array(scores))[int(len(scores) * 0.3)]  # DataComp's get_threshold
    expected = np.sort(np.array([divmod(int(u, 16), 2 ** 64) for u, s in zip(uids, scores) if s >= cut],
                                np.dtype("u8,u8")))
    subset = np.load(tmp_path / "subset" / "subset.npy")
    assert subset.dtype == np.dtype("u8,u8") and np.array_equal(subset, expected)
    printed = next(out for line, out in zip(lines, outputs) if "np.load" in line)
    assert re.fullmatch(rf"\[\('f0', '<u8'\), \('f1', '<u8'\)\] {len(expected)}", printed.strip()), printed
    scored = next(out for line, out in zip(lines, outputs) if " score " in line)
    assert '"captions_scored": 400' in scored, scored
