"""Input faults reported against a fresh mesh, end to end: request bytes that do not parse,
a query of invisible characters, items at the gateway's documented limits, event times in
seconds or microseconds."""

from __future__ import annotations

import grpc
import pytest

from recmesh.client import Event
from recmesh.v1 import common_pb2, recommendations_pb2, updater_pb2
from tests.integration.answers import undegraded

pytestmark = pytest.mark.integration
R = recommendations_pb2
RECOMMEND = "/recmesh.v1.Recommendations/Recommend"
INVISIBLE_QUERY = "\u200b\ufeff\u2060\x00"  # zero-width space, BOM, word joiner, NUL
SECONDS = 1_733_529_600  # 2024-12-07 in seconds


def _raw_call(channel, method: str, payload: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(method)(payload, timeout=5)  # no serializer: the bytes go as they are
    return err.value


def test_invalid_utf8_user_id_is_invalid_argument_naming_it(gateway_channel):
    err = _raw_call(gateway_channel, RECOMMEND, b"\x0a\x02\xff\xfe")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert err.details().startswith("user_id: not valid UTF-8"), err.details()


def test_invalid_utf8_in_a_nested_field_is_named(gateway_channel):
    good = R.RecommendRequest(user_id="u", filters=common_pb2.Filters(include_categories=["Comedy", "Drama"]))
    err = _raw_call(gateway_channel, RECOMMEND, good.SerializeToString().replace(b"Drama", b"Dr\xe4ma"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("filters.include_categories[1]: not valid UTF-8"), err.details()


def test_truncated_message_is_invalid_argument(gateway_channel):
    raw = R.RecommendRequest(user_id="u42", query="space opera", k=5).SerializeToString()
    err = _raw_call(gateway_channel, RECOMMEND, raw[:7])  # cut inside the query string
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "request: not a valid recmesh.v1.RecommendRequest (truncated or malformed)"


def test_valid_messages_still_reach_streaming_methods(stack):
    """Requests are parsed inside the call now: streams of either direction still work."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    for service in ("gateway", "updater"):
        with grpc.insecure_channel(stack.address(service)) as channel:  # reflection: a stream each way
            assert "grpc.health.v1.Health" in ProtoReflectionDescriptorDatabase(channel).get_services()
    with grpc.insecure_channel(stack.address("updater")) as channel:
        watch = channel.unary_stream("/recmesh.v1.Updater/WatchParameters",
                                     request_serializer=updater_pb2.WatchParametersRequest.SerializeToString)
        with pytest.raises(grpc.RpcError) as err:  # learning is off here: the stream stays open, silent
            list(watch(updater_pb2.WatchParametersRequest(known_version="v0"), timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def _undegraded(client, user: str, query: str) -> R.RecommendResponse:
    return undegraded(lambda: client.recommend(user, query=query, k=10), tries=20, pause_s=0.1)


def _same_answer(client, user: str) -> None:
    _undegraded(client, user, "")  # fills the gateway's caches (history items, the reusable interest)
    plain, invisible = _undegraded(client, user, ""), _undegraded(client, user, INVISIBLE_QUERY)
    # The same stages: a query would have needed the encoder, which the cached interest spares.
    assert [i.item_id for i in invisible.items] == [i.item_id for i in plain.items]
    assert not any("matches what you typed" in r for i in invisible.items for r in i.reasons)
    assert [s.stage for s in invisible.stage_latency] == [s.stage for s in plain.stage_latency]


def test_a_query_of_invisible_characters_is_no_query(client, user):
    # A new user: without a query the popular list, no encoder stage at all.
    _same_answer(client, user)
    assert "encoder" not in [s.stage for s in client.recommend(user, query=INVISIBLE_QUERY).stage_latency]
    # With a history: the interest steers, the invisible "query" does not.
    client.track_events([Event(user, "260", "click"), Event(user, "1196", "purchase")])
    _same_answer(client, user)


def test_a_search_event_of_invisible_characters_is_refused(client, user):
    with pytest.raises(grpc.RpcError) as err:
        client.track_events([Event(user, "", "search", query=INVISIBLE_QUERY)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("events[0].query: required for a SEARCH event"), err.value.details()


@pytest.mark.parametrize("fields", [
    {"description": "A long description. " * 200},  # 4,000 characters: the documented limit
    {"tags": [f"tag-{i:02d}-" + "x" * 99 for i in range(40)]},  # 40 tags of 106 characters
    {"categories": ["c" * 128] * 64, "tags": ["t" * 128] * 64, "description": "d" * 4000},
], ids=["description-4000", "tags-40x106", "everything-at-its-limit"])
def test_items_at_the_gateways_limits_are_upserted(client, user, fields):
    item = common_pb2.Item(item_id=f"{user}-item", title="An item at the limits", **fields)
    assert len(item.description) <= 4000
    try:
        assert client.upsert_items([item]).upserted == 1
    finally:
        client.delete_items([item.item_id])


@pytest.mark.parametrize("timestamp_ms, hint", [
    (SECONDS, f"{SECONDS} is in 1970; timestamps are milliseconds since the Unix epoch "
              f"(seconds? send {SECONDS * 1000})"),
    (SECONDS * 1_000_000, f"(microseconds? send {SECONDS * 1000})"),
])
def test_event_times_in_another_unit_are_refused_naming_it(client, user, stack, timestamp_ms, hint):
    with pytest.raises(grpc.RpcError) as err:
        client.track_events([Event(user, "1", "click", timestamp_ms=timestamp_ms)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("events[0].timestamp_ms: "), err.value.details()
    assert hint in err.value.details(), err.value.details()
    # The updater, which owns the events, refuses them the same way.
    with grpc.insecure_channel(stack.address("updater")) as channel:
        ingest = channel.unary_unary("/recmesh.v1.Updater/Ingest",
                                     request_serializer=updater_pb2.IngestRequest.SerializeToString)
        with pytest.raises(grpc.RpcError) as direct:
            event = common_pb2.Event(event_id=f"{user}-e", user_id=user, item_id="1", type=2, timestamp_ms=timestamp_ms)
            ingest(updater_pb2.IngestRequest(events=[event]), timeout=5)
    assert direct.value.code() == grpc.StatusCode.INVALID_ARGUMENT and hint in direct.value.details()
    # Real history passes: MovieLens starts in 1995.
    assert client.track_events([Event(user, "1", "rate", value=4.0, timestamp_ms=789_652_009_000)]).accepted == 1


def test_a_compressed_request_is_refused_before_it_is_inflated(stack):
    """A gzip bomb (64 MiB of zeros, ~65 KB on the wire) is refused by the services without
    being inflated: UNIMPLEMENTED naming the encoding, not RESOURCE_EXHAUSTED after inflating
    it (grpc core inflated whole messages before the size check: a 0.5 MB body cost the
    gateway 0.5 GB). Plain calls go on."""
    bomb = b"\0" * (64 << 20)
    for name in ("gateway", "retrieval", "updater", "encoder", "ranker"):
        with grpc.insecure_channel(stack.address(name)) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            with pytest.raises(grpc.RpcError) as exc:
                check(bomb, compression=grpc.Compression.Gzip, timeout=10)
            assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED, (name, exc.value.details())
            assert "gzip" in exc.value.details()
            assert check(b"", timeout=5) is not None  # an empty HealthCheckRequest: still answered


def test_a_negative_count_is_invalid_argument_not_a_wrong_slice(stack):
    """Found by attack: Updater.GetUserState(max_recent=-5) answered the wrong end of the history."""
    from recmesh.v1 import updater_pb2_grpc

    with grpc.insecure_channel(stack.address("updater")) as channel:
        with pytest.raises(grpc.RpcError) as exc:
            updater_pb2_grpc.UpdaterStub(channel).GetUserState(
                updater_pb2.GetUserStateRequest(user_id="1", max_recent=-5), timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details().startswith("max_recent:")
