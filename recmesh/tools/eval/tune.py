"""The ranking blend chosen on a data set's own validation split, for the interest model trained
on it: what `recmesh train` stores with the artifact (the var's start version of the ranker and
of the online learner) and what `recmesh eval`'s LLM-Seq+session row ranks with.

Each validation user's features of every catalog item are computed ONCE, by the mesh's own
ranking function (MeshScorer: the served interest model, the session direction and category
affinity as the gateway computes them, the ranker's features), then the weights are chosen by
recmesh.models.ranking.tuning (each part alone, the start version, a coordinate ascent; the
best wins, so never below the best part).

The typed-query scenario (the query weight): each validation user types a query for the item
they are about to pick - its most specific categories (those no other category of the item
implies: a category path's leaf, every genre of a flat list) and its tags, joined with ", ";
the title when it has neither. The query is encoded by the language model and matched in its
space, as the mesh does (query_sim = item text vector . query vector); an interest model with
query fusion also takes it into the interest (interest_sim), as the encoder does. An upper
bound of what a query gives (it names the item's own labels), used for the weight only."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import numpy as np

from recmesh.models.interest.query_fusion import specific_categories
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import Scorer
from recmesh.models.ranking.tuning import (
    BlendChoice,
    ValidationSet,
    calibrated_scale,
    choose_blend,
    choose_query_weight,
)
from recmesh.tools.eval import datasets
from recmesh.tools.eval.mesh import MeshScorer

# Feature memory at most (users x items x len(FEATURES) float32): beyond, validation users are
# sampled (seeded) and the report says so.
MAX_FEATURE_BYTES = 1_500_000_000
MAX_USERS = 6000
# Query fusion: the interest carries the typed query, but the ranker weighs the interest only as
# much as the blend chosen without queries does (0 when the session features rank better alone),
# and popularity - the cold-start prior - likewise. So with a fusion model their weights are
# searched again on the typed-query scenario (amounts in units of scale / the feature's spread,
# as the blend's own), the query weight re-chosen for each, among the weights that keep the
# no-query validation NDCG@10 within FUSED_PLAIN_TOLERANCE (relative) of the blend's.
FUSED_INTEREST_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
FUSED_POPULARITY_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
FUSED_PLAIN_TOLERANCE = 0.01


def typed_queries(dataset: datasets.Dataset, items: list[int]) -> list[str]:
    """The query each user types for the item they pick next (module docstring)."""
    specific = specific_categories(dataset.categories())
    tags = dataset.item_tags or [[] for _ in dataset.item_ids]
    titles = dataset.item_titles or dataset.item_texts
    queries = []
    for i in items:
        labels = list(dict.fromkeys(specific[i] + list(tags[i])))
        queries.append(", ".join(labels) if labels else titles[i])
    return queries


def encode_texts(texts: list[str], cache: Path, label: str, model_dir: Path | None = None) -> np.ndarray:
    """Unit vectors of texts by the var's served text model (onnx-fp32; model_dir overrides:
    default recmesh.common.paths.served_text_model - a fine-tuned one if `recmesh train`
    installed it, else the bundled all-MiniLM-L6-v2), cached by content and model."""
    from recmesh.common.paths import served_text_model, text_model_name
    from recmesh.models.text import encode_with_progress, load_text_model, model_key

    model_dir = served_text_model() if model_dir is None else Path(model_dir)
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"{label}-{key}-{model_key(model_dir)}-onnx-fp32.npy"
    if path.is_file():
        return np.load(path)
    model = load_text_model("onnx-fp32", model_dir, text_model_name(model_dir), threads=2)
    vectors = encode_with_progress(model, texts, desc=f"encoding {label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def tuning_users(s: datasets.Split, n_items: int, max_users: int, seed: int, sets: int = 1) -> tuple[list[str], bool]:
    """The validation users tuned on (all, or a seeded sample when `sets` feature sets of them
    would exceed MAX_FEATURE_BYTES, or more than max_users); and whether they were sampled."""
    users = sorted(s.train)
    cap = min(max_users, max(1, MAX_FEATURE_BYTES // max(1, sets * n_items * len(FEATURES) * 4)))
    if len(users) <= cap:
        return users, False
    return sorted(random.Random(seed).sample(users, cap)), True


def validation_set(mesh: MeshScorer, s: datasets.Split, users: list[str],
                   query_vectors: np.ndarray | None = None, stage: str = "valid") -> ValidationSet:
    """Every user's features over the whole catalog (their stage's history), once; with
    query_vectors (users x text dim) each user's typed query is in them as the mesh has it: the
    query column holds its similarity, and a query-fusion model's interest takes it in."""
    features = np.zeros((len(users), s.n_items, len(FEATURES)), np.float32)
    for row, user in enumerate(users):
        history = s.history(user, stage)
        query = None if query_vectors is None else query_vectors[row]
        features[row] = mesh.features(history, s.ratings[user][: len(history)], s.timestamps[user][: len(history)],
                                      query)
    targets = np.array([(s.valid if stage == "valid" else s.test)[u] for u in users], np.int64)
    return ValidationSet(features, targets, [np.asarray(s.history(u, stage), np.int64) for u in users])


def tune(dataset: datasets.Dataset, s: datasets.Split, text_vectors: np.ndarray, artifact: Path,
         popularity: np.ndarray, start: Scorer | None, cache: Path, max_users: int = MAX_USERS,
         seed: int = 0, with_query: bool = True) -> tuple[BlendChoice, dict]:
    """The blend chosen on s's validation stage for the interest model at `artifact`, and how
    (users tuned on, sampled or not, seconds). popularity: n_items in [0, 1], the catalog's
    formula from training interactions (mesh.train_popularity)."""
    started = time.perf_counter()
    mesh = MeshScorer(s, dataset.item_ids, text_vectors, artifact, popularity, dataset.categories(), start)
    # A query-fusion model's interest changes with the query: the blend is chosen on features
    # without it, the query weight on features with it (two sets). Without fusion the query
    # only fills query_sim, which a blend without the query weight does not read (one set).
    fused = with_query and mesh.model.fuses_queries
    users, sampled = tuning_users(s, s.n_items, max_users, seed, sets=2 if fused else 1)
    queries = None
    if with_query:
        texts = typed_queries(dataset, [s.valid[u] for u in users])
        queries = encode_texts(texts, cache, f"{dataset.name}-queries")
    valid = validation_set(mesh, s, users, None if fused else queries)
    query_valid = (validation_set(mesh, s, users, queries) if fused else valid) if with_query else None
    features_s = round(time.perf_counter() - started, 1)
    choice = choose_blend(valid, None if start is None else start.weights, query_valid=query_valid)
    if fused:
        refine_for_fused_queries(choice, valid, query_valid)
    how = {"users": len(users), "sampled": sampled, "of_users": len(s.train), "feature_seconds": features_s,
           "seconds": round(time.perf_counter() - started, 1),
           "query_scenario": ("the held-out item's most specific categories + tags (else its title), "
                              "matched in the language model's space"
                              + (" and fused into the interest" if fused else "")) if with_query else "not run"}
    return choice, how


def refine_for_fused_queries(choice: BlendChoice, valid: ValidationSet, query_valid: ValidationSet,
                             tolerance: float = FUSED_PLAIN_TOLERANCE) -> None:
    """Re-choose the interest and popularity weights of `choice` (in place) for a query-fusion
    model on the typed-query scenario (query_valid), the query weight re-chosen for each pair;
    only pairs whose no-query validation NDCG@10 (valid) is at least (1 - tolerance) x the
    blend's are eligible; the blend's own pair is one, so the typed-query NDCG@10 never drops.
    choice.valid_ndcg becomes the no-query NDCG@10 of the weights kept; choice.query["fusion"]
    says what was searched."""
    i, p, q = (FEATURES.index(n) for n in ("interest_sim", "popularity", "query_sim"))
    base = np.asarray(choice.weights, np.float64).copy()
    floor = choice.valid_ndcg * (1.0 - tolerance)

    def spread(j: int) -> float:
        return float(valid.features[: min(256, valid.users), :, j].std()) or 1.0

    unit_i, unit_p = choice.scale / spread(i), choice.scale / spread(p)
    pairs = {(round(base[i] / unit_i, 4), round(base[p] / unit_p, 4))}
    pairs |= {(a, b) for a in FUSED_INTEREST_GRID for b in FUSED_POPULARITY_GRID}
    best: tuple = (choice.query.get("valid_ndcg", -1.0), base, choice.valid_ndcg, None, {})
    plain_before, query_before = choice.valid_ndcg, choice.query.get("valid_ndcg")
    for a, b in sorted(pairs):
        w = base.copy()
        w[i], w[p], w[q] = a * unit_i, b * unit_p, 0.0
        plain = valid.ndcg(w)
        if plain < floor:
            continue
        weights, info = choose_query_weight(query_valid, w)
        if info.get("valid_ndcg", -1.0) > best[0] + 1e-6:
            best = (info["valid_ndcg"], weights, plain, (a, b), info)
    _, weights, plain, pair, info = best
    if pair is not None:  # the search found better weights than the blend's own
        weights = weights * calibrated_scale(valid, weights)
        choice.weights, choice.valid_ndcg = weights, plain
        choice.query.update({k: info[k] for k in ("valid_ndcg", "without_query", "query_only", "tried_before_scale")})
        choice.query["weight"] = round(float(weights[q]), 6)
    choice.query["fusion"] = {
        "searched": "interest_sim x popularity weights on the typed-query scenario, no-query validation "
                    f"NDCG@10 within {tolerance:.0%} of the blend's",
        "interest_popularity_units": list(pair) if pair is not None else "the blend's own",
        "plain_ndcg_before": round(plain_before, 5), "plain_ndcg_after": round(choice.valid_ndcg, 5),
        "query_ndcg_before": None if query_before is None else round(query_before, 5),
        "query_ndcg_after": choice.query.get("valid_ndcg")}


def tuned_scorer(choice: BlendChoice, version: str) -> Scorer:
    return Scorer(version, choice.weights.astype(np.float32), 0.0)


def print_table(choice: BlendChoice, how: dict, file=None) -> None:
    """part -> validation NDCG@10, and the blend chosen (one short table)."""
    rows = [(f"{name} only", v) for name, v in choice.parts.items()]
    rows += [(name, v) for name, v in choice.candidates.items() if not name.endswith(" only")]
    print(f"ranking blend chosen on validation ({how['users']} users"
          f"{', sampled' if how['sampled'] else ''}): {choice.chosen}", file=file)
    print(f"  {'candidate':<28} valid NDCG@10", file=file)
    for name, value in rows:
        print(f"  {name:<28} {value:.4f}{'   <- chosen' if name == choice.chosen else ''}", file=file)
    if choice.query:
        qr = choice.query
        if "valid_ndcg" in qr:
            # With query fusion the blend "without" it still has the query in its interest.
            print(f"  typed query: weight {qr['weight']:.3g}, NDCG@10 {qr['valid_ndcg']:.4f} "
                  f"(query_sim weight 0 {qr['without_query']:.4f}, query alone {qr['query_only']:.4f})", file=file)
        if "fusion" in qr:
            f = qr["fusion"]
            print(f"  query fusion: interest/popularity weights {f['interest_popularity_units']}: typed-query "
                  f"NDCG@10 {f['query_ndcg_before']} -> {f['query_ndcg_after']}, no-query "
                  f"{f['plain_ndcg_before']} -> {f['plain_ndcg_after']}", file=file)
    weights = ", ".join(f"{n} {w:.3g}" for n, w in zip(FEATURES, choice.weights, strict=True) if w)
    print(f"  weights: {weights}", file=file)
