"""Every answer path of the gateway - in full, browned out, shed (overload, late arrival, slow
mesh) and each fallback - applies the same rules: the user's exclusions (what they have seen,
unless exclude_seen is false, and exclude_item_ids), the request's filters, and k items whenever
k pass them. The mesh here is a fake of the upstreams (tests only), driven through the real
GatewayServicer."""

import asyncio
import time
import types
from unittest import mock

import grpc
import numpy as np
import pytest

from recmesh.common.vectors import to_matrix
from recmesh.v1 import (
    common_pb2,
    encoder_pb2,
    ranker_pb2,
    recommendations_pb2,
    retrieval_pb2,
    updater_pb2,
)
from services.gateway import budget as gateway_budget
from services.gateway import server as gateway_server
from services.gateway.config import GatewaySettings
from services.gateway.shedding import RUNGS

DIM = 4
CATALOG = 200  # item p<i>: popularity falls with i; every tenth (7, 17, ...) a Documentary
POOL = 50  # the gateway's popular pool: a cut of the catalog
ET = common_pb2.EventType


def category(i: int) -> str:
    return "Documentary" if i % 10 == 7 else "Drama"


def attributes(i: int) -> dict[str, common_pb2.AttributeValue]:
    """Item p<i>'s: brand Acme, Bolt or Core in turn; price i % 20 (a text price when i % 11 == 5,
    none when i % 23 == 0); in_stock false every 7th, true the next, else unset."""
    values = {"brand": common_pb2.AttributeValue(text=["Acme", "Bolt", "Core"][i % 3])}
    if i % 11 == 5:
        values["price"] = common_pb2.AttributeValue(text=str(i % 20))
    elif i % 23:
        values["price"] = common_pb2.AttributeValue(number=i % 20)
    if i % 7 in (0, 1):
        values["in_stock"] = common_pb2.AttributeValue(flag=i % 7 == 1)
    return values


def passes(candidate, f: common_pb2.AttributeFilter) -> bool:
    """The fake retrieval's own reading of one attribute filter (common.proto's words)."""
    value = candidate.attributes.get(f.name)
    kind = value.WhichOneof("kind") if value is not None else None
    test = f.WhichOneof("test")
    if test == "any_of":
        met = kind == "text" and value.text in f.any_of.values
    elif test == "range":
        met = (kind == "number" and (not f.range.HasField("min") or value.number >= f.range.min)
               and (not f.range.HasField("max") or value.number <= f.range.max))
    else:
        met = kind == "flag" and value.flag == f.equals
    return met != f.exclude


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())


class Mesh:
    """The upstreams, recording every call; a method named in `down` answers UNAVAILABLE. Users
    have no recent events the catalog knows (the model sees them cold); what they have seen is
    `seen` (events tracked through any gateway)."""

    def __init__(self):
        self.items = [retrieval_pb2.Candidate(item_id=f"p{i}", title=f"T{i}", categories=[category(i)],
                                              popularity=1 - i / CATALOG, attributes=attributes(i))
                      for i in range(CATALOG)]
        self.seen: dict[str, list[str]] = {}
        self.hidden: dict[str, list[str]] = {}  # items hidden or disliked
        self.logged: set[str] = set()  # event ids ever applied: kept after a user is deleted, as the updater does
        self.down: set[str] = set()
        self.calls: list[tuple[str, object, float]] = []
        self.updater = self.retrieval = self.encoder = self.ranker = self

    def _call(self, method: str, request, timeout: float) -> None:
        self.calls.append((method, request, timeout))
        if method in self.down:
            raise unavailable()

    def called(self, method: str) -> list:
        return [(request, timeout) for m, request, timeout in self.calls if m == method]

    def _list(self, items, with_vectors: bool = True) -> retrieval_pb2.CandidateList:
        n = len(items)
        reply = retrieval_pb2.CandidateList(candidates=items, index_version="idx")
        if with_vectors:
            reply.vectors.CopyFrom(to_matrix(np.ones((n, DIM), np.float32)))
            reply.text_vectors.CopyFrom(to_matrix(np.ones((n, DIM), np.float32)))
        return reply

    def _passing(self, f: common_pb2.Filters, limit: int):
        include, exclude, ids = set(f.include_categories), set(f.exclude_categories), set(f.exclude_item_ids)
        return [c for c in self.items if c.item_id not in ids and not exclude & set(c.categories)
                and (not include or include & set(c.categories))
                and all(passes(c, a) for a in f.attributes)][:limit]

    async def Ingest(self, request, timeout):
        self._call("Ingest", request, timeout)
        accepted = 0
        for e in request.events:
            if e.event_id in self.logged:
                continue
            self.logged.add(e.event_id)
            accepted += 1
            if e.type != ET.EVENT_TYPE_SEARCH:
                self.seen.setdefault(e.user_id, []).append(e.item_id)
            if e.type in (ET.EVENT_TYPE_HIDE, ET.EVENT_TYPE_DISLIKE):
                self.hidden.setdefault(e.user_id, []).append(e.item_id)
        return updater_pb2.IngestResponse(accepted=accepted, duplicates=len(request.events) - accepted)

    async def GetUserState(self, request, timeout):
        self._call("GetUserState", request, timeout)
        return updater_pb2.UserState(user_id=request.user_id, seen_item_ids=self.seen.get(request.user_id, []),
                                     hidden_item_ids=self.hidden.get(request.user_id, []))

    async def DeleteUser(self, request, timeout):
        self._call("DeleteUser", request, timeout)
        return updater_pb2.DeleteUserStateResponse(events_deleted=len(self.seen.pop(request.user_id, [])))

    async def TopPopular(self, request, timeout):
        self._call("TopPopular", request, timeout)
        return self._list(self._passing(request.filters, request.limit), request.with_vectors)

    async def EncodeInterest(self, request, timeout):
        self._call("EncodeInterest", request, timeout)
        return encoder_pb2.EncodeInterestResponse(
            query_vector=to_matrix(np.ones((1, DIM), np.float32) if request.query else None), model_version="m")

    async def GetItems(self, request, timeout):
        self._call("GetItems", request, timeout)
        wanted = set(request.item_ids)
        return self._list([c for c in self.items if c.item_id in wanted])

    async def Search(self, request, timeout):
        self._call("Search", request, timeout)
        return self._list(self._passing(request.filters, request.limit))

    async def Rank(self, request, timeout):
        self._call("Rank", request, timeout)
        return ranker_pb2.RankResponse(items=[ranker_pb2.RankedItem(item_id=c.item_id, score=1.0)
                                              for c in request.candidates], model_version="r")

    async def EncodeItems(self, request, timeout):
        self._call("EncodeItems", request, timeout)
        n = len(request.items)
        return encoder_pb2.EncodeItemsResponse(vectors=to_matrix(np.ones((n, DIM), np.float32)),
                                               text_vectors=to_matrix(np.ones((n, DIM), np.float32)))

    async def Upsert(self, request, timeout):
        self._call("Upsert", request, timeout)
        known = {c.item_id: c for c in self.items}
        for it in request.items:  # an existing item keeps its place (popularity); a new one comes last
            if it.item_id in known:
                known[it.item_id].title, known[it.item_id].categories[:] = it.title, it.categories
                known[it.item_id].attributes.clear()
                for name, value in it.attributes.items():
                    known[it.item_id].attributes[name].CopyFrom(value)
            else:
                self.items.append(retrieval_pb2.Candidate(item_id=it.item_id, title=it.title,
                                                          categories=it.categories, attributes=it.attributes))
        return retrieval_pb2.UpsertResponse(upserted=len(request.items))

    async def LogImpressions(self, request, timeout):
        self.impressions = [*getattr(self, "impressions", []), *request.impressions]
        return updater_pb2.LogImpressionsResponse()

    async def close(self):
        pass


class Context:
    def __init__(self, remaining: float | None, still: bool = False):
        """still: the client's remaining time stays `remaining` however long the call takes."""
        self._deadline = None if remaining is None else time.perf_counter() + remaining
        self._still = remaining if still else None

    def time_remaining(self):
        if self._still is not None:
            return self._still
        return None if self._deadline is None else self._deadline - time.perf_counter()

    def invocation_metadata(self):
        return ()

    async def abort(self, code, details):
        raise AssertionError(f"{code.name}: {details}")


async def gateway(monkeypatch, mesh: Mesh, **settings) -> gateway_server.GatewayServicer:
    monkeypatch.setattr(gateway_server.Upstreams, "connect", classmethod(lambda cls, s: mesh))
    g = gateway_server.GatewayServicer(GatewaySettings(popular_pool=POOL, **settings))
    await g._refresh_popular()
    mesh.calls.clear()
    return g


async def track(g, user: str, items: list[str], type_=ET.EVENT_TYPE_PURCHASE) -> None:
    events = [common_pb2.Event(event_id=f"{user}-{i}", user_id=user, item_id=i, type=type_) for i in items]
    await g.TrackEvents(recommendations_pb2.TrackEventsRequest(events=events), Context(5.0))


SHED = ["shed:overload", "shed:late_arrival", RUNGS[-1]]
BROWNOUT = list(RUNGS[:-1])


async def recommend(g, user: str, k: int, how: str = "full", remaining: float = 0.1, query: str = "",
                    session_events=(), **filters) -> recommendations_pb2.RecommendResponse:
    """Recommend along one path: "full", one of SHED or BROWNOUT (forced, not left to timing).
    A late arrival gets `remaining` when under min_admit_ms, else 14 ms."""
    rec = g._recommender
    if how == "shed:overload":
        rec.in_flight = g._s.max_in_flight
    if how == "shed:late_arrival" and remaining >= g._s.min_admit_ms / 1000:
        remaining = 0.014
    if how in RUNGS:  # the mesh slow: the shedding pressure halfway into this rung
        now = time.monotonic()
        for _ in range(10 * (RUNGS.index(how) + 1) - 5):
            rec.shedding.observe(1.0, others_in_flight=3, now=now)
        rec.shedding._draw = lambda: 0.0
    request = recommendations_pb2.RecommendRequest(user_id=user, k=k, query=query,
                                                   filters=common_pb2.Filters(**filters),
                                                   session_events=session_events)
    # The path is forced above, not left to timing: the client's and the budget's clocks stand
    # still, so a stall of this (shared, loaded) host cannot spend a late arrival's ~14 ms (or a
    # shed call's 50) and turn a rule's test into a timing test.
    still = time.perf_counter()
    try:
        with mock.patch.object(gateway_budget, "time", types.SimpleNamespace(perf_counter=lambda: still)):
            return await g.Recommend(request, Context(remaining, still=True))
    finally:
        rec.in_flight = 0
        rec.shedding.pressure = 0.0


def ids(reply) -> list[str]:
    return [i.item_id for i in reply.items]


@pytest.mark.parametrize("how", SHED)
def test_a_shed_answer_leaves_out_what_the_user_just_did(monkeypatch, how):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", ["p0", "p1", "p2"])  # the three most popular
        mesh.down = {"GetUserState"}  # what the gateway itself learned must be enough
        reply = await recommend(g, "u", 3, how)
        return mesh, reply

    mesh, reply = asyncio.run(scenario())
    assert reply.degraded[0] == how
    assert ids(reply) == ["p3", "p4", "p5"]


def test_the_anonymous_fallback_leaves_out_what_the_gateway_knows_the_user_saw(monkeypatch):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        mesh.seen["v"] = ["p0", "p1"]  # tracked through another replica: learned from GetUserState
        first = await recommend(g, "v", 3)
        await track(g, "v", ["p2"])  # and one through this gateway
        mesh.down = {"GetUserState"}
        anonymous = await recommend(g, "v", 3)
        return first, anonymous

    first, anonymous = asyncio.run(scenario())
    assert not first.degraded and ids(first) == ["p2", "p3", "p4"]
    assert "fallback:anonymous" in anonymous.degraded
    assert ids(anonymous) == ["p3", "p4", "p5"]


@pytest.mark.parametrize("how", SHED)
def test_a_shed_call_asks_the_updater_about_an_unknown_user_within_the_clients_time(monkeypatch, how):
    remaining = 0.014 if how == "shed:late_arrival" else 0.05

    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        mesh.seen["w"] = ["p0", "p1", "p2"]  # never seen by this gateway (tracked through another replica)
        shed = await recommend(g, "w", 3, how, remaining=remaining)
        asked = mesh.called("GetUserState")
        again = await recommend(g, "w", 3, how, remaining=remaining)  # now known: not asked
        no_time = await recommend(g, "x", 3, how, remaining=0.005)
        return mesh, asked, shed, again, no_time

    mesh, asked, shed, again, no_time = asyncio.run(scenario())
    assert list(shed.degraded) == [how] and ids(shed) == ["p3", "p4", "p5"]
    margin = GatewaySettings().reply_margin_ms / 1000
    assert len(asked) == 1 and asked[0][1] <= remaining - margin + 1e-9  # + float rounding
    assert ids(again) == ["p3", "p4", "p5"]
    assert len(mesh.called("GetUserState")) == 1  # neither the known user nor the one without time
    assert list(no_time.degraded)[0] in SHED and len(no_time.items) == 3


@pytest.mark.parametrize("how", ["full", *BROWNOUT, *SHED])
def test_the_requests_exclusions_hold_and_exclude_seen_false_lets_seen_items_back(monkeypatch, how):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", ["p0", "p1"])
        excluded = await recommend(g, "u", 3, how, exclude_item_ids=["p3"])
        seen_back = await recommend(g, "u", 3, how, exclude_seen=False, exclude_item_ids=["p1"])
        return excluded, seen_back

    excluded, seen_back = asyncio.run(scenario())
    assert ids(excluded) == ["p2", "p4", "p5"]
    assert ids(seen_back) == ["p0", "p2", "p3"]


EVERY_PATH = ["full", *BROWNOUT, *SHED, "fallback:anonymous", "fallback:popular_candidates",
              "fallback:retrieval_order"]
DOWN = {"fallback:anonymous": {"GetUserState"}, "fallback:popular_candidates": {"Search"},
        "fallback:retrieval_order": {"Rank"}}


@pytest.mark.parametrize("how", EVERY_PATH)
@pytest.mark.parametrize("hiding", [ET.EVENT_TYPE_HIDE, ET.EVENT_TYPE_DISLIKE])
def test_a_hidden_or_disliked_item_never_comes_back_even_with_exclude_seen_false(monkeypatch, how, hiding):
    query = "a film" if how == "fallback:popular_candidates" else ""

    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", ["p0"])
        await track(g, "u", ["p1"], hiding)
        mesh.down = DOWN.get(how, set())
        path = how if how in RUNGS or how in SHED else "full"
        return [await recommend(g, "u", 3, path, query=query, exclude_seen=False),
                await recommend(g, "u", 3, path, query=query)]

    seen_back, plain = asyncio.run(scenario())
    if how != "full":
        assert how in seen_back.degraded
    assert ids(seen_back) == ["p0", "p2", "p3"]  # seen p0 back; hidden p1 never
    assert ids(plain) == ["p2", "p3", "p4"]


@pytest.mark.parametrize("how", EVERY_PATH)
def test_a_guests_inline_session_is_left_out_like_tracked_events_on_every_path(monkeypatch, how):
    query = "a film" if how == "fallback:popular_candidates" else ""
    inline = [common_pb2.Event(item_id="p0", type=ET.EVENT_TYPE_VIEW),
              common_pb2.Event(item_id="p1", type=ET.EVENT_TYPE_HIDE),
              common_pb2.Event(query="a film", type=ET.EVENT_TYPE_SEARCH)]

    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        mesh.down = DOWN.get(how, set())
        path = how if how in RUNGS or how in SHED else "full"
        guest = await recommend(g, "", 3, path, query=query, session_events=inline)
        asked = mesh.called("GetUserState")
        await track(g, "u", ["p2"])
        user = await recommend(g, "u", 3, path, query=query, session_events=inline)
        seen_back = await recommend(g, "u", 3, path, query=query, session_events=inline, exclude_seen=False)
        return guest, asked, user, seen_back

    guest, asked, user, seen_back = asyncio.run(scenario())
    assert ids(guest) == ["p2", "p3", "p4"] and not asked  # a guest without an id: no updater read
    assert "seen_items:unknown" not in guest.degraded
    assert ids(user) == ["p3", "p4", "p5"]  # stored and inline alike
    assert ids(seen_back) == ["p0", "p2", "p3"]


@pytest.mark.parametrize("how", ["full", "shed:overload"])
def test_delete_user_through_the_gateway_forgets_what_they_saw(monkeypatch, how):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", ["p0", "p1"])
        before = await recommend(g, "u", 2, how)
        await g.DeleteUser(recommendations_pb2.DeleteUserRequest(user_id="u"), Context(5.0))
        after = await recommend(g, "u", 2, how)
        return before, after

    before, after = asyncio.run(scenario())
    assert ids(before) == ["p2", "p3"] and ids(after) == ["p0", "p1"]


DOCUMENTARIES = [f"p{i}" for i in range(7, CATALOG, 10)]


@pytest.mark.parametrize("how", ["full", *BROWNOUT, *SHED, "fallback:anonymous", "fallback:popular_candidates",
                                  "fallback:retrieval_order"])
def test_a_narrow_filter_gets_k_matching_items_on_every_path(monkeypatch, how):
    """The pool holds 5 Documentaries; the catalog 20: k=10 must come back, and also after the
    user's seen items take some of them."""
    down = {"fallback:anonymous": {"GetUserState"}, "fallback:popular_candidates": {"Search"},
            "fallback:retrieval_order": {"Rank"}}.get(how, set())
    query = "a film" if how == "fallback:popular_candidates" else ""  # a query needs retrieval's Search

    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", DOCUMENTARIES[:3])
        mesh.down = down
        return await recommend(g, "u", 10, how if how in RUNGS or how in SHED else "full", query=query,
                               include_categories=["Documentary"])

    reply = asyncio.run(scenario())
    if how != "full":
        assert how in reply.degraded
    assert ids(reply) == DOCUMENTARIES[3:13]


ACME_5_TO_9 = [common_pb2.AttributeFilter(name="brand", any_of=common_pb2.StringSet(values=["Acme"])),
               common_pb2.AttributeFilter(name="price", range=common_pb2.NumberRange(min=5, max=9))]
# Worked out from the catalog's definition, not by the rule under test: Acme (i % 3 == 0), a number
# price in [5, 9] - bounds included; a text price or none fails.
ACME_5_TO_9_IDS = [f"p{i}" for i in range(CATALOG) if i % 3 == 0 and 5 <= i % 20 <= 9 and i % 11 != 5 and i % 23]
NOT_OUT_OF_STOCK = common_pb2.AttributeFilter(name="in_stock", equals=False, exclude=True)


def test_the_attribute_catalog_is_what_the_paths_test_needs():
    # Both bounds met (p45: 5, p9: 9); p27 (price "7", a text) and p69 (no price) left out.
    assert ACME_5_TO_9_IDS[:6] == ["p6", "p9", "p45", "p48", "p66", "p87"]
    assert attributes(27)["price"].text == "7" and "price" not in attributes(69)
    assert len([i for i in ACME_5_TO_9_IDS if int(i[1:]) < POOL]) == 4 and len(ACME_5_TO_9_IDS) >= 13


@pytest.mark.parametrize("how", ["full", "full+query", *BROWNOUT, *[f"{b}+query" for b in BROWNOUT], *SHED,
                                 "fallback:anonymous", "fallback:popular_candidates", "fallback:retrieval_order"])
def test_a_brand_and_a_price_range_hold_on_every_path(monkeypatch, how):
    """The pool holds 4 items of brand Acme priced 5..9; the catalog more: k=10 must come back,
    each passing both tests, with its attributes, also after the user's seen items take some.
    "+query": the user types a query, so retrieval's Search finds the candidates (without one,
    this user has no signal: the popular candidates answer)."""
    how, _, typed = how.partition("+")
    down = {"fallback:anonymous": {"GetUserState"}, "fallback:popular_candidates": {"Search"},
            "fallback:retrieval_order": {"Rank"}}.get(how, set())
    query = "a printer" if typed or how == "fallback:popular_candidates" else ""

    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", ACME_5_TO_9_IDS[:3])
        mesh.down = down
        return mesh, await recommend(g, "u", 10, how if how in RUNGS or how in SHED else "full", query=query,
                                     attributes=ACME_5_TO_9)

    mesh, reply = asyncio.run(scenario())
    if how != "full":
        assert how in reply.degraded
    assert bool(mesh.called("Search")) == bool(query)
    assert ids(reply) == ACME_5_TO_9_IDS[3:13]
    for item in reply.items:
        assert item.attributes["brand"].text == "Acme" and 5 <= item.attributes["price"].number <= 9
    sent = [request.filters.attributes for m in ("Search", "TopPopular") for request, _ in mesh.called(m)]
    assert sent and all(list(attributes) == ACME_5_TO_9 for attributes in sent)  # retrieval asked with them


@pytest.mark.parametrize("how", ["full", "shed:overload", "fallback:popular_candidates"])
def test_an_exclusion_leaves_out_those_that_pass_and_keeps_those_without_the_attribute(monkeypatch, how):
    down = {"fallback:popular_candidates": {"Search"}}.get(how, set())

    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        mesh.down = down
        return await recommend(g, "u", 12, "shed:overload" if how == "shed:overload" else "full",
                               query="a printer" if down else "", attributes=[NOT_OUT_OF_STOCK])

    reply = asyncio.run(scenario())
    # p0, p7 are out of stock; p1, p8 in stock; the rest say nothing and pass.
    assert ids(reply) == [f"p{i}" for i in range(14) if i % 7]


def test_the_whole_catalog_in_the_pool_answers_attribute_filters_alone(monkeypatch):
    async def scenario():
        mesh = Mesh()
        mesh.items = mesh.items[:30]  # the pool (50 asked) holds the whole catalog
        g = await gateway(monkeypatch, mesh)
        whole = await recommend(g, "u", 10, "shed:overload", attributes=ACME_5_TO_9)
        return mesh, whole

    mesh, whole = asyncio.run(scenario())
    assert ids(whole) == ["p6", "p9"] and not mesh.called("TopPopular")


def test_an_item_upserted_with_new_attributes_is_not_answered_with_its_old_ones(monkeypatch):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        changed = common_pb2.Item(item_id="p6", title="T6", categories=["Drama"],
                                  attributes={"brand": common_pb2.AttributeValue(text="Bolt")})
        await g.UpsertItems(recommendations_pb2.UpsertItemsRequest(items=[changed]), Context(5.0))
        paths = {how: await recommend(g, "cold", 3, how, attributes=ACME_5_TO_9) for how in ("full", "shed:overload")}
        await asyncio.sleep(0.01)  # the pool refresh the upsert started
        bolt = await recommend(g, "cold", 1, "shed:overload", attributes=[
            common_pb2.AttributeFilter(name="brand", any_of=common_pb2.StringSet(values=["Bolt"]))])
        return mesh, paths, bolt

    mesh, paths, bolt = asyncio.run(scenario())
    assert [request.items[0].attributes["brand"].text for request, _ in mesh.called("Upsert")] == ["Bolt"]
    for reply in paths.values():
        assert ids(reply) == ["p9", "p45", "p48"]
    assert ids(bolt) == ["p1"]


@pytest.mark.parametrize("how", ["full", *BROWNOUT, *SHED])
def test_a_user_who_has_seen_the_whole_pool_still_gets_k_items(monkeypatch, how):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", [f"p{i}" for i in range(POOL + 5)], ET.EVENT_TYPE_VIEW)
        return await recommend(g, "u", 10, how)

    reply = asyncio.run(scenario())
    assert ids(reply) == [f"p{i}" for i in range(POOL + 5, POOL + 15)]


def test_the_pool_alone_answers_when_it_is_the_whole_catalog_or_holds_enough(monkeypatch):
    async def scenario():
        mesh = Mesh()
        mesh.items = mesh.items[:30]  # the pool (50 asked) holds the whole catalog
        g = await gateway(monkeypatch, mesh)
        whole = await recommend(g, "u", 10, "shed:overload", include_categories=["Documentary"])
        enough = await recommend(g, "u", 3, "shed:overload", include_categories=["Documentary"])
        asked = len(mesh.called("TopPopular"))
        new = common_pb2.Item(item_id="new", title="A new film", categories=["Documentary"])
        await g.UpsertItems(recommendations_pb2.UpsertItemsRequest(items=[new]), Context(5.0))
        grown = await recommend(g, "u", 10, "shed:overload", include_categories=["Documentary"])
        return asked, whole, enough, grown

    asked, whole, enough, grown = asyncio.run(scenario())
    assert ids(whole) == ["p7", "p17", "p27"] and ids(enough) == ["p7", "p17", "p27"]
    assert asked == 0
    assert ids(grown) == ["p7", "p17", "p27", "new"]  # an item added since: the pool is no longer all


def test_every_source_is_asked_for_at_least_k_candidates(monkeypatch):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh, candidates=5)
        reply = await recommend(g, "u", 10, query="a film")
        return mesh, reply

    mesh, reply = asyncio.run(scenario())
    assert not reply.degraded and len(reply.items) == 10
    assert mesh.called("Search")[0][0].limit >= 10


# Found by the attack on the first fix (same kinds: exclusions on every path, k on every path,
# limits that agree, counts of effects).

def test_an_answer_that_cannot_learn_what_the_user_saw_says_so(monkeypatch):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        mesh.seen["s"] = ["p0", "p1"]  # tracked through another replica
        no_time = await recommend(g, "s", 3, "shed:late_arrival", remaining=0.005)  # no time to ask
        mesh.down = {"GetUserState"}
        anonymous = await recommend(g, "s", 3)
        mesh.down = set()
        await recommend(g, "s", 3)  # a full answer: this gateway now holds all the user saw
        mesh.down = {"GetUserState"}
        known = await recommend(g, "s", 3, "shed:late_arrival", remaining=0.005)
        known_anonymous = await recommend(g, "s", 3)
        return no_time, anonymous, known, known_anonymous

    no_time, anonymous, known, known_anonymous = asyncio.run(scenario())
    assert no_time.degraded[0] == "shed:late_arrival" and "seen_items:unknown" in no_time.degraded
    assert "fallback:anonymous" in anonymous.degraded and "seen_items:unknown" in anonymous.degraded
    for reply in (known, known_anonymous):
        assert "seen_items:unknown" not in reply.degraded and ids(reply) == ["p2", "p3", "p4"]


def test_a_retry_after_delete_user_does_not_bring_the_users_items_back_into_the_gateway(monkeypatch):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "d", ["p0", "p1", "p2"])
        await g.DeleteUser(recommendations_pb2.DeleteUserRequest(user_id="d"), Context(5.0))
        events = [common_pb2.Event(event_id=f"d-p{i}", user_id="d", item_id=f"p{i}",
                                   type=ET.EVENT_TYPE_PURCHASE) for i in range(3)]
        retry = await g.TrackEvents(recommendations_pb2.TrackEventsRequest(events=events), Context(5.0))
        shed = await recommend(g, "d", 3, "shed:late_arrival", remaining=0.014)
        return retry, shed

    retry, shed = asyncio.run(scenario())
    assert retry.accepted == 0 and retry.duplicates == 3
    assert ids(shed) == ["p0", "p1", "p2"] and "seen_items:unknown" not in shed.degraded  # a fresh user


def test_the_gateway_holds_no_more_seen_items_than_retrieval_accepts_as_exclusions(monkeypatch):
    from recmesh.common import limits

    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        many = [f"x{i}" for i in range(limits.SEEN_ITEMS + 1500)]
        for start in range(0, len(many), 1000):
            await track(g, "h", many[start:start + 1000])
        mesh.down = {"GetUserState"}
        reply = await recommend(g, "h", 10, "shed:overload", include_categories=["Documentary"])
        return mesh, reply

    mesh, reply = asyncio.run(scenario())
    assert len(reply.items) == 10  # the pool holds 5 Documentaries: the rest came from retrieval
    sent = [request for request, _ in mesh.called("TopPopular")]
    assert sent and all(len(r.filters.exclude_item_ids) <= limits.IDS_PER_REQUEST for r in sent)


def test_an_item_upserted_with_new_categories_is_not_answered_with_its_old_ones(monkeypatch):
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        item = common_pb2.Item(item_id="p0", title="T0 (re-cut)", categories=["Documentary"])
        await g.UpsertItems(recommendations_pb2.UpsertItemsRequest(items=[item]), Context(5.0))
        paths = {how: await recommend(g, "cold", 3, how, exclude_categories=["Documentary"])
                 for how in ("full", "shed:overload")}
        await asyncio.sleep(0.01)  # the pool refresh the upsert started
        back = await recommend(g, "cold", 3, include_categories=["Documentary"])
        return paths, back

    paths, back = asyncio.run(scenario())
    for reply in paths.values():
        assert "p0" not in ids(reply) and len(reply.items) == 3
    assert ids(back)[0] == "p0" and list(back.items[0].categories) == ["Documentary"]


def test_an_upsert_larger_than_the_stages_accept_is_refused_at_the_door(monkeypatch):
    from recmesh.common import limits

    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        wide = "\U0001f3ac" * limits.DESCRIPTION_CHARS  # 4 bytes a character in UTF-8
        items = [common_pb2.Item(item_id=f"big{i}", title="Big", description=wide,
                                 tags=["\U0001f3ac" * limits.LABEL_CHARS] * limits.LABELS_PER_ITEM)
                 for i in range(200)]
        with pytest.raises(AssertionError, match="INVALID_ARGUMENT: items: at most"):
            await g.UpsertItems(recommendations_pb2.UpsertItemsRequest(items=items), Context(5.0))
        return mesh

    mesh = asyncio.run(scenario())
    assert not mesh.called("EncodeItems")


def test_a_user_past_the_seen_bound_is_asked_of_the_updater_not_guessed(monkeypatch):
    """Found by attack: past 5000 seen items the cache dropped the oldest by arrival, the
    updater drops the oldest by event time - a late event for a new item made the cache drop
    (and shed answers show) a seen item the updater still held."""
    from recmesh.common import limits

    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        mesh.seen["big"] = ["p0"] + [f"x{i}" for i in range(limits.SEEN_ITEMS - 1)]  # p0 seen longest ago
        await recommend(g, "big", 3)  # a full answer: the whole set read
        late = common_pb2.Event(event_id="late", user_id="big", item_id="y", type=ET.EVENT_TYPE_VIEW,
                                timestamp_ms=1_000_000_000_000)  # older than everything: the updater drops it
        await g.TrackEvents(recommendations_pb2.TrackEventsRequest(events=[late]), Context(5.0))
        mesh.seen["big"] = mesh.seen["big"][:limits.SEEN_ITEMS]  # as the updater keeps it
        return await recommend(g, "big", 3, "shed:late_arrival", remaining=0.014)

    shed = asyncio.run(scenario())
    assert "p0" not in ids(shed) and "seen_items:unknown" not in shed.degraded


@pytest.mark.parametrize("how", ["full", *BROWNOUT, *SHED])
def test_every_path_under_an_experiment_names_the_variant_and_logs_the_answer_shown(monkeypatch, how):
    """The variant is the user's whatever the path; the answer's items, latency and degraded
    flag go to the experiment's outcomes (previews excepted)."""
    async def scenario():
        mesh = Mesh()
        g = await gateway(monkeypatch, mesh)
        g._recommender.experiments.put(common_pb2.Experiment(
            name="e", state=common_pb2.EXPERIMENT_STATE_RUNNING, created_ms=1, variants=[
                common_pb2.ExperimentVariant(name="A", share=0.5), common_pb2.ExperimentVariant(name="B", share=0.5)]))
        reply = await recommend(g, "u-exp", 4, how)
        await g._recommender.impressions.flush(timeout_s=1.0)
        return mesh, reply, g._recommender.experiments.assign("u-exp").label

    mesh, reply, label = asyncio.run(scenario())
    assert reply.variant == label
    tagged = [i for i in mesh.impressions if i.experiment]
    assert len(tagged) == 1 and f"{tagged[0].experiment}/{tagged[0].variant}" == label
    assert [i.item_id for i in tagged[0].items] == ids(reply) and [i.position for i in tagged[0].items] == [0, 1, 2, 3]
    assert tagged[0].request_id == reply.request_id and tagged[0].degraded == bool(reply.degraded)
    assert tagged[0].latency_ms == pytest.approx(reply.total_ms) and not tagged[0].items[0].features
    assert bool(reply.degraded) == (how != "full")
