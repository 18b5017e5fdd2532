"""The gateway's item cache: a returning user's history costs no GetItems call; an item changed
through this gateway, or older than the TTL, is looked up again."""

import asyncio

import numpy as np

from recmesh.common.vectors import to_matrix
from recmesh.v1 import common_pb2, retrieval_pb2, updater_pb2
from services.gateway.budget import Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import PopularCandidates
from services.gateway.item_cache import ItemCache
from services.gateway.recommend import Recommender

DIM = 4


class Updater:
    async def GetUserState(self, request, timeout):
        return updater_pb2.UserState(recent=[common_pb2.Event(item_id=i, type=common_pb2.EventType.EVENT_TYPE_VIEW)
                                             for i in ("1", "2", "3")])


class Retrieval:
    """The catalog: item i's vector is i in every dimension; '3' has been deleted."""

    def __init__(self):
        self.asked: list[list[str]] = []

    async def GetItems(self, request, timeout):
        self.asked.append(list(request.item_ids))
        ids = [i for i in request.item_ids if i != "3"]
        return retrieval_pb2.CandidateList(candidates=[retrieval_pb2.Candidate(item_id=i, categories=["Drama"])
                                                       for i in ids],
                                           vectors=to_matrix(np.array([[float(i)] * DIM for i in ids], np.float32)))


class Upstreams:
    def __init__(self):
        self.updater, self.retrieval = Updater(), Retrieval()


def history(rec: Recommender):
    return asyncio.run(rec.pipeline.history.load(Budget(1.0, None, 0.0, 0.0), "u"))


def test_a_returning_users_history_is_not_looked_up_again_until_an_item_changes():
    upstreams = Upstreams()
    rec = Recommender(GatewaySettings(), upstreams, PopularCandidates())
    first = history(rec)
    assert [e.item_id for e in first.entries] == ["1", "2"]  # the deleted item dropped out
    assert first.vectors.tolist() == [[1.0] * DIM, [2.0] * DIM] and set(first.items) == {"1", "2"}
    again = history(rec)
    assert upstreams.retrieval.asked == [["1", "2", "3"], ["3"]]  # only the unknown item again
    assert again.vectors.tolist() == first.vectors.tolist() and [e.item_id for e in again.entries] == ["1", "2"]
    rec.forget_items(["2"])  # upserted through this gateway
    history(rec)
    assert upstreams.retrieval.asked[-1] == ["2", "3"]


def test_entries_expire_and_the_cache_can_be_off():
    cache = ItemCache(10, ttl_s=60)
    cache.add([retrieval_pb2.Candidate(item_id="a")], np.ones((1, DIM), np.float32), now=100.0)
    assert list(cache.lookup(["a", "b"], now=159.0)[0]) == ["a"]
    assert cache.lookup(["a"], now=160.0) == ({}, ["a"])
    off = ItemCache(10, ttl_s=0)
    off.add([retrieval_pb2.Candidate(item_id="a")], np.ones((1, DIM), np.float32), now=100.0)
    assert off.lookup(["a"], now=100.0) == ({}, ["a"])


def test_get_many_is_get_of_each_key_recency_included():
    from recmesh.common.lru import LruCache

    cache = LruCache(3)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get_many(["a", "x", "c"]) == ["A", None, "C"]
    cache.put("d", "D")  # "b" is the least recently used now: a and c were just read
    assert cache.get_many("abcd") == ["A", None, "C", "D"]
