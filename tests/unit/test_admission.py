"""Gateway admission: under overload, or with too little of the client's time left, Recommend
answers the popular list at once, degraded and saying why - it never queues the call; while the
mesh is slow, calls skip the ranker, then the encoder, then everything."""

import asyncio
import time

import numpy as np

from recmesh.common.vectors import to_matrix
from recmesh.v1 import common_pb2, encoder_pb2, ranker_pb2, recommendations_pb2, retrieval_pb2, updater_pb2
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import PopularCandidates
from services.gateway.recommend import Recommender

DIM = 4


class UserStateOnly:
    """A shed call reaches no stage of the pipeline; it may ask the updater what the user has
    seen (their exclusions hold on every path): answered here, a user with no history."""

    def __init__(self):
        self.asked: list[int] = []  # max_recent of each GetUserState

    async def GetUserState(self, request, timeout):
        self.asked.append(request.max_recent)
        return updater_pb2.UserState(user_id=request.user_id)


class NoUpstreams:
    def __init__(self):
        self.updater = UserStateOnly()

    def __getattr__(self, name):  # a shed call must not reach any stage of the pipeline
        raise AssertionError(f"upstream {name} called")


def recommender(max_in_flight: int) -> Recommender:
    popular = PopularCandidates()
    popular.replace(retrieval_pb2.CandidateList(index_version="idx", candidates=[
        retrieval_pb2.Candidate(item_id=str(i), title=f"t{i}", categories=["Horror" if i % 2 else "Drama"],
                                popularity=1 - i / 10) for i in range(10)]))
    return Recommender(GatewaySettings(max_in_flight=max_in_flight, min_admit_ms=15), NoUpstreams(), popular)


def test_overload_and_late_arrivals_get_the_popular_list_at_once():
    rec = recommender(max_in_flight=2)
    rec.in_flight = 2
    request = recommendations_pb2.RecommendRequest(user_id="u", k=3)
    request.filters.exclude_categories.append("Horror")
    reply = asyncio.run(rec.recommend(request, 3, "", 0.1))
    assert list(reply.degraded) == ["shed:overload"]
    assert [i.item_id for i in reply.items] == ["0", "2", "4"] and reply.versions["index"] == "idx"
    rec.in_flight = 0
    late = asyncio.run(rec.recommend(request, 3, "", 0.005))
    assert list(late.degraded) == ["shed:late_arrival"] and len(late.items) == 3


def test_while_the_mesh_is_very_slow_a_share_is_shed_without_calling_any_stage():
    rec = recommender(max_in_flight=16)
    slow_answers(rec, 25)  # pressure 2.5
    rec.shedding._draw = iter([0.4, 0.7]).__next__  # the first is shed; the second is admitted
    request = recommendations_pb2.RecommendRequest(user_id="u", k=3)
    reply = asyncio.run(rec.recommend(request, 3, "", 0.1))
    assert list(reply.degraded) == ["shed:slow_mesh"] and len(reply.items) == 3
    admitted = asyncio.run(rec.recommend(request, 3, "", 0.1))  # the pipeline: the user's full state first
    assert "shed:slow_mesh" not in admitted.degraded
    assert rec._up.updater.asked[-1] == GatewaySettings().history_items


class Stages:
    """Every stage, recording what it was asked: a user with three views; the catalog's items
    are 1..6, retrieval returns them in that order; the ranker reverses them."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []
        self.updater = self.retrieval = self.encoder = self.ranker = self

    async def GetUserState(self, request, timeout):
        return updater_pb2.UserState(recent=[common_pb2.Event(item_id=i, type=common_pb2.EventType.EVENT_TYPE_VIEW)
                                             for i in ("1", "2", "3")])

    def _items(self, ids):
        return retrieval_pb2.CandidateList(candidates=[retrieval_pb2.Candidate(item_id=i, title=i) for i in ids],
                                           vectors=to_matrix(np.ones((len(ids), DIM), np.float32)))

    async def GetItems(self, request, timeout):
        return self._items(list(request.item_ids))

    async def Search(self, request, timeout):
        self.calls.append(("search", request))
        return self._items(["4", "5", "6"])

    async def EncodeInterest(self, request, timeout):
        self.calls.append(("encoder", request))
        return encoder_pb2.EncodeInterestResponse(
            interest=to_matrix(np.ones((1, DIM), np.float32) if request.history else None),
            query_vector=to_matrix(np.ones((1, DIM), np.float32) if request.query else None), model_version="m")

    async def Rank(self, request, timeout):
        self.calls.append(("ranker", request))
        return ranker_pb2.RankResponse(items=[ranker_pb2.RankedItem(item_id=c.item_id)
                                              for c in reversed(request.candidates)], model_version="r")

    def LogImpressions(self, request, timeout):
        return asyncio.sleep(0)


def slow_answers(rec: Recommender, n: int) -> None:
    """n answers slower than the shedding threshold, just now: each raises the pressure by 0.1."""
    now = time.monotonic()
    for _ in range(n):
        rec.shedding.observe(1.0, others_in_flight=3, now=now)


def recommend_at(slow: int, draw: float, query: str = ""):
    stages = Stages()
    rec = Recommender(GatewaySettings(), stages, PopularCandidates())
    slow_answers(rec, slow)
    rec.shedding._draw = lambda: draw
    reply = asyncio.run(rec.recommend(recommendations_pb2.RecommendRequest(user_id="u", k=3), 3, query, 0.1))
    return reply, [name for name, _ in stages.calls], stages.calls


def test_browned_out_calls_skip_the_ranker_then_the_encoder_but_still_follow_a_query():
    full, called, _ = recommend_at(0, 0.5)
    assert called == ["encoder", "search", "ranker"] and not full.degraded
    assert [i.item_id for i in full.items] == ["6", "5", "4"]
    no_ranker, called, _ = recommend_at(8, 0.5)  # pressure 0.8
    assert called == ["encoder", "search"] and list(no_ranker.degraded) == ["brownout:ranker"]
    assert [i.item_id for i in no_ranker.items] == ["4", "5", "6"]  # retrieval order
    neither, called, _ = recommend_at(18, 0.5)  # no cached interest: the session direction steers
    assert called == ["search"] and list(neither.degraded) == ["brownout:ranker", "brownout:encoder"]
    assert neither.items
    typed, called, calls = recommend_at(18, 0.5, query="space opera")
    encoded = calls[0][1]
    assert called == ["encoder", "search"] and encoded.query == "space opera" and not encoded.history
    assert calls[1][1].query.rows == 1  # the query still steers retrieval


def test_browned_out_the_users_last_interest_stands_in_for_the_encoder():
    stages = Stages()
    rec = Recommender(GatewaySettings(), stages, PopularCandidates())
    request = recommendations_pb2.RecommendRequest(user_id="u", k=3)
    asyncio.run(rec.recommend(request, 3, "", 0.1))  # in full: the interest is computed and kept
    newer = updater_pb2.UserState(recent=[common_pb2.Event(item_id=i, type=common_pb2.EventType.EVENT_TYPE_VIEW)
                                          for i in ("1", "2", "3", "4")])
    stages.GetUserState = lambda request, timeout: asyncio.sleep(0, newer)  # a new event since
    slow_answers(rec, 18)
    rec.shedding._draw = lambda: 0.5
    stages.calls.clear()
    reply = asyncio.run(rec.recommend(request, 3, "", 0.1))
    assert [name for name, _ in stages.calls] == ["search"]
    search = stages.calls[0][1]
    assert search.interest.rows == 1 and search.session.rows == 1
    assert list(reply.degraded) == ["brownout:ranker", "brownout:encoder"]


def test_a_deleted_users_last_interest_does_not_stand_in_on_another_replica():
    """Found by attack: deleted through gateway B, the user started afresh; gateway A, with the
    encoder late, answered from the interest it had computed from the deleted events. It stands
    in only for a user with at least as many events as when it was computed (counts only grow,
    but for a deletion), and not past interest_standin_s."""
    def state(count: int, items: tuple[str, ...]):
        reply = updater_pb2.UserState(event_count=count, recent=[
            common_pb2.Event(item_id=i, type=common_pb2.EventType.EVENT_TYPE_VIEW) for i in items])
        return lambda request, timeout: asyncio.sleep(0, reply)

    def browned_out(rec: Recommender, stages: Stages):
        slow_answers(rec, 18)
        rec.shedding._draw = lambda: 0.5
        stages.calls.clear()
        asyncio.run(rec.recommend(recommendations_pb2.RecommendRequest(user_id="u", k=3), 3, "", 0.1))
        rec.shedding.pressure = 0.0
        return stages.calls[0][1]

    for later, stands_in in (((40, ("1", "2", "3", "4")), True), ((2, ("5", "6")), False)):
        stages = Stages()
        stages.GetUserState = state(30, ("1", "2", "3"))
        rec = Recommender(GatewaySettings(), stages, PopularCandidates())
        asyncio.run(rec.recommend(recommendations_pb2.RecommendRequest(user_id="u", k=3), 3, "", 0.1))
        stages.GetUserState = state(*later)  # grown (a new event), or deleted elsewhere and started afresh
        assert (browned_out(rec, stages).interest.rows == 1) == stands_in
    expired = Recommender(GatewaySettings(interest_standin_s=0), (stages := Stages()), PopularCandidates())
    stages.GetUserState = state(30, ("1", "2", "3"))
    asyncio.run(expired.recommend(recommendations_pb2.RecommendRequest(user_id="u", k=3), 3, "", 0.1))
    assert browned_out(expired, stages).interest.rows == 0
