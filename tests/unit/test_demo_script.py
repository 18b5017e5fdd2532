"""The scripted session follows the var's catalog, not MovieLens ids it may not hold."""

from recmesh.tools.demo import MOVIELENS, script_for
from recmesh.v1 import common_pb2


def _shop() -> list[common_pb2.Item]:
    items = []
    for i in range(40):
        leaf = ["Pens", "Paper", "Calculators"][i % 3]
        items.append(common_pb2.Item(item_id=f"sku-{i}", title=f"item {i}", categories=["Office", leaf]))
    return items


def test_a_shop_catalog_gets_a_script_from_its_own_categories():
    items = _shop()
    script = script_for(items)
    ids = {it.item_id: it for it in items}
    assert script is not None and script is not MOVIELENS
    assert "Office" not in script.watch  # the root every item shares says nothing about taste
    assert len(script.first) == 5 and len(script.second) == 5
    assert all(script.watch[0] in ids[i].categories and script.watch[1] not in ids[i].categories
               for i in script.first)
    assert all(script.watch[1] in ids[i].categories for i in script.second)
    assert script.include == script.watch[1] and script.exclude == script.watch[0]
    assert script.tastes == script.watch  # the session's captions name the categories it clicked and viewed


def test_movielens_keeps_its_films_and_a_catalog_without_categories_gets_none():
    films = [common_pb2.Item(item_id=i, title=i) for i in {*MOVIELENS.first, *MOVIELENS.second}]
    assert script_for(films) is MOVIELENS
    assert "horror" in MOVIELENS.tastes[1]  # step 3 views horror films: its caption says so
    assert script_for([common_pb2.Item(item_id=f"x{i}", title="x") for i in range(20)]) is None
