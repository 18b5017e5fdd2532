"""Gateway admission: under overload, or with too little of the client's time left, Recommend
answers the popular list at once, degraded and saying why - it never queues the call."""

import asyncio

from recmesh.v1 import recommendations_pb2, retrieval_pb2
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import PopularCandidates
from services.gateway.recommend import Recommender


class NoUpstreams:
    def __getattr__(self, name):  # a shed call must not reach any upstream
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
