"""SimilarItems through the real GatewayServicer over a fake of the upstreams (tests only; the
mesh end to end is tests/integration/test_similar_items.py): every answer path - in full, browned
out, shed, retrieval or the anchor's lookup down - leaves out the anchor and the user's
exclusions and applies the request's filters; the anchor's vectors choose the neighbours; bad
input is named."""

import asyncio

import numpy as np
import pytest

from recmesh.common.vectors import from_matrix, to_matrix
from recmesh.v1 import common_pb2, encoder_pb2, recommendations_pb2, retrieval_pb2, updater_pb2
from services.gateway.config import GatewaySettings
from services.gateway.shedding import RUNGS
from tests.unit.test_answer_paths import CATALOG, DIM, ET, POOL, Context, Mesh, gateway, ids, track

SHED = ["shed:overload", "shed:late_arrival", RUNGS[-1]]
BROWNOUT = list(RUNGS[:-1])
DOCUMENTARIES = [f"p{i}" for i in range(7, CATALOG, 10)]


def shift(i: int) -> float:
    """Item p<i>'s own direction in the catalog space, in -0.5..0.5: what behaviour and a user's
    interest tell apart among items of one category."""
    return ((i * 37) % 11 - 5) / 10


def catalog_vector(i: int) -> np.ndarray:
    documentary = i % 10 == 7
    return np.array([documentary, not documentary, shift(i), 0], np.float32)


def text_vector(i: int) -> np.ndarray:
    documentary = i % 10 == 7
    return np.array([documentary, not documentary, 0, 0.01 * (i % 5)], np.float32)


class SimilarMesh(Mesh):
    """Mesh with each item's own vectors, GetItems, a Search that reports each candidate's query
    similarity, and users whose recent events are those tracked (the interest: their items' mean)."""

    def __init__(self):
        super().__init__()
        self.recent: dict[str, list[common_pb2.Event]] = {}

    def _vectors(self, items, text: bool = True):
        index = {c.item_id: int(c.item_id[1:]) if c.item_id[1:].isdigit() else -1 for c in items}
        catalog = np.stack([catalog_vector(index[c.item_id]) for c in items]) if items else None
        texts = np.stack([text_vector(index[c.item_id]) for c in items]) if items and text else None
        return catalog, texts

    def _list(self, items, with_vectors: bool = True):
        reply = retrieval_pb2.CandidateList(candidates=items, index_version="idx")
        if with_vectors and items:
            catalog, texts = self._vectors(items)
            reply.vectors.CopyFrom(to_matrix(catalog))
            reply.text_vectors.CopyFrom(to_matrix(texts))
        return reply

    async def GetItems(self, request, timeout):
        self._call("GetItems", request, timeout)
        known = {c.item_id: c for c in self.items}
        found = [known[i] for i in request.item_ids if i in known]
        reply = self._list(found, request.with_vectors)
        if request.catalog_vectors_only:
            reply.ClearField("text_vectors")
        return reply

    async def Search(self, request, timeout):
        self._call("Search", request, timeout)
        reply = self._list(self._passing(request.filters, request.limit), request.with_vectors)
        query = from_matrix(request.query)
        if len(query) and reply.candidates:
            _, texts = self._vectors(list(reply.candidates))
            for c, sim in zip(reply.candidates, texts @ query[0] / np.linalg.norm(query[0]), strict=True):
                c.query_similarity = float(sim)
        return reply

    async def Ingest(self, request, timeout):
        reply = await super().Ingest(request, timeout)
        for e in request.events:
            self.recent.setdefault(e.user_id, []).append(common_pb2.Event(user_id=e.user_id, item_id=e.item_id,
                                                                          type=e.type))
        return reply

    async def GetUserState(self, request, timeout):
        self._call("GetUserState", request, timeout)
        recent = self.recent.get(request.user_id, [])
        return updater_pb2.UserState(
            user_id=request.user_id, seen_item_ids=self.seen.get(request.user_id, []), recent=recent,
            event_count=len(recent), hidden_item_ids=self.hidden.get(request.user_id, []),
            disliked_item_ids=[e.item_id for e in recent if e.type == ET.EVENT_TYPE_DISLIKE])

    async def EncodeInterest(self, request, timeout):
        self._call("EncodeInterest", request, timeout)
        history = from_matrix(request.item_vectors)
        return encoder_pb2.EncodeInterestResponse(
            interest=to_matrix(history.mean(axis=0) if len(history) else None),
            query_vector=to_matrix(np.array([[1, 0, 0, 0]], np.float32) if request.query else None),
            model_version="m")


def similar(g, how: str = "full", remaining: float = 0.1, **fields) -> recommendations_pb2.RecommendResponse:
    """SimilarItems along one path: "full", one of SHED or BROWNOUT (forced, not left to timing)."""
    rec = g._recommender
    if how == "shed:overload":
        rec.in_flight = g._s.max_in_flight
    if how == "shed:late_arrival":
        remaining = 0.014
    if how in RUNGS:
        for _ in range(10 * (RUNGS.index(how) + 1) - 5):
            rec.shedding.observe(1.0, others_in_flight=3)
        rec.shedding._draw = lambda: 0.0
    filters = common_pb2.Filters(**fields.pop("filters", {}))
    request = recommendations_pb2.SimilarItemsRequest(filters=filters, **fields)

    async def call():
        try:
            return await g.SimilarItems(request, Context(remaining))
        finally:
            rec.in_flight = 0
            rec.shedding.pressure = 0.0

    return call()


def test_an_items_neighbours_share_its_category_and_never_include_it(monkeypatch):
    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        return mesh, await similar(g, item_id="p7", k=5)

    mesh, reply = asyncio.run(scenario())
    assert not reply.degraded and len(reply.items) == 5
    assert "p7" not in ids(reply) and set(ids(reply)) <= set(DOCUMENTARIES)
    # Warm (popularity > 0): both its catalog vector (behaviour) and its text vector search.
    (search, timeout), = mesh.called("Search")
    assert search.session.rows == 1 and search.query.rows == 1 and "p7" in search.filters.exclude_item_ids
    assert timeout <= GatewaySettings().retrieval_cap_ms / 1000
    # Behaviour orders the documentaries: nearest p7's own direction first.
    shifts = [shift(int(i[1:])) for i in ids(reply)]
    assert shifts == sorted(shifts, key=lambda s: abs(s - shift(7)))
    assert all("shares Documentary with T7" in item.reasons for item in reply.items)
    assert reply.versions["index"] == "idx" and reply.items[0].score >= reply.items[-1].score


def test_a_new_item_without_events_is_matched_by_its_text_alone(monkeypatch):
    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        mesh.items.append(retrieval_pb2.Candidate(item_id="p1007", title="A new documentary",
                                                  categories=["Documentary"]))  # popularity 0
        return mesh, await similar(g, item_id="p1007", k=5)

    mesh, reply = asyncio.run(scenario())
    (search, _), = mesh.called("Search")
    assert search.session.rows == 0 and search.query.rows == 1
    assert "p1007" not in ids(reply) and set(ids(reply)) <= set(DOCUMENTARIES)
    assert "similar description" in reply.items[0].reasons


def test_a_free_text_is_encoded_as_a_query_and_matched_by_text(monkeypatch):
    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        return mesh, await similar(g, text="  a film about whales  ", k=5)

    mesh, reply = asyncio.run(scenario())
    (encode, _), = mesh.called("EncodeInterest")
    assert encode.query == "a film about whales" and not encode.history
    assert set(ids(reply)) <= set(DOCUMENTARIES) and reply.versions["encoder"] == "m"
    assert reply.items[0].reasons[0] == "matches the text given"


def test_the_users_interest_reorders_the_neighbours_and_their_seen_items_stay_out(monkeypatch):
    liked = ["p8", "p19", "p30"]  # Dramas, each of shift 0.5: the interest leans that way

    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        alone = await similar(g, item_id="p7", k=5)
        await track(g, "u", liked + ["p87"])
        with_user = await similar(g, item_id="p7", k=5, user_id="u")
        return alone, with_user

    assert {shift(int(i[1:])) for i in liked} == {0.5}
    alone, with_user = asyncio.run(scenario())
    assert not with_user.degraded and "p87" in ids(alone) and "p87" not in ids(with_user)
    assert ids(with_user) != ids(alone) and set(ids(with_user)) <= set(DOCUMENTARIES)
    assert shift(int(ids(with_user)[0][1:])) > shift(int(ids(alone)[0][1:]))
    assert "fits your interests" in with_user.items[0].reasons


@pytest.mark.parametrize("how", ["full", *BROWNOUT, *SHED, "fallback:popular_candidates", "anchor_from_pool",
                                 "anchor_unknown", "text", "text_encoder_down"])
def test_the_anchor_the_filters_and_the_users_exclusions_hold_on_every_path(monkeypatch, how):
    """The pool holds 5 Documentaries, the catalog 20; the user has seen 3 and excludes one:
    k=10 Documentaries come back on every path, none of them excluded, never the anchor."""
    down = {"fallback:popular_candidates": {"Search"}, "anchor_from_pool": {"GetItems", "Search"},
            "anchor_unknown": {"GetItems", "Search"}, "text_encoder_down": {"EncodeInterest"}}.get(how, set())
    anchor = {"anchor_unknown": {"item_id": "p157"}, "text": {"text": "a documentary"},
              "text_encoder_down": {"text": "a documentary"}}.get(how, {"item_id": "p7"})

    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", DOCUMENTARIES[2:5])
        mesh.down = down
        reply = await similar(g, how if how in RUNGS or how in SHED else "full", user_id="u", k=10,
                              filters={"include_categories": ["Documentary"], "exclude_item_ids": ["p57"]},
                              **anchor)
        back = await similar(g, how if how in RUNGS or how in SHED else "full", user_id="u", k=10,
                             filters={"exclude_seen": False}, **anchor)
        return mesh, reply, back

    mesh, reply, back = asyncio.run(scenario())
    if how in SHED or how in BROWNOUT[1:]:
        assert reply.degraded[0] == how
    if down:
        assert "fallback:popular_candidates" in reply.degraded
    if how in ("anchor_unknown", "text_encoder_down"):
        assert any(r.startswith("anchor:") for r in reply.degraded)
    assert RUNGS[0] not in reply.degraded  # no ranker here: browning it out skips nothing
    assert len(reply.items) == 10 and all(i in DOCUMENTARIES for i in ids(reply)), ids(reply)
    never = {anchor["item_id"]} if "item_id" in anchor else set()
    assert not {*never, "p57", *DOCUMENTARIES[2:5]} & set(ids(reply))
    assert not never & set(ids(back)) and len(back.items) == 10
    if how in ("full", "fallback:popular_candidates", "anchor_from_pool", *SHED, *BROWNOUT):
        # The anchor's category first, also from the pool: the seen Documentaries come back.
        assert set(DOCUMENTARIES[2:5]) & set(ids(back)), ids(back)


@pytest.mark.parametrize("how", ["full", "shed:overload", "fallback:popular_candidates"])
def test_hidden_and_disliked_items_never_come_back_and_a_dislike_pushes_its_likes_down(monkeypatch, how):
    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", ["p17"], ET.EVENT_TYPE_HIDE)
        await track(g, "u", ["p27"], ET.EVENT_TYPE_DISLIKE)
        mesh.down = {"Search"} if how == "fallback:popular_candidates" else set()
        return await similar(g, how if how in SHED else "full", item_id="p7", user_id="u", k=10,
                             filters={"exclude_seen": False})

    reply = asyncio.run(scenario())
    assert len(reply.items) == 10 and not {"p7", "p17", "p27"} & set(ids(reply))
    pushed = [item for item in reply.items if any(r == "ranked lower: like T27, which you disliked"
                                                  for r in item.reasons)]
    if how == "shed:overload":  # no history read at the door: left out, not pushed
        assert not pushed
    else:
        assert pushed and all("Documentary" in item.categories for item in pushed)  # like T27


@pytest.mark.parametrize("how", ["full", "shed:overload", "fallback:popular_candidates"])
def test_business_rules_are_the_last_step_on_every_path_and_never_bring_the_anchor_back(monkeypatch, how):
    rules = [common_pb2.Rule(name="no_17_27", exclude=True, match=common_pb2.ItemMatch(item_ids=["p17", "p27"])),
             common_pb2.Rule(name="lift", boost=1000.0, match=common_pb2.ItemMatch(item_ids=["p87"])),
             common_pb2.Rule(name="feature", pin=common_pb2.Pin(item_id="p197", position=1)),
             common_pb2.Rule(name="self", pin=common_pb2.Pin(item_id="p7", position=2))]

    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        mesh.down = {"Search"} if how == "fallback:popular_candidates" else set()
        return await similar(g, how if how in SHED else "full", item_id="p7", k=5, rules=rules,
                             filters={"include_categories": ["Documentary"]})

    reply = asyncio.run(scenario())
    assert len(reply.items) == 5 and set(ids(reply)) <= set(DOCUMENTARIES)
    assert not {"p7", "p17", "p27"} & set(ids(reply))  # the anchor is no candidate: not even a pin brings it
    assert ids(reply)[:2] == ["p87", "p197"]
    assert reply.items[0].reasons[0] == "boosted ×1e+03 by rule:lift"


def test_an_unknown_item_is_not_found_and_nothing_is_searched(monkeypatch):
    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        with pytest.raises(AssertionError, match=r"NOT_FOUND: item_id: no item 'nope'"):
            await similar(g, item_id="nope")
        return mesh

    mesh = asyncio.run(scenario())
    assert not mesh.called("Search")


def test_an_anchor_looked_up_once_is_served_from_the_gateways_cache_until_upserted(monkeypatch):
    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        for _ in range(3):
            before = await similar(g, item_id="p107", k=3)
        asked = len(mesh.called("GetItems"))
        item = common_pb2.Item(item_id="p107", title="T107 (re-cut)", categories=["Drama"])
        await g.UpsertItems(recommendations_pb2.UpsertItemsRequest(items=[item]), Context(5.0))
        after = await similar(g, item_id="p107", k=3)
        return asked, len(mesh.called("GetItems")), before, after

    asked, total, before, after = asyncio.run(scenario())
    assert asked == 1 and total == 2
    assert "shares Documentary with T107" in before.items[0].reasons
    assert not [r for item in after.items for r in item.reasons if "T107" in r and "re-cut" not in r]


@pytest.mark.parametrize("fields, field", [
    ({}, "anchor"),
    ({"item_id": ""}, "item_id"),
    ({"item_id": "\u200b"}, "item_id"),
    ({"item_id": "x" * 129}, "item_id"),
    ({"text": " \u200b "}, "text"),
    ({"text": "x" * 1001}, "text"),
    ({"item_id": "p1", "k": 0}, "k"),
    ({"item_id": "p1", "k": 101}, "k"),
    ({"item_id": "p1", "user_id": "\u200b"}, "user_id"),
    ({"item_id": "p1", "filters": {"include_categories": [""]}}, "filters.include_categories[0]"),
    ({"item_id": "p1", "filters": {"attributes": [common_pb2.AttributeFilter(name="price")]}},
     "filters.attributes[0]"),
    ({"item_id": "p1", "rules": [common_pb2.Rule(name="r", boost=-2.0,
                                                  match=common_pb2.ItemMatch(categories=["Drama"]))]},
     "rules[0].boost"),
])
def test_bad_input_is_invalid_argument_naming_the_field(monkeypatch, fields, field):
    async def scenario():
        mesh = SimilarMesh()
        g = await gateway(monkeypatch, mesh)
        with pytest.raises(AssertionError) as raised:
            await similar(g, **fields)
        return mesh, str(raised.value)

    mesh, message = asyncio.run(scenario())
    assert message.startswith(f"INVALID_ARGUMENT: {field}:"), message
    assert not mesh.calls


def test_the_pool_is_as_the_answer_paths_test_describes():
    assert POOL == 50 and DIM == 4 and len(DOCUMENTARIES) == 20
