"""Interaction datasets in one shape, whatever their source format.

Loaders: MovieLens ml-latest(-small) csv, ml-100k (u.data / u.item), ml-1m (.dat), a generic
format: interactions (user, item, timestamp[, rating]) + items (id, text fields) as CSV or
JSONL, and a var's own data (`from_var`: the catalog `recmesh import` wrote and the updater's
event log) - what `recmesh train` learns from by default."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from recmesh.tools.catalog import movielens


@dataclass(frozen=True)
class Interaction:
    user: str
    item: str
    timestamp: int  # seconds
    rating: float = 0.0


@dataclass(frozen=True)
class Search:
    """A typed search (a SEARCH event): what the user asked for, before what they picked."""

    user: str
    query: str
    timestamp: int  # seconds


@dataclass
class Dataset:
    name: str
    interactions: list[Interaction]  # in file order (the stable sort keeps it on ties)
    item_ids: list[str]
    item_texts: list[str]  # aligned with item_ids: what the text encoder reads
    # Aligned with item_ids when the source has them (empty lists otherwise): what the ranker's
    # category affinity reads and what the typed-query scenario builds its queries from.
    item_titles: list[str] = field(default_factory=list)
    item_categories: list[list[str]] = field(default_factory=list)
    item_tags: list[list[str]] = field(default_factory=list)
    # The searches of the source in time order (a var's SEARCH events; empty for the file
    # formats): what the text model's fine-tuning pairs with the item picked next.
    searches: list[Search] = field(default_factory=list)

    def item_index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}

    def categories(self) -> list[list[str]]:
        """Each item's categories (empty lists when the source has none), aligned with item_ids."""
        return self.item_categories or [[] for _ in self.item_ids]


def _text(title: str, genres: list[str], tags: list[str]) -> str:
    return ". ".join(p for p in (title, ", ".join(genres), ", ".join(tags)) if p)


def movielens_latest(folder: Path) -> Dataset:
    catalog = movielens.load(folder)
    interactions = [Interaction(r.user_id, r.item_id, r.timestamp_ms // 1000, r.rating) for r in catalog.ratings]
    texts = [_text(it.title, list(it.categories), list(it.tags)) for it in catalog.items]
    return Dataset(folder.name, interactions, [it.item_id for it in catalog.items], texts,
                   [it.title for it in catalog.items], [list(it.categories) for it in catalog.items],
                   [list(it.tags) for it in catalog.items])


def ml100k(folder: Path) -> Dataset:
    genres = [line.split("|")[0] for line in (folder / "u.genre").read_text(encoding="latin-1").splitlines() if line]
    ids, texts, titles, categories = [], [], [], []
    for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
        parts = line.split("|")
        flags = parts[5:]
        ids.append(parts[0])
        titles.append(parts[1])
        categories.append([g for g, f in zip(genres, flags, strict=False) if f == "1"])
        texts.append(_text(parts[1], categories[-1], []))
    interactions = []
    for line in (folder / "u.data").read_text().splitlines():
        user, item, rating, ts = line.split("\t")
        interactions.append(Interaction(user, item, int(ts), float(rating)))
    return Dataset(folder.name, interactions, ids, texts, titles, categories, [[] for _ in ids])


def ml1m(folder: Path) -> Dataset:
    ids, texts, titles, categories = [], [], [], []
    for line in (folder / "movies.dat").read_text(encoding="latin-1").splitlines():
        item, title, genres = line.split("::")
        ids.append(item)
        titles.append(title)
        categories.append(genres.split("|"))
        texts.append(_text(title, categories[-1], []))
    interactions = []
    for line in (folder / "ratings.dat").read_text().splitlines():
        user, item, rating, ts = line.split("::")
        interactions.append(Interaction(user, item, int(ts), float(rating)))
    return Dataset(folder.name, interactions, ids, texts, titles, categories, [[] for _ in ids])


def _records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _labels(value) -> list[str]:
    """A list field of the generic format: a JSON list, or one CSV cell split on '|'."""
    if isinstance(value, list):
        return [str(v) for v in value if str(v)]
    return [v.strip() for v in str(value or "").split("|") if v.strip()]


def generic(interactions_path: Path, items_path: Path, name: str = "generic") -> Dataset:
    """interactions: user, item, timestamp[, rating]; items: id plus any text fields (title,
    description, categories, tags ...), all joined into the item text."""
    items = _records(items_path)
    ids = [str(row["id"]) for row in items]
    texts = [". ".join(str(v) for k, v in row.items() if k != "id" and v) for row in items]
    interactions = [
        Interaction(str(r["user"]), str(r["item"]), int(float(r["timestamp"])), float(r.get("rating") or 0))
        for r in _records(interactions_path)
    ]
    return Dataset(interactions_path.stem, interactions, ids, texts, [str(row.get("title") or "") for row in items],
                   [_labels(row.get("categories")) for row in items], [_labels(row.get("tags")) for row in items])


def from_var(var: Path | None = None) -> Dataset:
    """A var's own data: the items of its imported catalog ($RECMESH_VAR/catalog/items.jsonl,
    recmesh.tools.catalog.snapshot) with the text the catalog encodes (recmesh.common.catalog.
    item_text), and the interactions of its event log ($RECMESH_VAR/updater/events.sqlite) in log
    order - the split's stable sort keeps that order on equal timestamps.

    Each event becomes one interaction: timestamp_ms // 1000 seconds, strength = the rating the
    served model reads for its type and value (recmesh.models.interest.served.event_ratings: a
    RATE's value, a PURCHASE 4.5, ...) - the model trains on what it will be given. Events of
    weight <= 0 (recmesh/events/weights.py, the var's catalog/event_weights.json: a hide, a
    dislike) are no interest and no interaction, as the gateway leaves them out of the history
    it serves. SEARCH events (no item) are kept apart as `searches` (those with a query); events
    of items the catalog does not hold are skipped. A var without events is
    a dataset without interactions (cold start; `recmesh train` then installs the zero-shot
    model). FileNotFoundError when the var has no imported catalog."""
    from recmesh.common.catalog import item_text
    from recmesh.common.paths import var_paths
    from recmesh.common.validation import is_item_event
    from recmesh.events.eventlog import EventLog
    from recmesh.events.weights import load_event_weights
    from recmesh.models.interest.served import event_ratings
    from recmesh.tools.catalog.snapshot import read_items
    from recmesh.v1 import common_pb2

    paths = var_paths(var)
    weights = load_event_weights(paths.event_weights)
    items = list(read_items(paths.catalog_items))
    known = {it.item_id for it in items}
    interactions, searches = [], []
    search = common_pb2.EventType.EVENT_TYPE_SEARCH
    if paths.event_log.is_file():
        log = EventLog(paths.event_log)
        try:
            for e in log.replay():
                if e.type == search and e.query.strip():
                    searches.append(Search(e.user_id, e.query, e.timestamp_ms // 1000))
                if not is_item_event(e) or e.item_id not in known or weights.weight(e.type, e.value) <= 0:
                    continue
                strength = event_ratings([e.type], [e.value])[0]
                interactions.append(Interaction(e.user_id, e.item_id, e.timestamp_ms // 1000, strength))
        finally:
            log.close()
    return Dataset(paths.root.name, interactions, [it.item_id for it in items], [item_text(it) for it in items],
                   [it.title for it in items], [list(it.categories) for it in items], [list(it.tags) for it in items],
                   sorted(searches, key=lambda x: x.timestamp))


def load(source: str | Path, items: str | Path | None = None) -> Dataset:
    """A folder in any MovieLens format, or an interactions file plus an items file."""
    path = Path(source)
    if items is not None:
        return generic(path, Path(items))
    if (path / "ratings.csv").is_file():
        return movielens_latest(path)
    if (path / "u.data").is_file():
        return ml100k(path)
    if (path / "ratings.dat").is_file():
        return ml1m(path)
    raise ValueError(f"{path}: no known dataset format (ratings.csv, u.data, ratings.dat or --items)")


@dataclass
class Split:
    """Time-ordered leave-one-out over users with >= 5 interactions: last = test,
    second-last = validation, the rest = train (item indices)."""

    train: dict[str, list[int]]
    valid: dict[str, int]
    test: dict[str, int]
    n_items: int
    # Aligned with train[user] (+ the valid item at the end, for test-time history).
    timestamps: dict[str, list[int]]
    ratings: dict[str, list[float]]

    def history(self, user: str, stage: str) -> list[int]:
        return self.train[user] + ([self.valid[user]] if stage == "test" else [])

    def without(self, users: list[str]) -> "Split":
        """The same split with these users left out entirely."""
        drop = set(users)

        def keep(d: dict) -> dict:
            return {u: v for u, v in d.items() if u not in drop}

        return Split(keep(self.train), keep(self.valid), keep(self.test), self.n_items, keep(self.timestamps),
                     keep(self.ratings))

    def stats(self) -> dict[str, int]:
        return {"users": len(self.train), "items": self.n_items,
                "interactions": sum(len(t) + 2 for t in self.train.values())}


def split(dataset: Dataset, min_interactions: int = 5) -> Split:
    index = dataset.item_index()
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for x in dataset.interactions:
        if x.item in index:
            by_user[x.user].append(x)
    train, valid, test, stamps, ratings = {}, {}, {}, {}, {}
    for user, events in by_user.items():
        if len(events) < min_interactions:
            continue
        events = sorted(events, key=lambda e: e.timestamp)  # stable: ties keep file order
        items = [index[e.item] for e in events]
        train[user], valid[user], test[user] = items[:-2], items[-2], items[-1]
        stamps[user] = [e.timestamp for e in events[:-1]]
        ratings[user] = [e.rating for e in events[:-1]]
    return Split(train, valid, test, len(dataset.item_ids), stamps, ratings)


def popularity_counts(s: Split) -> Counter:
    return Counter(i for items in s.train.values() for i in items)
