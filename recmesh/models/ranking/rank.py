"""One Rank call as the ranker answers it: the request checked, the candidates' features,
their scores under one scorer version, the k slots (diversity, exploration) and the reasons.
The ranker service's Rank is this under its current version; `recmesh.tools.bench.ranker`
times it in process."""

from __future__ import annotations

import math

import numpy as np

from recmesh.common.errors import InvalidArgument
from recmesh.common.vectors import from_matrix, optional_row
from recmesh.models.ranking import features as feats
from recmesh.models.ranking.reasons import explain
from recmesh.models.ranking.scorer import Scorer
from recmesh.models.ranking.selection import explore, mmr
from recmesh.v1 import ranker_pb2


def rank(request: ranker_pb2.RankRequest, scorer: Scorer, rng: np.random.Generator, *, max_candidates: int,
         exploration: float, mmr_pool_factor: int, max_reasons: int) -> ranker_pb2.RankResponse:
    """A malformed request raises InvalidArgument naming the field."""
    n = len(request.candidates)
    if n > max_candidates:
        raise InvalidArgument("candidates", f"at most {max_candidates}, got {n}")
    if request.k < 0:
        raise InvalidArgument("k", "must be >= 0")
    if not 0.0 <= request.diversity <= 1.0:
        raise InvalidArgument("diversity", f"must be in 0..1, got {request.diversity}")
    cand = from_matrix(request.candidate_vectors, "candidate_vectors")
    if cand.shape[0] != n:
        raise InvalidArgument("candidate_vectors", f"{cand.shape[0]} rows for {n} candidates")
    reply = ranker_pb2.RankResponse(model_version=scorer.version)
    if n == 0:
        return reply
    dim = cand.shape[1]
    text = from_matrix(request.candidate_text_vectors, "candidate_text_vectors")
    # Checked even when query_similarity makes it unneeded: a malformed one is still an error.
    has_query = len(from_matrix(request.query_vector, "query_vector")) > 0
    query_sim = np.array(request.query_similarity, np.float32) if request.query_similarity else None
    if query_sim is not None and (len(query_sim) != n or not np.isfinite(query_sim).all()):
        raise InvalidArgument("query_similarity", f"{len(query_sim)} values for {n} candidates, all finite")
    if text.shape[0] not in (0, n) or (has_query and query_sim is None and text.shape[0] != n):
        raise InvalidArgument("candidate_text_vectors", f"{text.shape[0]} rows for {n} candidates (with a query, "
                              "all of them are needed unless query_similarity is given)")
    recent = from_matrix(request.recent_vectors, "recent_vectors")
    if recent.shape[0] != len(request.recent):
        raise InvalidArgument("recent_vectors", f"{recent.shape[0]} rows for {len(request.recent)} recent items")
    if recent.shape[0] and recent.shape[1] != dim:
        raise InvalidArgument("recent_vectors", f"dim {recent.shape[1]}, candidates have {dim}")
    affinity = dict(request.category_affinity)
    if not all(math.isfinite(v) for v in affinity.values()):
        raise InvalidArgument("category_affinity", "values must be finite numbers")
    # One pass over the candidate messages: each field read from them costs a Python object.
    ids, categories, popularity = [], [], []
    for c in request.candidates:
        ids.append(c.item_id)
        categories.append(list(c.categories))
        popularity.append(c.popularity)
    if not np.isfinite(popularity).all():
        raise InvalidArgument("candidates.popularity", "must be finite numbers")
    skipped = dict(request.skipped)
    if any(v < 0 for v in skipped.values()):
        raise InvalidArgument("skipped", "counts must be >= 0")
    features = feats.compute(
        feats.RankInputs(
            candidate_vectors=cand,
            candidate_text_vectors=text,
            candidate_categories=categories,
            popularity=np.array(popularity, dtype=np.float32),
            interest=optional_row(request.interest, "interest", dim),
            session=optional_row(request.session, "session", dim),
            query=(optional_row(request.query_vector, "query_vector", text.shape[1])
                   if has_query and query_sim is None else None),
            query_similarity=query_sim,
            recent_vectors=recent,
            category_affinity=affinity,
            skipped=np.array([skipped.get(i, 0) for i in ids], np.float32) if skipped else None,
        )
    )
    # A newcomer's typed words (no session, recent items or category affinity) are scored with
    # the scorer's cold weights when it has them (Scorer.for_request).
    has_history = bool(len(request.session.data) or recent.shape[0] or affinity)
    scorer = scorer.for_request(has_history, typed=has_query or query_sim is not None)
    scores = scorer.score(features.values)
    contributions = scorer.contributions(features.values)
    k = min(request.k or n, n)
    top = mmr(scores, cand, k, request.diversity, mmr_pool_factor)
    top, propensity = explore(top, n, exploration, rng)
    titles = [r.title for r in request.recent]
    mean = contributions.mean(axis=0)  # every item's reasons compare it with the same average
    reply.feature_names.extend(feats.FEATURES)
    for i, p in zip(top, propensity, strict=True):
        reply.items.add(
            item_id=ids[i],
            score=float(scores[i]),
            reasons=explain(contributions, features, i, categories[i], affinity, titles, max_reasons, mean),
            features=features.values[i].tolist(),
            propensity=float(p),
        )
    return reply
