"""Recommend filters by any item attribute - a text in a set, a number in a range (bounds
included, either open), a flag - and an exclusion of any of them. The rule is written once
(SearchFilter.conditions); both index backends (Qdrant Edge, and a Qdrant server through
qdrant-client's local mode) and the Python evaluator the gateway uses (Conditions.admits) must
give the same answer, and retrieval serves it on Search, GetItems and TopPopular (filtered before
the cut)."""

import asyncio

import numpy as np
import pytest

from recmesh.common.vectors import to_matrix
from recmesh.index.base import (
    AnyOf,
    AttributeTest,
    Conditions,
    FlagIs,
    HasPoint,
    InRange,
    SearchFilter,
)
from recmesh.index.edge import FLAG_TERMS, EdgeItemStore
from recmesh.index.layout import SESSION, point_id
from recmesh.index.qdrant_server import QdrantServerStore, connect
from recmesh.v1 import common_pb2, retrieval_pb2
from services.retrieval.config import RetrievalSettings
from services.retrieval.server import RetrievalServicer

# (item id, attributes), most popular first. Some hold a value of another kind than the filters
# expect, or none: those fail a test (and so pass an exclusion).
ITEMS = [
    ("hp-10", {"brand": "HP", "price": 10.0, "in_stock": True}),
    ("canon-50", {"brand": "Canon", "price": 50.0, "in_stock": False}),
    ("hp-50.5", {"brand": "HP", "price": 50.5}),
    ("odd-kinds", {"brand": 1.0, "price": "cheap", "in_stock": 1.0}),
    ("bare", {}),
    ("epson-30", {"brand": "Epson", "price": 30.0, "in_stock": True}),
    ("hp-text-flag", {"brand": "HP", "price": 9.99, "in_stock": "true"}),
]
A = AttributeTest

CASES = {
    "brand any_of": ([A.any_of("brand", ["HP"])], ["hp-10", "hp-50.5", "hp-text-flag"]),
    "brand set": ([A.any_of("brand", ["HP", "Canon"])], ["hp-10", "canon-50", "hp-50.5", "hp-text-flag"]),
    "number is no text": ([A.any_of("brand", ["1", "1.0"])], []),
    "price range, bounds included": ([A.in_range("price", 10, 50)], ["hp-10", "canon-50", "epson-30"]),
    "price open below": ([A.in_range("price", max=50)], ["hp-10", "canon-50", "epson-30", "hp-text-flag"]),
    "price open above": ([A.in_range("price", min=50.5)], ["hp-50.5"]),
    "in_stock true": ([A.flag_is("in_stock", True)], ["hp-10", "epson-30"]),
    "in_stock false": ([A.flag_is("in_stock", False)], ["canon-50"]),
    "exclude brand": ([A.any_of("brand", ["HP"], exclude=True)], ["canon-50", "odd-kinds", "bare", "epson-30"]),
    "exclude in_stock": ([A.flag_is("in_stock", True, exclude=True)],
                         ["canon-50", "hp-50.5", "odd-kinds", "bare", "hp-text-flag"]),
    "exclude price range": ([A.in_range("price", 10, 50, exclude=True)],
                            ["hp-50.5", "odd-kinds", "bare", "hp-text-flag"]),
    "brand and price": ([A.any_of("brand", ["HP"]), A.in_range("price", 10, 50)], ["hp-10"]),
    "missing attribute": ([A.any_of("colour", ["red"])], []),
}


def payloads() -> list[dict]:
    n = len(ITEMS)
    return [{"item_id": item_id, "title": item_id, "categories": ["even" if i % 2 == 0 else "odd"],
             "popularity": (n - i) / n, "text": item_id, "attributes": attributes}
            for i, (item_id, attributes) in enumerate(ITEMS)]


def make_store(backend: str, path):
    if backend == "edge":
        return EdgeItemStore.create(path / "shard", dim=4, text_dim=3, version="test")
    return QdrantServerStore.create(connect(f"path:{path / 'server'}"), "items", dim=4, text_dim=3, version="test")


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    n = len(ITEMS)
    s.upsert(payloads(), np.ones((n, 4), np.float32), np.ones((n, 3), np.float32))
    yield s
    s.close()


# The rule and the evaluator.

def test_attribute_tests_join_the_one_rule_and_an_exclusion_is_a_must_not():
    flt = SearchFilter(include_categories=["c"], exclude_item_ids=["x"],
                       attributes=[A.any_of("brand", ["HP"]), A.in_range("price", None, 50),
                                   A.flag_is("in_stock", True, exclude=True)])
    conditions = flt.conditions()
    assert conditions.must == (AnyOf("categories", ("c",)), AnyOf("attributes.brand", ("HP",)),
                               InRange("attributes.price", None, 50))
    assert conditions.must_not == (FlagIs("attributes.in_stock", True), HasPoint((point_id("x"),)))
    assert SearchFilter(attributes=[A.flag_is("f", False)]).conditions(with_ids=False).must == (
        FlagIs("attributes.f", False),)


def test_a_request_filter_becomes_the_same_search_filter():
    proto = common_pb2.Filters(include_categories=["c"], exclude_item_ids=["x"], attributes=[
        common_pb2.AttributeFilter(name="brand", any_of=common_pb2.StringSet(values=["HP", "Canon"])),
        common_pb2.AttributeFilter(name="price", range=common_pb2.NumberRange(max=50)),
        common_pb2.AttributeFilter(name="price", range=common_pb2.NumberRange(min=0, max=0)),  # 0: a bound, not unset
        common_pb2.AttributeFilter(name="in_stock", equals=False, exclude=True),
    ])
    flt = SearchFilter.from_proto(proto)
    assert flt.exclude_item_ids == ["x"] and SearchFilter.from_proto(proto, ["y"]).exclude_item_ids == ["y"]
    assert flt.attributes == [A.any_of("brand", ["HP", "Canon"]), A.in_range("price", None, 50.0),
                              A.in_range("price", 0.0, 0.0), A.flag_is("in_stock", False, exclude=True)]
    with pytest.raises(ValueError, match="no test"):
        A.from_proto(common_pb2.AttributeFilter(name="brand"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_python_evaluator_decides_each_case(case):
    tests, expected = CASES[case]
    conditions = SearchFilter(attributes=tests).conditions()
    assert [p["item_id"] for p in payloads() if conditions.admits(p)] == expected


def test_the_evaluator_reads_kinds_as_qdrant_does():
    def admits(condition, value) -> bool:
        return Conditions((condition,), ()).admits({"item_id": "i", "attributes": {"a": value}})

    assert admits(InRange("attributes.a", 1, 1), 1) and admits(InRange("attributes.a", 1, 1), 1.0)
    assert not admits(InRange("attributes.a", 0, 2), True)  # a bool is no number
    assert not admits(FlagIs("attributes.a", True), 1) and not admits(FlagIs("attributes.a", True), "true")
    assert admits(AnyOf("attributes.a", ("x",)), ["y", "x"])  # a list: one element is enough
    assert not admits(AnyOf("attributes.a", ("x",)), {"x": 1})
    assert Conditions((HasPoint((point_id("i"),)),), ()).admits({"item_id": "i"})
    assert not Conditions((), (AnyOf("categories", ("c",)),)).admits({"item_id": "i", "categories": ["c"]})


# Both backends.

@pytest.mark.parametrize("case", sorted(CASES))
def test_both_backends_filter_each_case_before_the_cut(store, case):
    tests, expected = CASES[case]
    flt = SearchFilter(attributes=tests)
    assert store.top_popular(10, flt=flt).ids() == expected
    assert store.top_popular(1, flt=flt).ids() == expected[:1]  # filtered, then cut
    found = store.search([(SESSION, np.ones(4, np.float32))], 10, flt, with_vectors=False)
    assert sorted(found.ids()) == sorted(expected)


def test_attributes_combine_with_categories_and_excluded_ids(store):
    flt = SearchFilter(include_categories=["even"], exclude_item_ids=["hp-10"],
                       attributes=[A.in_range("price", max=50)])
    assert store.top_popular(10, flt=flt).ids() == ["hp-text-flag"]  # hp-10 excluded; epson-30, canon-50 odd
    found = store.search([(SESSION, np.ones(4, np.float32))], 10, flt, with_vectors=True)
    assert found.ids() == ["hp-text-flag"] and found.vectors.shape == (1, 4)


def test_every_read_gives_the_items_attributes_back(store):
    expected = dict(ITEMS)
    for found in (store.get([i for i, _ in ITEMS]), store.top_popular(10),
                  store.search([(SESSION, np.ones(4, np.float32))], 10, SearchFilter(), False)):
        assert {it.item_id: it.attributes for it in found.items} == expected
    exported = {p["item_id"]: p for batch, _, _ in store.export() for p in batch}
    assert exported == {p["item_id"]: p for p in payloads()}  # the layout's payload: nothing of the backend's own


def test_an_edge_shard_reopened_filters_and_answers_attributes_as_before(tmp_path):
    s = make_store("edge", tmp_path)
    s.upsert(payloads(), np.ones((len(ITEMS), 4), np.float32), np.ones((len(ITEMS), 3), np.float32))
    s.close()
    again = EdgeItemStore.open(tmp_path / "shard")
    flt = SearchFilter(attributes=[A.flag_is("in_stock", True), A.any_of("brand", ["HP", "Epson"])])
    assert again.top_popular(10, flt=flt).ids() == ["hp-10", "epson-30"]
    assert again.get(["hp-10"]).items[0].attributes == dict(ITEMS)["hp-10"]
    schema = again._shard.info().payload_schema  # indexed as first met: text keyword, number float
    assert {"attributes.brand", "attributes.price", FLAG_TERMS} <= set(schema)
    again.close()


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_attributes_past_the_indexed_ones_are_filtered_all_the_same(tmp_path, monkeypatch, backend):
    import recmesh.index.edge as edge
    import recmesh.index.qdrant_server as server

    monkeypatch.setattr(edge, "INDEXED_ATTRIBUTES", 0)
    monkeypatch.setattr(server, "INDEXED_ATTRIBUTES", 0)
    s = make_store(backend, tmp_path)
    s.upsert(payloads(), np.ones((len(ITEMS), 4), np.float32), np.ones((len(ITEMS), 3), np.float32))
    for tests, expected in CASES.values():
        assert s.top_popular(10, flt=SearchFilter(attributes=tests)).ids() == expected
    if backend == "edge":
        assert not any(key.startswith("attributes.") for key in s._shard.info().payload_schema)
    s.close()


def test_an_upsert_replaces_the_attributes_whole(store):
    changed = payloads()[0] | {"attributes": {"brand": "Canon"}}
    store.upsert([changed], np.ones((1, 4), np.float32), np.ones((1, 3), np.float32))
    assert store.get(["hp-10"]).items[0].attributes == {"brand": "Canon"}
    assert store.top_popular(10, flt=SearchFilter(attributes=[A.flag_is("in_stock", True)])).ids() == ["epson-30"]
    assert store.top_popular(2, flt=SearchFilter(attributes=[A.any_of("brand", ["Canon"])])).ids() == [
        "hp-10", "canon-50"]


# The retrieval service.

class Context:
    def time_remaining(self):
        return None

    async def abort(self, code, details):
        raise AssertionError(f"{code.name}: {details}")


N = 40


def brand(i: int) -> str:
    return "Acme" if i % 10 == 3 else "Other"


@pytest.fixture
def servicer(tmp_path):
    s = RetrievalServicer(RetrievalSettings())
    store = EdgeItemStore.create(tmp_path / "shard", dim=4, text_dim=3, version="test")
    catalog = [{"item_id": f"i{i}", "title": f"T{i}", "categories": ["Drama"], "popularity": i / N, "text": f"{i}",
                "attributes": {"brand": brand(i), "price": float(i), "in_stock": i % 2 == 1}} for i in range(N)]
    rng = np.random.default_rng(0)
    store.upsert(catalog, rng.standard_normal((N, 4)).astype(np.float32), np.ones((N, 3), np.float32))
    s._store = store
    yield s
    store.close()


def acme_up_to(max_price: float, **more) -> common_pb2.Filters:
    return common_pb2.Filters(attributes=[
        common_pb2.AttributeFilter(name="brand", any_of=common_pb2.StringSet(values=["Acme"])),
        common_pb2.AttributeFilter(name="price", range=common_pb2.NumberRange(max=max_price))], **more)


def test_retrieval_filters_top_popular_by_attributes_before_the_cut(servicer):
    async def calls():
        top = await servicer.TopPopular(retrieval_pb2.TopPopularRequest(limit=2, filters=acme_up_to(30)), Context())
        rest = await servicer.TopPopular(retrieval_pb2.TopPopularRequest(
            limit=10, filters=acme_up_to(30, exclude_item_ids=["i13"])), Context())
        return top, rest

    top, rest = asyncio.run(calls())
    assert [c.item_id for c in top.candidates] == ["i23", "i13"]  # i33: over 30; the catalog's top 2: not Acme
    assert [c.item_id for c in rest.candidates] == ["i23", "i3"]
    attributes = top.candidates[0].attributes
    assert (attributes["brand"].text, attributes["price"].number, attributes["in_stock"].flag) == ("Acme", 23.0, True)


def test_retrieval_search_and_get_items_carry_attributes(servicer):
    async def calls():
        search = await servicer.Search(retrieval_pb2.SearchRequest(
            session=to_matrix(np.ones((1, 4), np.float32)), limit=10, filters=acme_up_to(25)), Context())
        got = await servicer.GetItems(retrieval_pb2.GetItemsRequest(item_ids=["i4"]), Context())
        return search, got

    search, got = asyncio.run(calls())
    assert sorted(c.item_id for c in search.candidates) == ["i13", "i23", "i3"]
    assert all(c.attributes["brand"].text == "Acme" for c in search.candidates)
    item = got.candidates[0]
    assert item.attributes["price"].number == 4.0 and item.attributes["in_stock"].WhichOneof("kind") == "flag"
    assert item.attributes["in_stock"].flag is False


@pytest.mark.parametrize("attribute, field", [
    (common_pb2.AttributeFilter(name="bad.name", equals=True), r"filters\.attributes\[0\]\.name"),
    (common_pb2.AttributeFilter(name="price"), r"filters\.attributes\[0\]: set one test"),
    (common_pb2.AttributeFilter(name="price", range=common_pb2.NumberRange(min=float("nan"))),
     r"filters\.attributes\[0\]\.range\.min: must be a finite number"),
])
def test_retrieval_refuses_a_bad_attribute_filter_naming_it(servicer, attribute, field):
    request = retrieval_pb2.TopPopularRequest(limit=3, filters=common_pb2.Filters(attributes=[attribute]))
    with pytest.raises(AssertionError, match=f"INVALID_ARGUMENT: {field}"):
        asyncio.run(servicer.TopPopular(request, Context()))


def test_retrieval_stores_upserted_attributes_and_refuses_a_bad_one_naming_it(servicer):
    def upsert(**attributes):
        item = common_pb2.Item(item_id="new", title="New", attributes=attributes)
        return servicer.Upsert(retrieval_pb2.UpsertRequest(
            items=[item], vectors=to_matrix(np.ones((1, 4), np.float32)),
            text_vectors=to_matrix(np.ones((1, 3), np.float32))), Context())

    asyncio.run(upsert(brand=common_pb2.AttributeValue(text="Acme"), price=common_pb2.AttributeValue(number=1)))
    assert servicer.store.get(["new"]).items[0].attributes == {"brand": "Acme", "price": 1.0}
    got = asyncio.run(servicer.GetItems(retrieval_pb2.GetItemsRequest(item_ids=["new"]), Context()))
    assert dict(got.candidates[0].attributes) == {"brand": common_pb2.AttributeValue(text="Acme"),
                                                  "price": common_pb2.AttributeValue(number=1)}
    asyncio.run(upsert(brand=common_pb2.AttributeValue(text="Acme"), price=common_pb2.AttributeValue(flag=True)))
    got = asyncio.run(servicer.GetItems(retrieval_pb2.GetItemsRequest(item_ids=["new"]), Context()))
    assert got.candidates[0].attributes["price"] == common_pb2.AttributeValue(flag=True)  # True == 1.0: kept apart
    with pytest.raises(AssertionError, match=r'INVALID_ARGUMENT: items\[0\]\.attributes\["price"\]: must be a finite'):
        asyncio.run(upsert(price=common_pb2.AttributeValue(number=float("inf"))))
