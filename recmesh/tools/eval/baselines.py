"""Baselines scored by the same protocol in the same run."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from recmesh.tools.eval.datasets import Split, popularity_counts
from recmesh.tools.eval.zeroshot import InterestRule
from recmesh.v1 import common_pb2


class Popularity:
    name = "Pop"

    def __init__(self, s: Split):
        counts = popularity_counts(s)
        self._scores = np.zeros(s.n_items, dtype=np.float32)
        for item, n in counts.items():
            self._scores[item] = n

    def __call__(self, users: list[str], stage: str) -> np.ndarray:
        return np.broadcast_to(self._scores, (len(users), len(self._scores)))


class ItemKNN:
    """Item-item cosine over co-occurrence in train histories; a user's score sums the
    neighbours of their recent items, newer items weighted more (half-life in events)."""

    name = "ItemKNN"

    def __init__(self, s: Split, neighbours: int = 100, half_life: float = 20.0, history: int = 200):
        self._s = s
        users = sorted(s.train)
        rows = np.repeat(np.arange(len(users)), [len(s.train[u]) for u in users])
        cols = np.concatenate([s.train[u] for u in users])
        ui = sparse.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(users), s.n_items))
        ui.data[:] = 1.0  # repeated interactions count once
        co = (ui.T @ ui).tocsr().astype(np.float32)
        norms = np.sqrt(np.asarray(co.diagonal())).clip(min=1e-6)
        co = sparse.diags(1 / norms) @ co @ sparse.diags(1 / norms)
        co.setdiag(0)
        self._sim = self._top_k(co.tocsr(), neighbours)
        self._half_life, self._history = half_life, history

    @staticmethod
    def _top_k(m: sparse.csr_matrix, k: int) -> sparse.csr_matrix:
        rows, cols, vals = [], [], []
        for i in range(m.shape[0]):
            start, end = m.indptr[i], m.indptr[i + 1]
            if end == start:
                continue
            idx, data = m.indices[start:end], m.data[start:end]
            keep = np.argsort(-data)[:k]
            rows.append(np.full(len(keep), i))
            cols.append(idx[keep])
            vals.append(data[keep])
        return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape)

    def __call__(self, users: list[str], stage: str) -> np.ndarray:
        weights = sparse.lil_matrix((len(users), self._s.n_items), dtype=np.float32)
        for row, user in enumerate(users):
            items = self._s.history(user, stage)[-self._history :]
            age = np.arange(len(items) - 1, -1, -1)
            for item, w in zip(items, 0.5 ** (age / self._half_life), strict=True):
                weights[row, item] += w
        return np.asarray((weights.tocsr() @ self._sim).todense())


class ZeroShotText:
    """The mesh's zero-shot interest rule over frozen LLM item vectors."""

    name = "ZeroShot-LLM"

    def __init__(self, s: Split, item_vectors: np.ndarray, history: int = 50):
        self._s, self._v, self._history = s, item_vectors, history
        self._rule = InterestRule()

    def __call__(self, users: list[str], stage: str) -> np.ndarray:
        out = np.zeros((len(users), len(self._v)), dtype=np.float32)
        rate = common_pb2.EventType.EVENT_TYPE_RATE
        for row, user in enumerate(users):
            items = self._s.history(user, stage)[-self._history :]
            ratings = (self._s.ratings[user])[: len(self._s.history(user, stage))][-self._history :]
            interest = self._rule.combine(self._v[items], [rate] * len(items), ratings, None)
            if interest is not None:
                out[row] = self._v @ interest
        return out
