"""`recmesh import`'s reading (issue 18, item 1): files are read by extension (CSV, TSV, JSONL,
Parquet, gzip), columns found by common names or flags, categories, tags and attributes turned
into items, event times detected (unix s / ms / ISO-8601) and checked, types mapped, ids derived
from the content - and every bad row is one line naming the file, the line and the column."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmesh.common.errors import InvalidArgument
from recmesh.common.validation import check_event
from recmesh.tools.catalog import shop
from recmesh.tools.catalog.sources import (
    AttributeSpec,
    EventMapping,
    EventReader,
    ItemMapping,
    ItemReader,
    RowError,
    Source,
    SourceError,
    attribute_kind,
    event_id_for,
    labels,
    parse_type_map,
    timestamp_ms,
)
from recmesh.v1 import common_pb2

ET = common_pb2.EventType
NOW_MS = int(datetime(2025, 6, 1, tzinfo=UTC).timestamp() * 1000)
T0 = 1_700_000_000  # 2023-11-14, unix seconds


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def events_csv(tmp_path: Path, rows: list[str], header: str = "user_id,item_id,type,timestamp,value") -> Path:
    return write(tmp_path / "events.csv", "\n".join([header, *rows]) + "\n")


def read_events(path: Path, **mapping) -> list:
    reader = EventReader(Source(path), EventMapping(**mapping), now_ms=NOW_MS)
    return [reader.event(pos, rec) for pos, rec in reader.source.records()]


def read_items(path: Path, **mapping) -> list[common_pb2.Item]:
    reader = ItemReader(Source(path), ItemMapping(**mapping))
    return [reader.item(pos, rec)[0] for pos, rec in reader.source.records()]


# --- Readers -------------------------------------------------------------------------------


RECORDS = [{"item_id": "a1", "title": "First", "price": 2.5}, {"item_id": "a2", "title": "Second, with comma",
                                                                 "price": 10.0}]


def test_every_format_reads_the_same_records_with_their_positions(tmp_path):
    csv_path = write(tmp_path / "items.csv", 'item_id,title,price\na1,First,2.5\na2,"Second, with comma",10.0\n')
    tsv_path = write(tmp_path / "items.tsv", "item_id\ttitle\tprice\na1\tFirst\t2.5\na2\tSecond, with comma\t10.0\n")
    jsonl_path = write(tmp_path / "items.jsonl", "\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    ndjson_gz = tmp_path / "items.ndjson.gz"
    with gzip.open(ndjson_gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in RECORDS))
    parquet_path = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), parquet_path)

    for path in (csv_path, tsv_path):
        source = Source(path)
        assert source.columns == ["item_id", "title", "price"]
        assert list(source.records()) == [(2, {"item_id": "a1", "title": "First", "price": "2.5"}),
                                          (3, {"item_id": "a2", "title": "Second, with comma", "price": "10.0"})]
    for path in (jsonl_path, ndjson_gz, parquet_path):
        source = Source(path)
        assert source.columns == ["item_id", "title", "price"]
        assert list(source.records()) == [(1, RECORDS[0]), (2, RECORDS[1])]
    assert Source(parquet_path).where(2) == f"{parquet_path}: row 2"
    assert Source(csv_path).where(2) == f"{csv_path}:2"


def test_a_csv_record_spanning_lines_is_named_by_its_first_line(tmp_path):
    path = write(tmp_path / "items.csv", 'item_id,title\na1,"two\nlines"\na2,Third\n')
    assert [pos for pos, _ in Source(path).records()] == [2, 4]


def test_a_utf8_bom_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "items.csv"
    path.write_bytes("\ufeffitem_id,title\na1,First\n".encode())
    assert Source(path).columns == ["item_id", "title"]


@pytest.mark.parametrize("name, message", [
    ("items.xlsx", "unknown format '.xlsx': name the file .csv, .tsv, .jsonl"),
    ("items", r"unknown format '\(no extension\)'"),
    ("items.parquet.gz", "unknown format"),
])
def test_an_unknown_extension_is_refused_naming_the_formats(tmp_path, name, message):
    path = write(tmp_path / name, "x")
    with pytest.raises(SourceError, match=message):
        Source(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(SourceError, match=f"{tmp_path / 'nope.csv'}: no such file"):
        Source(tmp_path / "nope.csv")


@pytest.mark.parametrize("name, content, message", [
    ("items.jsonl", '{"item_id": "a"}\n{"item_id": \n', r"items.jsonl:2: not valid JSON"),
    ("items.jsonl", '{"item_id": "a"}\n[1, 2]\n', r"items.jsonl:2: not a JSON object"),
    ("items.csv", "item_id,title\na1,First\na2,Second,extra\n", r"items.csv:3: 3 fields, the header has 2"),
    ("items.csv", "item_id,item_id\na1,a2\n", r"items.csv:1: the header names 'item_id' twice"),
])
def test_a_malformed_line_names_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(SourceError, match=message):
        list(Source(path).records())


def test_text_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "items.csv"
    path.write_bytes(b"item_id,title\n" + b"a1,First\n" * 5000 + b"a2,caf\xe9\n")
    with pytest.raises(SourceError, match=r"items.csv:5002: not UTF-8 text \(invalid continuation byte at byte 7 "
                                          r"of the line\): save the file as UTF-8"):
        list(Source(path).records())


def test_a_parquet_file_that_is_not_one_is_named(tmp_path):
    with pytest.raises(SourceError, match=r"items.parquet: not a readable Parquet file"):
        Source(write(tmp_path / "items.parquet", "not parquet"))


# --- Items ---------------------------------------------------------------------------------


def test_item_columns_are_found_by_common_names_ignoring_case(tmp_path):
    path = write(tmp_path / "items.jsonl", json.dumps({"ASIN": "B1", "Name": "Pen", "Summary": "Blue ink",
                                                        "Genres": "Office|Pens"}) + "\n")
    reader = ItemReader(Source(path), ItemMapping())
    assert (reader.id_column, reader.title_column, reader.text_columns, reader.categories_column) == \
        ("ASIN", "Name", ["Summary"], "Genres")
    item, _ = reader.item(1, next(iter(reader.source.records()))[1])
    assert (item.item_id, item.title, item.description, list(item.categories)) == ("B1", "Pen", "Blue ink",
                                                                                   ["Office", "Pens"])


def test_flags_name_other_columns_and_a_missing_one_is_refused_listing_the_columns(tmp_path):
    path = write(tmp_path / "items.csv", "code,label,blurb\nx1,Kettle,Boils water\n")
    [item] = read_items(path, item_id="code", title="label", text_fields=["blurb"])
    assert (item.item_id, item.title, item.description) == ("x1", "Kettle", "Boils water")
    with pytest.raises(SourceError, match=r"--title-column heading: .* has no such column; its columns: code, "
                                          r"label, blurb"):
        ItemReader(Source(path), ItemMapping(item_id="code", title="heading"))
    with pytest.raises(SourceError, match=r"no item id column \(looked for item_id\|id\|asin.*--item-id-column"):
        ItemReader(Source(path), ItemMapping())


def test_text_fields_make_the_description_other_columns_labelled(tmp_path):
    path = write(tmp_path / "items.csv", "id,title,description,brand,color\n1,Pen,Smooth ink,Acme,\n2,Ink,,Acme,red\n")
    one, two = read_items(path, text_fields=["description", "brand", "color"])
    assert one.description == "Smooth ink\nBrand: Acme"  # an empty column adds nothing
    assert two.description == "Brand: Acme\nColor: red"  # labelled also when the first is empty


@pytest.mark.parametrize("value, sep, path_sep, expected", [
    ("Office|Pens", "|", None, ["Office", "Pens"]),
    (["Office", "Pens", "Office"], "|", None, ["Office", "Pens"]),
    ("Office > Paper > Notebooks", "|", " > ", ["Office", "Paper", "Notebooks"]),
    ("Office > Paper|Office > Pens", "|", " > ", ["Office", "Paper", "Pens"]),
    (["Office > Paper"], "|", " > ", ["Office", "Paper"]),
    ([["Office", "Paper"], ["Gifts"]], "|", None, ["Office", "Paper", "Gifts"]),
    (" a ; ;b ", ";", None, ["a", "b"]),
    (None, "|", None, []),
    ("", "|", None, []),
])
def test_categories_from_lists_strings_and_paths(value, sep, path_sep, expected):
    assert labels(value, sep, path_sep) == expected


def test_attribute_kinds_are_inferred_from_all_values():
    assert attribute_kind(["12.5", "3", "0"]) == "number"
    assert attribute_kind([12.5, 3]) == "number"
    assert attribute_kind(["true", "False", "yes", "no"]) == "flag"
    assert attribute_kind([True, False]) == "flag"
    assert attribute_kind(["1", "0"]) == "number"  # digits are numbers
    assert attribute_kind(["12.5", "n/a"]) == "text"
    assert attribute_kind(["nan", "3"]) == "text"  # not a finite number


@pytest.mark.parametrize("spec, expected", [
    ("price", AttributeSpec("price", "price", None)),
    ("price:number", AttributeSpec("price", "price", "number")),
    ("in_stock:bool", AttributeSpec("in_stock", "in_stock", "flag")),
    ("In Stock=in_stock:flag", AttributeSpec("In Stock", "in_stock", "flag")),
    ("Brand Name=brand", AttributeSpec("Brand Name", "brand", None)),
])
def test_attribute_flags(spec, expected):
    assert AttributeSpec.parse(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("price:decimal", "unknown kind 'decimal'"),
    ("In Stock", "an attribute name is 1..64 of A-Z a-z 0-9 _"),
    ("=x", "name a column"),
])
def test_bad_attribute_flags_are_refused_naming_the_flag(spec, message):
    with pytest.raises(SourceError, match=f"--attribute {spec}: .*{message}"):
        AttributeSpec.parse(spec)


def test_items_from_csv_jsonl_and_parquet_of_the_shop_are_the_same(tmp_path):
    from recmesh.tools.catalog.importer import read_item_file

    records = shop.shop_items(40, seed=3)
    flags = dict(text_fields=["description", "brand"],
                 attributes=[AttributeSpec.parse(a) for a in ("price", "in_stock", "brand")])
    read = {}
    for ext in (".csv", ".jsonl", ".parquet"):
        path = shop.write_items(tmp_path / f"items{ext}", records)
        mapping = ItemMapping(**flags, path_sep=" > " if ext == ".csv" else None)
        read[ext], report = read_item_file(Source(path), mapping)
        assert report["rows"] == report["kept"] == 40 and report["dropped"] == {}
    assert read[".csv"] == read[".jsonl"] == read[".parquet"]
    first = read[".csv"][0]
    assert list(first.categories) == records[0]["categories"] and len(first.categories) == 3
    assert first.attributes["price"].number == records[0]["price"]
    assert first.attributes["in_stock"].flag is records[0]["in_stock"]
    assert first.attributes["brand"].text == records[0]["brand"]


@pytest.mark.parametrize("row, column, message", [
    (",Pen,1.5", "item_id", "must not be empty"),
    ("p2,,1.5", "title", "must not be empty"),
    ("p2,\u200b,1.5", "title", "must not be empty"),  # only invisible characters
    (f"p2,{'x' * 1001},1.5", "title", "longer than 1000 characters"),
    (f"{'i' * 129},Pen,1.5", "item_id", "longer than 128 characters"),
    ("p2,Pen,cheap", "price", r"'cheap' is not a number \(the attribute price is of kind number\)"),
    ("p1,Pen again,1.5", "item_id", r"'p1' again \(first at .*items.csv:2\)"),
])
def test_a_bad_item_row_names_file_line_and_column(tmp_path, row, column, message):
    from recmesh.tools.catalog.importer import read_item_file

    path = write(tmp_path / "items.csv", f"item_id,title,price\np1,Pen,2.5\n{row}\n")
    with pytest.raises(RowError, match=rf'^{path}:3: field "{column}": {message}'):
        read_item_file(Source(path), ItemMapping(attributes=[AttributeSpec.parse("price:number")]))


def test_a_long_description_and_too_many_categories_name_their_columns(tmp_path):
    long = "d" * 4001
    path = write(tmp_path / "items.csv", f"id,title,description,tags\n1,Pen,{long},\n2,Pen,ok,"
                                         f"{'|'.join(f't{i}' for i in range(65))}\n3,Pen,ok,{'t' * 129}\n")
    reader = ItemReader(Source(path), ItemMapping())
    rows = list(reader.source.records())
    with pytest.raises(RowError, match=rf'{path}:2: field "description": longer than 4000 characters'):
        reader.item(*rows[0])
    with pytest.raises(RowError, match=rf'{path}:3: field "tags": at most 64 values, got 65'):
        reader.item(*rows[1])
    with pytest.raises(RowError, match=rf'{path}:4: field "tags": value 1: longer than 128 characters'):
        reader.item(*rows[2])


def test_text_fields_too_long_together_are_named_together(tmp_path):
    path = write(tmp_path / "items.csv", f"id,title,description,brand\n1,Pen,{'d' * 3990},Acme Writing Co\n")
    reader = ItemReader(Source(path), ItemMapping(text_fields=["description", "brand"]))
    with pytest.raises(RowError, match=r'field "description", "brand": together: longer than 4000'):
        reader.item(*next(iter(reader.source.records())))


def test_skip_bad_rows_leaves_them_out_and_counts_them(tmp_path):
    from recmesh.tools.catalog.importer import read_item_file

    path = write(tmp_path / "items.csv", "id,title\n1,Pen\n2,\n3,Ink\n1,Pen again\n")
    items, report = read_item_file(Source(path), ItemMapping(), skip_bad_rows=True)
    assert [it.item_id for it in items] == ["1", "3"]
    assert report["rows"] == 4 and report["kept"] == 2
    assert report["dropped"] == {'bad "title"': 1, 'bad "id"': 1}
    assert report["dropped_examples"]['bad "title"'] == [f'{path}:3: field "title": must not be empty']


# --- Events --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    (T0, (T0 * 1000, "s")),
    (str(T0), (T0 * 1000, "s")),
    (f"{T0}.5", (T0 * 1000 + 500, "s")),
    (T0 * 1000, (T0 * 1000, "ms")),
    (str(T0 * 1000 + 7), (T0 * 1000 + 7, "ms")),
    ("2023-11-14T22:13:20Z", (T0 * 1000, "iso")),
    ("2023-11-14T23:13:20+01:00", (T0 * 1000, "iso")),
    ("2023-11-14 22:13:20", (T0 * 1000, "iso")),  # no offset: UTC
    ("2023-11-14", (int(datetime(2023, 11, 14, tzinfo=UTC).timestamp()) * 1000, "iso")),
    (datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), (T0 * 1000, "iso")),  # an Arrow timestamp
])
def test_timestamps_in_seconds_milliseconds_and_iso8601_are_detected(raw, expected):
    assert timestamp_ms(raw) == expected


def test_a_column_keeps_the_unit_of_its_first_row(tmp_path):
    path = events_csv(tmp_path, [f"u1,i1,view,{T0},", f"u1,i2,view,{T0 * 1000},"])
    with pytest.raises(RowError, match=rf'{path}:3: field "timestamp": \'{T0 * 1000}\' reads as unix milliseconds, '
                                       rf'but the column holds unix seconds \(detected at {path}:2\)'):
        read_events(path)


def test_a_forced_unit_is_required_of_every_row(tmp_path):
    path = events_csv(tmp_path, [f"u1,i1,view,{T0},"])
    with pytest.raises(RowError, match=r"reads as unix seconds, but the column holds unix milliseconds "
                                       r"\(--timestamp-unit\)"):
        read_events(path, timestamp_unit="ms")


@pytest.mark.parametrize("value, message", [
    ("yesterday", "'yesterday' is not a time"),
    ("", "missing"),
    (str(T0 // 100), r"read as unix seconds is 1970-07-16 .*: times from 1980-01-01 to a day from now"),
    (str((NOW_MS // 1000) + 3 * 86400), r"read as unix seconds is 2025-06-0.*: times from 1980-01-01"),
    ("1970-01-02T00:00:00Z", "read as ISO-8601 date-time is 1970-01-02"),
    ("1e30", "the year"),
])
def test_a_time_out_of_range_or_unreadable_names_line_and_column(tmp_path, value, message):
    path = events_csv(tmp_path, [f"u1,i1,view,{value},"])
    with pytest.raises(RowError, match=rf'^{path}:2: field "timestamp": .*{message}'):
        read_events(path)


@pytest.mark.parametrize("row, column, message", [
    (f",i1,view,{T0},", "user_id", "must not be empty"),
    (f"u1,,view,{T0},", "item_id", "must not be empty"),
    (f"{'u' * 129},i1,view,{T0},", "user_id", "longer than 128 characters"),
    (f"u1,i1,review,{T0},", "type", "unknown event type 'review': map it with --event-type-map 'review=TYPE'"),
    (f"u1,i1,view,{T0},lots", "value", "'lots' is not a number"),
    (f"u1,i1,rate,{T0},7", "value", "a rating must be in 0..5, got 7.0"),
    (f"u1,i1,view,{T0},nan", "value", "must be a finite number"),
    (f"u1,,search,{T0},", "query", "required for a SEARCH event"),
])
def test_a_bad_event_row_names_file_line_and_column(tmp_path, row, column, message):
    path = events_csv(tmp_path, [f"u0,i0,view,{T0},", row])
    with pytest.raises(RowError, match=rf'^{path}:3: field "{column}": {message}'):
        read_events(path)


def test_an_event_id_column_is_used_and_checked(tmp_path):
    path = events_csv(tmp_path, [f"e1,u1,i1,{T0}", f",u1,i2,{T0}", f"{'e' * 129},u1,i3,{T0}"],
                      header="event_id,user_id,item_id,timestamp")
    reader = EventReader(Source(path), EventMapping(), now_ms=NOW_MS)
    rows = list(reader.source.records())
    assert reader.event(*rows[0])[0] == "e1"
    assert reader.event(*rows[1])[0].startswith("c-")  # an empty one: derived
    with pytest.raises(RowError, match=rf'{path}:4: field "event_id": longer than 128'):
        reader.event(*rows[2])


def test_the_reader_refuses_what_the_updater_refuses():
    """The reader applies check_event's rules (with the id checks cached): a battery of events,
    each refused by both or by neither."""
    cases = [("u", "i", ET.EVENT_TYPE_VIEW, "", 0.0), ("", "i", ET.EVENT_TYPE_VIEW, "", 0.0),
             ("u", "", ET.EVENT_TYPE_CLICK, "", 0.0), ("u", "", ET.EVENT_TYPE_SEARCH, "", 0.0),
             ("u", "", ET.EVENT_TYPE_SEARCH, "red pens", 0.0), ("u", "i", ET.EVENT_TYPE_RATE, "", 5.5),
             ("u", "i", ET.EVENT_TYPE_RATE, "", -1.0), ("u", "i", ET.EVENT_TYPE_PURCHASE, "", 99.0),
             ("\u200b", "i", ET.EVENT_TYPE_VIEW, "", 0.0), ("u", "i" * 129, ET.EVENT_TYPE_VIEW, "", 0.0),
             ("u", "i", ET.EVENT_TYPE_VIEW, "", float("inf")), ("u", "i", ET.EVENT_TYPE_SEARCH, "q" * 1001, 0.0)]
    source = Source.__new__(Source)
    source.path, source.format, source.columns = Path("e.csv"), "csv", ["user_id", "item_id", "timestamp"]
    for user, item, type_, query, value in cases:
        reader = EventReader(source, EventMapping(), now_ms=NOW_MS)
        event = common_pb2.Event(event_id="e1", user_id=user, item_id=item, type=type_, query=query, value=value,
                                 timestamp_ms=T0 * 1000)
        try:
            check_event(event, "event", NOW_MS)
            updater = None
        except InvalidArgument as exc:
            updater = exc.field
        try:
            reader._check("e1", False, user, item, type_, query, value)
            ours = None
        except InvalidArgument as exc:
            ours = exc.field
        assert ours == updater, (user, item, type_, query, value)


def test_event_types_are_mapped_and_skipped(tmp_path):
    path = events_csv(tmp_path, [f"u1,i1,Review,{T0},", f"u1,i1,wishlist,{T0},", f"u1,i1,Add to cart,{T0},",
                                 f"u1,i1,PURCHASE,{T0},", f"u1,i1,,{T0},"])
    rows = read_events(path, type_map=parse_type_map(["review=purchase", "wishlist=skip"]))
    assert [r and r[3] for r in rows] == [ET.EVENT_TYPE_PURCHASE, None, ET.EVENT_TYPE_ADD_TO_CART,
                                          ET.EVENT_TYPE_PURCHASE, ET.EVENT_TYPE_VIEW]


@pytest.mark.parametrize("pairs, message", [
    (["review"], "--event-type-map review: expected SOURCE=TYPE"),
    (["review=buy"], "--event-type-map review=buy: unknown event type 'buy'; one of view, click, add_to_cart"),
])
def test_a_bad_type_map_names_the_flag(pairs, message):
    with pytest.raises(SourceError, match=message):
        parse_type_map(pairs)


def test_without_a_type_column_a_rating_is_rate_else_the_default(tmp_path):
    path = events_csv(tmp_path, [f"u1,i1,{T0},4.5"], header="userId,movieId,timestamp,rating")
    [row] = read_events(path)
    assert row[1:] == ("u1", "i1", ET.EVENT_TYPE_RATE, "", 4.5, T0 * 1000)
    path = events_csv(tmp_path, [f"u1,i1,{T0}"], header="user,item,ts")
    assert read_events(path)[0][3] == ET.EVENT_TYPE_VIEW
    assert read_events(path, default_type="purchase")[0][3] == ET.EVENT_TYPE_PURCHASE
    with pytest.raises(SourceError, match="--default-event-type buy: unknown event type"):
        read_events(path, default_type="buy")


def test_content_derived_ids_depend_on_every_part_and_nothing_else(tmp_path):
    base = ("u1", "i1", ET.EVENT_TYPE_VIEW, T0 * 1000, 0.0, "")
    assert event_id_for(*base) == event_id_for(*base)
    for i, other in enumerate(["u2", "i2", ET.EVENT_TYPE_CLICK, T0 * 1000 + 1, 1.0, "q"]):
        changed = list(base)
        changed[i] = other
        assert event_id_for(*changed) != event_id_for(*base)
    # The same event in two files, two formats: the same id (a re-import is a duplicate).
    csv_path = events_csv(tmp_path, [f"u1,i1,view,{T0},0"])
    jsonl_path = write(tmp_path / "events.jsonl", json.dumps({"user": "u1", "item": "i1", "event": "view",
                                                              "time": "2023-11-14T22:13:20Z"}) + "\n")
    assert read_events(csv_path)[0][0] == read_events(jsonl_path)[0][0] == event_id_for(*base)


def test_event_columns_missing_are_named_with_their_flag(tmp_path):
    path = events_csv(tmp_path, ["u1,i1"], header="user_id,item_id")
    with pytest.raises(SourceError, match=r"no timestamp column \(looked for timestamp\|time\|ts.*"
                                          r"--timestamp-column; its columns: user_id, item_id"):
        EventReader(Source(path), EventMapping())


# --- The generated shop --------------------------------------------------------------------


def test_the_shop_is_deterministic_and_its_shoppers_have_the_planted_taste():
    items = shop.shop_items(300, seed=7)
    assert items == shop.shop_items(300, seed=7) and len({it["item_id"] for it in items}) == 300
    events = list(shop.shop_events(items, 40, 30, seed=7))
    assert events == list(shop.shop_events(items, 40, 30, seed=7)) and len(events) == 40 * 30
    by_id = {it["item_id"]: it for it in items}
    for user in {e["user_id"] for e in events}:
        kind, value = shop.preference(user, items)
        views = [by_id[e["item_id"]] for e in events if e["user_id"] == user and e["event"] == "view"]
        liked = [it for it in views if (it["brand"] if kind == "brand" else it["categories"][-1]) == value]
        assert len(liked) >= 0.6 * len(views), (user, kind, value)
        times = [e["timestamp"] for e in events if e["user_id"] == user]
        assert times == sorted(times)


# --- Faults found by a hostile tester (issue 18's attack): each refused as one line ----------


def test_a_gz_that_is_not_gzip_or_is_cut_off_is_one_line_naming_the_file(tmp_path):
    fake = tmp_path / "items.csv.gz"
    fake.write_bytes(b"item_id,title\na1,First\n")
    with pytest.raises(SourceError, match=rf"^{fake}: not a gzip file"):
        Source(fake)
    whole = gzip.compress(b"item_id,title\n" + b"a1,First\n" * 20000)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[:15])  # before its first line
    with pytest.raises(SourceError, match=rf"^{cut}: cut off before its first line"):
        Source(cut)
    cut.write_bytes(whole[: len(whole) // 2])  # in the middle
    with pytest.raises(SourceError, match=rf"^{cut}: cut off after line \d+"):
        list(Source(cut).records())
    jsonl = tmp_path / "cut.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b'{"item_id": "a1"}\n' * 20000)[:15])
    with pytest.raises(SourceError, match=rf"^{jsonl}: cut off before its first line"):
        Source(jsonl)


def test_a_directory_is_named_as_one(tmp_path):
    (tmp_path / "items.csv").mkdir()
    with pytest.raises(SourceError, match=rf"^{tmp_path / 'items.csv'}: is a directory"):
        Source(tmp_path / "items.csv")


def test_a_quote_left_open_to_the_end_names_the_line_it_opened_on(tmp_path):
    path = write(tmp_path / "items.csv", 'item_id,title\nA,"Red shoe\nB,Blue hat\n')
    with pytest.raises(SourceError, match=rf"^{path}:2: a quote opened .* never closed"):
        read_items(path)


def test_more_attributes_than_an_item_holds_are_refused_naming_the_flag(tmp_path):
    names = [f"a{n}" for n in range(65)]
    path = write(tmp_path / "items.csv", ",".join(["item_id", "title", *names]) + "\n" +
                 ",".join(["i1", "One", *["1"] * 65]) + "\n")
    with pytest.raises(SourceError, match=r"^--attribute: 65 attributes, an item holds at most 64"):
        ItemReader(Source(path), ItemMapping(attributes=[AttributeSpec.parse(n) for n in names]))


@pytest.mark.parametrize("spec, message", [
    ("price:", "no kind after ':'"),
    ("price=", "no name after '='"),
])
def test_an_empty_attribute_kind_or_name_is_refused(spec, message):
    with pytest.raises(SourceError, match=f"^--attribute {spec}: {message}"):
        AttributeSpec.parse(spec)


def test_json_and_parquet_nan_is_a_number_that_is_not_finite_not_a_missing_value(tmp_path):
    from recmesh.tools.catalog.importer import read_item_file

    mapping = ItemMapping(attributes=[AttributeSpec.parse("price")])
    jsonl = write(tmp_path / "items.jsonl", '{"item_id": "A", "title": "a", "price": NaN}\n'
                                            '{"item_id": "B", "title": "b", "price": 3}\n')
    with pytest.raises(RowError, match=rf'^{jsonl}:1: field "price": nan is not a finite number'):
        read_item_file(Source(jsonl), mapping)
    parquet = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["A", "B"], "title": ["a", "b"], "price": [float("nan"), None]}), parquet)
    with pytest.raises(RowError, match=rf'^{parquet}: row 1: field "price": nan is not a finite number'):
        read_item_file(Source(parquet), mapping)
    # A Parquet null is missing: the item has no such attribute.
    pq.write_table(pa.table({"item_id": ["A", "B"], "title": ["a", "b"], "price": [None, 2.0]}), parquet)
    items, _ = read_item_file(Source(parquet), mapping)
    assert "price" not in items[0].attributes and items[1].attributes["price"].number == 2.0

    events = write(tmp_path / "events.jsonl", f'{{"user_id": "u", "item_id": "A", "type": "rate", "timestamp": {T0},'
                                              ' "value": NaN}\n')
    with pytest.raises(RowError, match=rf'^{events}:1: field "value": must be a finite number'):
        read_events(events)
    events = tmp_path / "events.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["A"], "type": ["view"], "timestamp": [T0],
                             "value": [float("nan")]}), events)
    with pytest.raises(RowError, match=rf'^{events}: row 1: field "value": must be a finite number'):
        read_events(events)


def test_a_rate_event_without_a_rating_is_refused(tmp_path):
    path = events_csv(tmp_path, [f"u1,i1,rate,{T0},"])
    with pytest.raises(RowError, match=rf'^{path}:2: field "value": a rate event needs a rating in 0..5: empty'):
        read_events(path)
    assert read_events(events_csv(tmp_path, [f"u1,i1,view,{T0},"]))[0][5] == 0.0  # other types: no value is 0


def test_objects_and_lists_in_a_text_attribute_or_the_description_are_refused(tmp_path):
    from recmesh.tools.catalog.importer import read_item_file

    jsonl = write(tmp_path / "items.jsonl", '{"item_id": "A", "title": "t", "brand": {"a": 1}}\n')
    for kind in ("", ":text"):
        with pytest.raises(RowError, match=rf'^{jsonl}:1: field "brand": an object, expected text'):
            read_item_file(Source(jsonl), ItemMapping(attributes=[AttributeSpec.parse(f"brand{kind}")]))
    parquet = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["A"], "title": ["t"], "sizes": [["S", "M"]], "dims": [{"w": 1.0}]}), parquet)
    with pytest.raises(RowError, match=rf'^{parquet}: row 1: field "sizes": a list, expected text'):
        read_item_file(Source(parquet), ItemMapping(attributes=[AttributeSpec.parse("sizes")]))
    with pytest.raises(RowError, match=rf'^{parquet}: row 1: field "dims": an object, expected text'):
        read_item_file(Source(parquet), ItemMapping(attributes=[AttributeSpec.parse("dims")]))
    with pytest.raises(RowError, match=rf'^{parquet}: row 1: field "dims": an object, expected text'):
        read_items(parquet, text_fields=["dims"])


def test_a_source_type_mapped_twice_to_different_types_is_refused():
    with pytest.raises(SourceError, match=r"^--event-type-map wishlist=purchase: 'wishlist' is mapped already "
                                          r"\(--event-type-map wishlist=view\)"):
        parse_type_map(["wishlist=view", "wishlist=purchase"])
    assert parse_type_map(["wishlist=view", "wishlist=view"]) == {"wishlist": "view"}


def test_a_parquet_time_out_of_range_is_shown_as_iso_text(tmp_path):
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"], "type": ["view"],
                             "timestamp": pa.array([datetime(1960, 1, 1)], pa.timestamp("s"))}), path)
    with pytest.raises(RowError, match=r"field \"timestamp\": '1960-01-01T00:00:00' read as ISO-8601"):
        read_events(path)
