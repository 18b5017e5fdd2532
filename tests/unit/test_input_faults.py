"""Input faults at every layer: request bytes that do not parse (INVALID_ARGUMENT naming the
field, from a real grpc.aio server), invisible text taken for text, limits that disagree
between the gateway and the encoder, event times in the wrong unit."""

from __future__ import annotations

import asyncio
import sys
import unicodedata

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recmesh.common import limits
from recmesh.common.catalog import item_text
from recmesh.common.config import ServiceSettings, load_settings
from recmesh.common.errors import InvalidArgument
from recmesh.common.metrics import RPCS, MetricsInterceptor
from recmesh.common.server import Service, server_interceptors
from recmesh.common.transport import INTERNAL_HEADER
from recmesh.common.validation import (
    MIN_EVENT_MS,
    check_event,
    check_id,
    check_item,
    check_query,
    visible_text,
)
from recmesh.common.wire import ParseRequests, find_fault
from recmesh.v1 import common_pb2, encoder_pb2, recommendations_pb2, updater_pb2
from services.encoder.backends import InterestModelInfo
from services.encoder.config import EncoderSettings
from services.encoder.server import EncoderServicer
from services.gateway.config import GatewaySettings
from services.gateway.validation import check_items, check_recommend

R = recommendations_pb2
NOW = 1_733_529_600_000  # 2024-12-07
INVISIBLE_QUERY = "\u200b\ufeff\u2060\x00"


def _chars(predicate) -> list[str]:
    return [chr(c) for c in range(sys.maxunicode + 1) if predicate(chr(c))]


# Every character of a category, from the Unicode database: not a list someone keeps.
FORMAT = _chars(lambda ch: unicodedata.category(ch) == "Cf")
CONTROL = _chars(lambda ch: unicodedata.category(ch) == "Cc" and not ch.isspace())
SEPARATORS = _chars(lambda ch: unicodedata.category(ch)[0] == "Z" or ch.isspace())


# -- invisible text ------------------------------------------------------------------------

@pytest.mark.parametrize("chars", [FORMAT, CONTROL, SEPARATORS, ["\ud800", "\udfff"], ["\u0301", "\u20dd"]],
                         ids=["format", "control", "separators", "surrogates", "lone-marks"])
def test_text_of_only_invisible_characters_is_no_text(chars):
    assert visible_text("".join(chars)) == ""
    assert visible_text(INVISIBLE_QUERY) == ""


def test_visible_text_keeps_what_is_seen_and_drops_the_rest():
    assert visible_text("\ufeff  space\u200b opera\u00ad\u2060 \u3000") == "space opera"
    assert visible_text("caf\u0065\u0301\tnoir") == "caf\u0065\u0301\tnoir"  # marks on a letter, inner whitespace
    assert visible_text("\U0001f3ac") == "\U0001f3ac"  # a symbol is visible


def test_invisible_values_are_empty_everywhere_text_is_checked():
    assert check_query(INVISIBLE_QUERY) == ""
    with pytest.raises(InvalidArgument, match="^user: must not be empty"):
        check_id("\u200b\u2060", "user")
    search = common_pb2.Event(event_id="e", user_id="u", type=common_pb2.EventType.EVENT_TYPE_SEARCH,
                              query=INVISIBLE_QUERY, timestamp_ms=NOW)
    with pytest.raises(InvalidArgument, match=r"^e\.query: required for a SEARCH event"):
        check_event(search, "e", NOW)
    with pytest.raises(InvalidArgument, match=r"^items\[0\]\.title: must not be empty"):
        check_items([common_pb2.Item(item_id="i", title="\ufeff\u200b")], GatewaySettings())
    with pytest.raises(InvalidArgument, match=r"^items\[0\]\.tags\[1\]: must not be empty"):
        check_items([common_pb2.Item(item_id="i", title="T", tags=["ok", "\u2060"])], GatewaySettings())
    request = R.RecommendRequest(user_id="u", query=INVISIBLE_QUERY,
                                 filters=common_pb2.Filters(include_categories=["\u200b"]))
    with pytest.raises(InvalidArgument, match=r"^filters\.include_categories\[0\]: must not be empty"):
        check_recommend(request, GatewaySettings())
    assert check_recommend(R.RecommendRequest(user_id="u", query=INVISIBLE_QUERY), GatewaySettings())[1] == ""


def test_the_language_model_is_given_no_invisible_characters():
    item = common_pb2.Item(item_id="i", title="Al\u200bien\ufeff", categories=["Hor\u2060ror"], description="\x00")
    assert item_text(item) == "Alien. Horror"


# -- request bytes -------------------------------------------------------------------------

def test_the_wire_walker_names_the_field_with_invalid_utf8():
    request = R.RecommendRequest(user_id="u", filters=common_pb2.Filters(include_categories=["a", "xyz"]))
    good = request.SerializeToString()
    assert find_fault(good, request.DESCRIPTOR) is None
    assert find_fault(b"\x0a\x02\xff\xfe", request.DESCRIPTOR)[0] == "user_id"
    assert find_fault(good.replace(b"xyz", b"x\xffz"), request.DESCRIPTOR)[0] == "filters.include_categories[1]"
    events = R.TrackEventsRequest(events=[common_pb2.Event(query="ok"), common_pb2.Event(query="zzz")])
    raw = events.SerializeToString().replace(b"zzz", "\xe9t\xe9".encode("latin-1"))  # not UTF-8
    assert find_fault(raw, events.DESCRIPTOR) == ("events[1].query", "not valid UTF-8 (byte 0 of 3)")
    assert find_fault(good[:-1], request.DESCRIPTOR) == (
        "request", "not a valid recmesh.v1.RecommendRequest (truncated or malformed)")


MESSAGES = [
    R.RecommendRequest(user_id="u1", query="h\u00e9llo", k=5, filters=common_pb2.Filters(
        include_categories=["a", "bcd"], exclude_seen=True)),
    R.TrackEventsRequest(events=[common_pb2.Event(event_id="e", user_id="u", item_id="1", type=2, value=3.5,
                                                  timestamp_ms=NOW)] * 2),
    updater_pb2.LogImpressionsRequest(),
    encoder_pb2.EncodeInterestRequest(history=[encoder_pb2.HistoryEntry(item_id="1", type=2, timestamp_ms=5)],
                                      item_vectors=common_pb2.Matrix(rows=1, dim=1, data=b"\0" * 4), query="q"),
]


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(message=st.sampled_from(MESSAGES), data=st.data())
def test_the_wire_walker_agrees_with_the_parser(message, data):
    """On random bytes, cuts and byte edits of valid messages: a fault is found exactly when
    protobuf's parser refuses the bytes."""
    good = message.SerializeToString()
    raw = data.draw(st.one_of(
        st.binary(max_size=40),
        st.integers(0, len(good)).map(lambda n: good[:n]),
        st.tuples(st.integers(0, max(len(good) - 1, 0)), st.binary(min_size=1, max_size=3)).map(
            lambda at: good[:at[0]] + at[1] + good[at[0] + len(at[1]):]),
    ))
    try:
        type(message).FromString(raw)
        parsed = True
    except Exception:
        parsed = False
    assert (find_fault(raw, message.DESCRIPTOR) is None) == parsed


class Probe:
    """Servicer methods of the four kinds, counting the calls that reach them."""

    def __init__(self):
        self.reached = 0

    async def unary(self, request, context):
        self.reached += 1
        return R.GetUserProfileRequest(user_id=request.user_id)

    async def server_stream(self, request, context):
        self.reached += 1
        yield R.GetUserProfileRequest(user_id=request.user_id)

    async def client_stream(self, requests, context):
        users = []
        async for request in requests:
            self.reached += 1
            users.append(request.user_id)
        return R.GetUserProfileRequest(user_id=",".join(users))

    async def bidi(self, requests, context):
        async for request in requests:
            self.reached += 1
            yield R.GetUserProfileRequest(user_id=request.user_id)


async def _serve_and_call(calls, interceptors=None, metadata=()):
    probe = Probe()
    parse = R.GetUserProfileRequest.FromString
    out = R.GetUserProfileRequest.SerializeToString
    # The method names are real ones, so their request type is found in the descriptor pool.
    handlers = grpc.method_handlers_generic_handler("recmesh.v1.Recommendations", {
        "GetUserProfile": grpc.unary_unary_rpc_method_handler(probe.unary, parse, out),
        "DeleteUser": grpc.unary_stream_rpc_method_handler(probe.server_stream, parse, out),
        "Recommend": grpc.stream_unary_rpc_method_handler(probe.client_stream, parse, out),
        "TrackEvents": grpc.stream_stream_rpc_method_handler(probe.bidi, parse, out),
    })
    server = grpc.aio.server(interceptors=interceptors or [ParseRequests()])
    server.add_generic_rpc_handlers([handlers])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    results = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for kind, method, payloads in calls:
                call = getattr(channel, kind)(f"/recmesh.v1.Recommendations/{method}")
                arg = payloads[0] if kind.startswith("unary") else iter(payloads)
                try:
                    reply = call(arg, timeout=5, metadata=metadata)
                    reply = [r async for r in reply] if kind.endswith("stream") else await reply
                    results.append(("OK", reply))
                except grpc.aio.AioRpcError as exc:
                    results.append((exc.code().name, exc.details()))
    finally:
        await server.stop(None)
    return probe.reached, results


@pytest.mark.parametrize("kind, method", [("unary_unary", "GetUserProfile"), ("unary_stream", "DeleteUser"),
                                          ("stream_unary", "Recommend"), ("stream_stream", "TrackEvents")])
def test_unparseable_requests_are_invalid_argument_in_every_kind_of_method(kind, method):
    good = R.GetUserProfileRequest(user_id="u42").SerializeToString()
    stream = kind.startswith("stream")
    calls = [(kind, method, [b"\x0a\x02\xff\xfe"]), (kind, method, [good[:-2]]), (kind, method, [good])]
    if stream:  # the second message of a stream is bad: the first reaches the handler, the second never
        calls.append((kind, method, [good, b"\x0a\x01\xc0"]))
    reached, results = asyncio.run(_serve_and_call(calls))
    assert results[0] == ("INVALID_ARGUMENT", "user_id: not valid UTF-8 (byte 0 of 2)")
    assert results[1] == ("INVALID_ARGUMENT",
                          "request: not a valid recmesh.v1.GetUserProfileRequest (truncated or malformed)")
    assert results[2][0] == "OK"
    if stream:
        assert results[3] == ("INVALID_ARGUMENT", "user_id: not valid UTF-8 (byte 0 of 1)")
    assert reached == (2 if stream else 1)  # the good messages only


def test_every_service_parses_last_so_refused_and_unparseable_calls_are_counted():
    """The interceptors of every service (recmesh/common/server.py): the internal credential is
    checked before the bytes are parsed, and metrics count both refusals."""
    service = Service("probe", register=lambda server: [])
    interceptors = server_interceptors(service, ServiceSettings(internal_token="secret"))
    assert isinstance(interceptors[0], MetricsInterceptor) and isinstance(interceptors[-1], ParseRequests)
    bad = [("unary_unary", "GetUserProfile", [b"\x0a\x02\xff\xfe"])]

    def counted(code: str) -> float:
        return RPCS.labels("probe", "GetUserProfile", code)._value.get()

    before = counted("INVALID_ARGUMENT"), counted("UNAUTHENTICATED")
    reached, results = asyncio.run(_serve_and_call(bad, interceptors))
    assert results[0][0] == "UNAUTHENTICATED" and reached == 0
    reached, results = asyncio.run(_serve_and_call(bad, interceptors, ((INTERNAL_HEADER, "secret"),)))
    assert results[0] == ("INVALID_ARGUMENT", "user_id: not valid UTF-8 (byte 0 of 2)") and reached == 0
    assert (counted("INVALID_ARGUMENT"), counted("UNAUTHENTICATED")) == (before[0] + 1, before[1] + 1)


# -- limits that agree ---------------------------------------------------------------------

class RecordingBackend:
    """Stands in for the models: records what the language model would be given."""

    version, dim, text_dim = "test", 4, 4
    # One interest model, without query fusion.
    interest_models = {"m": InterestModelInfo("m", "test", None, fuses_queries=False, default=True)}

    def __init__(self):
        self.texts: list[str] = []

    async def encode_texts(self, texts, timeout_s):
        self.texts.extend(texts)
        return np.ones((len(texts), self.text_dim), np.float32)

    async def encode_items(self, text_vectors, item_ids, timeout_s):
        return np.ones((len(item_ids), self.dim), np.float32)


class Context:
    def time_remaining(self):
        return None

    async def abort(self, code, details):
        raise AssertionError(f"{code.name}: {details}")


def _at_the_limits() -> list[common_pb2.Item]:
    return [
        common_pb2.Item(item_id="d", title="Long description", description="d" * limits.DESCRIPTION_CHARS),
        common_pb2.Item(item_id="t", title="Many tags", tags=[f"{i:03d}" + "t" * 103 for i in range(40)]),
        common_pb2.Item(item_id="x" * limits.ID_CHARS, title="T" * limits.TITLE_CHARS,
                        categories=["c" * limits.LABEL_CHARS] * limits.LABELS_PER_ITEM,
                        tags=["g" * limits.LABEL_CHARS] * limits.LABELS_PER_ITEM,
                        description="\u200b" + "e" * (limits.DESCRIPTION_CHARS - 1)),
    ]


def test_what_the_gateway_accepts_the_encoder_encodes():
    items = _at_the_limits()
    check_items(items, GatewaySettings())
    for i, item in enumerate(items):
        check_item(item, f"items[{i}]")
    settings = EncoderSettings()
    backend = RecordingBackend()
    servicer = EncoderServicer(settings, backend)
    reply = asyncio.run(servicer.EncodeItems(encoder_pb2.EncodeItemsRequest(items=items), Context()))
    assert reply.vectors.rows == len(items)
    # The model is given at most max_text_chars of each, without the invisible characters.
    assert all(len(t) <= settings.max_text_chars for t in backend.texts)
    assert "\u200b" not in backend.texts[2]


def test_the_encoder_treats_an_invisible_query_as_no_query():
    backend = RecordingBackend()
    servicer = EncoderServicer(EncoderSettings(), backend)
    request = encoder_pb2.EncodeInterestRequest(query=INVISIBLE_QUERY)
    reply = asyncio.run(servicer.EncodeInterest(request, Context()))
    assert reply.query_vector.rows == 0 and backend.texts == []


@pytest.mark.parametrize("flag, value", [("--max-query-chars", limits.QUERY_CHARS + 1),
                                         ("--max-events-per-call", limits.EVENTS_PER_CALL + 1),
                                         ("--max-items-per-upsert", limits.ITEMS_PER_CALL + 1),
                                         ("--max-filter-values", limits.FILTER_VALUES + 1)])
def test_a_gateway_limit_wider_than_the_mesh_stops_it_at_start(flag, value):
    setting = flag.removeprefix("--").replace("-", "_")
    with pytest.raises(SystemExit, match=f"{setting}: .*at most {value - 1}"):
        load_settings(GatewaySettings, [flag, str(value)])
    assert getattr(load_settings(GatewaySettings, [flag, str(value - 1)]), setting) == value - 1


# -- event times ---------------------------------------------------------------------------

def _event(timestamp_ms: int) -> common_pb2.Event:
    return common_pb2.Event(event_id="e", user_id="u", item_id="1", type=2, timestamp_ms=timestamp_ms)


@pytest.mark.parametrize("timestamp_ms, message", [
    (NOW // 1000, "1733529600 is in 1970; timestamps are milliseconds since the Unix epoch "
                  "(seconds? send 1733529600000)"),
    (NOW * 1000, "microseconds? send 1733529600000"),
    (NOW * 1_000_000, "nanoseconds? send 1733529600000"),
    (-1, "-1 is before 1970"),
    (MIN_EVENT_MS - 1, "is in 1979"),
    (NOW + 2 * 86_400_000, "in the future"),
])
def test_implausible_event_times_are_refused_naming_the_unit(timestamp_ms, message):
    with pytest.raises(InvalidArgument) as err:
        check_event(_event(timestamp_ms), "events[0]", NOW)
    assert err.value.field == "events[0].timestamp_ms" and message in str(err.value), str(err.value)


@pytest.mark.parametrize("timestamp_ms", [0, MIN_EVENT_MS, 789_652_009_000, 828_124_615_000, NOW, NOW + 3_600_000])
def test_plausible_event_times_pass(timestamp_ms):
    """0 is "now"; MovieLens starts in 1995 (ml-25m: 789652009 s; the shipped ml-latest-small: 1996)."""
    check_event(_event(timestamp_ms), "events[0]", NOW)


def test_what_the_gateway_accepts_retrieval_stores_whole(tmp_path):
    """The third stage of an upsert: the same items, at every limit, stored with every field."""
    from recmesh.common.vectors import to_matrix
    from recmesh.index.edge import EdgeItemStore
    from recmesh.v1 import retrieval_pb2
    from services.retrieval.config import RetrievalSettings
    from services.retrieval.server import RetrievalServicer

    items = _at_the_limits()
    servicer = RetrievalServicer(RetrievalSettings())
    servicer._store = EdgeItemStore.create(tmp_path / "shard", dim=4, text_dim=3, version="test")
    request = retrieval_pb2.UpsertRequest(items=items, vectors=to_matrix(np.ones((3, 4), np.float32)),
                                          text_vectors=to_matrix(np.ones((3, 3), np.float32)))
    # As many excluded ids as a gateway may send: the request's own and every seen item.
    excluded = [f"x{i}" for i in range(limits.IDS_PER_REQUEST)]
    search = retrieval_pb2.SearchRequest(interest=to_matrix(np.ones(4, np.float32)), limit=10,
                                         filters=common_pb2.Filters(exclude_item_ids=excluded))

    async def calls():
        upserted = await servicer.Upsert(request, Context())
        found = await servicer.Search(search, Context())
        return upserted, found

    upserted, found = asyncio.run(calls())
    assert upserted.upserted == 3 and len(found.candidates) == 3
    servicer._store.close()


def test_the_updater_remembers_no_more_seen_items_than_retrieval_accepts_as_exclusions():
    from services.updater.config import UpdaterSettings

    with pytest.raises(SystemExit, match=f"seen_items: .*at most {limits.SEEN_ITEMS}"):
        load_settings(UpdaterSettings, ["--seen-items", str(limits.SEEN_ITEMS + 1)])
    assert limits.IDS_PER_REQUEST >= limits.FILTER_VALUES + limits.SEEN_ITEMS


@pytest.mark.parametrize("blank", ["\u3164", "\u115f\u1160", "\uffa0", "\U000e0000", "\U000e0041\U000e007f",
                                   "\uffff", "\U0010ffff", "\ufe0f\ufe0e", "\u034f", "\u00ad"])
def test_default_ignorable_and_unassigned_characters_are_no_text(blank):
    """Found by attack: Hangul fillers, tag characters, noncharacters and variation selectors
    (Unicode's Default_Ignorable_Code_Point, and Cn) passed as text, as queries, ids and titles."""
    assert visible_text(blank) == "" and visible_text(f" {blank} ") == ""
    with pytest.raises(InvalidArgument, match="must not be empty"):
        check_id(blank, "user_id")
    assert visible_text(f"space{blank} opera") == "space opera"


def test_a_large_malformed_message_is_refused_without_stalling_the_event_loop():
    """Found by attack: 16 MB of repeated fields and one cut field kept the walker (Python, on
    the event loop) busy for 6 s, during which the gateway answered nothing."""
    import time

    field = recommendations_pb2.RecommendRequest(k=0).SerializeToString() or b"\x18\x00"
    data = field * (16 * 1024 * 1024 // len(field)) + b"\x0a\x05ab"  # user_id cut short
    started = time.perf_counter()
    fault = find_fault(data, recommendations_pb2.RecommendRequest.DESCRIPTOR)
    assert time.perf_counter() - started < 0.05
    assert fault == ("request", "not a valid recmesh.v1.RecommendRequest (truncated or malformed)")
    small = b"\x18\x00" * 100 + b"\x0a\x05ab"
    assert find_fault(small, recommendations_pb2.RecommendRequest.DESCRIPTOR)[0] == "request"
