"""More like this: how SimilarItems scores and explains the items like an anchor
(services/gateway/similar.py asks retrieval for the candidates and calls this).

An anchor - a catalog item or a free text - has up to two vectors:
- its catalog vector (the interest model's item space, where items the same people consume lie
  close: behaviour) - used only for a warm item, one with events when the catalog was built
  (popularity > 0), whose vector carries its learned ID embedding; a new item's catalog vector
  is a projection of its text (item_encoder), so its text vector says the same more directly;
- its language-model text vector (title, categories, tags, description; a free text's own).

A candidate's similarity is the cosine with each the anchor has, blended (`Weights.behaviour`
the share of behaviour when there are both); the user's interest, when known, adds
`Weights.interest` x its cosine with the candidate's catalog vector: it re-orders the anchor's
neighbours (retrieval found them for the anchor), it does not replace them. The weights are
the gateway's settings; their choice is in docs/similar.md.

Reasons name what each item shares with the anchor: the parts of its score that lift it most
above the other candidates ("people who liked X also liked this", "similar description",
"fits your interests"), then the categories it shares with the anchor, by name."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from recmesh.common.vectors import l2_normalize

# A title quoted in a reason is cut to this many characters (titles may hold 1,000).
TITLE_IN_REASON = 60
# Shared categories named in a reason, at most.
CATEGORIES_IN_REASON = 3
POPULAR = "popular right now"


@dataclass(frozen=True)
class Anchor:
    """What an answer is like. item_id/title "" for a free text; vectors are 1-D float32,
    None when the anchor has none (or it could not be had in time)."""

    item_id: str
    title: str
    categories: tuple[str, ...]
    vector: np.ndarray | None  # catalog space; a warm item's only (see the module docstring)
    text_vector: np.ndarray | None  # the language model's

    @property
    def searchable(self) -> bool:
        """Whether there is a vector to search with."""
        return self.vector is not None or self.text_vector is not None


@dataclass(frozen=True)
class Weights:
    behaviour: float  # 0..1: share of behaviour in a warm anchor's similarity; the rest is text
    interest: float  # >= 0: weight of the user's interest (cosine) added to the similarity


@dataclass(frozen=True)
class Scored:
    """Candidates' scores, row i candidate i's. parts: each contribution to the score that was
    computed ("behaviour", "text", "interest": the weighted cosines), one array each."""

    scores: np.ndarray
    parts: dict[str, np.ndarray]
    # The reasons compare an item with the best this many: those it competes with for a place
    # on the page (all the candidates would include the far ones, above whose mean everything
    # on the page lies).
    peers: int = 10

    @functools.cached_property
    def means(self) -> dict[str, float]:
        """Each part's mean over the best `peers` candidates: what lifts one above the others."""
        best = np.argsort(-self.scores, kind="stable")[:max(1, self.peers)]
        return {part: float(values[best].mean()) for part, values in self.parts.items()}

    def order(self) -> list[int]:
        """Rows, best first (ties: retrieval's order)."""
        return np.argsort(-self.scores, kind="stable").tolist()


def score(anchor: Anchor, vectors: np.ndarray, text_similarity: list[float] | np.ndarray | None,
          interest: np.ndarray | None, weights: Weights, popularity: list[float] | None = None,
          page: int = 10) -> Scored:
    """Scores of n candidates. vectors: their catalog vectors (n, dim), or (0, 0) when not
    fetched; text_similarity: each one's text cosine with the anchor's text vector (None: not
    known); interest: the user's vector in the catalog space (None: no user, or none known).
    With neither similarity (the anchor could not be encoded or looked up in time), the score is
    `popularity` (n values in [0, 1]; None: all equal). page: the page size k (the reasons
    compare each item with the best max(k, 10))."""
    n = len(vectors) if len(vectors) else len(text_similarity) if text_similarity is not None else \
        len(popularity) if popularity is not None else 0
    unit = l2_normalize(np.asarray(vectors, np.float32)) if len(vectors) else None
    similarities: dict[str, np.ndarray] = {}
    if anchor.vector is not None and unit is not None:
        similarities["behaviour"] = unit @ l2_normalize(np.asarray(anchor.vector, np.float32))
    if text_similarity is not None and anchor.text_vector is not None:
        similarities["text"] = np.asarray(text_similarity, np.float32)
    if len(similarities) == 2:
        parts = {"behaviour": weights.behaviour * similarities["behaviour"],
                 "text": (1 - weights.behaviour) * similarities["text"]}
    else:
        parts = similarities
    if parts:
        total = np.sum(list(parts.values()), axis=0)
    else:
        total = np.asarray(popularity if popularity is not None else np.zeros(n), np.float32)
    if interest is not None and unit is not None and weights.interest > 0:
        parts["interest"] = weights.interest * (unit @ l2_normalize(np.asarray(interest, np.float32)))
        total = total + parts["interest"]
    return Scored(np.asarray(total, np.float32), parts, max(page, 10))


def _quoted(title: str) -> str:
    return title if len(title) <= TITLE_IN_REASON else title[:TITLE_IN_REASON - 1].rstrip() + "…"


def _part_reason(part: str, anchor: Anchor) -> str:
    if part == "behaviour":
        return f"people who liked {_quoted(anchor.title)} also liked this"
    if part == "text":
        return "similar description" if anchor.item_id else "matches the text given"
    return "fits your interests"


def reasons(anchor: Anchor, scored: Scored, row: int, categories) -> list[str]:
    """Why candidate `row` (its categories given) is like the anchor, strongest first: the
    parts of its score above their mean over its peers (Scored.means), most above first (at
    least its largest part), then the categories it shares with the anchor; "popular right
    now" when there was no similarity to score by."""
    means = scored.means
    lifts = {part: float(values[row]) - means[part] for part, values in scored.parts.items()}
    named = [part for part in sorted(lifts, key=lifts.__getitem__, reverse=True) if lifts[part] > 0]
    if not named and scored.parts:
        named = [max(scored.parts, key=lambda part: scored.parts[part][row])]
    said = [_part_reason(part, anchor) for part in named]
    if not any(part in scored.parts for part in ("behaviour", "text")):
        said.append(POPULAR)  # no similarity was known: popularity ordered these
    held = set(categories)
    shared = [c for c in anchor.categories if c in held][:CATEGORIES_IN_REASON]
    if shared:
        said.append(f"shares {', '.join(shared)} with {_quoted(anchor.title)}")
    return said
