"""Cluster summaries: clusters + captions + scores -> size, exemplars, distinctive terms, reward, diversity.

A pair is *flagged* when its active reward is below ``meta.flag_threshold``
(default 0.625 = clip_score of cosine 0.25, DataComp's ViT-B/32 cut).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import pyarrow as pa

from curation.scores.rewards import reward_values
from curation.structure.diversity import vendi
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore

DEFAULT_FLAG_THRESHOLD = 0.625
STOP = {"a", "an", "the", "on", "in", "at", "of", "and", "with", "to", "is", "for", "by", "from", "this"}


def flag_threshold(ws: Workspace) -> float:
    return float(ws.get_meta("flag_threshold", DEFAULT_FLAG_THRESHOLD))


def distinctive_terms(cluster_texts: dict[int, list[str]], top: int = 6) -> dict[int, list[str]]:
    """Class-based TF-IDF (as in BERTopic): a word's share of the cluster's words times
    log(1 + average words per cluster / the word's count over all clusters). Unlike a per-cluster
    document frequency, this still ranks words that occur everywhere but far more often here
    (a cluster of stars says "star" most), while words common everywhere sink."""
    tf = {c: Counter(w for t in texts for w in re.findall(r"[a-z][a-z'-]{2,}", t.lower()) if w not in STOP)
          for c, texts in cluster_texts.items()}
    overall: Counter = Counter()
    for counts in tf.values():
        overall.update(counts)
    average = sum(overall.values()) / max(len(tf), 1)
    out = {}
    for c, counts in tf.items():
        total = sum(counts.values()) or 1
        scored = {w: (k / total) * math.log(1 + average / overall[w]) for w, k in counts.items()}
        out[c] = [w for w, _ in sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
    return out


def summarise_clusters(ws: Workspace, exemplars: int = 6, max_diversity_rows: int = 2000) -> int:
    """Compute and store one summary row per cluster; return how many."""
    clusters = ws.dicts("SELECT sample_id, cluster, distance FROM clusters ORDER BY cluster, distance")
    if not clusters:
        raise ValueError("no clusters yet; run 'altlens map' first")
    by_cluster: dict[int, list[int]] = {}
    for row in clusters:
        by_cluster.setdefault(row["cluster"], []).append(row["sample_id"])
    captions = ws.rows("""SELECT k.cluster, c.source_kind, c.text, c.id, cs.clip_score FROM captions c
                          JOIN clusters k ON k.sample_id = c.sample_id
                          LEFT JOIN caption_scores cs ON cs.caption_id = c.id""")
    texts: dict[int, list[str]] = {c: [] for c in by_cluster}
    per_source: dict[tuple[int, str], list] = {}
    for cluster, kind, text, cid, clip in captions:
        texts[cluster].append(text)
        per_source.setdefault((cluster, kind), []).append((cid, clip))
    terms = distinctive_terms(texts)
    reward = reward_values(ws)
    threshold = flag_threshold(ws)
    images = EmbeddingStore(ws, "image").load()
    text_vecs = EmbeddingStore(ws, "text").load()
    rng = np.random.default_rng(0)
    rows = []
    for cluster, members in sorted(by_cluster.items()):
        sample = members if len(members) <= max_diversity_rows else list(rng.choice(members, max_diversity_rows, False))
        stats, diversity = {}, {"image": round(vendi(images[sorted(sample)]), 3)}
        for (c, kind), items in per_source.items():
            if c != cluster:
                continue
            scores = [s for _, s in items if s is not None]
            if scores:
                stats[kind] = {"mean": round(float(np.mean(scores)), 4), "std": round(float(np.std(scores)), 4)}
            ids = [i for i, _ in items][:max_diversity_rows]
            diversity[kind] = round(vendi(text_vecs[sorted(ids)]), 3)
        flagged = [reward[m] < threshold for m in members if reward.get(m) is not None]
        rows.append({"cluster": cluster, "size": len(members), "exemplars": json.dumps(members[:exemplars]),
                     "terms": json.dumps(terms[cluster]), "reward": json.dumps(stats),
                     "flagged_share": float(np.mean(flagged)) if flagged else None,
                     "diversity": json.dumps(diversity), "computed_at": now()})
    with ws.transaction() as cur:
        cur.execute("DELETE FROM cluster_summaries")
        ws.insert_arrow("cluster_summaries", pa.Table.from_pylist(rows), cur=cur)
    return len(rows)


def cluster_table(ws: Workspace) -> list[dict]:
    """Summaries as plain dicts (JSON columns decoded), largest cluster first."""
    rows = ws.dicts("SELECT * FROM cluster_summaries ORDER BY size DESC, cluster")
    for row in rows:
        for key in ("exemplars", "terms", "reward", "diversity"):
            row[key] = json.loads(row[key])
        div = row["diversity"]
        row["syn_vs_alt_diversity"] = round(div["syn"] / div["alt"], 3) if div.get("syn") and div.get("alt") else None
    return rows
