"""Choosing the ranker's linear blend on a validation split: what `recmesh train` stores with the
interest model it installs (the ranker's and the online learner's start version), and what
`recmesh eval` ranks with.

Input: for each validation user, the ranker's features of EVERY catalog item (computed once,
users x items x len(FEATURES)), the held-out item and the items to exclude (the history). The
score of a weight vector is the protocol's NDCG@10 (full ranking, history excluded) with ties
broken at their mean position, so a feature that is constant (no categories, no history) never
wins by tying everything with the target.

Selection: every single part alone (interest only, session only, popularity only, closest recent
item only, category affinity only), the start version given (e.g. the shipped one), and a
coordinate ascent from the best part over the non-negative weights of the others on a grid in
units of each feature's spread (std over users x items). The best of these candidates is chosen,
so the chosen blend is never worse on validation than the best part (asserted). The query
weight is chosen after, on the typed-query scenario (a query column filled per user): it does
not change a ranking without a query (query_sim is 0 then). Last, every weight is multiplied by
the one factor that best fits the listwise softmax the online learner trains with (rankings do
not change). Bias 0 and the `skipped` weight is taken from the start version (no impressions
offline). Pure numpy: no service, no tool."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recmesh.models.ranking.features import FEATURES

K = 10
# The parts a blend is made of (query_sim is chosen separately; skipped needs impressions).
PARTS = ("interest_sim", "session_sim", "popularity", "recent_sim_max", "category_affinity")
# Weights tried for each part, in units of 1 / (the part's std): relative to the anchor part's 1.
GRID = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# Query weights tried, in units of (blend score std) / (query column std).
QUERY_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
SWEEPS = 3


@dataclass
class ValidationSet:
    """features: users x items x len(FEATURES), float32 (query_sim, column 2, holds the typed
    query's similarity when the set has one, else 0); targets: users (item index); exclude: per
    user, the item indices not to rank (history)."""

    features: np.ndarray
    targets: np.ndarray
    exclude: list[np.ndarray]
    _flat_exclude: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self):
        users, items, f = self.features.shape
        if f != len(FEATURES):
            raise ValueError(f"features: last dim {f}, expected len(FEATURES) = {len(FEATURES)}")
        if len(self.targets) != users or len(self.exclude) != users:
            raise ValueError(f"{users} users of features, {len(self.targets)} targets, {len(self.exclude)} exclusions")
        rows = np.repeat(np.arange(users), [len(e) for e in self.exclude])
        cols = np.concatenate([np.asarray(e, np.int64) for e in self.exclude]) if users else np.zeros(0, np.int64)
        self._flat_exclude = (rows, cols)

    @property
    def users(self) -> int:
        return self.features.shape[0]

    def scores(self, weights: np.ndarray) -> np.ndarray:
        """users x items: features @ weights (float32), only the non-zero weights read."""
        out = np.zeros(self.features.shape[:2], np.float32)
        for j in np.flatnonzero(weights):
            out += np.float32(weights[j]) * self.features[:, :, j]
        return out

    def ndcg(self, weights: np.ndarray, chunk: int = 512) -> float:
        """Mean NDCG@10 of the held-out item, history excluded, ties at their mean position."""
        if not self.users:
            return 0.0
        total = 0.0
        rows, cols = self._flat_exclude
        for start in range(0, self.users, chunk):
            end = min(start + chunk, self.users)
            scores = np.zeros((end - start, self.features.shape[1]), np.float32)
            for j in np.flatnonzero(weights):
                scores += np.float32(weights[j]) * self.features[start:end, :, j]
            keep = (rows >= start) & (rows < end)
            scores[rows[keep] - start, cols[keep]] = -np.inf
            target = scores[np.arange(end - start), self.targets[start:end]][:, None]
            above = (scores > target).sum(axis=1)
            ties = (scores == target).sum(axis=1) - 1
            rank = above + ties / 2.0
            total += float(np.where(rank < K, 1.0 / np.log2(rank + 2.0), 0.0).sum())
        return total / self.users


def _spread(v: ValidationSet, j: int, sample: int = 256) -> float:
    """The feature's std over (a sample of) users x items; 0 for a constant column."""
    rows = v.features[: min(sample, v.users), :, j]
    return float(rows.std()) if rows.size else 0.0


@dataclass
class BlendChoice:
    """The chosen weights (len(FEATURES), raw feature units, bias 0) and what was compared."""

    weights: np.ndarray
    valid_ndcg: float  # of the chosen blend, on the no-query validation set
    parts: dict[str, float]  # each part alone -> validation NDCG@10
    candidates: dict[str, float]  # every blend compared -> validation NDCG@10
    chosen: str  # which candidate won
    query: dict = field(default_factory=dict)  # the typed-query scenario's results, when run
    scale: float = 1.0  # the calibration factor applied to every weight (calibrated_scale)

    def report(self) -> dict:
        return {"chosen": self.chosen, "valid_ndcg": round(self.valid_ndcg, 5),
                "parts": {k: round(v, 5) for k, v in self.parts.items()},
                "candidates": {k: round(v, 5) for k, v in self.candidates.items()},
                "weights": dict(zip(FEATURES, (round(float(w), 6) for w in self.weights), strict=True)),
                "scale": round(self.scale, 6),
                **({"query": self.query} if self.query else {})}


def choose_blend(valid: ValidationSet, start: np.ndarray | None = None, grid=GRID, sweeps: int = SWEEPS,
                 query_valid: ValidationSet | None = None, query_grid=QUERY_GRID) -> BlendChoice:
    """The linear blend with the best validation NDCG@10 among: each part alone, `start`
    (len(FEATURES) weights, e.g. the shipped version; its query weight is ignored here), and a
    coordinate ascent from the best part. Never worse than the best part (asserted). With
    `query_valid` (the same users, query_sim filled with each user's typed query), the query
    weight is then chosen on it, the other weights fixed. ValueError when no part varies."""
    f = len(FEATURES)
    spreads = {name: _spread(valid, FEATURES.index(name)) for name in PARTS}
    live = [name for name in PARTS if spreads[name] > 0]
    if not live:
        raise ValueError("no ranking feature varies over the validation users' catalog: nothing to choose")

    def unit(name: str, amount: float = 1.0) -> np.ndarray:
        w = np.zeros(f, np.float64)
        w[FEATURES.index(name)] = amount / spreads[name]
        return w

    parts = {name: valid.ndcg(unit(name)) for name in live}
    candidates: dict[str, tuple[float, np.ndarray]] = {f"{name} only": (parts[name], unit(name)) for name in live}
    skipped = 0.0
    if start is not None:
        start = np.asarray(start, np.float64).copy()
        skipped = float(start[FEATURES.index("skipped")])
        start[FEATURES.index("query_sim")] = start[FEATURES.index("skipped")] = 0.0
        if np.any(start[[FEATURES.index(p) for p in live]] > 0):
            candidates["start"] = (valid.ndcg(start), start)

    anchor = max(parts, key=parts.get)
    others = [name for name in live if name != anchor]
    best_w, best = unit(anchor), parts[anchor]
    for _ in range(sweeps):
        improved = False
        for name in others:
            j = FEATURES.index(name)
            for amount in grid:
                w = best_w.copy()
                w[j] = amount / spreads[name]
                if np.allclose(w, best_w):
                    continue
                score = valid.ndcg(w)
                if score > best + 1e-6:
                    best, best_w, improved = score, w, True
        if not improved:
            break
    # A finer step around each non-zero weight of the ascent's result.
    for name in others:
        j = FEATURES.index(name)
        for factor in (0.7, 0.85, 1.2, 1.4):
            if best_w[j] == 0:
                continue
            w = best_w.copy()
            w[j] *= factor
            score = valid.ndcg(w)
            if score > best + 1e-6:
                best, best_w = score, w
    candidates["coordinate ascent"] = (best, best_w)

    chosen = max(candidates, key=lambda name: candidates[name][0])
    score, weights = candidates[chosen]
    assert score >= max(parts.values()) - 1e-12, "the chosen blend is worse than a part alone"
    weights = weights.copy()
    weights[FEATURES.index("skipped")] = skipped
    choice = BlendChoice(weights, score, parts, {k: v[0] for k, v in candidates.items()}, chosen)
    if query_valid is not None:
        choice.weights, choice.query = choose_query_weight(query_valid, weights, query_grid)
    scale = calibrated_scale(valid, choice.weights)
    choice.weights = choice.weights * scale
    if choice.query.get("weight"):
        choice.query["weight"] = round(float(choice.weights[FEATURES.index("query_sim")]), 6)
    choice.scale = scale
    return choice


def calibrated_scale(valid: ValidationSet, weights: np.ndarray, sample: int = 1024) -> float:
    """The factor for all weights (a ranking does not change with it) that maximises the
    validation users' listwise log-likelihood of their held-out item over the catalog (history
    excluded) - the online learner's loss (listwise softmax), so that it starts calibrated.
    Searched on a log grid from 1/64 to 64, then refined; 1.0 when nothing varies."""
    w = np.asarray(weights, np.float64).copy()
    w[FEATURES.index("query_sim")] = 0.0  # no query in the validation lists
    n = min(sample, valid.users)
    if not n or not np.any(w):
        return 1.0
    scores = valid.scores(w)[:n].astype(np.float64)
    rows, cols = valid._flat_exclude
    keep = rows < n
    scores[rows[keep], cols[keep]] = -np.inf
    target = scores[np.arange(n), valid.targets[:n]]

    def loglik(c: float) -> float:
        z = c * scores
        top = z.max(axis=1)
        return float(np.mean(c * target - top - np.log(np.exp(z - top[:, None]).sum(axis=1))))

    grid = 2.0 ** np.arange(-6, 6.5, 0.5)
    best = max(grid, key=loglik)
    fine = best * 2.0 ** np.linspace(-0.5, 0.5, 9)
    return float(max(fine, key=loglik))


def choose_query_weight(valid: ValidationSet, weights: np.ndarray, grid=QUERY_GRID) -> tuple[np.ndarray, dict]:
    """`weights` with the query weight of the best typed-query validation NDCG@10 (valid's
    query_sim column filled with each user's query similarity); and what was compared: the
    blend without the query, the query alone, each weight tried."""
    q = FEATURES.index("query_sim")
    base = np.asarray(weights, np.float64).copy()
    base[q] = 0.0
    query_spread = _spread(valid, q)
    if query_spread == 0:
        return base, {"note": "no query similarity varies: query weight 0"}
    blend_spread = float(valid.scores(base)[: min(256, valid.users)].std()) or 1.0
    alone = np.zeros_like(base)
    alone[q] = 1.0
    tried = {}
    best, best_w = -1.0, base
    for amount in grid:
        w = base.copy()
        w[q] = amount * blend_spread / query_spread
        tried[round(float(w[q]), 6)] = score = valid.ndcg(w)
        if score > best + 1e-6:
            best, best_w = score, w
    for factor in (0.7, 0.85, 1.2, 1.4):
        w = best_w.copy()
        w[q] *= factor
        tried[round(float(w[q]), 6)] = score = valid.ndcg(w)
        if score > best + 1e-6:
            best, best_w = score, w
    return best_w, {"valid_ndcg": round(best, 5), "without_query": round(tried[0.0], 5),
                    "query_only": round(valid.ndcg(alone), 5), "weight": round(float(best_w[q]), 6),
                    "tried_before_scale": {str(k): round(v, 5) for k, v in sorted(tried.items())}}
