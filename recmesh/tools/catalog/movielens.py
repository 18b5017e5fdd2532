"""MovieLens `ml-latest-small` (csv): items with genres and frequent tags, and ratings."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from recmesh.v1 import common_pb2

NO_GENRES = "(no genres listed)"
TAGS_PER_ITEM = 5


@dataclass(frozen=True)
class Rating:
    user_id: str
    item_id: str
    rating: float
    timestamp_ms: int


@dataclass
class Catalog:
    items: list[common_pb2.Item]
    # log-scaled interaction count in [0, 1], aligned with items.
    popularity: list[float]
    ratings: list[Rating]


def _rows(path: Path):
    with path.open(newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def load(folder: Path) -> Catalog:
    if not (folder / "movies.csv").is_file():
        raise FileNotFoundError(f"{folder} has no movies.csv: not a MovieLens ml-latest-small folder")
    tags: dict[str, Counter] = defaultdict(Counter)
    if (folder / "tags.csv").is_file():
        for row in _rows(folder / "tags.csv"):
            tags[row["movieId"]][row["tag"].strip().lower()] += 1
    ratings = [
        Rating(row["userId"], row["movieId"], float(row["rating"]), int(row["timestamp"]) * 1000)
        for row in _rows(folder / "ratings.csv")
    ]
    from recmesh.tools.catalog.importer import log_popularity  # the formula the catalog's shard gets

    items = []
    for row in _rows(folder / "movies.csv"):
        genres = [g for g in row["genres"].split("|") if g and g != NO_GENRES]
        frequent = [t for t, _ in tags[row["movieId"]].most_common(TAGS_PER_ITEM)]
        items.append(common_pb2.Item(item_id=row["movieId"], title=row["title"], categories=genres, tags=frequent))
    popularity = log_popularity(Counter(r.item_id for r in ratings), [it.item_id for it in items])
    return Catalog(items, popularity, ratings)
