"""What the Recommend pipeline's stages find, each with the version of what found it; the reply
is assembled from these (services/gateway/pipeline.py). The user's history (recmesh.models.
session.History) carries no version: the updater's state is data, not a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmesh.v1 import ranker_pb2
from services.gateway.fallbacks import CandidateSet


@dataclass(frozen=True)
class Encoded:
    """The encoding stage's find (services/gateway/interest.py). Vectors are 1-D float32."""

    interest: np.ndarray | None  # the interest model's vector; None: none, not even a cached one
    query: np.ndarray | None  # the typed query's language-model vector; None: no query, or not encoded
    # The interest model version behind `interest` (reply.versions["encoder"]); None: nothing to report.
    version: str | None = None


NOTHING_ENCODED = Encoded(None, None)


@dataclass(frozen=True)
class Signals:
    """What the request knows of the user's intent; any of them may be missing."""

    interest: np.ndarray | None  # the interest model's vector
    session: np.ndarray | None  # unit direction of the last few items
    query: np.ndarray | None  # the typed query's language-model vector

    def any(self) -> bool:
        return self.interest is not None or self.session is not None or self.query is not None


@dataclass(frozen=True)
class Retrieved:
    """The candidate stage's find (services/gateway/candidates.py): candidates in retrieval
    order, and the index version that returned them (reply.versions["index"])."""

    candidates: CandidateSet
    version: str


@dataclass(frozen=True)
class Ranked:
    """The ranking stage's find (services/gateway/ranking.py): the ranker's order of the
    candidates (its items' ids are among them), and its model version (reply.versions["ranker"])."""

    ranking: ranker_pb2.RankResponse
    version: str
