"""Guest sessions, MergeUsers and negative feedback on the live mesh over the MovieLens catalog:
a guest's inline events steer the answer at once without being logged, a guest signing in keeps
what they did, a hidden item never comes back on any path, a dislike pushes the items like it
down at once. Bad input for each of these names its field."""

from __future__ import annotations

import io
import json
import uuid
from contextlib import redirect_stdout

import grpc
import numpy as np
import pytest

from recmesh.client import Event
from recmesh.common.vectors import from_matrix
from recmesh.tools import cli
from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from tests.integration.answers import LATE_S, answered, undegraded
from tests.integration.test_mesh import FAMILY, HORROR, genre_count

pytestmark = pytest.mark.integration
ET = common_pb2.EventType
FORREST_GUMP = "356"  # the most rated film in ml-latest-small: the popular list's first


def ids(reply) -> list[str]:
    return [i.item_id for i in reply.items]


def session(items, type_="view") -> list[Event]:
    """A guest's events as a backend sends them inline: no user id, no event id, no time."""
    return [Event("", item, type_).to_proto() for item in items]


def test_a_guests_inline_session_steers_the_answer_at_once_as_if_tracked_and_is_not_logged(client, user):
    plain = undegraded(lambda: client.recommend(user, k=10))
    steered = undegraded(lambda: client.recommend(user, k=10, session_events=session(HORROR)))
    assert genre_count(plain, "Horror") <= 1
    assert genre_count(steered, "Horror") >= genre_count(plain, "Horror") + 4
    assert not set(ids(steered)) & set(HORROR)  # seen items are left out
    assert client.profile(user).event_count == 0  # and nothing was logged
    # As if tracked: another user who tracked the same five views gets the same answer.
    tracked = f"{user}-tracked"
    client.track_events(Event(tracked, item, "view") for item in HORROR)
    assert ids(undegraded(lambda: client.recommend(tracked, k=10))) == ids(steered)


def test_a_guest_without_an_id_gets_an_answer_from_their_session(client):
    reply = undegraded(lambda: client.recommend("", k=10, session_events=session(HORROR)))
    assert len(reply.items) == 10 and not set(ids(reply)) & set(HORROR)
    assert genre_count(reply, "Horror") >= 5
    assert "user_state" not in {s.stage for s in reply.stage_latency}  # no updater read for a guest


def test_inline_events_come_after_the_stored_ones_and_a_stored_one_is_not_counted_twice(client, user):
    client.track_events(Event(user, item, "click", event_id=f"{user}-{item}") for item in FAMILY)
    family = undegraded(lambda: client.recommend(user, k=10))
    # The same five again inline (same event ids): nothing changes; five horror films after them steer.
    again = [Event(user, item, "click", event_id=f"{user}-{item}").to_proto() for item in FAMILY]
    same = undegraded(lambda: client.recommend(user, k=10, session_events=again))
    steered = undegraded(lambda: client.recommend(user, k=10, session_events=again + session(HORROR)))
    assert ids(same) == ids(family)
    assert genre_count(steered, "Horror") >= genre_count(family, "Horror") + 3
    assert not set(ids(steered)) & set(FAMILY + HORROR)


def test_a_merged_guest_is_in_the_users_profile_once_and_a_repeat_moves_nothing(client, user, stack):
    guest = f"guest-{uuid.uuid4().hex[:10]}"
    client.track_events([Event(user, FAMILY[0], "purchase", event_id=f"{user}-buy")])  # the account's past
    before = undegraded(lambda: client.recommend(user, k=10))  # this gateway now holds the user's seen items
    # Then, signed out, a session as a guest; then they sign in.
    client.track_events(Event(guest, item, "click", event_id=f"{guest}-{item}") for item in HORROR[:3])
    assert client.merge_users(guest, user).events_moved == 3
    profile = client.profile(user)
    event_ids = [e.event_id for e in profile.recent_events]
    assert profile.event_count == 4 and len(event_ids) == len(set(event_ids)) == 4
    assert {f"{guest}-{item}" for item in HORROR[:3]} <= set(event_ids)
    assert {e.user_id for e in profile.recent_events} == {user}
    assert client.profile(guest).event_count == 0  # the guest id is left empty
    # Idempotent: a repeat moves nothing, a late retry of a guest's event is a duplicate.
    assert client.merge_users(guest, user).events_moved == 0
    retry = client.track_events([Event(guest, HORROR[0], "click", event_id=f"{guest}-{HORROR[0]}")])
    assert (retry.accepted, retry.duplicates) == (0, 1)
    assert client.profile(user).event_count == 4 and client.profile(guest).event_count == 0
    # The next answer knows what the guest did: the merged items are seen, and they steer.
    after = undegraded(lambda: client.recommend(user, k=10))
    assert not set(ids(after)) & set(HORROR[:3])
    assert genre_count(after, "Horror") > genre_count(before, "Horror")
    # The CLI does the same (and says nothing moved now).
    out = io.StringIO()
    with redirect_stdout(out):
        cli.main(["--target", stack.address("gateway"), "merge-users", "--from", guest, "--into", user])
    assert json.loads(out.getvalue()) == {"events_moved": 0}  # a zero is said, not left out


def test_a_hidden_item_never_returns_on_the_full_and_the_shed_path(client, user):
    client.track_events(Event(user, item, "click") for item in FAMILY)
    first = undegraded(lambda: client.recommend(user, k=10))
    top = first.items[0].item_id
    client.track_events([Event(user, top, "hide"), Event(user, FORREST_GUMP, "hide")])
    full = undegraded(lambda: client.recommend(user, k=20))
    seen_back = undegraded(lambda: client.recommend(user, k=20, exclude_seen=False))
    assert top not in ids(full) and top not in ids(seen_back)
    assert set(ids(seen_back)) & set(FAMILY)  # exclude_seen=false let the seen items back - not the hidden
    for exclude_seen in (True, False):  # shed at the door: the popular list, Forrest Gump its first
        shed = answered(lambda exclude_seen=exclude_seen: client.recommend(user, k=10, exclude_seen=exclude_seen,
                                                                          timeout_s=LATE_S))
        assert "shed:late_arrival" in shed.degraded and "seen_items:unknown" not in shed.degraded
        assert len(shed.items) == 10 and not {top, FORREST_GUMP} & set(ids(shed)), ids(shed)
    assert FORREST_GUMP in ids(answered(lambda: client.recommend(f"{user}-other", k=10, timeout_s=LATE_S)))


def catalog_vectors(stack, item_ids) -> dict[str, np.ndarray]:
    with grpc.insecure_channel(stack.address("retrieval")) as channel:
        found = retrieval_pb2_grpc.RetrievalStub(channel).GetItems(
            retrieval_pb2.GetItemsRequest(item_ids=item_ids, with_vectors=True, catalog_vectors_only=True), timeout=5)
    vectors = from_matrix(found.vectors, "vectors")
    return {c.item_id: v / np.linalg.norm(v) for c, v in zip(found.candidates, vectors, strict=True)}


def test_a_dislike_pushes_the_items_like_it_down_at_once(client, user, stack):
    client.track_events(Event(user, item, "click") for item in HORROR)
    before = undegraded(lambda: client.recommend(user, k=20))
    disliked, rest = before.items[0], ids(before)[1:]
    vectors = catalog_vectors(stack, [disliked.item_id, *rest])
    similar = max(rest, key=lambda i: float(vectors[i] @ vectors[disliked.item_id]))
    assert float(vectors[similar] @ vectors[disliked.item_id]) > 0.7  # the test needs a close neighbour
    client.track_events([Event(user, disliked.item_id, "dislike")])
    after = undegraded(lambda: client.recommend(user, k=20))  # no sleep: the next answer
    assert disliked.item_id not in ids(after)
    pushed = [i for i in after.items if any("which you disliked" in r for r in i.reasons)]
    assert pushed and all(disliked.title in i.reasons[-1] for i in pushed)
    if similar in ids(after):
        assert ids(after).index(similar) > ids(before).index(similar)


def _stub(gateway_channel):
    return recommendations_pb2_grpc.RecommendationsStub(gateway_channel)


def _invalid(call) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value.details()


@pytest.mark.parametrize("request_fields, field", [
    ({"user_id": "", "k": 5}, "user_id"),  # no id and no session: nobody to answer
    ({"user_id": "", "session_events": [common_pb2.Event(item_id="1", type=ET.EVENT_TYPE_VIEW),
                                        common_pb2.Event(item_id="2", type=ET.EVENT_TYPE_CLICK),
                                        common_pb2.Event(type=ET.EVENT_TYPE_CLICK)]}, "session_events[2].item_id"),
    ({"user_id": "", "session_events": [common_pb2.Event(item_id="1", type=42)]}, "session_events[0].type"),
    ({"user_id": "", "session_events": [common_pb2.Event(item_id="1")]}, "session_events[0].type"),
    ({"user_id": "u1", "session_events": [common_pb2.Event(user_id="u2", item_id="1", type=ET.EVENT_TYPE_VIEW)]},
     "session_events[0].user_id"),
    ({"user_id": "", "session_events": [common_pb2.Event(user_id="u2", item_id="1", type=ET.EVENT_TYPE_VIEW)]},
     "session_events[0].user_id"),
    ({"user_id": "", "session_events": [common_pb2.Event(item_id="1", type=ET.EVENT_TYPE_RATE, value=7)]},
     "session_events[0].value"),
    ({"user_id": "", "session_events": [common_pb2.Event(item_id="1", type=ET.EVENT_TYPE_VIEW,
                                                         timestamp_ms=1_733_529_600)]},
     "session_events[0].timestamp_ms"),
    ({"user_id": "", "session_events": [common_pb2.Event(event_id="e" * 200, item_id="1",
                                                         type=ET.EVENT_TYPE_VIEW)]}, "session_events[0].event_id"),
    ({"user_id": "", "session_events": [common_pb2.Event(item_id="x" * 200, type=ET.EVENT_TYPE_DISLIKE)]},
     "session_events[0].item_id"),
    ({"user_id": "", "session_events": [common_pb2.Event(item_id="1", type=ET.EVENT_TYPE_VIEW)] * 101},
     "session_events"),
])
def test_bad_session_events_are_invalid_argument_naming_the_field(gateway_channel, request_fields, field):
    details = _invalid(lambda: _stub(gateway_channel).Recommend(
        recommendations_pb2.RecommendRequest(**request_fields), timeout=5))
    assert details.startswith(field + ":"), details


@pytest.mark.parametrize("type_", [ET.EVENT_TYPE_HIDE, ET.EVENT_TYPE_DISLIKE])
def test_a_hide_or_dislike_without_an_item_is_invalid_argument(gateway_channel, type_):
    event = common_pb2.Event(event_id="e1", user_id="u1", type=type_)
    details = _invalid(lambda: _stub(gateway_channel).TrackEvents(
        recommendations_pb2.TrackEventsRequest(events=[event]), timeout=5))
    assert details.startswith("events[0].item_id:"), details


@pytest.mark.parametrize("from_user, into_user, field", [
    ("", "u1", "from_user_id"),
    ("g1", "", "into_user_id"),
    ("g1", "\u200b", "into_user_id"),  # only invisible characters: empty
    ("g1", "u" * 129, "into_user_id"),
    ("same", "same", "into_user_id"),
])
def test_bad_merge_users_is_invalid_argument_naming_the_field(gateway_channel, from_user, into_user, field):
    details = _invalid(lambda: _stub(gateway_channel).MergeUsers(
        common_pb2.MergeUsersRequest(from_user_id=from_user, into_user_id=into_user), timeout=5))
    assert details.startswith(field + ":"), details
