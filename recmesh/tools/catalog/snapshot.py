"""The catalog as imported, kept in the var ($RECMESH_VAR/catalog/items.jsonl): one JSON object
per item, in item-id order -

    {"item_id": str, "title": str, "description": str, "categories": [str], "tags": [str],
     "attributes": {name: str | float | bool}}

Written whole and atomically (a temporary file renamed over the old one) by `recmesh import` and
`recmesh bootstrap`; read by the next import (what changed), the shard build and `recmesh train`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from recmesh.index.layout import attribute_protos, attribute_values
from recmesh.v1 import common_pb2


def item_record(item: common_pb2.Item) -> dict:
    """The item as one snapshot line (a plain dict; attributes as plain values)."""
    return {"item_id": item.item_id, "title": item.title, "description": item.description,
            "categories": list(item.categories), "tags": list(item.tags), "attributes": attribute_values(item)}


def record_item(record: dict) -> common_pb2.Item:
    """The snapshot line back as an Item (`layout.attribute_protos`: a bool is a flag, not a number)."""
    return common_pb2.Item(item_id=record["item_id"], title=record.get("title", ""),
                           description=record.get("description", ""), categories=record.get("categories", []),
                           tags=record.get("tags", []), attributes=attribute_protos(record.get("attributes", {})))


def write_items(path: Path, items: Iterable[common_pb2.Item]) -> int:
    """Replaces the snapshot at path with these items, sorted by id; returns how many. Atomic: a
    crash leaves the old snapshot or the new one, never half of one."""
    records = sorted((item_record(it) for it in items), key=lambda r: r["item_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return len(records)


def read_items(path: Path) -> Iterator[common_pb2.Item]:
    """The snapshot's items in item-id order. FileNotFoundError names the commands that write it."""
    if not path.is_file():
        raise FileNotFoundError(f"no imported catalog at {path}: run `recmesh import` (your files) or "
                                f"`recmesh bootstrap` (the bundled MovieLens)")
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield record_item(json.loads(line))

