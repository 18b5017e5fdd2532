"""recmesh.v1.Recommendations: the public API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import grpc

from recmesh.common.auth import CLIENT_HEADER, AuthInterceptor, Client, client_name, load_keys, parse_keys
from recmesh.common.errors import FailedPrecondition, rpc_method
from recmesh.common.rules import check_rule_name, check_stored_rule
from recmesh.common.server import Service
from recmesh.common.transport import PREVIEW_HEADER
from recmesh.common.validation import check_events, check_id, check_text
from recmesh.experiments.assignment import check_experiment_name
from recmesh.experiments.wire import STOP_REASON_CHARS, check_experiment_proto
from recmesh.v1 import (
    common_pb2,
    encoder_pb2,
    recommendations_pb2,
    recommendations_pb2_grpc,
    retrieval_pb2,
    updater_pb2,
)
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import PopularCandidates
from services.gateway.recommend import Recommender
from services.gateway.upstreams import Upstreams
from services.gateway.validation import check_item_ids, check_items, check_merge, check_recommend, check_similar

log = logging.getLogger("recmesh.gateway")
# A listing of the stored rules is a small read; one slower than this is retried at the next refresh.
RULES_LIST_TIMEOUT_S = 2.0


async def passthrough(context: grpc.aio.ServicerContext, call):
    """Await an upstream call; its failure becomes this call's status with the same details."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        await context.abort(exc.code(), exc.details() or exc.code().name)


class GatewayServicer(recommendations_pb2_grpc.RecommendationsServicer):
    def __init__(self, settings: GatewaySettings, keys: dict[str, Client] | None = None):
        """keys: the API keys (None: authentication off), to name the client of an audited change."""
        self._s = settings
        self._keys = keys
        self._up = Upstreams.connect(settings)
        self._popular = PopularCandidates()
        self._recommender = Recommender(settings, self._up, self._popular)
        self._weights = settings.event_weights()
        self._refresher: asyncio.Task | None = None
        self._soon: asyncio.Task | None = None
        self._rules_refresher: asyncio.Task | None = None
        self._rules_failing = False

    async def _refresh_popular(self) -> None:
        reply = await self._up.retrieval.TopPopular(
            retrieval_pb2.TopPopularRequest(limit=self._s.popular_pool, with_vectors=True), timeout=5.0
        )
        self._popular.replace(reply, asked=self._s.popular_pool)

    async def warmup(self) -> None:
        """SERVING only once the popular fallback and the stored business rules are loaded: from
        then on every Recommend can be answered, and under the rules in force (an answer that
        ignored a stored exclusion would be wrong, not degraded)."""
        for load, upstream in ((self._refresh_popular, "retrieval"), (self._list_rules, "updater"),
                               (self._list_experiments, "updater")):
            while True:
                try:
                    await load()
                    break
                except grpc.aio.AioRpcError as exc:
                    log.info(f"waiting for {upstream}", extra={"status": exc.code().name})
                    await asyncio.sleep(0.5)
        self._refresher = asyncio.create_task(self._refresh_loop())
        self._rules_refresher = asyncio.create_task(self._rules_loop())

    async def _list_rules(self) -> common_pb2.ListRulesResponse:
        """The updater's stored rules, taken into this gateway's set unless a change was made
        through it meanwhile (StoredRules.replace)."""
        stored = self._recommender.stored_rules
        writes = stored.writes
        reply = await self._up.updater.ListRules(common_pb2.ListRulesRequest(), timeout=RULES_LIST_TIMEOUT_S)
        stored.replace(reply.rules, writes)
        return reply

    async def _list_experiments(self) -> common_pb2.ListExperimentsResponse:
        """The updater's experiments, taken as _list_rules takes the rules."""
        experiments = self._recommender.experiments
        writes = experiments.writes
        reply = await self._up.updater.ListExperiments(common_pb2.ListExperimentsRequest(),
                                                       timeout=RULES_LIST_TIMEOUT_S)
        experiments.replace(reply.experiments, writes)
        return reply

    async def _rules_loop(self) -> None:
        """Lists the stored rules and the experiments every rules_refresh_s; while the updater
        cannot answer, the last listings stay in force (logged once when that starts and once
        when it ends)."""
        while True:
            await asyncio.sleep(self._s.rules_refresh_s)
            try:
                await self._list_rules()
                await self._list_experiments()
            except grpc.aio.AioRpcError as exc:
                if not self._rules_failing:
                    log.warning("stored rules not listed; keeping the last listing", extra={"status": exc.code().name})
                self._rules_failing = True
                continue
            if self._rules_failing:
                log.info("stored rules listed again")
            self._rules_failing = False

    def _refresh_soon(self) -> None:
        """A pool refresh now, in the background (one at a time)."""
        if self._soon is None or self._soon.done():
            self._soon = asyncio.create_task(self._refresh_once())

    async def _refresh_once(self) -> None:
        try:
            await self._refresh_popular()
        except grpc.aio.AioRpcError as exc:
            log.warning("popular refresh failed; keeping the last list", extra={"status": exc.code().name})

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._s.popular_refresh_s)
            await self._refresh_once()

    async def close(self) -> None:
        for task in (self._refresher, self._soon, self._rules_refresher):
            if task is not None:
                task.cancel()
        # Impressions leave in batches (impression_flush_ms): the last ones go before the
        # channels close, so feedback on the final answers can still be learned from.
        await self._recommender.impressions.flush(timeout_s=2.0)
        await self._up.close()

    def _write_timeout(self, context) -> float:
        """The client's deadline when it set one (an upsert of many long items takes seconds to
        encode on a CPU: the caller decides how long it waits), else write_timeout_s."""
        remaining = context.time_remaining()
        return self._s.write_timeout_s if remaining is None else remaining

    @rpc_method
    async def Recommend(self, request, context):
        k, query = check_recommend(request, self._s)
        preview = dict(context.invocation_metadata() or ()).get(PREVIEW_HEADER) == "1"
        return await self._recommender.recommend(request, k, query, context.time_remaining(), preview=preview)

    @rpc_method
    async def SimilarItems(self, request, context):
        k, text = check_similar(request, self._s)
        return await self._recommender.similar_items(request, k, text, context.time_remaining())

    @rpc_method
    async def TrackEvents(self, request, context):
        check_events(request.events, "events", self._s.max_events_per_call)
        reply = await passthrough(
            context,
            self._up.updater.Ingest(
                updater_pb2.IngestRequest(events=request.events), timeout=self._write_timeout(context)
            ),
        )
        self._recommender.seen.note_ingested(request.events, reply.duplicates, time.monotonic())
        return recommendations_pb2.TrackEventsResponse(accepted=reply.accepted, duplicates=reply.duplicates)

    @rpc_method
    async def UpsertItems(self, request, context):
        check_items(request.items, self._s)
        timeout = self._write_timeout(context)
        encoded = await passthrough(
            context,
            self._up.encoder.EncodeItems(encoder_pb2.EncodeItemsRequest(items=request.items), timeout=timeout),
        )
        reply = await passthrough(
            context,
            self._up.retrieval.Upsert(
                retrieval_pb2.UpsertRequest(items=request.items, vectors=encoded.vectors,
                                            text_vectors=encoded.text_vectors),
                timeout=self._write_timeout(context),
            ),
        )
        ids = [item.item_id for item in request.items]
        self._recommender.forget_items(ids)
        # The pool holds these items' old titles and categories: they leave it now, and come
        # back with the refresh started here (other gateway replicas: at their next refresh).
        self._popular.forget(set(ids))
        self._popular.items_added()
        self._refresh_soon()
        return recommendations_pb2.UpsertItemsResponse(upserted=reply.upserted)

    @rpc_method
    async def DeleteItems(self, request, context):
        ids = check_item_ids(request.item_ids, self._s)
        reply = await passthrough(
            context,
            self._up.retrieval.Delete(retrieval_pb2.DeleteRequest(item_ids=ids), timeout=self._write_timeout(context)),
        )
        self._popular.forget(set(ids))
        self._recommender.forget_items(ids)
        return recommendations_pb2.DeleteItemsResponse(deleted=reply.deleted)

    @rpc_method
    async def GetUserProfile(self, request, context):
        user_id = check_id(request.user_id, "user_id")
        timeout = self._write_timeout(context)
        asked = time.monotonic()
        state = await passthrough(
            context,
            self._up.updater.GetUserState(updater_pb2.GetUserStateRequest(user_id=user_id), timeout=timeout),
        )
        self._recommender.seen.add_state(user_id, state, asked)
        profile = recommendations_pb2.UserProfile(
            user_id=user_id, event_count=state.event_count, recent_queries=state.recent_queries
        )
        profile.recent_events.extend(reversed(state.recent))
        # What the user likes: their events of positive weight (a dislike is no affinity).
        weights = self._weights.weights([e.type for e in state.recent], [e.value for e in state.recent])
        liked = [e for e, w in zip(state.recent, weights, strict=True) if w > 0]
        ids = list(dict.fromkeys(e.item_id for e in liked))
        if ids:
            items = await passthrough(
                context,
                self._up.retrieval.GetItems(
                    retrieval_pb2.GetItemsRequest(item_ids=ids), timeout=self._write_timeout(context)
                ),
            )
            categories = {c.item_id: c.categories for c in items.candidates}
            counts = Counter(cat for e in liked for cat in categories.get(e.item_id, ()))
            total = sum(counts.values())
            for cat, n in counts.most_common(5):
                profile.top_categories.add(category=cat, weight=n / total)
        return profile

    @rpc_method
    async def DeleteUser(self, request, context):
        user_id = check_id(request.user_id, "user_id")
        reply = await passthrough(
            context,
            self._up.updater.DeleteUser(
                updater_pb2.DeleteUserStateRequest(user_id=user_id), timeout=self._write_timeout(context)
            ),
        )
        self._recommender.forget_user(user_id)
        return recommendations_pb2.DeleteUserResponse(events_deleted=reply.events_deleted)

    @rpc_method
    async def MergeUsers(self, request, context):
        """The updater moves from_user_id's events to into_user_id (durable before the answer;
        a repeat moves 0); what this gateway holds of both ids is asked afresh."""
        from_user, into_user = check_merge(request)
        reply = await passthrough(
            context,
            self._up.updater.MergeUsers(
                common_pb2.MergeUsersRequest(from_user_id=from_user, into_user_id=into_user),
                timeout=self._write_timeout(context),
            ),
        )
        self._recommender.merged(from_user, into_user)
        return common_pb2.MergeUsersResponse(events_moved=reply.events_moved)

    @rpc_method
    async def PutExperiment(self, request, context):
        check_experiment_proto(request.experiment)
        await self._check_interest_models(request.experiment, context)
        stored = await passthrough(context, self._up.updater.PutExperiment(
            request, timeout=self._write_timeout(context), metadata=self._on_behalf(context)))
        self._recommender.experiments.put(stored)  # this gateway's next Recommend assigns it
        return stored

    async def _check_interest_models(self, experiment: common_pb2.Experiment, context) -> None:
        """Every interest model a variant names is one the encoder serves, trained for the
        catalog's item space: FailedPrecondition naming the variant's field otherwise (refused
        now, not served the encoder's refusal for the experiment's whole run). The encoder's own
        failure (e.g. UNAVAILABLE) is this call's."""
        named = [(i, v.overrides.interest_model_version) for i, v in enumerate(experiment.variants)
                 if v.overrides.interest_model_version]
        if not named:
            return
        reply = await passthrough(context, self._up.encoder.ListInterestModels(
            encoder_pb2.ListInterestModelsRequest(), timeout=self._write_timeout(context)))
        served = {m.version: m for m in reply.models}
        for i, version in named:
            field = f"experiment.variants[{i}].overrides.interest_model_version"
            model = served.get(version)
            if model is None:
                raise FailedPrecondition(f"{field}: the encoder serves no interest model {version!r} "
                                         f"(it serves {', '.join(served) or 'none'})")
            if not model.catalog_compatible:
                raise FailedPrecondition(f"{field}: interest model {version!r} was trained for another catalog "
                                         f"space (item space {model.item_space}) than the one served")

    @rpc_method
    async def ListExperiments(self, request, context):
        experiments = self._recommender.experiments
        writes = experiments.writes
        reply = await passthrough(context, self._up.updater.ListExperiments(
            request, timeout=self._write_timeout(context)))
        experiments.replace(reply.experiments, writes)
        return reply

    @rpc_method
    async def StopExperiment(self, request, context):
        check_experiment_name(request.name, "name")
        check_text(request.reason, "reason", STOP_REASON_CHARS)
        stopped = await passthrough(context, self._up.updater.StopExperiment(
            request, timeout=self._write_timeout(context), metadata=self._on_behalf(context)))
        self._recommender.experiments.put(stopped)  # nobody here is assigned from now on
        return stopped

    @rpc_method
    async def GetExperimentReport(self, request, context):
        check_experiment_name(request.name, "name")
        return await passthrough(context, self._up.updater.GetExperimentReport(
            request, timeout=self._write_timeout(context)))

    def _on_behalf(self, context) -> tuple[tuple[str, str], ...]:
        """Metadata naming the caller (the client its API key names) to the updater's audit log;
        non-ASCII characters of a name escaped (metadata values are ASCII)."""
        name = client_name(context.invocation_metadata(), self._keys)
        return ((CLIENT_HEADER, name.encode("ascii", "backslashreplace").decode("ascii")),)

    @rpc_method
    async def PutRule(self, request, context):
        check_stored_rule(request.rule, "rule", self._s.max_k)
        stored = await passthrough(context, self._up.updater.PutRule(
            request, timeout=self._write_timeout(context), metadata=self._on_behalf(context)))
        self._recommender.stored_rules.put(stored)  # this gateway's next Recommend obeys it
        return stored

    @rpc_method
    async def ListRules(self, request, context):
        """The updater's listing (the stored set itself, not this gateway's copy of it)."""
        stored = self._recommender.stored_rules
        writes = stored.writes
        reply = await passthrough(context, self._up.updater.ListRules(request, timeout=self._write_timeout(context)))
        stored.replace(reply.rules, writes)
        return reply

    @rpc_method
    async def DeleteRule(self, request, context):
        name = check_rule_name(request.name, "name")
        reply = await passthrough(context, self._up.updater.DeleteRule(
            request, timeout=self._write_timeout(context), metadata=self._on_behalf(context)))
        self._recommender.stored_rules.delete(name)
        return reply


# The scope each public method needs. Reading a user's history is as privileged as deleting it.
METHOD_SCOPES = {
    "/recmesh.v1.Recommendations/Recommend": "recommend",
    "/recmesh.v1.Recommendations/SimilarItems": "recommend",
    "/recmesh.v1.Recommendations/TrackEvents": "track",
    # A backend calls it when a guest signs in: as privileged as reporting what they do.
    "/recmesh.v1.Recommendations/MergeUsers": "track",
    "/recmesh.v1.Recommendations/UpsertItems": "catalog:write",
    "/recmesh.v1.Recommendations/DeleteItems": "catalog:write",
    "/recmesh.v1.Recommendations/GetUserProfile": "admin",
    "/recmesh.v1.Recommendations/DeleteUser": "admin",
    # Stored business rules change every answer of their surfaces: as privileged as the above.
    "/recmesh.v1.Recommendations/PutRule": "admin",
    "/recmesh.v1.Recommendations/ListRules": "admin",
    "/recmesh.v1.Recommendations/DeleteRule": "admin",
    # Experiments change what users are served, and their reports are the business's numbers.
    "/recmesh.v1.Recommendations/PutExperiment": "admin",
    "/recmesh.v1.Recommendations/ListExperiments": "admin",
    "/recmesh.v1.Recommendations/StopExperiment": "admin",
    "/recmesh.v1.Recommendations/GetExperimentReport": "admin",
}


def api_keys(settings: GatewaySettings) -> dict[str, Client] | None:
    """None when no keys are configured (authentication off)."""
    if settings.api_keys_file is None and not settings.api_keys:
        return None
    keys = parse_keys(settings.api_keys.replace(";", "\n"), "RECMESH_GATEWAY_API_KEYS")
    if settings.api_keys_file is not None:
        keys |= load_keys(settings.api_keys_file)
    if not keys:
        raise ValueError("api keys configured but none found: refusing to serve an open API by mistake")
    return keys


def build_service(settings: GatewaySettings) -> Service:
    keys = api_keys(settings)  # a bad key file stops the gateway here, before it listens
    servicer = GatewayServicer(settings, keys)
    if keys is None:
        log.warning("no API keys configured: the public API is open to anyone who can reach it")

    def register(server: grpc.aio.Server) -> list[str]:
        recommendations_pb2_grpc.add_RecommendationsServicer_to_server(servicer, server)
        return [recommendations_pb2.DESCRIPTOR.services_by_name["Recommendations"].full_name]

    auth = AuthInterceptor(METHOD_SCOPES, keys, settings.rate_limit_per_s, settings.rate_limit_burst)
    return Service("gateway", register, servicer.warmup, servicer.close, interceptors=[auth], internal=False)
