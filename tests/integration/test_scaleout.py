"""Scale-out on a shared store: two updater processes on one Redis (redis-server started here),
two gateway replicas, each behind its own updater. What one replica acknowledges, the other
reads at once; a SIGKILLed updater loses nothing acknowledged; a killed or stopped gateway
loses no Recommend of a client calling both (recmesh.replicas)."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import threading
import time
from collections import Counter

import grpc
import pytest
import redis

from recmesh.client import Event, RecmeshClient
from recmesh.replicas import Replicas
from recmesh.tools.devstack import Stack
from recmesh.tools.loadtest import arrivals
from recmesh.v1 import recommendations_pb2
from tests.integration.faults import sigkill_while_running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scaled(catalog, tmp_path_factory):
    var = tmp_path_factory.mktemp("var-scaleout")
    shutil.copytree(catalog / "catalog", var / "catalog")
    env = {"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false"}
    # In-process encoder: this is about the updaters' shared state, and needs no second Triton.
    with Stack(var=var, encoder_backend="inprocess", updater_store="redis", env=env) as stack:
        stack.start_replica("updater", "b")
        stack.start_replica("gateway", "b", upstreams={"updater": "updater-b"})
        with RecmeshClient(stack.address("gateway"), timeout_s=2.0) as a, \
                RecmeshClient(stack.address("gateway-b"), timeout_s=2.0) as b:
            yield stack, a, b


def test_recommend_reads_its_writes_through_either_gateway(scaled, user):
    _, a, b = scaled
    for n, (writer, reader) in enumerate(((a, b), (b, a))):
        shown = [it.item_id for it in reader.recommend(user, k=10).items]
        writer.track_events([Event(user, shown[0], "purchase", event_id=f"{user}-{n}")])
        # The very next calls through the other replica (and its own updater) see the event.
        assert f"{user}-{n}" in [e.event_id for e in reader.profile(user).recent_events]
        assert shown[0] not in [it.item_id for it in reader.recommend(user, k=10).items]  # seen: excluded


def test_no_acknowledged_event_lost_when_one_of_two_updaters_is_killed_under_load(scaled, user):
    """Writers send batches through either gateway, resending (same event_ids) through the other
    one until acknowledged; updater "a" is SIGKILLed and restarted while they write. Every
    acknowledged event is in the stream exactly once; after each acknowledgement, the writer's
    count read through the *other* replica is already complete."""
    stack, a, b = scaled
    rng = random.Random(3)
    stop = threading.Event()
    acked: dict[int, list[str]] = {w: [] for w in range(4)}
    errors = Counter()
    reads_checked = 0

    def writer(w: int) -> None:
        nonlocal reads_checked
        me, n = f"{user}-w{w}", 0
        gateways = [a, b] if w % 2 else [b, a]
        while not stop.is_set():
            batch = [Event(me, str(1 + (n + i) % 500), "view", event_id=f"{me}-{n + i}") for i in range(10)]
            attempt = 0
            while True:  # until acknowledged, alternating replicas
                try:
                    gateways[attempt % 2].track_events(batch, timeout_s=2.0)
                    break
                except grpc.RpcError:
                    errors["write"] += 1
                    attempt += 1
                    time.sleep(0.02)
            acked[w].extend(e.event_id for e in batch)
            n += 10
            try:
                seen = gateways[(attempt + 1) % 2].profile(me, timeout_s=2.0).event_count
                reads_checked += 1
                errors["stale_read"] += seen != len(acked[w])
            except grpc.RpcError:  # that replica's updater is the one down right now
                errors["read"] += 1

    sigkill_while_running(stack, "updater", writer, workers=4, stop=stop, kills=2, rng=rng, pause_s=(0.3, 0.8))
    assert errors["write"] > 0, "the kills never hit a write: the test proved nothing"
    assert reads_checked > 20 and errors["stale_read"] == 0, errors
    everything = [e for events in acked.values() for e in events]
    assert len(everything) == len(set(everything)) > 200
    stream = redis.Redis.from_url(stack.redis.url, decode_responses=True).xrange("recmesh:events")
    logged = Counter(fields["event_id"] for _, fields in stream if fields["user_id"].startswith(user))
    assert set(logged) == set(everything) and max(logged.values()) == 1  # none lost, none twice
    for w, events in acked.items():
        assert a.profile(f"{user}-w{w}").event_count == b.profile(f"{user}-w{w}").event_count == len(events)


def test_no_recommend_lost_while_one_of_two_gateways_is_killed_then_stopped(scaled, user):
    """Open-loop Recommends (20/s, 500 ms deadline) through recmesh.replicas while gateway "a"
    is SIGKILLed and restarted, then SIGSTOPped for 1.5 s: every call is answered in time."""
    stack, _, _ = scaled
    stop = threading.Event()
    outcomes: list = []
    retried = []

    async def recommend_until_stopped() -> None:
        loop = asyncio.get_running_loop()
        async with Replicas([stack.address("gateway"), stack.address("gateway-b")], hedge_after_s=0.15) as gateways:
            async def one(started: float) -> None:
                try:
                    await gateways.call("Recommend", recommendations_pb2.RecommendRequest(user_id=user, k=5), 0.5)
                    outcomes.append(loop.time() - started)
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(exc.code())

            tasks = [loop.create_task(one(started)) async for started in arrivals(20, halt=stop.is_set)]
            await asyncio.gather(*tasks)
            retried.append(gateways.extra_attempts)

    load = threading.Thread(target=asyncio.run, args=(recommend_until_stopped(),))
    load.start()
    try:
        time.sleep(1.0)
        stack.signal("gateway", signal.SIGKILL)
        stack.restart("gateway")
        time.sleep(0.5)
        stack.signal("gateway", signal.SIGSTOP)
        time.sleep(1.5)
        stack.signal("gateway", signal.SIGCONT)
        time.sleep(0.5)
    finally:
        stop.set()
        load.join(30)
    errors = [o for o in outcomes if not isinstance(o, float)]
    assert len(outcomes) > 60 and not errors, Counter(errors)
    assert max(outcomes) < 0.5
    assert retried[0] > 0, "no call ever met the fault: the test proved nothing"
