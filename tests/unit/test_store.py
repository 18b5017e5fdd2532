"""The retrieval stores pass the same tests: Qdrant Edge (in-process) and a Qdrant server
through qdrant-client (here in its local mode, which runs the same client code path)."""

import numpy as np
import pytest

from recmesh.index.base import ItemIndex, SearchFilter
from recmesh.index.edge import EdgeItemStore
from recmesh.index.layout import INTEREST, QUERY, SESSION
from recmesh.index.qdrant_server import QdrantServerStore, connect

BACKENDS = {
    "edge": (lambda path, **kw: EdgeItemStore.create(path, **kw), EdgeItemStore.open),
    "server": (lambda path, **kw: QdrantServerStore.create(connect(f"path:{path}"), "items", **kw),
               lambda path: QdrantServerStore.open(connect(f"path:{path}"), "items")),
}


def items(n):
    return [
        {"item_id": f"i{i}", "title": f"T{i}", "categories": ["odd" if i % 2 else "even"],
         "popularity": i / n, "text": f"item {i}"}
        for i in range(n)
    ]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    return BACKENDS[request.param]


def filled(store):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20, 8)).astype(np.float32)  # catalog vectors: not unit
    texts = rng.standard_normal((20, 6)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    store.upsert(items(20), vectors, texts)
    return store, vectors, texts


@pytest.fixture
def store(tmp_path, backend):
    create, _ = backend
    s, vectors, texts = filled(create(tmp_path / "shard", dim=8, text_dim=6, version="test"))
    yield s, vectors, texts
    s.close()


def test_each_source_searches_its_own_space(store):
    s, vectors, texts = store
    probe = vectors[7] / np.linalg.norm(vectors[7])
    by_dot = s.search([(INTEREST, probe)], 3, SearchFilter(), with_vectors=True)
    assert by_dot.ids() == [f"i{i}" for i in np.argsort(-(vectors @ probe))[:3]]
    top = by_dot.items[0]
    assert top.score == pytest.approx(float(vectors[int(top.item_id[1:])] @ probe), rel=1e-4)
    assert np.allclose(by_dot.vectors, vectors[[int(i[1:]) for i in by_dot.ids()]])
    by_cosine = s.search([(SESSION, probe)], 1, SearchFilter(), with_vectors=True)
    assert by_cosine.ids() == ["i7"] and by_cosine.items[0].score == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(by_cosine.vectors, vectors[7:8]) and np.allclose(by_cosine.text_vectors, texts[7:8])
    by_text = s.search([(QUERY, texts[3])], 1, SearchFilter(), with_vectors=False)
    assert by_text.ids() == ["i3"] and by_text.vectors is None


def test_sources_merge_in_order_without_duplicates(store):
    s, vectors, texts = store
    merged = s.search([(SESSION, vectors[7]), (QUERY, texts[3]), (QUERY, texts[7])], 1, SearchFilter(), False)
    assert merged.ids() == ["i7", "i3"]


def test_filters_and_exclusions(store):
    s, vectors, _ = store
    odd = s.search([(SESSION, vectors[0])], 20, SearchFilter(include_categories=["odd"]), False)
    assert odd and all(it.categories == ["odd"] for it in odd.items)
    rest = s.search([(SESSION, vectors[7])], 20, SearchFilter(exclude_categories=["even"], exclude_item_ids=["i7"]),
                    False)
    assert "i7" not in rest.ids() and len(rest) == 9


def test_popular_get_delete_and_reopen(store, tmp_path, backend):
    s, vectors, texts = store
    assert s.top_popular(2).ids() == ["i19", "i18"]
    assert s.get(["i3", "missing", "i1"]).ids() == ["i3", "i1"]
    assert s.delete(["i19", "missing"]) == 1
    assert s.top_popular(1).ids() == ["i18"]
    s.upsert([items(20)[5] | {"title": "renamed"}], vectors[6:7], texts[6:7])
    s.close()
    reopened = backend[1](tmp_path / "shard")
    assert reopened.count() == 19 and reopened.version == "test"
    again = reopened.get(["i5"], with_vectors=True)
    assert again.items[0].title == "renamed"
    assert np.allclose(again.vectors, vectors[6:7]) and np.allclose(again.text_vectors, texts[6:7])
    reopened.close()


def test_open_without_bootstrap_says_what_to_do(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match="recmesh (bootstrap|publish-catalog)"):
        backend[1](tmp_path / "nothing")


def test_publish_copies_a_built_shard_into_a_server_collection_once(tmp_path):
    from recmesh.tools.catalog.publish import publish

    s, vectors, _ = filled(EdgeItemStore.create(tmp_path / "shard", dim=8, text_dim=6, version="test",
                                                search_ef=1024))
    s.flush()
    s.close()
    url = f"path:{tmp_path / 'server'}"
    first = publish(tmp_path / "shard", url, "items", shards=3, replication=2)
    again = publish(tmp_path / "shard", url, "items", shards=3, replication=2)
    assert (first["items"], first["published"], again["published"]) == (20, True, False)
    server = BACKENDS["server"][1](tmp_path / "server")
    assert (server.version, server.search_ef) == ("test", 1024)  # the search ef the build chose travels
    nearest = server.search([(SESSION, vectors[4])], 1, SearchFilter(), with_vectors=True)
    assert nearest.ids() == ["i4"] and np.allclose(nearest.vectors, vectors[4:5])
    server.close()


def test_publish_replaces_an_older_layout_and_leaves_a_foreign_collection_alone(tmp_path):
    from qdrant_client import models as qm

    from recmesh.tools.catalog.publish import publish

    s, _, _ = filled(EdgeItemStore.create(tmp_path / "shard", dim=8, text_dim=6, version="test"))
    s.close()
    client = connect(f"path:{tmp_path / 'server'}")
    params = qm.VectorParams(size=8, distance=qm.Distance.DOT)
    client.create_collection("items", vectors_config=params,
                             metadata={"dim": 8, "text_dim": 6, "version": "test", "layout": "older"})
    client.create_collection("theirs", vectors_config=params)
    client.close()
    url = f"path:{tmp_path / 'server'}"
    assert publish(tmp_path / "shard", url, "items", shards=1, replication=1)["published"]
    with pytest.raises(ValueError, match="no recmesh metadata"):
        publish(tmp_path / "shard", url, "theirs", shards=1, replication=1)


@pytest.mark.parametrize("overfetch", [EdgeItemStore.MAX_OVERFETCH, 0], ids=["dropped-from-hits", "qdrant-filter"])
def test_excluded_ids_still_leave_a_full_page(store, monkeypatch, overfetch):
    """Exclusions are dropped from over-fetched hits, or (past MAX_OVERFETCH) filtered by
    Qdrant: either way the page is full and holds none of them."""
    monkeypatch.setattr(EdgeItemStore, "MAX_OVERFETCH", overfetch)
    s, vectors, _ = store
    nearest = s.search([(SESSION, vectors[7])], 10, SearchFilter(), False).ids()
    page = s.search([(SESSION, vectors[7])], 5, SearchFilter(exclude_item_ids=nearest[:5]), False)
    assert page.ids() == nearest[5:10]


def test_a_shard_of_an_older_layout_is_refused_with_the_fix(tmp_path):
    s, _, _ = filled(EdgeItemStore.create(tmp_path / "shard", dim=8, text_dim=6, version="test"))
    s.close()
    meta = tmp_path / "shard.meta.json"
    meta.write_text(meta.read_text().replace('"layout"', '"old_layout"'))
    with pytest.raises(ValueError, match="bootstrap --force"):
        EdgeItemStore.open(tmp_path / "shard")


def test_a_shard_open_in_another_process_is_refused_saying_what_to_stop(tmp_path):
    """qdrant-edge's bare 'failed to open WAL ... WouldBlock' becomes one sentence (recmesh scale
    and the retrieval service print it instead of a traceback)."""
    from recmesh.index.layout import ShardInUse

    s, _, _ = filled(EdgeItemStore.create(tmp_path / "shard", dim=8, text_dim=6, version="test"))
    s.close()
    first = EdgeItemStore.open(tmp_path / "shard")
    try:
        with pytest.raises(ShardInUse, match="open in another process .* stop it first"):
            EdgeItemStore.open(tmp_path / "shard")
    finally:
        first.close()


def test_an_item_whose_point_id_another_holds_is_refused_before_the_shard_is_written(tmp_path, monkeypatch):
    import recmesh.index.edge as store_module

    monkeypatch.setattr(store_module, "point_id", lambda item_id: 7)  # every id collides
    s = EdgeItemStore.create(tmp_path / "shard", dim=8, text_dim=6, version="test")
    vectors, texts = np.ones((2, 8), np.float32), np.ones((2, 6), np.float32)
    s.upsert(items(2)[:1], vectors[:1], texts[:1])
    with pytest.raises(ValueError, match="same point id"):
        s.upsert(items(2)[1:], vectors[1:], texts[1:])
    assert s.get(["i0", "i1"]).ids() == ["i0"] and s.count() == 1
    s.close()


@pytest.mark.parametrize("cls", [EdgeItemStore, QdrantServerStore], ids=["edge", "server"])
def test_both_backends_implement_the_declared_interface(cls):
    assert issubclass(cls, ItemIndex) and not cls.__abstractmethods__
    assert cls.reads_in_process is (cls is EdgeItemStore)  # what the servicer runs inline


def test_export_gives_back_every_item_as_upsert_takes_it(store):
    s, vectors, texts = store
    exported = list(s.export(batch=7))
    assert [len(payloads) for payloads, _, _ in exported] == [7, 7, 6]
    rows = {p["item_id"]: (p, v, t)
            for payloads, vs, ts in exported for p, v, t in zip(payloads, vs, ts, strict=True)}
    assert sorted(rows) == sorted(it["item_id"] for it in items(20))
    for i, item in enumerate(items(20)):
        payload, vector, text = rows[item["item_id"]]
        assert payload == item and np.allclose(vector, vectors[i]) and np.allclose(text, texts[i], atol=1e-6)
    assert all(set(p) == {"item_id", "title"} for payloads, _, _ in s.export(payload=["item_id", "title"])
               for p in payloads)


def test_the_filter_rule_is_written_once_for_both_backends():
    from recmesh.index.base import AnyOf, HasPoint
    from recmesh.index.edge import edge_filter
    from recmesh.index.layout import point_id
    from recmesh.index.qdrant_server import client_filter

    flt = SearchFilter(include_categories=["a"], exclude_categories=["b", "c"], exclude_item_ids=["x"])
    conditions = flt.conditions()
    assert conditions.must == (AnyOf("categories", ("a",)),)
    assert conditions.must_not == (AnyOf("categories", ("b", "c")), HasPoint((point_id("x"),)))
    assert flt.conditions(with_ids=False).must_not == (AnyOf("categories", ("b", "c")),)
    assert SearchFilter().conditions() is None and SearchFilter(exclude_item_ids=["x"]).conditions(False) is None
    assert edge_filter(None) is None and client_filter(None) is None
    assert len(client_filter(conditions).must_not) == 2 and edge_filter(conditions) is not None
