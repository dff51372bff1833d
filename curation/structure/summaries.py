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

from curation.scores.rewards import active_reward
from curation.structure.diversity import vendi
from indexer.store import Workspace, now
from indexer.vectors import EmbeddingStore

DEFAULT_FLAG_THRESHOLD = 0.625
TERM_TEXTS = 5000  # captions a cluster's distinctive terms are counted on (a seeded draw in larger clusters)
SOURCE_ORDER = ["alt", "syn", "fused"]  # the order a summary lists its caption sources in
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


def summarise_clusters(ws: Workspace, exemplars: int = 6, max_diversity_rows: int = 2000,
                       max_term_texts: int = TERM_TEXTS) -> int:
    """Compute and store one summary row per cluster; return how many.

    Nothing here holds an object per sample: membership is two arrays, the score statistics and flagged
    shares are DuckDB aggregates, and the terms and text diversity read at most ``max_term_texts`` /
    ``max_diversity_rows`` captions a cluster (every caption of a cluster smaller than that)."""
    frame = ws.numpy("SELECT sample_id, cluster FROM clusters ORDER BY cluster, distance, sample_id")
    if not len(frame["sample_id"]):
        raise ValueError("no clusters yet; run 'altlens map' first")
    ids, labels = np.asarray(frame["sample_id"], np.int64), np.asarray(frame["cluster"], np.int64)
    bounds = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1], True])
    texts: dict[int, list[str]] = {int(c): [] for c in labels[bounds[:-1]]}
    for cluster, text in ws.rows("""SELECT k.cluster, c.text FROM captions c JOIN clusters k ON k.sample_id = c.sample_id
                                    QUALIFY row_number() OVER (PARTITION BY k.cluster ORDER BY hash(c.id), c.id) <= ?""",
                                 [int(max_term_texts)]):
        texts[cluster].append(text)
    terms = distinctive_terms(texts)
    del texts
    stats: dict[int, dict] = {}
    for cluster, kind, mean, std in ws.rows("""SELECT k.cluster, c.source_kind, avg(cs.clip_score), stddev_pop(cs.clip_score)
                                               FROM captions c JOIN clusters k ON k.sample_id = c.sample_id
                                               JOIN caption_scores cs ON cs.caption_id = c.id
                                               WHERE cs.clip_score IS NOT NULL GROUP BY ALL"""):
        stats.setdefault(cluster, {})[kind] = {"mean": round(float(mean), 4), "std": round(float(std), 4)}
    drawn = ws.numpy("""SELECT k.cluster, c.source_kind AS kind, c.id FROM captions c
                        JOIN clusters k ON k.sample_id = c.sample_id
                        QUALIFY row_number() OVER (PARTITION BY k.cluster, c.source_kind ORDER BY c.id) <= ?
                        ORDER BY k.cluster, c.source_kind, c.id""", [int(max_diversity_rows)])
    cut = np.flatnonzero(np.r_[True, (drawn["cluster"][1:] != drawn["cluster"][:-1])
                               | (drawn["kind"][1:] != drawn["kind"][:-1]), True])
    text_ids = {(int(drawn["cluster"][a]), str(drawn["kind"][a])): np.asarray(drawn["id"][a:b], np.int64)
                for a, b in zip(cut[:-1], cut[1:])} if len(drawn["id"]) else {}
    version = active_reward(ws)
    flagged = dict(ws.rows("""SELECT k.cluster, avg(CASE WHEN r.value < ? THEN 1.0 ELSE 0.0 END) FROM clusters k
                              JOIN rewards r ON r.sample_id = k.sample_id AND r.version = ? GROUP BY k.cluster""",
                           [flag_threshold(ws), version if version is not None else -1]))
    images = EmbeddingStore(ws, "image").load()
    text_vecs = EmbeddingStore(ws, "text").load()
    rng = np.random.default_rng(0)
    rows = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        cluster, members = int(labels[a]), ids[a:b]
        sample = members if len(members) <= max_diversity_rows else rng.choice(members, max_diversity_rows, False)
        diversity = {"image": round(vendi(images[np.sort(sample)]), 3)}
        kinds = SOURCE_ORDER + sorted({k for c, k in text_ids if c == cluster} - set(SOURCE_ORDER))
        for kind in kinds:
            if (cluster, kind) in text_ids:
                diversity[kind] = round(vendi(text_vecs[text_ids[cluster, kind]]), 3)
        scores = {k: stats[cluster][k] for k in kinds if k in stats.get(cluster, {})}
        rows.append({"cluster": cluster, "size": int(len(members)), "exemplars": json.dumps(members[:exemplars].tolist()),
                     "terms": json.dumps(terms[cluster]), "reward": json.dumps(scores),
                     "flagged_share": float(flagged[cluster]) if cluster in flagged else None,
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
