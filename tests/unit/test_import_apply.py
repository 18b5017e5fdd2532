"""`recmesh import` as a command, up to the point where models are needed (issue 18, item 1): a
bad row stops it with one line naming file, line and column - no traceback - and leaves the var
as it was (no snapshot, shard, event log or staging file); a dry run checks everything and writes
nothing; a second import of a var waits for no one (the catalog lock refuses it); the staging of
events holds them on disk, deduplicated, and gives them back in time order."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recmesh.common.paths import var_paths
from recmesh.tools import cli
from recmesh.tools.catalog import shop
from recmesh.tools.catalog.importer import EventStaging, ImportFailed, catalog_lock, diff, text_digest
from recmesh.v1 import common_pb2


@pytest.fixture
def var(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "var"
    monkeypatch.setenv("RECMESH_VAR", str(folder))
    return folder


def assert_untouched(var: Path) -> None:
    paths = var_paths(var)
    assert not paths.event_log.exists() and not paths.catalog_items.exists() and not paths.shard_dir.exists()
    assert not (paths.catalog / "IMPORT.json").exists() and not list(paths.catalog.glob(".import-*"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_bad_event_row_stops_the_import_naming_file_line_and_column(tmp_path, var, fmt):
    items_path, events_path = shop.write_shop(tmp_path / "files", fmt, 30, 10, 5, seed=2)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(events_path).to_pylist()
        table[16]["value"] = float("inf")  # (a NaN is refused the same way; a null is missing)
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(table, pq.read_schema(events_path)), events_path)
        where, column, problem = f"{events_path}: row 17", "value", "must be a finite number"
    else:
        lines = events_path.read_text().splitlines()
        n = 17  # 0-based: line 18 of the file (CSV: its 17th row after the header)
        if fmt == "csv":
            fields = lines[n].split(",")
            fields[3] = "last tuesday"
            lines[n] = ",".join(fields)
        else:
            record = json.loads(lines[n])
            record["timestamp"] = "last tuesday"
            lines[n] = json.dumps(record)
        events_path.write_text("\n".join(lines) + "\n")
        where, column = f"{events_path}:18", "timestamp"
        problem = "'last tuesday' is not a time (unix seconds, milliseconds or ISO-8601)"
    with pytest.raises(SystemExit) as exc:
        cli.main(shop.import_command(items_path, events_path))
    assert str(exc.value.code) == f'recmesh import: {where}: field "{column}": {problem}'
    assert_untouched(var)


def test_a_bad_item_row_stops_the_import_before_the_events_are_read(tmp_path, var):
    items_path, events_path = shop.write_shop(tmp_path / "files", "csv", 30, 10, 5, seed=2)
    lines = items_path.read_text().splitlines()
    lines[5] = lines[5].replace(",true", ",maybe").replace(",false", ",maybe")
    items_path.write_text("\n".join(lines) + "\n")
    args = shop.import_command(items_path, events_path)
    args[args.index("in_stock")] = "in_stock:flag"
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert str(exc.value.code) == (f"recmesh import: {items_path}:6: field \"in_stock\": 'maybe' is not a flag "
                                   "(true/false/yes/no) (the attribute in_stock is of kind flag)")
    assert_untouched(var)


def test_a_missing_column_or_bad_flag_stops_before_reading(tmp_path, var):
    items_path, events_path = shop.write_shop(tmp_path / "files", "csv", 10, 2, 2, seed=2)
    with pytest.raises(SystemExit, match=r"recmesh import: --user-column customer: .* has no such column; its "
                                         r"columns: user_id, item_id, event, timestamp, value"):
        cli.main([*shop.import_command(items_path, events_path), "--user-column", "customer"])
    with pytest.raises(SystemExit, match="recmesh import: nothing to import: give --items FILE and/or --events FILE"):
        cli.main(["import"])
    with pytest.raises(SystemExit, match=r"recmesh import: no imported catalog at .*items.jsonl for these events"):
        cli.main(["import", "--events", str(events_path), "--event-type-map", "cart=add_to_cart",
                  "--event-type-map", "order=purchase"])
    assert_untouched(var)


def test_a_dry_run_reports_and_writes_nothing(tmp_path, var, capsys):
    items_path, events_path = shop.write_shop(tmp_path / "files", "csv", 40, 10, 6, seed=4)
    with events_path.open("a") as f:
        f.write("u00001,SKU99999,view,1710000000,0\n")  # an item the file does not have
        f.write("u00001,SKU00001,view,1710000000,0\nu00001,SKU00001,view,1710000000,0\n")  # twice the same event
    cli.main([*shop.import_command(items_path, events_path), "--dry-run"])
    out = capsys.readouterr().out
    assert f"{events_path} (csv): 63 rows read, 61 kept, 2 dropped" in out
    assert f"dropped 1: item not in the catalog (e.g. {events_path}:62: item 'SKU99999')" in out
    assert "dropped 1: repeat of an event earlier in the file (same event id)" in out
    assert "catalog: 40 items: 40 added, 0 changed, 0 unchanged, 0 deleted" in out
    assert "events: 61 from 10 users on" in out and "dry run: nothing written" in out
    assert_untouched(var)


def test_one_writer_of_a_catalog_at_a_time(tmp_path):
    with catalog_lock(tmp_path / "catalog"):
        with pytest.raises(ImportFailed, match="another `recmesh import` or `recmesh bootstrap` is writing"):
            with catalog_lock(tmp_path / "catalog"):
                pass
    with catalog_lock(tmp_path / "catalog"):  # released
        pass


def test_staged_events_are_deduplicated_and_come_back_in_time_order(tmp_path):
    staging = EventStaging(tmp_path)
    try:
        rows = [("e3", "u1", "i1", 1, "", 0.0, 3000), ("e1", "u1", "i2", 1, "", 0.0, 1000),
                ("e2", "u2", "i1", 1, "", 0.0, 3000), ("e1", "u9", "i9", 1, "", 0.0, 5)]
        assert staging.add(rows) == 3
        staging.seal()
        assert staging.summary() == {"events": 3, "users": 2, "items": 2, "first": "1970-01-01T00:00:01Z",
                                     "last": "1970-01-01T00:00:03Z"}
        ordered = [e.event_id for chunk in staging.ordered(chunk=2) for e in chunk]
        assert ordered == ["e1", "e3", "e2"]  # by time, file order on ties
    finally:
        staging.close()
    assert not staging.path.exists()


def test_the_difference_of_two_catalogs():
    old_items = [common_pb2.Item(item_id=i, title=f"t{i}") for i in ("a", "b", "c")]
    from recmesh.tools.catalog.snapshot import item_record

    old = {it.item_id: item_record(it) for it in old_items}
    new = [common_pb2.Item(item_id="a", title="ta"), common_pb2.Item(item_id="b", title="changed"),
           common_pb2.Item(item_id="d", title="td")]
    new[0].attributes["price"].number = 2.0
    assert diff(old, new) == {"added": ["d"], "changed": ["a", "b"], "unchanged": [], "deleted": ["c"]}
    assert diff(old, old_items) == {"added": [], "changed": [], "unchanged": ["a", "b", "c"], "deleted": []}
    assert text_digest("x") == text_digest("x") != text_digest("y")


def test_an_import_refuses_a_shard_another_process_holds_open(tmp_path):
    """A running retrieval service holds the shard (Qdrant Edge locks its write-ahead log)."""
    from recmesh.index.edge import EdgeItemStore
    from recmesh.tools.catalog.importer import check_shard_free

    shard = tmp_path / "qdrant"
    store = EdgeItemStore.create(shard, 4, 4, version="test")
    try:
        with pytest.raises(ImportFailed, match=r"qdrant is open in another process \(a running `recmesh run`"):
            check_shard_free(shard)
    finally:
        store.close()
    check_shard_free(shard)  # closed: free
    check_shard_free(tmp_path / "none")  # no shard yet: nothing to hold


# --- Faults found by a hostile tester (issue 18's attack) -----------------------------------


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_var_that_cannot_take_an_import_is_refused_naming_var(tmp_path, var, dry_run):
    items_path, events_path = shop.write_shop(tmp_path / "files", "csv", 10, 2, 2, seed=2)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target, problem in ((afile, "not a directory"), (afile / "sub", "(cannot write there .)?[Nn]ot a directory"),
                            (tmp_path / "with space" / "v", "a path with whitespace is not supported")):
        with pytest.raises(SystemExit) as exc:
            cli.main([*shop.import_command(items_path, events_path), "--var", str(target), *dry_run])
        assert re.match(f"recmesh import: --var {re.escape(str(target))}: {problem}", str(exc.value.code))
    assert afile.read_text() == "x" and not (tmp_path / "with space").exists()
    assert_untouched(var)


def test_a_dry_run_creates_nothing_in_a_fresh_var(tmp_path, var):
    items_path, events_path = shop.write_shop(tmp_path / "files", "csv", 10, 2, 2, seed=2)
    fresh = tmp_path / "fresh"
    cli.main([*shop.import_command(items_path, events_path), "--var", str(fresh), "--dry-run"])
    assert not fresh.exists()


@pytest.mark.parametrize("stage, said", [("read_item_file", "interrupted: nothing applied"),
                                         ("apply", "interrupted: partially applied; run the same import again")])
def test_ctrl_c_is_one_line_saying_what_was_applied(tmp_path, var, monkeypatch, capsys, stage, said):
    from recmesh.tools.catalog import importer

    items_path, events_path = shop.write_shop(tmp_path / "files", "csv", 10, 2, 2, seed=2)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importer, stage, interrupt)
    monkeypatch.setattr(importer, "zero_shot_for", lambda var, ids: {})
    with pytest.raises(SystemExit) as exc:
        cli.main(shop.import_command(items_path, events_path))
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert f"recmesh import: {said}" in err and "Traceback" not in err
    assert not list(var_paths(var).catalog.glob(".import-*"))  # the staging file is removed


def test_a_report_of_no_events_kept_says_so():
    from recmesh.tools.catalog.importer import describe

    report = {"files": {}, "events": {"events": 0, "users": 0, "items": 0, "first": None, "last": None},
              "dry_run": True, "seconds": 0.0, "peak_rss_mib": 1.0}
    out = describe(report)
    assert "events: 0 from 0 users on 0 items (none kept)" in out and "None" not in out
