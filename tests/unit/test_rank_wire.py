"""The gateway forwards retrieval's candidates to the ranker as the bytes they came in
(CandidateSet.wire, Upstreams.rank_wire): the ranker must parse the very request the message
path sends, whatever the request holds."""

import asyncio

import numpy as np
import pytest

from recmesh.common.vectors import to_matrix
from recmesh.models.session import History
from recmesh.v1 import common_pb2, encoder_pb2, ranker_pb2, retrieval_pb2
from services.gateway.budget import Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import CandidateSet
from services.gateway.ranking import RankingStage
from services.gateway.results import Signals


def search_reply(n: int, rng: np.random.Generator, with_text: bool) -> retrieval_pb2.CandidateList:
    reply = retrieval_pb2.CandidateList(index_version="catalog-1")
    for i in range(n):
        c = reply.candidates.add(item_id=f"i{i}", title=f"Title {i}", categories=["A", "B", "C"][: i % 3 + 1],
                                 score=float(rng.random()), popularity=float(rng.random()),
                                 query_similarity=float(rng.random()) if with_text else 0.0)
        c.attributes["price"].CopyFrom(common_pb2.AttributeValue(number=float(i)))
    reply.vectors.CopyFrom(to_matrix(rng.standard_normal((n, 8)).astype(np.float32)))
    if with_text:
        reply.text_vectors.CopyFrom(to_matrix(rng.standard_normal((n, 6)).astype(np.float32)))
    return reply


def history(rng: np.random.Generator, n: int, skipped: dict[str, int]) -> History:
    entries = [encoder_pb2.HistoryEntry(item_id=f"i{j * 3 % 40}", type=common_pb2.EVENT_TYPE_VIEW,
                                         timestamp_ms=j) for j in range(n)]
    items = {e.item_id: retrieval_pb2.Candidate(item_id=e.item_id, title=f"Title {e.item_id}",
                                                categories=["A", "D"]) for e in entries}
    return History(entries, rng.standard_normal((n, 8)).astype(np.float32), items, set(items), skipped, n)


class Ranker:
    """Both doors of the ranker: the message stub and the bytes one; records what each got."""

    def __init__(self):
        self.got: list[ranker_pb2.RankRequest] = []

    async def Rank(self, request, timeout):
        self.got.append(ranker_pb2.RankRequest.FromString(request.SerializeToString()))
        return ranker_pb2.RankResponse(model_version="r1")

    async def wire(self, data: bytes, timeout):
        self.got.append(ranker_pb2.RankRequest.FromString(data))
        return ranker_pb2.RankResponse(model_version="r1")


@pytest.mark.parametrize("with_text", [False, True])
@pytest.mark.parametrize("skipped", [{}, {"i3": 2, "i7": 1, "nowhere": 4}])
@pytest.mark.parametrize("n_history", [0, 12])
def test_the_wire_form_is_the_message_the_ranker_got_before(with_text, skipped, n_history):
    rng = np.random.default_rng(7)
    reply = search_reply(150, rng, with_text)
    before = retrieval_pb2.CandidateList.FromString(reply.SerializeToString())
    plain = CandidateSet.from_reply(before, with_query=with_text)
    wired = CandidateSet.from_reply(reply, with_query=with_text, with_wire=True)
    assert plain.wire is None and wired.wire is not None
    assert wired.items == plain.items and np.array_equal(wired.vectors, plain.vectors)
    assert np.array_equal(wired.text_vectors, plain.text_vectors)
    assert wired.query_similarity == plain.query_similarity
    hist = history(rng, n_history, skipped)
    signals = Signals(rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32),
                      rng.standard_normal(6).astype(np.float32) if with_text else None)
    ranker = Ranker()

    async def rank_both():
        stage = RankingStage(GatewaySettings(), type("Up", (), {"ranker": ranker, "rank_wire": ranker.wire})())
        message_only = RankingStage(GatewaySettings(), type("Up", (), {"ranker": ranker})())
        for s, found in ((message_only, plain), (stage, wired)):
            budget = Budget(1.0, None, 0.0, 0.0)
            assert (await s.rank(budget, found, signals, hist, 10, 0.3)).version == "r1"

    asyncio.run(rank_both())
    by_message, by_wire = ranker.got
    assert by_wire == by_message
    assert len(by_wire.candidates) == 150 and by_wire.candidate_vectors.rows == 150
    assert dict(by_wire.skipped) == {i: n for i, n in skipped.items() if i != "nowhere"}
    assert by_wire.SerializeToString(deterministic=True) == by_message.SerializeToString(deterministic=True)


def test_without_vectors_for_every_candidate_no_wire_form():
    reply = search_reply(5, np.random.default_rng(1), False)
    reply.ClearField("vectors")
    assert CandidateSet.from_reply(reply, with_wire=True).wire is None
