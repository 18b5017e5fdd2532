"""recmesh.v1.Ranker over the newest parameter version on disk."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import numpy as np

from recmesh.common.errors import InvalidArgument, rpc_method
from recmesh.common.metrics import set_version
from recmesh.common.server import FAST_RECONNECT, Service
from recmesh.common.transport import aio_channel
from recmesh.common.vectors import from_matrix, optional_row
from recmesh.v1 import ranker_pb2, ranker_pb2_grpc, updater_pb2, updater_pb2_grpc
from services.ranker import features as feats
from services.ranker.config import RankerSettings
from services.ranker.model import Scorer, load_params, newest_params, scorer_from_spec
from services.ranker.reasons import explain
from services.ranker.selection import explore, mmr

log = logging.getLogger("recmesh.ranker")


class RankerServicer(ranker_pb2_grpc.RankerServicer):
    def __init__(self, settings: RankerSettings, scorer: Scorer):
        self._settings = settings
        self._scorer = scorer
        self._rng = np.random.default_rng()
        set_version("ranker", "parameters", scorer.version)

    @property
    def version(self) -> str:
        return self._scorer.version

    @rpc_method
    async def Rank(self, request, context):
        scorer = self._scorer  # one version for the whole call, even if a swap lands meanwhile
        n = len(request.candidates)
        if n > self._settings.max_candidates:
            raise InvalidArgument("candidates", f"at most {self._settings.max_candidates}, got {n}")
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
        # One pass over the candidate messages: each field read from them costs a Python object.
        ids, categories, popularity = [], [], []
        for c in request.candidates:
            ids.append(c.item_id)
            categories.append(list(c.categories))
            popularity.append(c.popularity)
        skipped = dict(request.skipped)
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
        scores = scorer.score(features.values)
        contributions = scorer.contributions(features.values)
        k = min(request.k or n, n)
        s = self._settings
        top = mmr(scores, cand, k, request.diversity, s.mmr_pool_factor)
        top, propensity = explore(top, n, s.exploration, self._rng)
        titles = [r.title for r in request.recent]
        reply.feature_names.extend(feats.FEATURES)
        for i, p in zip(top, propensity, strict=True):
            reply.items.add(
                item_id=ids[i],
                score=float(scores[i]),
                reasons=explain(contributions, features, i, categories[i], affinity, titles, s.max_reasons),
                features=features.values[i].tolist(),
                propensity=float(p),
            )
        return reply

    def swap(self, scorer: Scorer) -> None:
        """Calls in flight finish on the version they started with; the next ones use this."""
        self._scorer = scorer
        set_version("ranker", "parameters", scorer.version)


async def watch_parameters(servicer: RankerServicer, settings: RankerSettings) -> None:
    """Follow the updater's published versions for as long as the ranker runs; while the
    updater is away, keep serving the version at hand and reconnect with backoff."""
    backoff = 0.2
    while True:
        try:
            async with aio_channel(settings.updater_addr, settings, FAST_RECONNECT) as channel:
                stream = updater_pb2_grpc.UpdaterStub(channel).WatchParameters(
                    updater_pb2.WatchParametersRequest(known_version=servicer.version))
                async for update in stream:
                    scorer = scorer_from_spec(json.loads(update.spec_json), f"updater version {update.version}")
                    servicer.swap(scorer)
                    backoff = 0.2
                    log.info("ranker parameters swapped", extra={"version": scorer.version,
                                                                  "trained_through_ms": update.trained_through_ms})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the updater restarting, a bad spec: keep the current version
            log.info("parameter stream interrupted", extra={"error": str(exc)[:200]})
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


def build_service(settings: RankerSettings) -> Service:
    scorer = load_params(newest_params(settings.params_dir))
    servicer = RankerServicer(settings, scorer)
    watcher: list[asyncio.Task] = []

    def register(server: grpc.aio.Server) -> list[str]:
        ranker_pb2_grpc.add_RankerServicer_to_server(servicer, server)
        return [ranker_pb2.DESCRIPTOR.services_by_name["Ranker"].full_name]

    async def warmup() -> None:
        if settings.updater_addr:  # not awaited: the ranker serves its own version meanwhile
            watcher.append(asyncio.create_task(watch_parameters(servicer, settings)))

    async def shutdown() -> None:
        for task in watcher:
            task.cancel()

    return Service("ranker", register, warmup, shutdown)
