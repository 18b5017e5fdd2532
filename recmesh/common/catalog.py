"""How an item becomes text for the encoder: one recipe for bootstrap and live upserts."""

from __future__ import annotations

from recmesh.common.validation import strip_invisible
from recmesh.v1 import common_pb2

# Bump when the recipe changes: cached catalog builds are keyed on it. (Removing invisible
# characters left the shipped catalog's texts as they were: MovieLens has none.)
ITEM_TEXT_RECIPE = "title.categories.description.tags/v1"


def item_text(item: common_pb2.Item, max_chars: int | None = None) -> str:
    """Title, categories, description and tags, invisible characters removed (the language
    model is given what a reader sees); cut to max_chars when given - the model reads its first
    max_seq_len tokens only, while the item's fields are stored whole."""
    parts = [item.title, ", ".join(item.categories), item.description, ", ".join(item.tags)]
    text = ". ".join(p for p in map(strip_invisible, parts) if p)
    return text if max_chars is None else text[:max_chars]
