import pytest

from recmesh.common.errors import InvalidArgument
from recmesh.common.validation import check_event, check_events
from recmesh.v1 import common_pb2, recommendations_pb2
from services.gateway.config import GatewaySettings
from services.gateway.validation import check_items, check_recommend

NOW = 1_700_000_000_000


def event(**fields):
    base = dict(event_id="e1", user_id="u1", item_id="1", type=common_pb2.EventType.EVENT_TYPE_CLICK)
    return common_pb2.Event(**(base | fields))


def test_a_good_event_passes():
    check_event(event(timestamp_ms=NOW), "e", NOW)
    check_event(event(type=common_pb2.EventType.EVENT_TYPE_SEARCH, item_id="", query="boots"), "e", NOW)


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"user_id": " "}, "e.user_id"),
        ({"type": 99}, "e.type"),
        ({"type": common_pb2.EventType.EVENT_TYPE_SEARCH, "item_id": ""}, "e.query"),
        ({"value": float("nan")}, "e.value"),
        ({"timestamp_ms": NOW + 2 * 86_400_000}, "e.timestamp_ms"),
        ({"query": "q" * 5000}, "e.query"),
        ({"event_id": "x" * 500}, "e.event_id"),
    ],
)
def test_bad_event_fields_are_named(fields, field):
    with pytest.raises(InvalidArgument) as err:
        check_event(event(**fields), "e", NOW)
    assert err.value.field == field


def test_batches_are_bounded_and_indexed():
    with pytest.raises(InvalidArgument, match="^events: at least one"):
        check_events([], "events", 10)
    with pytest.raises(InvalidArgument, match="^events: at most 2"):
        check_events([event()] * 3, "events", 2)
    with pytest.raises(InvalidArgument) as err:
        check_events([event(), event(user_id="")], "events", 10)
    assert err.value.field == "events[1].user_id"


def test_recommend_defaults_k_and_trims_query():
    k, query = check_recommend(recommendations_pb2.RecommendRequest(user_id="u", query="  hi "), GatewaySettings())
    assert (k, query) == (10, "hi")


@pytest.mark.parametrize("k", [0, -1, 101])
def test_recommend_k_out_of_range(k):
    with pytest.raises(InvalidArgument, match="^k: must be in 1..100"):
        check_recommend(recommendations_pb2.RecommendRequest(user_id="u", k=k), GatewaySettings())


def test_upsert_items_rejects_duplicates_and_untitled():
    s = GatewaySettings()
    with pytest.raises(InvalidArgument, match=r"^items\[1\].item_id: duplicate"):
        check_items([common_pb2.Item(item_id="a", title="A"), common_pb2.Item(item_id="a", title="B")], s)
    with pytest.raises(InvalidArgument, match=r"^items\[0\].title"):
        check_items([common_pb2.Item(item_id="a")], s)
