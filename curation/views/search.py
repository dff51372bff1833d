"""Search a workspace: text -> nearest images, and image -> similar images, through its FAISS index."""
from __future__ import annotations

import numpy as np

from indexer.models import ModelSpec, open_workspace_model
from indexer.store import Workspace
from indexer.vectors import EmbeddingStore, read_index, reranks, search


class Searcher:
    """Holds a workspace's model and FAISS index; loaded once, queried many times."""

    def __init__(self, ws: Workspace, device: str = "auto", model=None):
        self.ws = ws
        self.index = read_index(ws.index_path)  # memory-mapped
        # an index of compressed codes re-ranks from the image store (memory-mapped too)
        self._rerank_from = EmbeddingStore(ws, "image").load() if reranks(self.index) else None
        self._model = model
        self._device = device

    @property
    def model(self):
        if self._model is None:
            self._model = open_workspace_model(self.ws, ModelSpec(device=self._device) if self._device != "auto" else None)
        return self._model

    def text(self, query: str, k: int = 10) -> list[dict]:
        """The ``k`` images nearest to a text query, best first, with cosine scores."""
        if not query.strip():
            raise ValueError("the search text is empty")
        return self._hits(self.model.encode_texts([query]), k, cross_modal=True)

    def similar(self, sample_id: int, k: int = 10) -> list[dict]:
        """The ``k`` images nearest to sample ``sample_id`` (itself excluded)."""
        vectors = EmbeddingStore(self.ws, "image").load()
        if not 0 <= sample_id < len(vectors):
            raise ValueError(f"no sample with id {sample_id}")
        hits = self._hits(np.asarray(vectors[sample_id:sample_id + 1], dtype=np.float32), k + 1)
        return [h for h in hits if h["id"] != sample_id][:k]

    def _hits(self, query: np.ndarray, k: int, cross_modal: bool = False) -> list[dict]:
        scores, ids = search(self.index, query, k, cross_modal, vectors=self._rerank_from)
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        if not found:
            return []
        rows = {r["id"]: r for r in self.ws.dicts(
            """SELECT s.id, s.uid, s.source, s.key, s.thumb, c.text AS alt
               FROM samples s LEFT JOIN captions c ON c.sample_id = s.id AND c.source_kind = 'alt'
               WHERE s.id IN (SELECT unnest(?))""", [[i for i, _ in found]])}
        return [{**rows[i], "score": round(s, 4)} for i, s in found if i in rows]
