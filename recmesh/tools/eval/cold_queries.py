"""The cold typed-query blend: the ranker's weights for a request without history (nothing but
the typed words), chosen on a scenario built from the var's own data.

Why its own weights: the blend `recmesh train` chooses (tune.py) is chosen on users with a
history, and its typed-query scenario names the held-out item's own labels - the very phrases
the query-fusion head was trained on. For a newcomer the fused interest (the cold-start state
plus the query's projection: what people consume for such phrases, popularity learned) then
outweighs the query's own match, and the answers lean toward popular items.

The scenario (held-out label queries): the catalog's label vocabulary (the phrases query fusion
is trained with: recmesh.models.interest.query_fusion.item_labels - categories and paths, tags,
brand-like attributes) is dealt into FOLDS seeded folds. A newcomer types a label on
MIN_ITEMS..MAX_ITEMS items with training events (up to QUERIES labels, drawn seeded); relevant:
the items carrying it that users interacted with (training part of the split). Typed text the
model never saw as a query, like a real one: the served fusion head saw every label, so for a
label the scenario's fused interest comes from the fusion head refit without its fold's labels
(the query projection and the cold-start state, afresh; the transformer and item vectors are the
served ones) by training's cold-start term (recmesh.tools.eval.train: the cold state plus the
query for a COLD_QUERY_SHARE of the training targets, the state alone for the rest -> the
target, full softmax) - chosen on held-out labels, served with the head fit on all of them. The
language model (query_sim) is the served one: its fine-tuning saw the labels too, for a fraction
of an epoch. The newcomer's features over the whole catalog are the ranker's
(recmesh.models.ranking.features): interest_sim, query_sim and popularity; the rest are 0.

The choice: the query weight is one unit (1 / the feature's spread over the scenario), the
interest and popularity weights searched on a grid of units (the interest weight is served in
units of the served head's interest_sim spread over the same queries: the refit head's scale
differs); eligible are the weights whose answers' median popularity rank (training events, 1 =
most) is within POPULARITY_FACTOR of the relevant items' median rank - what people consume for
such a label, not only its best sellers; among those, the best mean NDCG@10 wins (none
eligible: the best calibrated). The weights are scaled so that their
scores spread as the blend's own do over the same lists (diversity weighs scores the same)."""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recmesh.models.interest.query_fusion import item_labels
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import Scorer
from recmesh.tools.eval import datasets

K = 10
FOLDS = 5  # each label held out in one of them
COLD_QUERY_SHARE = 0.7  # as recmesh.tools.eval.train.TrainConfig.cold_query_share
REFIT_EPOCHS = 4
REFIT_BATCH = 256
REFIT_LR = 1e-3
MIN_ITEMS = 5  # a label on fewer interacted items is an identifier more than a need
MAX_ITEMS = 100  # on more, almost anything popular is relevant: it cannot tell blends apart
QUERIES = 400
INTEREST_GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
# Non-negative: popularity is the prior toward what people consume; a negative one would prefer
# the obscure matches for their obscurity (today's failure: "heist" finding unwatched titles).
POPULARITY_GRID = (0.0, 0.125, 0.25, 0.5, 1.0)
POPULARITY_FACTOR = 2.0
COLD_COLUMNS = ("interest_sim", "query_sim", "popularity")  # the only features a newcomer's request has


class NoScenario(ValueError):
    """No label fits the scenario (a catalog without labels on MIN_ITEMS..MAX_ITEMS items with events)."""


@dataclass(frozen=True)
class LabelQuery:
    label: str
    relevant: np.ndarray  # item indices, sorted


def label_folds(labels: list[list[str]], folds: int, seed: int) -> dict[str, int]:
    """Each distinct label (casefolded: the language model is uncased) -> its fold, 0..folds-1:
    a seeded shuffle of the vocabulary dealt round."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    vocabulary = sorted({p.casefold() for phrases in labels for p in phrases})
    random.Random(seed).shuffle(vocabulary)
    return {label: n % folds for n, label in enumerate(vocabulary)}


def without_labels(labels: list[list[str]], held: set[str]) -> list[list[str]]:
    """Per item, its labels but the held-out ones."""
    return [[p for p in phrases if p.casefold() not in held] for phrases in labels]


def label_queries(labels: list[list[str]], interacted: np.ndarray, n: int, seed: int,
                  min_items: int = MIN_ITEMS, max_items: int = MAX_ITEMS,
                  only: set[str] | None = None) -> list[LabelQuery]:
    """Up to n label queries (module docstring), drawn with `seed` in a stable order. labels:
    per catalog item its phrases; interacted: per item, whether it has training events; only:
    the casefolded labels to draw from (None: all). A label is matched case-insensitively (the
    language model is uncased); its text is its first spelling."""
    holders: dict[str, list[int]] = {}
    spelling: dict[str, str] = {}
    for i, phrases in enumerate(labels):
        if not interacted[i]:
            continue
        for p in phrases:
            key = p.casefold()
            spelling.setdefault(key, p)
            holders.setdefault(key, []).append(i)
    eligible = sorted(k for k, items in holders.items() if min_items <= len(set(items)) <= max_items
                      and (only is None or k in only))
    drawn = sorted(random.Random(seed).sample(eligible, min(n, len(eligible))))
    return [LabelQuery(spelling[k], np.array(sorted(set(holders[k])), np.int64)) for k in drawn]


def popularity_ranks(counts: np.ndarray) -> np.ndarray:
    """Each item's rank by events, 1 = most; ties share the mean of their places."""
    order = np.argsort(-counts, kind="stable")
    place = np.empty(len(counts), np.float64)
    place[order] = np.arange(1, len(counts) + 1)
    ranks = place.copy()
    for value in np.unique(counts):
        tied = counts == value
        ranks[tied] = place[tied].mean()
    return ranks


@dataclass
class ColdScenario:
    """features: Q x items x len(FEATURES) (a newcomer typing each query); relevant per query;
    ranks: the catalog's popularity ranks (training events)."""

    queries: list[LabelQuery]
    features: np.ndarray
    ranks: np.ndarray
    # The spread of interest_sim as the served model gives it for the same queries (its head saw
    # the labels): the unit the chosen interest weight is served in. None: the scenario's own.
    served_interest_spread: float | None = None

    def top(self, weights: np.ndarray, k: int = K) -> np.ndarray:
        scores = np.einsum("qnf,f->qn", self.features, np.asarray(weights, np.float32))
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
        return np.take_along_axis(part, order, 1)

    def measure(self, weights: np.ndarray, k: int = K) -> dict:
        """Mean P@k, NDCG@k and the answers' median popularity rank for these weights."""
        top = self.top(weights, k)
        discount = 1 / np.log2(np.arange(k) + 2)
        p, ndcg = [], []
        for q, row in zip(self.queries, top, strict=True):
            hit = np.isin(row, q.relevant)
            p.append(hit.mean())
            ndcg.append(float(hit @ discount) / discount[: min(k, len(q.relevant))].sum())
        return {"P@10": float(np.mean(p)), "NDCG@10": float(np.mean(ndcg)),
                "median_popularity_rank": float(np.median(self.ranks[top.ravel()]))}

    def relevant_median_rank(self) -> float:
        return float(np.median(self.ranks[np.unique(np.concatenate([q.relevant for q in self.queries]))]))

    def spread(self, column: str) -> float:
        return float(self.features[:, :, FEATURES.index(column)].std()) or 1.0


def choose_cold_blend(scenario: ColdScenario, blend: np.ndarray, factor: float = POPULARITY_FACTOR,
                      interest_grid=INTEREST_GRID, popularity_grid=POPULARITY_GRID) -> tuple[np.ndarray, dict]:
    """The cold weights (len(FEATURES), zero outside COLD_COLUMNS) and how they were chosen
    (module docstring). blend: the var's blend, whose score spread they are scaled to."""
    i, q, p = (FEATURES.index(c) for c in COLD_COLUMNS)
    target = scenario.relevant_median_rank()
    unit = {c: 1.0 / scenario.spread(c) for c in COLD_COLUMNS}
    tried = []
    for a in interest_grid:
        for b in popularity_grid:
            w = np.zeros(len(FEATURES), np.float64)
            w[q], w[i], w[p] = unit["query_sim"], a * unit["interest_sim"], b * unit["popularity"]
            m = scenario.measure(w)
            ratio = m["median_popularity_rank"] / target
            tried.append({"interest_units": a, "popularity_units": b, **{k: round(v, 4) for k, v in m.items()},
                          "calibrated": 1 / factor <= ratio <= factor, "_w": w, "_off": abs(np.log(ratio))})
    calibrated = [t for t in tried if t["calibrated"]]
    best = max(calibrated, key=lambda t: t["NDCG@10"]) if calibrated else min(tried, key=lambda t: t["_off"])
    scale = _spread_scale(scenario, blend, best["_w"])
    weights = best["_w"] * scale
    if scenario.served_interest_spread:  # the same units of spread, of the feature it will weigh
        weights[i] = best["interest_units"] / scenario.served_interest_spread * scale
    blend_m = scenario.measure(np.where(np.isin(np.arange(len(FEATURES)), [i, q, p]), blend, 0.0))
    report = {
        "chosen": {k: best[k] for k in ("interest_units", "popularity_units", "P@10", "NDCG@10",
                                        "median_popularity_rank", "calibrated")},
        "blend_on_scenario": {k: round(v, 4) for k, v in blend_m.items()},
        "relevant_median_popularity_rank": round(target, 1),
        "popularity_factor": factor,
        "spreads": {c: round(scenario.spread(c), 5) for c in COLD_COLUMNS}
        | {"interest_sim_served": scenario.served_interest_spread},
        "queries": len(scenario.queries),
        "grid": [{k: v for k, v in t.items() if not k.startswith("_")} for t in tried],
    }
    return weights.astype(np.float32), report


def _spread_scale(scenario: ColdScenario, blend: np.ndarray, weights: np.ndarray) -> float:
    """The factor that gives weights' scores the spread of the blend's over the scenario's lists."""
    def spread(w):
        return float(np.einsum("qnf,f->qn", scenario.features, np.asarray(w, np.float32)).std(axis=1).mean())
    ours = spread(weights)
    return spread(blend) / ours if ours > 0 else 1.0


def refit_fusion(item_vectors: np.ndarray, bank, targets: np.ndarray, query_dim: int, seed: int = 0,
                 epochs: int = REFIT_EPOCHS) -> Callable[[np.ndarray], np.ndarray]:
    """A fusion head fit afresh (module docstring): item_vectors n_items x d (the served ones);
    bank: the QueryBank of the labels it may see; targets: the training interactions' items.
    Returns query (query_dim,) -> the newcomer's interest (d,)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    d = item_vectors.shape[1]
    proj = nn.Sequential(nn.Linear(query_dim, d), nn.GELU(), nn.Linear(d, d))
    cold = nn.Parameter(torch.randn(d) * 0.02)
    table = torch.from_numpy(np.asarray(item_vectors, np.float32))
    optimiser = torch.optim.Adam([*proj.parameters(), cold], lr=REFIT_LR)
    labelled = bank.labelled()
    targets = np.asarray(targets, np.int64)
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(targets), max(1, len(targets) // REFIT_BATCH)):
            q, has = bank.sample(batch, rng)
            use = torch.from_numpy(labelled[batch] & (rng.random(len(batch)) < COLD_QUERY_SHARE) & has)
            interest = cold + proj(torch.from_numpy(q)) * use.unsqueeze(-1).float()
            loss = nn.functional.cross_entropy(interest @ table.T, torch.from_numpy(batch))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    @torch.no_grad()
    def interest(query: np.ndarray) -> np.ndarray:
        return (cold + proj(torch.from_numpy(np.asarray(query, np.float32))[None])[0]).numpy()

    return interest


def build_scenario(dataset: datasets.Dataset, s: datasets.Split, mesh, encode, n: int = QUERIES,
                   seed: int = 0, var: Path | None = None, folds: int = FOLDS) -> ColdScenario:
    """The held-out label scenario of a data set (module docstring) for the interest model and
    text vectors `mesh` (recmesh.tools.eval.mesh.MeshScorer) serves; encode: texts -> unit
    language-model vectors (the var's served text model); var: the var the data set was read
    from (its brand-like attributes are labels too). NoScenario when no label fits."""
    from recmesh.models.interest.query_fusion import QueryBank
    from recmesh.models.ranking.features import RankInputs, compute
    from recmesh.tools.eval.train import var_attributes

    attributes = var_attributes(var, dataset.item_ids) if var is not None else None
    labels = item_labels(dataset.categories(), dataset.item_tags or None, attributes)
    train_items = np.concatenate(list(s.train.values()))
    counts = np.bincount(train_items, minlength=s.n_items).astype(np.float64)
    queries = label_queries(labels, counts > 0, n, seed)
    if not queries:
        raise NoScenario(f"{dataset.name}: no label is on {MIN_ITEMS}..{MAX_ITEMS} items with events: "
                         "no cold typed-query scenario")
    query_vectors = encode([q.label for q in queries])
    fold_of = label_folds(labels, folds, seed)
    # Every label encoded once (casefolded keys: QueryBank.build keeps a label's first spelling).
    spelled = list({p.casefold(): p for phrases in labels for p in phrases}.values())
    by_label = dict(zip((p.casefold() for p in spelled), encode(spelled), strict=True)) if spelled else {}

    def lookup(texts: list[str]) -> np.ndarray:
        return np.stack([by_label[t.casefold()] for t in texts])

    features = np.zeros((len(queries), s.n_items, len(FEATURES)), np.float32)
    for fold in range(folds):
        rows = [r for r, q in enumerate(queries) if fold_of[q.label.casefold()] == fold]
        if not rows:
            continue
        interest_of = None
        if mesh.model.fuses_queries:  # the fusion head fit without this fold's labels
            held = {label for label, f in fold_of.items() if f == fold}
            bank = QueryBank.build(without_labels(labels, held), lookup)
            interest_of = refit_fusion(mesh.vectors, bank, train_items, query_vectors.shape[1], seed + fold)
        for r in rows:
            v = query_vectors[r]
            features[r] = compute(RankInputs(
                candidate_vectors=mesh.vectors, candidate_text_vectors=mesh.text,
                candidate_categories=mesh.categories, popularity=mesh.popularity,
                interest=None if interest_of is None else interest_of(v), session=None, query=v,
                recent_vectors=mesh.vectors[:0], category_affinity={})).values
    served_spread = None
    if mesh.model.fuses_queries:
        served = np.stack([mesh.features([], [], [], v)[:, FEATURES.index("interest_sim")] for v in query_vectors])
        served_spread = float(served.std()) or None
    return ColdScenario(queries, features, popularity_ranks(counts), served_spread)


def cold_scorer(scorer: Scorer, cold: np.ndarray) -> Scorer:
    """scorer with these cold weights (Scorer.cold)."""
    return Scorer(scorer.version, scorer.weights, scorer.bias, scorer.deep, scorer.trained_through_ms,
                  np.asarray(cold, np.float32))


def with_cold_blend(scorer: Scorer, dataset: datasets.Dataset, s: datasets.Split, text_vectors: np.ndarray,
                    artifact: Path, popularity: np.ndarray, cache: Path, var: Path | None = None,
                    n: int = QUERIES, seed: int = 0) -> tuple[Scorer, dict]:
    """scorer with the cold blend chosen for the interest model at `artifact` on the data set's
    own held-out label scenario (s: its split, the users `recmesh train` fit on; text_vectors:
    the served language model's item vectors; popularity: the catalog formula from training
    interactions, mesh.train_popularity; cache: where label vectors are cached; var: the var
    the data set was read from, for its brand-like attributes), and the report of the choice -
    scorer unchanged and {"skipped": why} when no label fits the scenario."""
    from recmesh.tools.eval.mesh import MeshScorer
    from recmesh.tools.eval.tune import encode_texts

    started = time.perf_counter()
    mesh = MeshScorer(s, dataset.item_ids, text_vectors, artifact, popularity, dataset.categories(), scorer)
    try:
        scenario = build_scenario(dataset, s, mesh,
                                  lambda texts: encode_texts(texts, cache, f"{dataset.name}-labels"), n, seed, var)
    except NoScenario as e:  # a catalog without such labels: newcomers are ranked by the blend
        return scorer, {"skipped": str(e)}
    cold, report = choose_cold_blend(scenario, scorer.weights)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["scenario"] = (f"held-out label queries ({FOLDS} folds of the label vocabulary, the fusion head refit "
                          f"without each fold's labels); relevant: the label's items with training events")
    return cold_scorer(scorer, cold), report


def print_cold_choice(report: dict, file=None) -> None:
    """One line: the cold blend chosen, against the blend's own, on the scenario (or why none)."""
    if "skipped" in report:
        print(f"cold typed-query blend: none ({report['skipped']}); newcomers are ranked by the blend", file=file)
        return
    c, b = report["chosen"], report["blend_on_scenario"]
    print(f"cold typed-query blend ({report['queries']} held-out label queries): interest "
          f"{c['interest_units']} / popularity {c['popularity_units']} units per query unit, NDCG@10 "
          f"{c['NDCG@10']} (the blend {b['NDCG@10']}), answers' median popularity rank "
          f"{c['median_popularity_rank']} (the blend {b['median_popularity_rank']}, relevant "
          f"{report['relevant_median_popularity_rank']})", file=file)


def main(argv: list[str] | None = None) -> dict:
    """Choose the cold blend for the var's installed interest model and add it to the var's own
    ranker start version (models/served/params), in place."""
    from recmesh.common.paths import var_paths
    from recmesh.models.ranking.scorer import load_params, newest_params, save_params
    from recmesh.tools.eval.mesh import train_popularity
    from recmesh.tools.eval.run import item_vectors

    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.eval.cold_queries", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=QUERIES, help="label queries drawn (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = var_paths()
    params = paths.own_params
    if not params.is_dir() or not any(params.glob("*.json")):
        raise SystemExit(f"{params}: no ranker version of this var's own (run `recmesh train` first)")
    path = newest_params(params)
    spec = json.loads(path.read_text())
    dataset = datasets.from_var()
    # The users `recmesh train` held out for the streaming replay stay out, as in its tuning.
    report_path = paths.models / "LLM-Seq-served" / str(spec.get("artifact", "")) / "report.json"
    held = json.loads(report_path.read_text()).get("holdout_users", []) if report_path.is_file() else []
    s = datasets.split(dataset).without(held)
    scorer, report = with_cold_blend(load_params(path), dataset, s, item_vectors(dataset, paths.eval_cache),
                                     paths.own_artifact, train_popularity(s), paths.eval_cache, paths.root,
                                     args.queries, args.seed)
    extra = {k: v for k, v in spec.items() if k not in ("version", "kind", "bias", "weights", "deep",
                                                        "trained_through_ms", "cold_weights")}
    print_cold_choice(report)
    if "skipped" in report:
        return report
    save_params(scorer, params, **extra, cold_tuning=report)
    print(json.dumps({"params": str(path), "cold_weights": scorer.to_spec()["cold_weights"],
                      **{k: report[k] for k in ("chosen", "blend_on_scenario", "relevant_median_popularity_rank",
                                                "queries", "seconds")}}, indent=2))
    return report


if __name__ == "__main__":
    main()
