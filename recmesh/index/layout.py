"""What every item index holds and how it addresses items, whichever backend: the named vectors,
the layout version, the payload and the point id. A catalog built by one backend is published
to the other (`recmesh publish-catalog`) unchanged because both read and write this."""

from __future__ import annotations

import functools
import hashlib

from recmesh.common.catalog import item_text
from recmesh.v1 import common_pb2

# Named vectors per item. Search sources name the first three; "similar" holds the catalog
# vector again, which Qdrant normalises, so that item-to-item search is by cosine.
INTEREST, SESSION, QUERY = "interest", "similar", "text"
# Bump when what a shard holds changes: cached catalog builds are keyed on it.
LAYOUT = "interest.similar.text/v3"  # v3: attributes in the payload; v2: 63-bit int point ids (v1: UUIDv5)


class ShardInUse(RuntimeError):
    """The shard's write-ahead log is locked by another process: one process opens a shard."""


class OlderLayout(ValueError):
    """A catalog recmesh built with another LAYOUT: rebuild (or republish) it."""


@functools.lru_cache(maxsize=1 << 16)  # seen-item exclusions resend the same ids every call
def point_id(item_id: str) -> int:
    """The item's Qdrant point id (ints or UUIDs; item ids are the backend's strings): 63 bits
    of a hash. Ints, because hits come back as Python objects of the id's type, and turning
    hundreds of UUIDs into Python objects per search cost more than the search. Collisions
    (expected at ~3e9 items) are refused when an item is stored."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big") >> 1


# The text is stored for humans and re-encoding, not needed to serve.
PAYLOAD_FIELDS = ["item_id", "title", "categories", "popularity", "attributes"]


def attribute_values(item: common_pb2.Item) -> dict[str, str | float | bool]:
    """The item's filterable attributes as plain values (text: str, number: float, flag: bool);
    attributes set to no kind are left out. `item`: anything with an `attributes` map of
    AttributeValue (Item, retrieval's Candidate, RecommendedItem)."""
    values: dict[str, str | float | bool] = {}
    for name, value in item.attributes.items():
        kind = value.WhichOneof("kind")
        if kind is not None:
            values[name] = getattr(value, kind)
    return values


def attribute_protos(values: dict[str, str | float | bool]) -> dict[str, common_pb2.AttributeValue]:
    """Stored attribute values ({name: str | float | bool}, as a payload holds them) as the
    protos' map of AttributeValue (bool is a flag, not a number: tested first); a value of
    another type (none recmesh writes) is left out."""
    protos = {}
    for name, value in values.items():
        if isinstance(value, bool):
            protos[name] = common_pb2.AttributeValue(flag=value)
        elif isinstance(value, (int, float)):
            protos[name] = common_pb2.AttributeValue(number=float(value))
        elif isinstance(value, str):
            protos[name] = common_pb2.AttributeValue(text=value)
    return protos


def item_payload(item: common_pb2.Item, popularity: float | None) -> dict:
    """What the shard stores per item (the text is kept for humans and re-encoding). popularity
    None: the item carries none - the store keeps the stored one (0 for a new item).
    attributes: {name: str | float | bool}, filtered on as `attributes.<name>`."""
    payload = {
        "item_id": item.item_id,
        "title": item.title,
        "categories": list(item.categories),
        "attributes": attribute_values(item),
        "text": item_text(item),
    }
    if popularity is not None:
        payload["popularity"] = float(popularity)
    return payload
