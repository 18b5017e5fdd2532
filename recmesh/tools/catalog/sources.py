"""Reading an import's files: streaming readers chosen by extension, and the column mapping that
turns a source's rows into catalog items (`ItemReader`) and events (`EventReader`).

Formats, by extension (the text ones may end in .gz):

- .csv, .tsv: the csv module, UTF-8 (a BOM is skipped), a header row naming the columns;
  every value is a string, "" is absent;
- .jsonl, .ndjson: one JSON object per line (blank lines skipped); values keep their JSON types;
- .parquet: pyarrow, read in record batches; values keep their Arrow types (lists, numbers,
  booleans, timestamps).

A reader yields (position, record): position is the line the record starts on (CSV: line 1 is
the header; JSONL: line 1 is the first line) or the row number from 1 (Parquet), and record a
dict column -> value (None or "" for absent). Nothing is held beyond one batch: files larger
than memory are streamed.

Columns are found by common names (`ITEM_COLUMNS`, `EVENT_COLUMNS`, matched exactly, then
case-insensitively) unless a flag names them. Every problem is a `SourceError`: one line that
names the file, the line (or row) and the column, or the setting to change."""

from __future__ import annotations

import csv
import gzip
import hashlib
import itertools
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Iterator

from recmesh.common import clock, limits
from recmesh.common.errors import InvalidArgument
from recmesh.common.validation import (
    MAX_FUTURE_MS,
    MIN_EVENT_MS,
    check_event_content,
    check_id,
    check_item,
    check_text,
    visible_text,
)
from recmesh.v1 import common_pb2

ET = common_pb2.EventType

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Records a JSONL file is sampled on for its columns (it has no header).
JSONL_SAMPLE = 1000

# Common names of each column, in order of preference.
ITEM_COLUMNS = {
    "item_id": ("item_id", "id", "asin", "product_id", "sku", "movieId"),
    "title": ("title", "name", "product_name"),
    "description": ("description", "desc", "summary", "overview", "body"),
    "categories": ("categories", "category", "genres", "genre", "category_path"),
    "tags": ("tags", "tag", "keywords", "labels"),
}
EVENT_COLUMNS = {
    "user_id": ("user_id", "user", "userId", "customer_id", "visitor_id", "reviewerID"),
    "item_id": ("item_id", "item", "itemId", "product_id", "asin", "movieId", "sku"),
    "type": ("type", "event", "event_type", "action"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date", "event_time", "unixReviewTime"),
    "value": ("value", "rating", "score", "quantity"),
    "event_id": ("event_id",),
    "query": ("query", "search_query"),
}
# Value columns that hold ratings: without a type column, their rows are RATE events.
RATING_COLUMNS = ("rating", "score", "stars")

ATTRIBUTE_KINDS = {"text": "text", "string": "text", "str": "text", "number": "number", "float": "number",
                   "int": "number", "flag": "flag", "bool": "flag", "boolean": "flag"}
ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
TRUE_WORDS, FALSE_WORDS = frozenset({"true", "yes"}), frozenset({"false", "no"})
# recmesh's event type names ("add_to_cart"), and SKIP: a source type mapped to it is left out.
EVENT_TYPE_NAMES = {name.removeprefix("EVENT_TYPE_").lower(): value for name, value in ET.items()
                    if value != ET.EVENT_TYPE_UNSPECIFIED}
SKIP = "skip"
TIMESTAMP_UNITS = ("auto", "s", "ms", "iso")
_UNIT_NAMES = {"s": "unix seconds", "ms": "unix milliseconds", "iso": "ISO-8601 date-time"}


class SourceError(ValueError):
    """An import problem, as one line naming the file, line and column, or the setting."""


class RowError(SourceError):
    """A bad value in one row: `where` names the file and line, `column` the column."""

    def __init__(self, where: str, column: str, problem: str):
        super().__init__(f'{where}: field "{column}": {problem}')
        self.column = column


def _problem(exc: InvalidArgument) -> str:
    """The problem part of an InvalidArgument ("field: problem")."""
    return str(exc)[len(exc.field) + 2:]


# --- Readers -------------------------------------------------------------------------------


class Source:
    """One input file, read by its extension's reader. Raises SourceError when the file is
    missing, of an unknown extension or not readable as its format (a malformed line names
    itself when reached)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        name = self.path.name.lower()
        self.compressed = name.endswith(".gz")
        suffix = Path(name.removesuffix(".gz")).suffix
        if suffix not in FORMATS or (self.compressed and FORMATS[suffix] == "parquet"):
            raise SourceError(f"{self.path}: unknown format {suffix or '(no extension)'!r}: name the file "
                              ".csv, .tsv, .jsonl, .ndjson (each optionally .gz) or .parquet")
        self.format = FORMATS[suffix]
        if self.path.is_dir():
            raise SourceError(f"{self.path}: is a directory, not a file")
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such file")
        self.columns: list[str] = self._columns()

    def where(self, position: int) -> str:
        """How a message names a record: `file:line`, or `file: row N` for Parquet."""
        return f"{self.path}: row {position}" if self.format == "parquet" else f"{self.path}:{position}"

    def error(self, position: int, column: str, problem: str) -> RowError:
        return RowError(self.where(position), column, problem)

    def records(self, progress: bool = False, desc: str | None = None) -> Iterator[tuple[int, dict]]:
        """(position, record) for every record, streamed; with a progress bar on stderr."""
        if self.format == "parquet":
            yield from self._parquet(progress, desc)
        else:
            yield from self._text(progress, desc)

    # Columns: the header (CSV), the schema (Parquet), the keys of the first records (JSONL).
    def _columns(self) -> list[str]:
        if self.format == "parquet":
            return list(self._parquet_file().schema_arrow.names)
        if self.format == "jsonl":
            seen: dict[str, None] = {}
            for _, record in itertools.islice(self._text(False, None), JSONL_SAMPLE):
                seen.update(dict.fromkeys(record))
            return list(seen)
        with self._open_text() as (_, text):
            try:
                header = next(csv.reader(text, delimiter=self._delimiter(), strict=True), None)
            except csv.Error as exc:
                raise SourceError(f"{self.where(1)}: not a readable header ({exc})") from None
        if not header:
            raise SourceError(f"{self.path}: empty file (a header row naming the columns comes first)")
        duplicated = sorted({c for c in header if header.count(c) > 1})
        if duplicated:
            raise SourceError(f"{self.where(1)}: the header names {', '.join(map(repr, duplicated))} twice")
        return header

    def _delimiter(self) -> str:
        return "\t" if self.format == "tsv" else ","

    def _open_text(self):
        """A context manager of (raw binary file, lines): the lines decoded one by one, so that
        text that is not UTF-8 is named by its line (a BOM opening the file is dropped); the raw
        file's position is the progress (compressed bytes for .gz)."""
        import contextlib

        def decoded(stream) -> Iterator[str]:
            lines = iter(stream)
            n = 0
            while True:
                try:
                    line = next(lines)
                except StopIteration:
                    return
                except (OSError, EOFError, zlib.error) as exc:
                    raise self._read_error(n, exc) from None
                n += 1
                try:
                    yield line.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise SourceError(f"{self.where(n)}: not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the "
                                      "line): save the file as UTF-8") from None

        @contextlib.contextmanager
        def opened():
            try:
                raw = self.path.open("rb")
            except OSError as exc:
                raise SourceError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
            with raw:
                yield raw, decoded(gzip.GzipFile(fileobj=raw) if self.compressed else raw)

        return opened()

    def _read_error(self, lines_read: int, exc: BaseException) -> SourceError:
        """A read error of the file after lines_read lines, as one line naming the file."""
        after = f"after line {lines_read}" if lines_read else "before its first line"
        if isinstance(exc, gzip.BadGzipFile):
            return SourceError(f"{self.path}: not a gzip file ({exc}): name it without .gz, or compress it")
        if isinstance(exc, EOFError):
            return SourceError(f"{self.path}: cut off {after} (the compressed data ends early: an incomplete copy "
                               "or download?)")
        if isinstance(exc, zlib.error):
            return SourceError(f"{self.path}: corrupt compressed data {after} ({exc})")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return SourceError(f"{self.path}: cannot be read {after} ({reason})")

    def _text(self, progress: bool, desc: str | None) -> Iterator[tuple[int, dict]]:
        from tqdm import tqdm

        total = self.path.stat().st_size
        with self._open_text() as (raw, text), tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                                                     desc=desc or self.path.name, leave=False) as bar:
            line = 0
            try:
                if self.format == "jsonl":
                    rows = self._jsonl_rows(text)
                else:
                    rows = self._csv_rows(text)
                for n, (line, record) in enumerate(rows):
                    if n % 4096 == 0 and progress:
                        bar.update(raw.tell() - bar.n)
                    yield line, record
            except (OSError, EOFError, zlib.error) as exc:  # decoding errors are named by `decoded`
                raise self._read_error(line, exc) from None
            bar.update(total - bar.n)

    def _jsonl_rows(self, text) -> Iterator[tuple[int, dict]]:
        for line, content in enumerate(text, start=1):
            if not content.strip():
                continue
            try:
                record = json.loads(content)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{self.where(line)}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise SourceError(f"{self.where(line)}: not a JSON object (one object per line)")
            yield line, record

    def _csv_rows(self, text) -> Iterator[tuple[int, dict]]:
        csv.field_size_limit(64 * 1024 * 1024)  # long descriptions; the item checks bound them
        # strict: a quote left open at the end of the file is an error, not the rest of the file as one value
        reader = csv.reader(text, delimiter=self._delimiter(), strict=True)
        header: list[str] | None = None
        start = 1
        try:
            for row in reader:
                if header is None:
                    header, start = row, reader.line_num + 1
                    continue
                if row and len(row) != len(header):
                    raise SourceError(f"{self.where(start)}: {len(row)} fields, the header has {len(header)} "
                                      "(a quote left open, or a separator in an unquoted value?)")
                if row:
                    yield start, dict(zip(header, row, strict=True))
                start = reader.line_num + 1
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise SourceError(f"{self.where(start)}: a quote opened in the record starting on this line is "
                                  f"never closed (it runs to the end of the file, line {reader.line_num})") from None
            raise SourceError(f"{self.where(start)}: not valid {self.format.upper()} ({exc})") from None

    def _parquet_file(self):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SourceError(f"{self.path}: reading Parquet needs pyarrow (the 'serve' extra): pip install -c "
                              "constraints.txt pyarrow") from None
        try:
            return pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow's errors (ArrowInvalid, OSError) for a file it cannot read
            raise SourceError(f"{self.path}: not a readable Parquet file ({exc})") from None

    def _parquet(self, progress: bool, desc: str | None) -> Iterator[tuple[int, dict]]:
        from tqdm import tqdm

        parquet = self._parquet_file()
        position = 0
        with tqdm(total=parquet.metadata.num_rows, unit="row", disable=not progress, desc=desc or self.path.name,
                  leave=False) as bar:
            batches = parquet.iter_batches(batch_size=4096)
            while True:
                try:
                    batch = next(batches, None)
                    records = batch.to_pylist() if batch is not None else None
                except Exception as exc:  # pyarrow's errors (ArrowInvalid, OSError) for a corrupt row group
                    raise SourceError(f"{self.path}: cannot be read after row {position} ({exc})") from None
                if batch is None:
                    break
                for record in records:
                    position += 1
                    yield position, record
                bar.update(batch.num_rows)


def find_column(source: Source, flag: str | None, flag_name: str, candidates: tuple[str, ...]) -> str | None:
    """The column a flag names (SourceError when the file has none such), else the first of the
    candidates the file has (exactly, then ignoring case), else None."""
    if flag is not None:
        if flag not in source.columns:
            sampled = f" (in its first {JSONL_SAMPLE} records)" if source.format == "jsonl" else ""
            raise SourceError(f"{flag_name} {flag}: {source.path} has no such column{sampled}; its columns: "
                              f"{', '.join(source.columns)}")
        return flag
    for name in candidates:
        if name in source.columns:
            return name
    folded = {c.casefold(): c for c in reversed(source.columns)}
    for name in candidates:
        if name.casefold() in folded:
            return folded[name.casefold()]
    return None


def _absent(value: Any) -> bool:
    """None or "": missing. (A NaN is a value - a number that is not finite - refused where a
    number is read: a JSON bare NaN, a Parquet float NaN; a Parquet null is None.)"""
    return value is None or (isinstance(value, str) and value == "")


def _nested(value: Any) -> str | None:
    """"a list" / "an object" when value is one (JSON array/object, Parquet list/struct), else None."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return None


def _text_value(value: Any) -> str:
    """A scalar or a list as text (lists joined by ", ")."""
    if isinstance(value, list | tuple):
        return ", ".join(_text_value(v) for v in value if not _absent(v))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --- Items ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeSpec:
    """One filterable attribute: read from `column`, stored as `name` (1..64 of [A-Za-z0-9_]);
    kind "text" | "number" | "flag", or None: inferred from the column's values."""

    column: str
    name: str
    kind: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "AttributeSpec":
        """`COLUMN[=NAME][:KIND]`: `price`, `price:number`, `In Stock=in_stock:flag`. SourceError
        names --attribute."""
        column, kind = spec, None
        head, sep, tail = spec.rpartition(":")
        if sep and tail.strip().lower() in ATTRIBUTE_KINDS:
            column, kind = head, ATTRIBUTE_KINDS[tail.strip().lower()]
        elif sep and not tail.strip():
            raise SourceError(f"--attribute {spec}: no kind after ':'; one of text, number, flag (or leave ':KIND' out"
                              " to infer it)")
        elif sep and tail and "=" not in tail:
            raise SourceError(f"--attribute {spec}: unknown kind {tail!r}; one of text, number, flag")
        column, renamed, name = column.partition("=")
        if renamed and not name:
            raise SourceError(f"--attribute {spec}: no name after '='; COLUMN=NAME stores the column under NAME "
                              "(or leave '=NAME' out)")
        name = name or column
        if not column:
            raise SourceError(f"--attribute {spec}: name a column (COLUMN[=NAME][:KIND])")
        if not ATTRIBUTE_NAME.fullmatch(name):
            raise SourceError(f"--attribute {spec}: an attribute name is 1..64 of A-Z a-z 0-9 _ "
                              f"(store the column under another: --attribute '{column}=NAME')")
        return cls(column, name, kind)


@dataclass
class ItemMapping:
    """How an items file's columns become items. None / empty: found by common names.

    text_fields: columns whose text makes the item's description (read by the language model
    with the title, categories and tags), one paragraph each: the first column's as it is, the
    others' as "Column: text" (`--text-field description --text-field brand`: "...\nBrand: HP");
    empty ones left out. Default: the description column by its common names.
    categories / tags: a list, or a string split at category_sep / tag_sep; with path_sep, each
    category is a path ("Office > Paper > Notebooks") kept as its levels, in order, each once
    (the levels are what filters name and what the model reads)."""

    item_id: str | None = None
    title: str | None = None
    text_fields: list[str] = field(default_factory=list)
    categories: str | None = None
    tags: str | None = None
    attributes: list[AttributeSpec] = field(default_factory=list)
    category_sep: str = "|"
    tag_sep: str = "|"
    path_sep: str | None = None


def labels(value: Any, sep: str | None, path_sep: str | None = None) -> list[str]:
    """Category or tag values: a list (a nested list is a path), or a string split at sep; each
    split at path_sep when given; stripped, empty ones dropped, each kept once, in order."""
    if _absent(value):
        return []
    parts = list(value) if isinstance(value, list | tuple) else (str(value).split(sep) if sep else [str(value)])
    out: dict[str, None] = {}
    for part in parts:
        if _absent(part):
            continue
        levels = ([_text_value(p) for p in part] if isinstance(part, list | tuple)
                  else str(part).split(path_sep) if path_sep else [_text_value(part)])
        for level in levels:
            level = level.strip()
            if level:
                out[level] = None
    return list(out)


class ItemReader:
    """Items from a Source under an ItemMapping. The columns are resolved when it is made
    (SourceError: a flag names a missing column; no id or title column)."""

    def __init__(self, source: Source, mapping: ItemMapping):
        self.source, self.mapping = source, mapping
        def find(flag, name, role):
            return find_column(source, flag, name, ITEM_COLUMNS[role])

        self.id_column = find(mapping.item_id, "--item-id-column", "item_id")
        self.title_column = find(mapping.title, "--title-column", "title")
        for column, role, flag in ((self.id_column, "item id", "--item-id-column"),
                                   (self.title_column, "title", "--title-column")):
            if column is None:
                raise SourceError(f"{source.path}: no {role} column (looked for "
                                  f"{'|'.join(ITEM_COLUMNS['item_id' if role == 'item id' else 'title'])}): "
                                  f"name it with {flag}; its columns: {', '.join(source.columns)}")
        if mapping.text_fields:
            self.text_columns = [find_column(source, c, "--text-field", ()) for c in mapping.text_fields]
        else:
            description = find(None, "", "description")
            self.text_columns = [description] if description else []
        self.categories_column = find(mapping.categories, "--categories-column", "categories")
        self.tags_column = find(mapping.tags, "--tags-column", "tags")
        self.attributes = mapping.attributes
        if len(self.attributes) > limits.ATTRIBUTES_PER_ITEM:
            raise SourceError(f"--attribute: {len(self.attributes)} attributes, an item holds at most "
                              f"{limits.ATTRIBUTES_PER_ITEM}")
        for spec in self.attributes:
            find_column(source, spec.column, "--attribute", ())
        names = [spec.name for spec in self.attributes]
        if len(set(names)) != len(names):
            raise SourceError(f"--attribute: the attribute {next(n for n in names if names.count(n) > 1)!r} "
                              "is named twice")

    def mapping_used(self) -> dict:
        """Which column each part of an item came from (for the report)."""
        used = {"item_id": self.id_column, "title": self.title_column, "text": self.text_columns,
                "categories": self.categories_column, "tags": self.tags_column,
                "attributes": {s.name: s.column for s in self.attributes}}
        read = {self.id_column, self.title_column, self.categories_column, self.tags_column, *self.text_columns,
                *(s.column for s in self.attributes)}
        return used | {"ignored": [c for c in self.source.columns if c not in read]}

    def _description(self, record: dict) -> str:
        parts = []
        for n, column in enumerate(self.text_columns):
            value = record.get(column)
            if isinstance(value, dict) or (isinstance(value, list | tuple) and
                                           any(isinstance(v, dict) for v in value)):
                raise ValueError(column)
            text = "" if _absent(value) else _text_value(value).strip()
            if text:  # the first column as it is (also when another is empty), the others labelled
                parts.append(text if n == 0 else f"{column.replace('_', ' ').capitalize()}: {text}")
        return "\n".join(parts)

    def item(self, position: int, record: dict) -> tuple[common_pb2.Item, dict[str, Any]]:
        """The record as an Item without attributes, checked as every stage checks one
        (`check_item`), and its raw attribute values (absent ones left out). SourceError names
        the line and column."""
        m = self.mapping
        raw_id, raw_title = record.get(self.id_column), record.get(self.title_column)
        for column, value in ((self.id_column, raw_id), (self.title_column, raw_title)):
            if isinstance(value, list | dict):
                raise self.source.error(position, column, f"a {type(value).__name__}, expected text")
        for column in (self.categories_column, self.tags_column):
            value = record.get(column) if column else None
            if isinstance(value, dict) or (isinstance(value, list | tuple) and
                                           any(isinstance(v, dict) or (isinstance(v, list | tuple) and
                                                                       any(map(_nested, v))) for v in value)):
                raise self.source.error(position, column, "an object (or a list of objects), expected text or a "
                                        "list of texts")
        try:
            description = self._description(record)
        except ValueError as exc:
            raise self.source.error(position, str(exc), "an object, expected text") from None
        item = common_pb2.Item(
            item_id="" if _absent(raw_id) else _text_value(raw_id),
            title="" if _absent(raw_title) else _text_value(raw_title),
            description=description,
            categories=labels(record.get(self.categories_column), m.category_sep, m.path_sep)
            if self.categories_column else [],
            tags=labels(record.get(self.tags_column), m.tag_sep) if self.tags_column else [],
        )
        self.check(position, item)
        raw = {spec.name: record.get(spec.column) for spec in self.attributes}
        return item, {name: value for name, value in raw.items() if not _absent(value)}

    def check(self, position: int, item: common_pb2.Item) -> None:
        """check_item (what UpsertItems accepts); RowError names the line and the column."""
        try:
            check_item(item, "item")
        except InvalidArgument as exc:
            raise self._field_error(position, exc) from None

    def _field_error(self, position: int, exc: InvalidArgument) -> RowError:
        part = exc.field.removeprefix("item.")
        base, _, index = part.partition("[")
        if base == "attributes":
            name = index.rstrip("]").strip('"')
            column = next((s.column for s in self.attributes if s.name == name), "--attribute")
            return self.source.error(position, column, _problem(exc))
        columns = {"item_id": self.id_column, "title": self.title_column,
                   "categories": self.categories_column, "tags": self.tags_column}
        if base == "description":
            column = '", "'.join(self.text_columns)
            if len(self.text_columns) > 1:
                return RowError(self.source.where(position), column, f"together: {_problem(exc)}")
        else:
            column = columns.get(base) or base
        problem = _problem(exc)
        if index:
            problem = f"value {int(index.rstrip(']')) + 1}: {problem}"
        return self.source.error(position, column, problem)


def attribute_kind(values: list[Any]) -> str:
    """The kind a column's values fit: "flag" (all booleans, or true/false/yes/no), "number"
    (all numbers, or text that parses as a finite number), else "text"."""
    def flag(v):
        return isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in TRUE_WORDS | FALSE_WORDS)

    def number(v):
        if isinstance(v, bool):
            return False
        if isinstance(v, int | float):
            return True  # a number (a NaN too: a number column, its non-finite values refused)
        try:
            return math.isfinite(float(str(v)))
        except ValueError:
            return False

    if values and all(map(flag, values)):
        return "flag"
    if values and all(map(number, values)):
        return "number"
    return "text"


def attribute_value(value: Any, kind: str) -> str | float | bool:
    """value as an attribute of kind; ValueError (the problem, for the row's error) when it is
    none such."""
    nested = _nested(value)
    if nested:
        raise ValueError(f"{nested}, expected {'text' if kind == 'text' else 'a ' + kind}")
    if kind == "flag":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(f"{value!r} is not a flag (true/false/yes/no)")
    if kind == "number":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return number
    text = "true" if value is True else "false" if value is False else _text_value(value)
    try:
        text = check_text(text, "value", limits.LABEL_CHARS)
    except InvalidArgument as exc:
        raise ValueError(f"text attributes are filter values: {_problem(exc)}") from None
    if not text:
        raise ValueError("only invisible characters")
    return text


def set_attribute(item: common_pb2.Item, name: str, value: str | float | bool) -> None:
    if isinstance(value, bool):
        item.attributes[name].flag = value
    elif isinstance(value, float):
        item.attributes[name].number = value
    else:
        item.attributes[name].text = value


# --- Events --------------------------------------------------------------------------------


@dataclass
class EventMapping:
    """How an events file's columns become events. None: found by common names.

    type_map: the source's type values -> recmesh's type names (view, click, add_to_cart,
    purchase, rate, search) or "skip" (such rows are left out, counted). Values that are
    recmesh's names already need no entry. default_type: the type of every row when the file
    has no type column (default: rate when the value column is a rating, else view).
    timestamp_unit: "auto" (each column's unit detected from its first row and then required
    of every row), "s", "ms" or "iso"."""

    user_id: str | None = None
    item_id: str | None = None
    type: str | None = None
    timestamp: str | None = None
    value: str | None = None
    event_id: str | None = None
    query: str | None = None
    type_map: dict[str, str] = field(default_factory=dict)
    default_type: str | None = None
    timestamp_unit: str = "auto"


def event_type(name: str, setting: str) -> int | None:
    """recmesh's type for a name (view, add_to_cart, "Add to cart", EVENT_TYPE_VIEW), None for
    "skip"; SourceError naming the setting for any other."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_").removeprefix("event_type_")
    if key == SKIP:
        return None
    if key not in EVENT_TYPE_NAMES:
        raise SourceError(f"{setting}: unknown event type {name!r}; one of {', '.join(EVENT_TYPE_NAMES)}, or skip")
    return EVENT_TYPE_NAMES[key]


def parse_type_map(pairs: list[str]) -> dict[str, str]:
    """`--event-type-map SOURCE=TYPE` values as {source value: recmesh type name}."""
    out = {}
    given: dict[str, tuple[str, int | None]] = {}  # source value, casefolded (as it is matched) -> (pair, type)
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip():
            raise SourceError(f"--event-type-map {pair}: expected SOURCE=TYPE (e.g. review=purchase)")
        resolved = event_type(target, f"--event-type-map {pair}")
        key = source.strip().casefold()
        if key in given and given[key][1] != resolved:
            raise SourceError(f"--event-type-map {pair}: {source.strip()!r} is mapped already "
                              f"(--event-type-map {given[key][0]}): map each source type once")
        given.setdefault(key, (pair, resolved))
        out[source.strip()] = target
    return out


def event_id_for(user_id: str, item_id: str, type_: int, timestamp_ms: int, value: float, query: str) -> str:
    """A content-derived event id: the same event imported again is a duplicate. 35 characters."""
    content = f"{user_id}\x1f{item_id}\x1f{type_}\x1f{timestamp_ms}\x1f{value!r}\x1f{query}"
    return "c-" + hashlib.blake2b(content.encode(), digest_size=16).hexdigest()


def _when(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return f"the year {1970 + ms / 31_556_952_000:.0f}"


def timestamp_ms(value: Any) -> tuple[int, str]:
    """A time as (milliseconds since the Unix epoch, unit): a number, or text holding one, below
    1e11 is unix seconds ("s"; 1e11 s is the year 5138), from 1e11 unix milliseconds ("ms"; 1e11
    ms is 1973, before any accepted time); other text is ISO-8601 ("iso": date or date-time, a
    time without an offset is UTC), as are Arrow timestamps and dates. ValueError: none of
    these. The range is not checked here (`check_time`)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return int(aware.timestamp() * 1000), "iso"
    if isinstance(value, date):
        return int(datetime.combine(value, time(), UTC).timestamp() * 1000), "iso"
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, int | float):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                try:
                    parsed = datetime.fromisoformat(text)
                except ValueError:
                    raise ValueError(f"{text!r} is not a time (unix seconds, milliseconds or ISO-8601)") from None
                return timestamp_ms(parsed)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a time")
    if abs(number) < 1e11:
        return int(round(number * 1000)), "s"
    return int(round(number)), "ms"


def _shown_time(raw: Any) -> str:
    """A source's time as a message shows it: Arrow timestamps and dates as ISO-8601 text."""
    if isinstance(raw, datetime | date):
        return repr(raw.isoformat())
    return repr(raw)


def check_time(ms: int, raw: Any, unit: str, now_ms: int) -> None:
    """ValueError unless ms lies in what every stage accepts (`validation.check_timestamp`):
    from 1980-01-01 to a day ahead of now_ms."""
    if not MIN_EVENT_MS <= ms <= now_ms + MAX_FUTURE_MS:
        raise ValueError(f"{_shown_time(raw)} read as {_UNIT_NAMES[unit]} is {_when(ms)}: times from 1980-01-01 "
                         "to a day from now are accepted")


# Ids remembered as checked (EventReader._check).
_CHECKED_IDS = 1_000_000
# (event_id, user_id, item_id, type, query, value, timestamp_ms): what an event row becomes.
EventRow = tuple[str, str, str, int, str, float, int]


class EventReader:
    """Events from a Source under an EventMapping; columns resolved when it is made
    (SourceError: a flag names a missing column, no user/item/timestamp column, a bad
    --event-type-map or --default-event-type)."""

    def __init__(self, source: Source, mapping: EventMapping, now_ms: int | None = None):
        self.source, self.mapping = source, mapping
        self.now_ms = clock.now_ms() if now_ms is None else now_ms

        def find(flag, name, role):
            return find_column(source, flag, name, EVENT_COLUMNS[role])

        self.user_column = find(mapping.user_id, "--user-column", "user_id")
        self.item_column = find(mapping.item_id, "--event-item-column", "item_id")
        self.type_column = find(mapping.type, "--event-type-column", "type")
        self.timestamp_column = find(mapping.timestamp, "--timestamp-column", "timestamp")
        self.value_column = find(mapping.value, "--value-column", "value")
        self.event_id_column = find(mapping.event_id, "--event-id-column", "event_id")
        self.query_column = find(mapping.query, "--query-column", "query")
        for column, role, flag in ((self.user_column, "user_id", "--user-column"),
                                   (self.item_column, "item_id", "--event-item-column"),
                                   (self.timestamp_column, "timestamp", "--timestamp-column")):
            if column is None:
                raise SourceError(f"{source.path}: no {role.replace('_', ' ')} column (looked for "
                                  f"{'|'.join(EVENT_COLUMNS[role])}): name it with {flag}; its columns: "
                                  f"{', '.join(source.columns)}")
        if mapping.timestamp_unit not in TIMESTAMP_UNITS:
            raise SourceError(f"--timestamp-unit {mapping.timestamp_unit}: one of {', '.join(TIMESTAMP_UNITS)}")
        self.unit: str | None = None if mapping.timestamp_unit == "auto" else mapping.timestamp_unit
        self.unit_line: int | None = None
        self._checked_ids: set[str] = set()  # user and item ids that passed check_id
        # Source type values -> recmesh type (None: skip); filled as values are met.
        self._types: dict[str, int | None] = {}
        self._map = {k.strip().casefold(): v for k, v in mapping.type_map.items()}
        if mapping.default_type is not None:
            self.default_type = event_type(mapping.default_type, f"--default-event-type {mapping.default_type}")
            self.default_name = mapping.default_type
        elif self.value_column is not None and self.value_column.casefold() in RATING_COLUMNS:
            self.default_type, self.default_name = ET.EVENT_TYPE_RATE, "rate (the value column is a rating)"
        else:
            self.default_type, self.default_name = ET.EVENT_TYPE_VIEW, "view"

    def mapping_used(self) -> dict:
        used = {"user_id": self.user_column, "item_id": self.item_column, "timestamp": self.timestamp_column,
                "timestamp_unit": self.unit, "type": self.type_column or f"(none: every row {self.default_name})",
                "value": self.value_column, "event_id": self.event_id_column or "(none: content-derived)",
                "query": self.query_column}
        read = {self.user_column, self.item_column, self.type_column, self.timestamp_column, self.value_column,
                self.event_id_column, self.query_column}
        return used | {"ignored": [c for c in self.source.columns if c not in read]}

    def _type(self, position: int, raw: Any) -> int | None:
        if _absent(raw):
            return self.default_type
        key = str(raw)
        if key in self._types:
            return self._types[key]
        target = self._map.get(key.strip().casefold())
        try:
            resolved = event_type(target if target is not None else key, "")
        except SourceError:
            raise self.source.error(position, self.type_column, f"unknown event type {key!r}: map it with "
                                    f"--event-type-map '{key}=TYPE' (TYPE: {', '.join(EVENT_TYPE_NAMES)} or skip)"
                                    ) from None
        self._types[key] = resolved
        return resolved

    def _time(self, position: int, raw: Any) -> int:
        column = self.timestamp_column
        if _absent(raw):
            raise self.source.error(position, column, "missing (every event needs its time)")
        try:
            ms, unit = timestamp_ms(raw)
        except ValueError as exc:
            raise self.source.error(position, column, str(exc)) from None
        if self.unit is None:
            self.unit, self.unit_line = unit, position
        elif unit != self.unit:
            since = f" (detected at {self.source.where(self.unit_line)})" if self.unit_line else \
                " (--timestamp-unit)"
            raise self.source.error(position, column, f"{_shown_time(raw)} reads as {_UNIT_NAMES[unit]}, but the "
                                    f"column holds {_UNIT_NAMES[self.unit]}{since}")
        try:
            check_time(ms, raw, unit, self.now_ms)
        except ValueError as exc:
            raise self.source.error(position, column, str(exc)) from None
        return ms

    def event(self, position: int, record: dict) -> EventRow | None:
        """The record as an event row, checked as the updater checks an event (`check_event`'s
        rules, `_check`); None when its type is mapped to skip. RowError names the line and
        column."""
        type_ = self._type(position, record.get(self.type_column)) if self.type_column else self.default_type
        if type_ is None:
            return None
        ts = self._time(position, record.get(self.timestamp_column))
        raw_value = record.get(self.value_column) if self.value_column else None
        if _absent(raw_value):
            if type_ == ET.EVENT_TYPE_RATE:
                column = self.value_column or "value"
                missing = "empty" if self.value_column else "no value column (name it with --value-column)"
                raise self.source.error(position, column, f"a rate event needs a rating in 0..5: {missing}")
            value = 0.0
        else:
            try:
                if isinstance(raw_value, bool):
                    raise ValueError
                value = float(raw_value)
            except (TypeError, ValueError):
                raise self.source.error(position, self.value_column, f"{raw_value!r} is not a number") from None
        ids = []
        for column in (self.user_column, self.item_column):
            raw = record.get(column)
            if isinstance(raw, list | dict):
                raise self.source.error(position, column, f"a {type(raw).__name__}, expected an id")
            if isinstance(raw, float) and not math.isfinite(raw):
                raise self.source.error(position, column, f"{raw!r}, expected an id")
            ids.append("" if _absent(raw) else _text_value(raw))
        user_id, item_id = ids
        for column in (self.query_column, self.event_id_column):
            nested = _nested(record.get(column)) if column else None
            if nested:
                raise self.source.error(position, column, f"{nested}, expected text")
        query = "" if not self.query_column or _absent(record.get(self.query_column)) else \
            _text_value(record[self.query_column])
        derived = not self.event_id_column or _absent(record.get(self.event_id_column))
        event_id = event_id_for(user_id, item_id, type_, ts, value, query) if derived else \
            _text_value(record[self.event_id_column])
        try:
            self._check(event_id, derived, user_id, item_id, type_, query, value)
        except InvalidArgument as exc:
            raise self._field_error(position, exc) from None
        return event_id, user_id, item_id, type_, visible_text(query) if query else "", value, ts

    def _check(self, event_id: str, derived: bool, user_id: str, item_id: str, type_: int, query: str,
               value: float) -> None:
        """check_event's rules (`recmesh.common.validation`: what the updater accepts) for a row
        whose type is known and time checked (`_time`); InvalidArgument names the event's field.
        Ids repeat - a user has many events - so an id that passed check_id once is not checked
        again (a bounded set: streams of many distinct ids stay in memory bounds)."""
        if not derived:  # a derived id is 35 characters of hex
            check_id(event_id, "event.event_id")
        self._check_id_once(user_id, "event.user_id")
        check_event_content(type_, item_id, query, value, "event", self._check_id_once)

    def _check_id_once(self, value: str, field: str) -> None:
        if value not in self._checked_ids:
            check_id(value, field)
            self._remember(value)

    def _remember(self, checked_id: str) -> None:
        if len(self._checked_ids) >= _CHECKED_IDS:
            self._checked_ids.clear()
        self._checked_ids.add(checked_id)

    def _field_error(self, position: int, exc: InvalidArgument) -> RowError:
        part = exc.field.removeprefix("event.")
        columns = {"event_id": self.event_id_column, "user_id": self.user_column, "item_id": self.item_column,
                   "value": self.value_column, "query": self.query_column, "timestamp_ms": self.timestamp_column,
                   "type": self.type_column}
        column = columns.get(part) or part
        problem = _problem(exc)
        if part == "query" and "required" in problem and not self.query_column:
            problem += " (the file has no query column: name it with --query-column)"
        return self.source.error(position, column, problem)
