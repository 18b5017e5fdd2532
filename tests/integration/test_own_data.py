"""Your own catalog and events, end to end (issue 18): a generated shop (not MovieLens) is
imported, trained on and served by the real mesh (Triton, Qdrant Edge, every service); a catalog
with no events at all serves from its item text at once (cold start).

What is asserted of the mesh is behaviour: the answers follow the shoppers' planted tastes, a
brand filter and a price range hold (on every answer path: tests/unit/test_answer_paths.py),
and the ranker serves the blend `recmesh train` chose on this shop's validation split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from recmesh.client import Event, RecmeshClient
from recmesh.common.paths import var_paths
from recmesh.models.ranking.scorer import start_params_dir
from recmesh.tools import cli
from recmesh.tools.catalog import shop
from recmesh.tools.devstack import Stack
from recmesh.tools.preflight import check_catalog
from tests.integration.answers import undegraded

pytestmark = pytest.mark.integration

N_ITEMS, N_USERS, PER_USER, SEED = 300, 200, 20, 5
QUIET = {"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false"}


def recmesh(var: Path, *argv: str):
    """A `recmesh` command as a shell runs it, with RECMESH_VAR=var."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("RECMESH_VAR", str(var))
        return cli.main(list(argv))


@pytest.fixture(scope="module")
def trained_shop(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("own-data")
    var = folder / "var"
    items_path, events_path = shop.write_shop(folder / "files", "jsonl", N_ITEMS, N_USERS, PER_USER, seed=SEED)
    recmesh(var, *shop.import_command(items_path, events_path))
    imported_with = json.loads((var_paths(var).catalog / "BUILD.json").read_text())["interest_model"]
    recmesh(var, "train", "--time-cap", "25", "--holdout", "10")
    return {"var": var, "items": shop.shop_items(N_ITEMS, seed=SEED), "imported_with": imported_with}


def test_train_installs_a_model_and_a_blend_chosen_on_the_shop_and_places_the_catalog_again(trained_shop):
    var = trained_shop["var"]
    paths = var_paths(var)
    assert paths.own_artifact.is_file() and start_params_dir(var) == paths.own_params
    (params,) = paths.own_params.glob("*.json")
    spec = json.loads(params.read_text())
    assert spec["weights"]["interest_sim"] > 0 or spec["weights"]["session_sim"] > 0
    check_catalog(var)  # placed with the model train installed: `recmesh run` starts
    placed_with = json.loads((paths.catalog / "BUILD.json").read_text())["interest_model"]
    assert placed_with != trained_shop["imported_with"]  # the import's zero-shot model was replaced


def _share(reply, items: dict[str, dict], kind: str, name: str) -> float:
    hits = [it for it in reply.items if (items[it.item_id]["brand"] == name if kind == "brand"
                                         else items[it.item_id]["categories"][-1] == name)]
    return len(hits) / max(len(reply.items), 1)


def test_the_mesh_serves_the_shop_with_its_tastes_and_its_filters(trained_shop):
    var, records = trained_shop["var"], trained_shop["items"]
    items = {r["item_id"]: r for r in records}
    (params,) = var_paths(var).own_params.glob("*.json")
    with Stack(var=var, env=QUIET) as stack, RecmeshClient(stack.address("gateway"), timeout_s=5.0) as client:
        shares, bases = [], []
        for u in range(1, 21, 2):  # shoppers generated to prefer a category
            user = f"u{u:05d}"
            kind, name = shop.preference(user, records)
            reply = undegraded(lambda user=user: client.recommend(user, k=10))
            assert reply.versions["ranker"] == json.loads(params.read_text())["version"]
            shares.append(_share(reply, items, kind, name))
            bases.append(sum(items[i]["categories"][-1] == name for i in items) / len(items))
        assert sum(shares) / len(shares) >= 3 * sum(bases) / len(bases), (shares, bases)

        brand = records[0]["brand"]
        prices = sorted(r["price"] for r in records if r["brand"] == brand)
        low, high = prices[1], prices[-2]
        wanted = {"brand": [brand], "price": (low, high)}
        for query in ("", "a gift for someone who cooks"):
            reply = undegraded(lambda query=query: client.recommend("u00002", query=query, k=10, attributes=wanted))
            assert reply.items
            for it in reply.items:
                assert items[it.item_id]["brand"] == brand and low <= items[it.item_id]["price"] <= high
                assert it.attributes["brand"].text == brand


@pytest.fixture(scope="module")
def cold_shop(tmp_path_factory) -> Path:
    """A catalog imported without any events."""
    folder = tmp_path_factory.mktemp("cold-shop")
    var = folder / "var"
    items_path, _ = shop.write_shop(folder / "files", "csv", N_ITEMS, 1, 1, seed=SEED)
    argv = shop.import_command(items_path, items_path)
    at = argv.index("--events")
    recmesh(var, *argv[:at], *argv[at + 2 :])
    return var


def test_a_catalog_without_events_serves_from_its_text_at_once(cold_shop):
    records = {r["item_id"]: r for r in shop.shop_items(N_ITEMS, seed=SEED)}
    check_catalog(cold_shop)
    with Stack(var=cold_shop, env=QUIET) as stack, RecmeshClient(stack.address("gateway"), timeout_s=5.0) as client:
        reply = undegraded(lambda: client.recommend("newcomer", query="cast iron skillet for searing steak", k=5))
        leaves = Counter(records[it.item_id]["categories"][-1] for it in reply.items)
        assert leaves.most_common(1)[0][0] == "Pans", leaves

        viewed = [i for i, r in records.items() if r["categories"][-1] == "Yoga Mats"][:3]
        client.track_events([Event("viewer", item, "view") for item in viewed])
        reply = undegraded(lambda: client.recommend("viewer", k=8))
        similar = sum(records[it.item_id]["categories"][-1] == "Yoga Mats" for it in reply.items)
        assert similar >= 4, [records[it.item_id]["title"] for it in reply.items]
