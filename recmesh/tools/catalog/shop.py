"""A generated demo shop: a catalog unlike MovieLens (product titles, descriptions, brands,
category paths, prices, stock) and shoppers with planted tastes, written as CSV, JSONL or
Parquet - for `recmesh import`'s tests, its measurements and trying it without data of one's own.

    python -m recmesh.tools.catalog.shop OUT_DIR [--format csv|jsonl|parquet] [--items 300]
        [--users 200] [--events-per-user 20] [--seed 7]

writes OUT_DIR/items.<ext> and OUT_DIR/events.<ext> and prints the `recmesh import` command for
them. Deterministic for a seed. Events are generated and written user by user (streamed: a
million events need no more memory than a thousand).

Items (`shop_items`): item_id "SKU00042", title "<Brand> <Adjective> <Product> <Model>",
description (a sentence or two naming the product's use), brand, category path (3 levels:
"Office > Paper > Notebooks"), tags, price (a number), in_stock (a flag).

Shoppers (`shop_events`): user "u00017" prefers one brand (even users) or one leaf category
(odd users): 80 % of their views are of that brand or category, the rest anything. A view is
followed by a cart (30 %), a cart by an order (50 %, value: the quantity 1..3). Types use the
shop's own words - view, cart, order - mapped on import (--event-type-map cart=add_to_cart
--event-type-map order=purchase). Times: from 2024-01-01, minutes to a day apart, increasing
per user; rows come user by user (each user's in time order).

Per format: CSV - category as a path string (import with --path-sep " > "), tags "a|b", in_stock
"true"/"false", timestamps unix seconds; JSONL - categories and tags as lists, numbers and
booleans as JSON's, timestamps ISO-8601; Parquet - lists, double, bool, timestamp[ms, UTC]."""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterable, Iterator

# (path, product nouns, what it is for, price range)
CATEGORIES = [
    (("Office", "Paper", "Notebooks"), ["Notebook", "Journal", "Notepad"], "taking notes in meetings and lectures",
     (3, 25)),
    (("Office", "Writing", "Pens"), ["Ballpoint Pen Set", "Gel Pen", "Fountain Pen"], "smooth everyday writing",
     (2, 60)),
    (("Office", "Desk", "Organizers"), ["Desk Organizer", "File Tray", "Drawer Divider"],
     "keeping a desk tidy", (8, 45)),
    (("Electronics", "Audio", "Headphones"), ["Over-Ear Headphones", "Earbuds", "Studio Monitor Headphones"],
     "listening to music with deep bass and noise cancelling", (20, 300)),
    (("Electronics", "Computers", "Keyboards"), ["Mechanical Keyboard", "Wireless Keyboard", "Ergonomic Keyboard"],
     "typing comfortably all day", (25, 180)),
    (("Kitchen", "Cookware", "Pans"), ["Frying Pan", "Saute Pan", "Cast Iron Skillet"],
     "searing, frying and everyday cooking", (15, 120)),
    (("Kitchen", "Coffee", "Grinders"), ["Burr Coffee Grinder", "Hand Grinder", "Espresso Grinder"],
     "grinding coffee beans fresh for espresso or filter", (20, 250)),
    (("Garden", "Tools", "Pruning Shears"), ["Pruning Shears", "Hedge Trimmer", "Garden Loppers"],
     "cutting branches and shaping hedges", (10, 90)),
    (("Sports", "Fitness", "Yoga Mats"), ["Yoga Mat", "Exercise Mat", "Travel Yoga Mat"],
     "yoga, pilates and stretching at home", (15, 110)),
    (("Toys", "Puzzles", "Jigsaw Puzzles"), ["Jigsaw Puzzle", "3D Puzzle", "Puzzle Box"],
     "family evenings and patient builders", (8, 50)),
]
BRANDS = ["Acme", "Borealis", "Cobalt", "Dunmore", "Everly", "Fjord", "Granite", "Halcyon", "Ivory", "Juniper",
          "Kestrel", "Lumen"]
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Eco", "Pro", "Travel", "Premium", "Everyday", "Heavy-Duty", "Slim"]
START = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
FORMATS = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}
IMPORT_FLAGS = ["--text-field", "description", "--text-field", "brand", "--attribute", "price",
                "--attribute", "in_stock", "--attribute", "brand", "--event-type-map", "cart=add_to_cart",
                "--event-type-map", "order=purchase"]


def shop_items(n_items: int = 300, seed: int = 7) -> list[dict]:
    """n_items product records (see the module), in id order."""
    rng = random.Random(seed)
    items = []
    for i in range(n_items):
        path, nouns, use, (low, high) = CATEGORIES[rng.randrange(len(CATEGORIES))]
        brand, adjective, noun = rng.choice(BRANDS), rng.choice(ADJECTIVES), rng.choice(nouns)
        model = f"{rng.choice('ABCDEFGHKMNPRSTX')}{rng.randint(10, 990)}"
        items.append({
            "item_id": f"SKU{i:05d}",
            "title": f"{brand} {adjective} {noun} {model}",
            "description": f"A {adjective.lower()} {noun.lower()} by {brand}, made for {use}. "
                           f"{rng.choice(['Ships in recyclable packaging.', 'Two-year warranty.', 'Bestseller.', ''])}"
                           .strip(),
            "brand": brand,
            "categories": list(path),
            "tags": sorted({adjective.lower(), path[-1].lower(), rng.choice(["gift", "new", "sale", "bundle"])}),
            "price": round(rng.uniform(low, high), 2),
            "in_stock": rng.random() < 0.85,
        })
    return items


def shop_events(items: list[dict], n_users: int = 200, events_per_user: int = 20, seed: int = 7
                ) -> Iterator[dict]:
    """events_per_user events per shopper (see the module), user by user, each user's in time
    order: {user_id, item_id, event, timestamp (unix seconds), value}."""
    rng = random.Random(seed + 1)
    by_brand: dict[str, list[dict]] = {}
    by_leaf: dict[str, list[dict]] = {}
    for item in items:
        by_brand.setdefault(item["brand"], []).append(item)
        by_leaf.setdefault(item["categories"][-1], []).append(item)
    brands, leaves = sorted(by_brand), sorted(by_leaf)
    for u in range(n_users):
        liked = by_brand[brands[u // 2 % len(brands)]] if u % 2 == 0 else by_leaf[leaves[u // 2 % len(leaves)]]
        now = START + rng.randint(0, 180 * 86400)
        emitted = 0
        while emitted < events_per_user:
            item = rng.choice(liked) if rng.random() < 0.8 else rng.choice(items)
            steps = [("view", 0)]
            if rng.random() < 0.3:
                steps.append(("cart", 0))
                if rng.random() < 0.5:
                    steps.append(("order", rng.randint(1, 3)))
            for event, value in steps[: events_per_user - emitted]:
                now += rng.randint(60, 86400)
                yield {"user_id": f"u{u:05d}", "item_id": item["item_id"], "event": event, "timestamp": now,
                       "value": value}
                emitted += 1


def preference(user_id: str, items: list[dict]) -> tuple[str, str]:
    """What a shopper was generated to prefer: ("brand", name) or ("category", leaf)."""
    u = int(user_id.removeprefix("u"))
    if u % 2 == 0:
        brands = sorted({it["brand"] for it in items})
        return "brand", brands[u // 2 % len(brands)]
    leaves = sorted({it["categories"][-1] for it in items})
    return "category", leaves[u // 2 % len(leaves)]


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def write_items(path: Path, items: list[dict]) -> Path:
    """The items in the format of path's extension (.csv, .jsonl, .parquet; see the module)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["item_id", "title", "description", "brand", "category", "tags", "price", "in_stock"])
            for it in items:
                w.writerow([it["item_id"], it["title"], it["description"], it["brand"], " > ".join(it["categories"]),
                            "|".join(it["tags"]), f"{it['price']:.2f}", "true" if it["in_stock"] else "false"])
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False) + "\n")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(items), path)
    else:
        raise ValueError(f"{path}: write .csv, .jsonl or .parquet")
    return path


def write_events(path: Path, events: Iterable[dict], batch: int = 50_000) -> int:
    """The events, streamed, in the format of path's extension; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["user_id", "item_id", "event", "timestamp", "value"])
            for e in events:
                w.writerow([e["user_id"], e["item_id"], e["event"], e["timestamp"], e["value"]])
                n += 1
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for e in events:
                f.write(json.dumps(e | {"timestamp": _iso(e["timestamp"])}) + "\n")
                n += 1
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("event", pa.string()),
                            ("timestamp", pa.timestamp("ms", tz="UTC")), ("value", pa.float64())])
        with pq.ParquetWriter(path, schema) as writer:
            rows: list[dict] = []
            for e in events:
                rows.append(e | {"timestamp": datetime.fromtimestamp(e["timestamp"], UTC),
                                 "value": float(e["value"])})
                if len(rows) == batch:
                    writer.write_table(pa.Table.from_pylist(rows, schema))
                    n, rows = n + len(rows), []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema))
                n += len(rows)
    else:
        raise ValueError(f"{path}: write .csv, .jsonl or .parquet")
    return n


def write_shop(out: Path, fmt: str = "csv", n_items: int = 300, n_users: int = 200, events_per_user: int = 20,
               seed: int = 7) -> tuple[Path, Path]:
    """OUT/items.<ext> and OUT/events.<ext>; returns their paths."""
    items = shop_items(n_items, seed)
    ext = FORMATS[fmt]
    items_path = write_items(out / f"items{ext}", items)
    events_path = out / f"events{ext}"
    write_events(events_path, shop_events(items, n_users, events_per_user, seed))
    return items_path, events_path


def import_command(items_path: Path, events_path: Path) -> list[str]:
    """The `recmesh import` arguments for a generated shop."""
    flags = ["--path-sep", " > "] if items_path.suffix == ".csv" else []
    return ["import", "--items", str(items_path), "--events", str(events_path), *flags, *IMPORT_FLAGS]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.catalog.shop", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", choices=sorted(FORMATS), default="csv")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--events-per-user", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    items_path, events_path = write_shop(args.out, args.format, args.items, args.users, args.events_per_user,
                                         args.seed)
    print(f"wrote {args.items} items to {items_path} and {args.users * args.events_per_user} events to "
          f"{events_path}; import them into a var of their own (not the one MovieLens is in) with:\n"
          f"  RECMESH_VAR={shlex.quote(str(args.out.resolve() / 'var'))} "
          f"recmesh {shlex.join(import_command(items_path, events_path))}")


if __name__ == "__main__":
    main()
