"""recall@10 of a workspace's index against exact search, for image queries and two kinds of text query
(bench/growth.py and bench/growth_datacomp.py)."""
from __future__ import annotations

import numpy as np


def recall_at_10(ws, h, n_queries: int = 50) -> tuple[float, float, float]:
    """The workspace index's top 10 against exact inner-product search (float32, over every row), for three
    kinds of query:

    - images: stored sample vectors (similar images, at the index's own breadth);
    - text, random model: the random ViT-B-32's text tower. Its space has nothing to do with the synthetic
      image clusters, so these are random directions whose true neighbours are scattered outliers: a worst
      case for any index that partitions the rows;
    - text, modality gap: what CLIP's text embeddings look like next to its images (a caption's vector is
      its image's, moved along one direction shared by every caption, with cosine about 0.3 to the image):
      a stored vector, scaled by 0.3, plus a fixed gap direction and a little noise.

    The last two are searched as text is (``cross_modal``)."""
    from indexer.vectors import EmbeddingStore, read_index, search
    vectors = EmbeddingStore(ws, "image").load()
    index = read_index(ws.index_path)
    rng = np.random.default_rng(2)
    texts = [f"a {size} {colour} {shape} {where}" for size in ("small", "large") for colour in ("red", "blue", "green")
             for shape in ("star", "circle") for where in ("on the left", "at the top")][:n_queries // 2]
    dim = vectors.shape[1]
    gap = rng.normal(size=dim).astype(np.float32)
    gap /= np.linalg.norm(gap)
    near = np.asarray(vectors[rng.integers(0, len(vectors), n_queries)], np.float32)
    shifted = 0.3 * near + 0.95 * gap + rng.normal(scale=0.1 / np.sqrt(dim), size=near.shape).astype(np.float32)
    shifted /= np.linalg.norm(shifted, axis=1, keepdims=True)
    out = []
    for q, cross in ((np.asarray(vectors[rng.integers(0, len(vectors), n_queries)], np.float32), False),
                     (np.asarray(h.model.encode_texts(texts), np.float32), True), (shifted, True)):
        _, found = search(index, q, 10, cross_modal=cross, vectors=vectors)
        scores = np.concatenate([np.asarray(vectors[a:a + 200_000], np.float32) @ q.T
                                 for a in range(0, len(vectors), 200_000)])
        exact = np.argpartition(-scores, 10, axis=0)[:10].T
        hits = sum(len(set(e.tolist()) & set(g.tolist())) for e, g in zip(exact, found))
        out.append(round(hits / (10 * len(q)), 3))
    return out[0], out[1], out[2]
