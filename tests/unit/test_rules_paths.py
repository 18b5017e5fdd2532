"""Business rules hold on every answer path of the gateway - in full, browned out, shed
(overload, late arrival, slow mesh) and each fallback - driven through the real GatewayServicer
over the fake upstreams of tests/unit/test_answer_paths.py (tests only), with retrieval's
GetItems added for pinned items."""

from __future__ import annotations

import asyncio
import time

import pytest

from recmesh.v1 import common_pb2, recommendations_pb2
from services.gateway.shedding import RUNGS
from tests.unit.test_answer_paths import (
    BROWNOUT,
    CATALOG,
    SHED,
    Context,
    Mesh,
    gateway,
    ids,
    track,
)

Rule, ItemMatch, Pin = common_pb2.Rule, common_pb2.ItemMatch, common_pb2.Pin
PATHS = ["full", *BROWNOUT, *SHED, "fallback:anonymous", "fallback:popular_candidates", "fallback:retrieval_order"]
DOWN = {"fallback:anonymous": {"GetUserState"}, "fallback:popular_candidates": {"Search"},
        "fallback:retrieval_order": {"Rank"}}


class LookupMesh(Mesh):
    async def GetItems(self, request, timeout):
        self._call("GetItems", request, timeout)
        by_id = {c.item_id: c for c in self.items}
        return self._list([by_id[i] for i in request.item_ids if i in by_id], request.with_vectors)


async def on_path(g, mesh: Mesh, user: str, k: int, how: str, rules=(), surface: str = "", **filters):
    """Recommend along one path, forced (not left to timing): as test_answer_paths.recommend,
    with rules and a surface."""
    rec = g._recommender
    mesh.down = DOWN.get(how, set())
    remaining = 0.1
    if how == "shed:overload":
        rec.in_flight = g._s.max_in_flight
    if how == "shed:late_arrival":
        remaining = 0.014
    if how in RUNGS:
        now = time.monotonic()
        for _ in range(10 * (RUNGS.index(how) + 1) - 5):
            rec.shedding.observe(1.0, others_in_flight=3, now=now)
        rec.shedding._draw = lambda: 0.0
    # A query makes retrieval's Search find the candidates: without one this user has no signal.
    query = "a film" if how in ("fallback:popular_candidates", "fallback:retrieval_order", "full", *BROWNOUT) else ""
    request = recommendations_pb2.RecommendRequest(user_id=user, k=k, query=query, rules=rules,
                                                   filters=common_pb2.Filters(**filters),
                                                   context=common_pb2.Context(surface=surface))
    try:
        reply = await g.Recommend(request, Context(remaining))
    finally:
        rec.in_flight = 0
        rec.shedding.pressure = 0.0
        mesh.down = set()
    if how != "full":
        assert how in reply.degraded, (how, list(reply.degraded))
    return reply


@pytest.fixture
def mesh_gateway(monkeypatch):
    async def make():
        mesh = LookupMesh()
        return mesh, await gateway(monkeypatch, mesh)

    return make


@pytest.mark.parametrize("how", PATHS)
def test_an_excluded_category_never_appears_and_the_page_stays_full(mesh_gateway, how):
    """Excluding Drama leaves the Documentaries: 5 in the pool, 20 in the catalog - k=10 still."""
    async def scenario():
        mesh, g = await mesh_gateway()
        await track(g, "u", ["p7"])
        return await on_path(g, mesh, "u", 10, how, [Rule(exclude=True, match=ItemMatch(categories=["Drama"]))])

    reply = asyncio.run(scenario())
    assert ids(reply) == [f"p{i}" for i in range(17, CATALOG, 10)][:10]


@pytest.mark.parametrize("how", PATHS)
def test_an_exclusion_by_id_and_attribute_together_holds_and_fills_the_page(mesh_gateway, how):
    """A match of two conditions (no single filter says it): tested on each candidate."""
    acme = common_pb2.AttributeFilter(name="brand", any_of=common_pb2.StringSet(values=["Acme"]))
    rule = Rule(exclude=True, match=ItemMatch(item_ids=[f"p{i}" for i in range(0, 12)], attributes=[acme]))

    async def scenario():
        mesh, g = await mesh_gateway()
        return await on_path(g, mesh, "cold", 10, how, [rule])

    reply = asyncio.run(scenario())
    assert ids(reply) == ["p1", "p2", "p4", "p5", "p7", "p8", "p10", "p11", "p12", "p13"]  # Acme: i % 3 == 0


@pytest.mark.parametrize("how", PATHS)
def test_a_pin_holds_its_slot_and_never_overrides_the_filters_or_the_users_exclusions(mesh_gateway, how):
    """p150 is far below every list (no candidate): looked up and pinned at 1. p2 is seen by the
    user and p17 a Documentary, which the request leaves out: pinned, neither is shown."""
    rules = [Rule(name="promo", pin=Pin(item_id="p150", position=1)),
             Rule(pin=Pin(item_id="p2", position=0)),  # seen by the user: not shown
             Rule(pin=Pin(item_id="p17", position=2))]  # a Documentary the request excludes: not shown

    async def scenario():
        mesh, g = await mesh_gateway()
        await track(g, "u", ["p2"])
        return await on_path(g, mesh, "u", 5, how, rules, exclude_categories=["Documentary"])

    reply = asyncio.run(scenario())
    assert ids(reply) == ["p0", "p150", "p1", "p3", "p4"]
    assert reply.items[1].reasons[0] == "pinned by rule:promo"


@pytest.mark.parametrize("how", PATHS)
def test_a_boost_lifts_and_a_bury_lowers_on_every_path(mesh_gateway, how):
    rules = [Rule(name="lift", boost=8.0, match=ItemMatch(item_ids=["p5"])),
             Rule(name="sink", boost=0.125, match=ItemMatch(item_ids=["p0"]))]

    async def scenario():
        mesh, g = await mesh_gateway()
        return await on_path(g, mesh, "cold", 5, how, rules)

    reply = asyncio.run(scenario())
    order = ids(reply)
    assert order.index("p5") < 3 and "p0" not in order[:3], order
    assert "boosted ×8 by rule:lift" in reply.items[order.index("p5")].reasons


@pytest.mark.parametrize("how", PATHS)
def test_a_promotion_fills_its_share_from_outside_the_list_when_it_must(mesh_gateway, how):
    """3 of 10 slots for Documentaries; the user has seen p7: the others come from the list or,
    on a path whose list holds too few, from a lookup."""
    rule = Rule(name="docs", promote_share=0.3, match=ItemMatch(categories=["Documentary"]))

    async def scenario():
        mesh, g = await mesh_gateway()
        await track(g, "u", ["p7"])
        return await on_path(g, mesh, "u", 10, how, [rule])

    reply = asyncio.run(scenario())
    docs = [i.item_id for i in reply.items if "Documentary" in i.categories]
    assert len(reply.items) == 10 and len(docs) >= 3 and "p7" not in docs, ids(reply)


@pytest.mark.parametrize("how", PATHS)
def test_a_promotion_by_ids_no_list_holds_is_looked_up_within_the_deadline(mesh_gateway, how):
    rule = Rule(name="new_in", promote_share=0.2, match=ItemMatch(item_ids=["p150", "p160", "p170"]))

    async def scenario():
        mesh, g = await mesh_gateway()
        await track(g, "u", ["p160"])  # seen: never promoted
        return mesh, await on_path(g, mesh, "u", 10, how, [rule])

    mesh, reply = asyncio.run(scenario())
    assert ids(reply)[8:] == ["p150", "p170"] and len(reply.items) == 10
    assert reply.items[8].reasons == ["promoted by rule:new_in"]
    (lookup, timeout), = mesh.called("GetItems")
    assert list(lookup.item_ids) == ["p150", "p170"] and 0 < timeout <= 0.1


def test_stored_rules_apply_by_surface_then_the_requests(mesh_gateway):
    async def scenario():
        mesh, g = await mesh_gateway()
        book = g._recommender.stored_rules
        book.replace([common_pb2.StoredRule(rule=Rule(name="no_p0", exclude=True, match=ItemMatch(item_ids=["p0"])),
                                            surfaces=["home"])], writes_before=0)
        home = await on_path(g, mesh, "cold", 3, "shed:overload", surface="home")
        other = await on_path(g, mesh, "cold", 3, "shed:overload", surface="pdp")
        pinned = await on_path(g, mesh, "cold", 3, "shed:overload", surface="home",
                               rules=[Rule(pin=Pin(item_id="p0", position=0))])  # the stored exclusion holds
        return home, other, pinned

    home, other, pinned = asyncio.run(scenario())
    assert ids(home) == ["p1", "p2", "p3"] and ids(other) == ["p0", "p1", "p2"] and ids(pinned) == ids(home)


def test_a_bad_rule_in_a_recommend_is_invalid_argument_naming_it(mesh_gateway):
    async def scenario():
        mesh, g = await mesh_gateway()
        request = recommendations_pb2.RecommendRequest(user_id="u", rules=[
            Rule(exclude=True, match=ItemMatch(item_ids=["1"])), Rule(boost=float("nan"),
                                                                      match=ItemMatch(item_ids=["1"]))])
        await g.Recommend(request, Context(1.0))

    with pytest.raises(AssertionError, match=r"INVALID_ARGUMENT: rules\[1\].boost"):
        asyncio.run(scenario())
