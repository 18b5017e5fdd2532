"""Synthesised typed queries for training the interest model's query fusion
(sequence_model: interest = h + query_proj(q)).

Nobody logged the queries that led to most interactions, so training queries are built from what
the catalog says about the item picked: per item, phrases from its own labels -

  - its categories: every genre of a flat list, every level of a category path (broad levels
    that label more than `broad_share` of the catalog are left out: they do not tell items
    apart), and the path itself ("Office Electronics > Calculators > Scientific") where one
    category implies another (a path's levels: every item with the leaf has the parent);
  - its tags;
  - brand-like attributes: text attributes whose values are shared by several items (a brand, a
    maker), not identifiers (unique per item) and not flags or numbers;
  - the SEARCH texts that led to it, where the data has them (the caller collects them from the
    event log: recmesh.tools.eval.train.search_phrases).

Each distinct phrase is encoded once by the language model; a training query for a target item
is the unit mean of 1-3 of its own phrases' vectors, drawn at random (seeded). Items without
labels get no query. Pure numpy: the caller encodes the phrases."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PATH_SEP = " > "
MAX_PHRASES_PER_QUERY = 3


def specific_categories(categories: Sequence[Sequence[str]]) -> list[list[str]]:
    """Per item, its categories that no other category of the same item implies (c' implies c
    when every item with c' has c, and c is on more items): a path's leaf; a flat list whole."""
    holders = _holders(categories)
    out = []
    for cats in categories:
        unique = list(dict.fromkeys(cats))
        out.append([c for c in unique if not any(o != c and holders[o] < holders[c] for o in unique)])
    return out


def _holders(categories: Sequence[Sequence[str]]) -> dict[str, set[int]]:
    holders: dict[str, set[int]] = defaultdict(set)
    for i, cats in enumerate(categories):
        for c in cats:
            holders[c].add(i)
    return holders


def category_phrases(categories: Sequence[Sequence[str]], broad_share: float = 0.5) -> list[list[str]]:
    """Per item: its categories (those on more than broad_share of the items left out), then for
    each most specific category that implies others of the item, the path from the broadest to
    it joined with PATH_SEP."""
    holders = _holders(categories)
    n = max(1, len(categories))
    out = []
    for cats in categories:
        unique = list(dict.fromkeys(cats))
        phrases = [c for c in unique if len(holders[c]) <= broad_share * n]
        for leaf in unique:
            if any(o != leaf and holders[o] < holders[leaf] for o in unique):
                continue  # implied by a more specific one: not a leaf
            ancestors = [o for o in unique if o != leaf and holders[leaf] < holders[o]]
            if ancestors:
                ancestors.sort(key=lambda o: (-len(holders[o]), unique.index(o)))
                phrases.append(PATH_SEP.join([*ancestors, leaf]))
        out.append(phrases)
    return out


def brand_attributes(attributes: Sequence[Mapping[str, object]]) -> list[str]:
    """The names of brand-like attributes: text values (str) on at least two items, with at least
    one value shared by two or more items and fewer distinct values than items holding the
    attribute (an identifier has one item per value)."""
    values: dict[str, Counter] = defaultdict(Counter)
    for attrs in attributes:
        for name, value in attrs.items():
            if isinstance(value, str) and value.strip():
                values[name][value.strip().casefold()] += 1
    names = []
    for name, counts in values.items():
        held = sum(counts.values())
        if held >= 2 and len(counts) < held and counts.most_common(1)[0][1] >= 2:
            names.append(name)
    return sorted(names)


def item_labels(categories: Sequence[Sequence[str]], tags: Sequence[Sequence[str]] | None = None,
                attributes: Sequence[Mapping[str, object]] | None = None,
                searches: Sequence[Sequence[str]] | None = None, broad_share: float = 0.5) -> list[list[str]]:
    """Per item (all sequences aligned with the catalog's items; None: the data has none), its
    phrases: categories and paths (category_phrases), tags, brand-like attribute values, search
    texts - stripped, each once (case-insensitive: the language model is uncased), in that order.
    ValueError naming the field when a sequence's length is not the catalog's."""
    n = len(categories)
    for field, seq in (("tags", tags), ("attributes", attributes), ("searches", searches)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"item_labels: {field} has {len(seq)} rows for {n} items")
    by_category = category_phrases(categories, broad_share)
    brands = brand_attributes(attributes) if attributes is not None else []
    out = []
    for i in range(n):
        phrases = list(by_category[i])
        phrases += list(tags[i]) if tags is not None else []
        if attributes is not None:
            phrases += [str(attributes[i][name]) for name in brands if isinstance(attributes[i].get(name), str)]
        phrases += list(searches[i]) if searches is not None else []
        seen, labels = set(), []
        for phrase in (p.strip() for p in phrases):
            if phrase and phrase.casefold() not in seen:
                seen.add(phrase.casefold())
                labels.append(phrase)
        out.append(labels)
    return out


@dataclass(frozen=True)
class QueryBank:
    """Every distinct phrase's language-model vector and, per item, which phrases are its own.

    phrases: P texts; vectors: P x text_dim float32, unit rows; members: n_items x m int64, each
    item's phrase indices left-aligned, -1 padding (m = the most phrases any item has, >= 1)."""

    phrases: list[str]
    vectors: np.ndarray
    members: np.ndarray

    @classmethod
    def build(cls, labels: Sequence[Sequence[str]], encode: Callable[[list[str]], np.ndarray]) -> "QueryBank":
        """From item_labels' output; encode(texts) -> len(texts) x text_dim unit vectors (the
        served language model), called once with every distinct phrase (case-insensitive)."""
        index: dict[str, int] = {}
        phrases: list[str] = []
        rows = []
        for item_labels_ in labels:
            row = []
            for phrase in item_labels_:
                key = phrase.casefold()
                if key not in index:
                    index[key] = len(phrases)
                    phrases.append(phrase)
                if index[key] not in row:
                    row.append(index[key])
            rows.append(row)
        width = max([1, *map(len, rows)])
        members = np.full((len(rows), width), -1, np.int64)
        for i, row in enumerate(rows):
            members[i, : len(row)] = row
        vectors = np.asarray(encode(phrases), np.float32) if phrases else np.zeros((0, 0), np.float32)
        if len(vectors) != len(phrases):
            raise ValueError(f"QueryBank.build: encode gave {len(vectors)} vectors for {len(phrases)} phrases")
        return cls(phrases, vectors, members)

    @property
    def n_items(self) -> int:
        return len(self.members)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    def labelled(self) -> np.ndarray:
        """n_items bools: the items that have at least one phrase (only those get a query)."""
        return self.members[:, 0] >= 0

    def item_phrases(self, item: int) -> list[str]:
        return [self.phrases[j] for j in self.members[item] if j >= 0]

    def sample(self, targets: np.ndarray, rng: np.random.Generator,
               max_phrases: int = MAX_PHRASES_PER_QUERY) -> tuple[np.ndarray, np.ndarray]:
        """A query per target item (targets: N item indices, 0-based): the unit mean of 1 to
        max_phrases of the item's own phrase vectors, distinct, drawn with rng. Returns (N x dim
        float32 queries, N bools: whether the target has labels - rows without are zero)."""
        targets = np.asarray(targets, np.int64)
        if targets.size and (targets.min() < 0 or targets.max() >= self.n_items):
            raise ValueError(f"QueryBank.sample: targets must be item indices in [0, {self.n_items})")
        members = self.members[targets]  # N x m
        counts = (members >= 0).sum(axis=1)
        has = counts > 0
        queries = np.zeros((len(targets), self.dim), np.float32)
        if not has.any():
            return queries, has
        keys = rng.random(members.shape)
        keys[members < 0] = np.inf  # padding is never drawn
        order = np.argsort(keys, axis=1)[:, :max_phrases]  # a random permutation's first max_phrases
        k = rng.integers(1, np.clip(counts, 1, max_phrases) + 1)  # 1..min(count, max_phrases) phrases
        take = np.arange(order.shape[1])[None, :] < k[:, None]
        chosen = np.take_along_axis(members, order, axis=1)
        take &= chosen >= 0
        summed = np.einsum("nk,nkd->nd", take.astype(np.float32), self.vectors[np.maximum(chosen, 0)])
        norms = np.linalg.norm(summed, axis=1, keepdims=True)
        queries[has] = summed[has] / np.maximum(norms[has], 1e-12)
        return queries, has
