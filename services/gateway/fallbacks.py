"""Popular candidates kept by the gateway, to answer when retrieval or the encoder cannot."""

from __future__ import annotations

import numpy as np

from recmesh.common.vectors import from_matrix
from recmesh.v1 import retrieval_pb2


class PopularCandidates:
    """The most popular items with their vectors, refreshed from retrieval in the background."""

    def __init__(self) -> None:
        self.candidates: list[retrieval_pb2.Candidate] = []
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.index_version = ""

    def replace(self, reply: retrieval_pb2.CandidateList) -> None:
        vectors = from_matrix(reply.vectors, "vectors")
        # Swap both at once; readers never see a list and matrix that disagree.
        self.candidates, self.vectors, self.index_version = list(reply.candidates), vectors, reply.index_version

    def forget(self, item_ids: set[str]) -> None:
        keep = [i for i, c in enumerate(self.candidates) if c.item_id not in item_ids]
        if len(keep) != len(self.candidates):
            self.candidates, self.vectors = [self.candidates[i] for i in keep], self.vectors[keep]

    def select(self, include: set[str], exclude: set[str], exclude_ids: set[str], limit: int):
        """Popular candidates that pass the request's filters, most popular first."""
        candidates, vectors = self.candidates, self.vectors
        rows = [
            i
            for i, c in enumerate(candidates)
            if c.item_id not in exclude_ids
            and not exclude.intersection(c.categories)
            and (not include or include.intersection(c.categories))
        ][:limit]
        return [candidates[i] for i in rows], vectors[rows] if len(vectors) else vectors
