"""How an item becomes text for the encoder: one recipe for bootstrap and live upserts."""

from __future__ import annotations

from recmesh.v1 import common_pb2

# Bump when the recipe changes: cached catalog builds are keyed on it.
ITEM_TEXT_RECIPE = "title.categories.description.tags/v1"


def item_text(item: common_pb2.Item) -> str:
    parts = [item.title, ", ".join(item.categories), item.description, ", ".join(item.tags)]
    return ". ".join(p for p in parts if p)
