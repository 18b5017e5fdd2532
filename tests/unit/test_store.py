import numpy as np
import pytest

from services.retrieval.store import EdgeItemStore, SearchFilter


def items(n):
    return [
        {"item_id": f"i{i}", "title": f"T{i}", "categories": ["odd" if i % 2 else "even"],
         "popularity": i / n, "text": f"item {i}"}
        for i in range(n)
    ]


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    s = EdgeItemStore.create(tmp_path / "shard", 8, version="test")
    s.upsert(items(20), vectors)
    yield s, vectors
    s.close()


def test_search_finds_the_nearest_with_its_vector(store):
    s, vectors = store
    found = s.search(vectors[7], 3, SearchFilter(), with_vectors=True)
    assert found[0].item_id == "i7" and found[0].score == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(found[0].vector, vectors[7])


def test_filters_and_exclusions(store):
    s, vectors = store
    odd = s.search(vectors[0], 20, SearchFilter(include_categories=["odd"]), False)
    assert odd and all(it.categories == ["odd"] for it in odd)
    rest = s.search(vectors[7], 20, SearchFilter(exclude_categories=["even"], exclude_item_ids=["i7"]), False)
    assert "i7" not in {it.item_id for it in rest} and len(rest) == 9


def test_popular_get_delete_and_reopen(store, tmp_path):
    s, vectors = store
    assert [it.item_id for it in s.top_popular(2)] == ["i19", "i18"]
    assert [it.item_id for it in s.get(["i3", "missing", "i1"])] == ["i3", "i1"]
    assert s.delete(["i19", "missing"]) == 1
    assert s.top_popular(1)[0].item_id == "i18"
    s.upsert([items(20)[5] | {"title": "renamed"}], vectors[6:7])
    s.flush()
    s.close()
    reopened = EdgeItemStore.open(tmp_path / "shard")
    assert reopened.count() == 19 and reopened.version == "test"
    again = reopened.get(["i5"], with_vectors=True)[0]
    assert again.title == "renamed" and np.allclose(again.vector, vectors[6])
    reopened.close()


def test_open_without_bootstrap_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="recmesh bootstrap"):
        EdgeItemStore.open(tmp_path / "nothing")
