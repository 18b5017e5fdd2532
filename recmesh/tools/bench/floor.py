"""The compute floor of Recommend: what the same requests cost with the network hops removed.

The gateway's own Recommend pipeline (services/gateway/pipeline.py, its stages, caches and
fallback ladder) runs in this one process over the real servicers of the updater (the var's
event log replayed into its in-memory state), the encoder (its in-process backend: the var's
language model on ONNX Runtime and its interest model, the models Triton serves in the mesh),
retrieval (the var's Qdrant Edge shard) and the ranker (the same start parameters). Each stub
call is `await servicer.Method(request, context)`: no RPC, no serialisation, no second
process. Everything else - models, searches, ranking, the gateway's own work - is the mesh's.

`recmesh load` runs it after its steps, over the state the load left, and reports the mesh's
CPU per Recommend against it (load.json: compute_floor, cpu_to_floor_ratio). Alone:
`python -m recmesh.tools.bench.floor` (over a private copy of $RECMESH_VAR's catalog and log).

The one tooling module that imports services' internals (tests/unit/test_boundaries.py names
it): measuring the servicers without the mesh is its whole purpose. Single-threaded as far as
it can be: one ONNX Runtime / torch thread; start it with OMP_NUM_THREADS=1 (as `recmesh load`
does) so that numpy's BLAS keeps to one too."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from recmesh.common.heap import freeze_heap
from recmesh.common.paths import served_artifact, served_text_model, text_model_name, var_dir, var_paths
from recmesh.common.validation import check_events
from recmesh.models.ranking.scorer import load_params, newest_params, start_params_dir
from recmesh.v1 import recommendations_pb2, retrieval_pb2, updater_pb2
from services.encoder.backends import InProcessBackend
from services.encoder.config import EncoderSettings
from services.encoder.server import EncoderServicer
from services.gateway.budget import Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import PopularCandidates
from services.gateway.impressions import ImpressionLog
from services.gateway.item_cache import ItemCache
from services.gateway.pipeline import Pipeline
from services.gateway.seen import SeenItems
from services.gateway.upstreams import Upstreams
from services.gateway.validation import check_recommend
from services.ranker.config import RankerSettings
from services.ranker.server import RankerServicer
from services.retrieval.config import RetrievalSettings
from services.retrieval.server import RetrievalServicer
from services.updater.config import UpdaterSettings
from services.updater.server import UpdaterServicer

# The floor's budget and stage caps (ms): so long that no stage is ever cut - the floor is the
# cost of the full answer, never of a degraded one.
GENEROUS_MS = 60_000.0
CAPS = ("budget_ms", "user_state_cap_ms", "history_cap_ms", "encoder_cap_ms", "retrieval_cap_ms", "ranker_cap_ms")


class InProcessAbort(grpc.aio.AioRpcError, grpc.aio.AbortError):
    """What context.abort raises in process: the AioRpcError a stub would have raised (the
    gateway's Budget.call turns it into a degraded stage), and an AbortError, so that the
    servicers' rpc_method passes it through as it does a real abort."""


class InProcessContext:
    """The part of grpc.aio.ServicerContext the servicers use, for one call in process."""

    def __init__(self, timeout_s: float | None):
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def time_remaining(self) -> float | None:
        """Seconds to the caller's timeout, None for none (as grpc says it)."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise InProcessAbort(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)

    def invocation_metadata(self) -> tuple:
        return ()

    def peer(self) -> str:
        return "in-process"


class Direct:
    """A stub's face over a servicer in this process: `stub.Method(request, timeout=s)` awaits
    `servicer.Method(request, context)` with the very request object, and returns the very
    reply. The timeout is told to the servicer (context.time_remaining) but not enforced: the
    floor's caps are generous and nothing may be cut."""

    def __init__(self, servicer):
        self._servicer = servicer

    def __getattr__(self, name: str):
        method = getattr(self._servicer, name)

        async def call(request, timeout: float | None = None, **_):
            return await method(request, InProcessContext(timeout))

        self.__dict__[name] = call  # looked up once per method
        return call


@dataclass
class Floor:
    """The gateway's pipeline over the four servicers, in this process (module docstring)."""

    settings: GatewaySettings
    pipeline: Pipeline
    seen: SeenItems
    upstreams: Upstreams
    versions: dict[str, str]
    _close: list

    @classmethod
    async def open(cls, var: Path, interest_model: Path | None = None, start_params: Path | None = None,
                   gateway: GatewaySettings | None = None, ranker: RankerSettings | None = None) -> "Floor":
        """Over the var's catalog (Qdrant Edge shard) and event log (replayed; the floor's
        TrackEvents are appended to it: give it a copy you may write), serving interest_model
        (default: the var's served one) and the ranker's start parameters start_params (default:
        the var's). gateway / ranker: the mesh's settings (default: from the environment, as the
        services read them); the gateway's budget and stage caps are raised to GENEROUS_MS."""
        var = Path(var)
        paths = var_paths(var)
        interest_model = interest_model or served_artifact(var)
        start_params = start_params or start_params_dir(var)
        gateway = (gateway or GatewaySettings()).model_copy(update=dict.fromkeys(CAPS, GENEROUS_MS))
        ranker = ranker or RankerSettings(params_dir=start_params, updater_addr="")
        text_model = served_text_model(var)  # what Triton's text_encoder serves for this var

        # Online learning is background work, not a Recommend's: the floor's updater keeps the
        # impression join (per request) but trains nothing.
        updater = UpdaterServicer(UpdaterSettings(log_path=paths.event_log, params_dir=paths.ranker_params,
                                                  shipped_params_dir=start_params, learn=False))
        retrieval = RetrievalServicer(RetrievalSettings(backend="edge", shard_dir=paths.shard_dir))
        encoder_settings = EncoderSettings(backend="inprocess", model_dir=text_model,
                                           model_name=text_model_name(text_model),
                                           interest_model=interest_model, threads=1)
        backend = InProcessBackend(encoder_settings)
        encoder = EncoderServicer(encoder_settings, backend)
        scorer = load_params(newest_params(ranker.params_dir))
        ranker_servicer = RankerServicer(ranker, scorer)
        await updater.load()
        await retrieval.load()
        await encoder.warmup()

        upstreams = Upstreams(Direct(updater), Direct(encoder), Direct(retrieval), Direct(ranker_servicer), [])
        popular = PopularCandidates()
        pool = await upstreams.retrieval.TopPopular(
            retrieval_pb2.TopPopularRequest(limit=gateway.popular_pool, with_vectors=True), timeout=None)
        popular.replace(pool, asked=gateway.popular_pool)
        seen = SeenItems(gateway.seen_cache_users, gateway.seen_cache_ids, gateway.seen_cache_ttl_s)
        impressions = ImpressionLog(upstreams, gateway.impression_queue, gateway.impression_flush_ms * 1e-3)
        pipeline = Pipeline(gateway, upstreams, popular, seen, ItemCache(gateway.item_cache_items,
                                                                        gateway.item_cache_ttl_s),
                            impressions)
        versions = {"encoder": backend.version, "index": retrieval.store.version,
                    "ranker": ranker_servicer.version}
        # The last impressions' batch leaves first, as the gateway's own close() sends it.
        return cls(gateway, pipeline, seen, upstreams, versions,
                   [lambda: impressions.flush(timeout_s=2.0), updater.close, retrieval.close, backend.close])

    async def recommend(self, request: recommendations_pb2.RecommendRequest) -> recommendations_pb2.RecommendResponse:
        """The gateway's Recommend (checked as it checks it) through its pipeline in full."""
        k, query = check_recommend(request, self.settings)
        return await self.pipeline.run(request, k, query, Budget.for_recommend(self.settings, None))

    async def track(self, request: recommendations_pb2.TrackEventsRequest) -> recommendations_pb2.TrackEventsResponse:
        """The gateway's TrackEvents: logged (fsynced) and applied by the updater, noted in the
        seen-items cache."""
        check_events(request.events, "events", self.settings.max_events_per_call)
        reply = await self.upstreams.updater.Ingest(updater_pb2.IngestRequest(events=request.events), timeout=None)
        self.seen.note_ingested(request.events, reply.duplicates, time.monotonic())
        return recommendations_pb2.TrackEventsResponse(accepted=reply.accepted, duplicates=reply.duplicates)

    async def close(self) -> None:
        for close in self._close:
            await close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


async def measure(floor: Floor, sessions, requests: int = 400, warm_up: int = 50, query_share: float = 0.3,
                  track_ratio: float = 0.5) -> dict:
    """Replays `sessions` (recmesh.tools.loadtest.Sessions: the load's users, typed-query share,
    k=10, and track_ratio TrackEvents per Recommend) one call after another: warm_up of them
    unmeasured, then `requests` measured. CPU is this process's (time.process_time: every
    thread); compute_floor_ms_per_recommend counts the TrackEvents' share as the load's
    cpu_ms_per_recommend does. All times in ms: CPU and wall per Recommend (means, p50/p99),
    per TrackEvents, and per stage of the pipeline (wall, from the answers' stage_latency).
    degraded_answers should be 0: the floor's budget cuts nothing."""
    rec_cpu, rec_wall, track_cpu = [], [], []
    by_kind: dict[str, list[float]] = {"with_query": [], "without_query": []}
    stages: dict[str, list[float]] = {}
    degraded: dict[str, int] = {}
    degraded_answers = 0
    owed = 0.0
    measured_cpu = 0.0
    measured_started = time.perf_counter()
    for n in range(warm_up + requests):
        if n == warm_up:
            freeze_heap()  # as every service does after its warm-up
            measured_cpu, measured_started = time.process_time(), time.perf_counter()
        keep = n >= warm_up
        request = sessions.recommend(query_share, 0.0)
        cpu, wall = time.process_time(), time.perf_counter()
        reply = await floor.recommend(request)
        if keep:
            rec_cpu.append((time.process_time() - cpu) * 1000)
            rec_wall.append((time.perf_counter() - wall) * 1000)
            by_kind["with_query" if request.query else "without_query"].append(rec_cpu[-1])
            for stage in reply.stage_latency:
                stages.setdefault(stage.stage, []).append(stage.ms)
            degraded_answers += bool(reply.degraded)
            for reason in reply.degraded:
                degraded[reason] = degraded.get(reason, 0) + 1
        owed += track_ratio
        while owed >= 1:
            owed -= 1
            cpu = time.process_time()
            await floor.track(sessions.track())
            if keep:
                track_cpu.append((time.process_time() - cpu) * 1000)
    total_cpu_ms = (time.process_time() - measured_cpu) * 1000
    return {
        "requests": requests, "warm_up": warm_up, "query_share": query_share, "track_per_recommend": track_ratio,
        # Everything the process spent over the measured calls (Recommends, TrackEvents, the
        # impressions' delivery), per Recommend: comparable with the load's CPU per Recommend.
        "compute_floor_ms_per_recommend": round(total_cpu_ms / max(requests, 1), 3),
        "recommend_cpu_ms_mean": round(statistics.fmean(rec_cpu), 3) if rec_cpu else 0.0,
        "recommend_cpu_ms_mean_by_query": {kind: round(statistics.fmean(v), 3) if v else 0.0
                                           for kind, v in by_kind.items()},
        "track_cpu_ms_mean": round(statistics.fmean(track_cpu), 3) if track_cpu else 0.0,
        # Where a Recommend's time goes, stage by stage (the gateway's own trace; one thread, one
        # call at a time: wall time here is close to CPU time), and how many called each.
        "stage_wall_ms_mean": {stage: round(statistics.fmean(v), 3) for stage, v in sorted(stages.items())},
        "stage_calls": {stage: len(v) for stage, v in sorted(stages.items())},
        "p50_wall_ms": round(_percentile(rec_wall, 50), 3), "p99_wall_ms": round(_percentile(rec_wall, 99), 3),
        "wall_s": round(time.perf_counter() - measured_started, 2),
        "degraded_answers": degraded_answers, "degraded_reasons": dict(sorted(degraded.items())),
        "threads": threading.active_count(), "versions": floor.versions,
    }


async def floor_over(var: Path, interest_model: Path | None = None, start_params: Path | None = None,
                     requests: int = 400, warm_up: int = 50, query_share: float = 0.3,
                     track_ratio: float = 0.5) -> dict:
    """Opens the floor over `var` (written to: its event log takes the TrackEvents), measures it
    (measure) and closes it."""
    from recmesh.tools.loadtest import Sessions

    sessions = Sessions.from_movielens()
    floor = await Floor.open(var, interest_model, start_params)
    try:
        return await measure(floor, sessions, requests, warm_up, query_share, track_ratio)
    finally:
        await floor.close()


def private_copy(var: Path) -> Path:
    """A temporary var holding a copy of `var`'s catalog and event log (as private_stack copies
    them): the caller removes it."""
    copy = Path(tempfile.mkdtemp(prefix="recmesh-floor-"))
    for folder in (var_paths(var).catalog, var_paths(var).updater):
        shutil.copytree(folder, copy / folder.name)
    return copy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.bench.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--var", type=Path, default=None, help="the var whose catalog and log (default $RECMESH_VAR)")
    parser.add_argument("--in-place", action="store_true",
                        help="run over --var itself (its log takes the TrackEvents), not a private copy")
    parser.add_argument("--interest-model", type=Path, default=None, help="default: the var's served one")
    parser.add_argument("--start-params", type=Path, default=None, help="the ranker's (default: the var's)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warm-up", type=int, default=50)
    parser.add_argument("--query-share", type=float, default=0.3)
    parser.add_argument("--track-ratio", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=None, help="write the result here as JSON too")
    args = parser.parse_args(argv)
    from recmesh.tools.loadtest import check_mix

    check_mix(parser, args.query_share, args.track_ratio, args.requests, args.warm_up, "--requests", "--warm-up")
    source = Path(args.var) if args.var is not None else var_dir()
    var = source if args.in_place else private_copy(source)
    try:
        result = asyncio.run(floor_over(var, args.interest_model or served_artifact(source),
                                        args.start_params or start_params_dir(source), args.requests,
                                        args.warm_up, args.query_share, args.track_ratio))
    finally:
        if not args.in_place:
            shutil.rmtree(var, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
