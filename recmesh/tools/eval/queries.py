"""Typed queries with judged relevance, asked through the served path.

A query set (JSONL, one object a line) holds natural-language queries as people type them and,
for each, the catalog items a person typing it would be glad to see (`relevant`) and the few
well-known ones they would expect (`core`, a subset of relevant), judged by hand:

    {"id": "ml-07", "query": "heist movie", "facet": "sub-genre", "relevant": ["1234", ...], "core": ["1234", ...]}

For each var (in the same run, on the same queries) a fresh private mesh over that var's catalog
(its interest model and ranker start version; exploration and online learning off, so what is
compared is serving, not policy) is asked every query, k = 10:

  cold  a new user per query: the typed words alone;
  warm  N users drawn (seeded) from those with >= 20 item events in every var's event log: their
        last 50 events are sent with TrackEvents under a fresh user id, then the query is asked.
        Each (user, query) pair gets its own fresh id, so that impressions of one query's answer
        (the ranker's `skipped` feature) cannot steer the next one.

Metrics per var x condition (binary relevance): P@10, NDCG@10 (ideal DCG over min(10, |relevant|)
hits), core recall@10 (|core & top 10| / |core|), the median popularity rank of the answered
items (rank 1 = most item events in the var's event log; ties share their average rank) beside
the judged relevant items' median rank and the catalog size, answers with fewer than 10 items,
the share of degraded answers, p50 latency; P@10 per facet; per query the top-10 ids. (Ranks
tie heavily in the tail, where many items have one or two events, so the median event count of
the answered and of the judged items is reported beside the ranks.)

Writes results/eval/queries-<set>.json, queries-<set>.md (vars side by side, ratios to the
first) and queries-<set>.png, <set> being the query file's stem."""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recmesh.common.local import REPO
from recmesh.common.paths import var_paths

K = 10
DEFAULT_QUERIES = REPO / "data" / "queries" / "ml-latest-small.jsonl"
WARM_MIN_EVENTS = 20  # a warm user has at least this many item events in the log
WARM_HISTORY = 50  # the last events of a warm user sent before the queries
CONDITIONS = ("cold", "warm")
# The first Recommends of a fresh mesh load models and warm caches; they are asked and not scored.
WARMUP_CALLS = 3


class QuerySetError(ValueError):
    """A query file that cannot be scored: the message names the file, line or query id, and field."""


class UsageError(ValueError):
    """A command-line setting the benchmark cannot run with: the message names the flag."""


@dataclass(frozen=True)
class JudgedQuery:
    id: str
    query: str
    facet: str
    relevant: tuple[str, ...]  # item ids, each once
    core: tuple[str, ...]  # item ids, a subset of relevant (may be empty: core recall is then undefined)


# --- the query file -------------------------------------------------------------------------------


def _id_list(value: object, where: str, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise QuerySetError(f"{where}: field {name!r} must be a list of non-empty item-id strings")
    twice = sorted(item for item, n in Counter(value).items() if n > 1)
    if twice:
        raise QuerySetError(f"{where}: field {name!r} lists item {twice[0]!r} more than once")
    return tuple(value)


def parse_query(record: object, where: str) -> JudgedQuery:
    """One query from its JSON object. QuerySetError naming `where` and the field when a field is
    missing, of the wrong type or empty, or when core is not a subset of relevant."""
    if not isinstance(record, dict):
        raise QuerySetError(f"{where}: a query must be a JSON object")
    for name in ("id", "query", "facet"):
        if not isinstance(record.get(name), str) or not record[name].strip():
            raise QuerySetError(f"{where}: field {name!r} must be a non-empty string")
    where = f"{where} (query {record['id']})"
    relevant = _id_list(record.get("relevant"), where, "relevant")
    if not relevant:
        raise QuerySetError(f"{where}: field 'relevant' is empty: a query without relevant items cannot be scored")
    core = _id_list(record.get("core", []), where, "core")
    outside = [item for item in core if item not in set(relevant)]
    if outside:
        raise QuerySetError(f"{where}: core item {outside[0]!r} is not in 'relevant' (core must be a subset)")
    return JudgedQuery(record["id"], record["query"].strip(), record["facet"].strip(), relevant, core)


def load_queries(path: Path, catalog: Collection[str] | None = None, catalog_name: str = "the catalog"
                 ) -> list[JudgedQuery]:
    """The judged queries of a JSONL file, in file order. catalog: item ids every relevant and core
    id must be in (None: not checked). QuerySetError (naming the file's line, the query id, the
    field and the item) for a line that is not JSON, a bad field (see parse_query), an id used
    twice, or an item not in the catalog; FileNotFoundError when the file is missing."""
    queries: list[JudgedQuery] = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuerySetError(f"{where}: not a JSON object ({e.msg})") from None
        q = parse_query(record, where)
        if q.id in first_line:
            raise QuerySetError(f"{where}: query id {q.id!r} already used on line {first_line[q.id]}")
        first_line[q.id] = n
        if catalog is not None:
            missing = [item for item in q.relevant if item not in catalog]
            if missing:
                raise QuerySetError(f"{where}: query {q.id}: item {missing[0]!r} is not in {catalog_name}")
        queries.append(q)
    if not queries:
        raise QuerySetError(f"{path}: no queries")
    return queries


# --- metrics (pure) -------------------------------------------------------------------------------


def precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int = K) -> float:
    """|relevant & ranked[:k]| / k: an answer shorter than k counts its missing places as misses."""
    return sum(item in relevant for item in ranked[:k]) / k


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int = K) -> float:
    """Binary-relevance NDCG@k in [0, 1]: sum over hits at 0-based rank r of 1 / log2(r + 2),
    over the ideal DCG of min(k, |relevant|) hits at the top. ValueError for an empty relevant set."""
    if not relevant:
        raise ValueError("NDCG needs at least one relevant item")
    dcg = sum(1 / np.log2(r + 2) for r, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1 / np.log2(r + 2) for r in range(min(k, len(relevant))))
    return float(dcg / ideal)


def core_recall_at_k(ranked: Sequence[str], core: Collection[str], k: int = K) -> float | None:
    """|core & ranked[:k]| / |core|; None for an empty core (undefined: left out of the mean)."""
    if not core:
        return None
    top = set(ranked[:k])
    return sum(item in top for item in core) / len(core)


def popularity_ranks(event_items: Iterable[str], catalog: Sequence[str]) -> dict[str, float]:
    """Each catalog item's popularity rank: 1 = the most events, items with equal counts
    (including none) share the average of their places, so ranks run from 1 to len(catalog)."""
    counts = Counter(event_items)
    n = np.array([counts.get(item, 0) for item in catalog], dtype=np.int64)
    order = np.argsort(-n, kind="stable")
    place = np.empty(len(catalog), dtype=np.float64)
    place[order] = np.arange(1, len(catalog) + 1)
    ranks = place.copy()
    for value in np.unique(n):  # ties: the mean of the places they occupy
        tied = n == value
        ranks[tied] = place[tied].mean()
    return {item: float(r) for item, r in zip(catalog, ranks, strict=True)}


@dataclass
class Answer:
    """One Recommend: the query, the warm user it was asked for (None: cold), what came back."""

    query_id: str
    user: str | None
    items: list[str]
    degraded: str = ""
    latency_ms: float = 0.0


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def score_answers(answers: Sequence[Answer], queries: Sequence[JudgedQuery], ranks: Mapping[str, float],
                  events: Mapping[str, int], k: int = K) -> dict:
    """The metrics of one var x condition from its answers (each pair of query and user once;
    every answer's query must be in `queries`). ranks: popularity_ranks of the var's catalog;
    events: each item's number of events (absent: none) - its median over the answered items
    reads where tied ranks blur. Means are over answers (a warm query counts once per user);
    per_query holds each query's mean P@10 and NDCG@10 and its top-k ids (a list per warm user)."""
    by_id = {q.id: q for q in queries}
    rows = []
    for a in answers:
        q = by_id[a.query_id]
        relevant = set(q.relevant)
        rows.append((a, q, precision_at_k(a.items, relevant, k), ndcg_at_k(a.items, relevant, k),
                     core_recall_at_k(a.items, q.core, k)))
    answered = [item for a in answers for item in a.items[:k]]
    facets: dict[str, list[float]] = defaultdict(list)
    per_query: dict[str, dict] = {}
    for a, q, p, n, _ in rows:
        facets[q.facet].append(p)
        entry = per_query.setdefault(q.id, {"query": q.query, "facet": q.facet, "P@10": [], "NDCG@10": [],
                                            "top": [] if a.user is None else {}})
        entry["P@10"].append(p)
        entry["NDCG@10"].append(n)
        if a.user is None:
            entry["top"] = a.items[:k]
        else:
            entry["top"][a.user] = a.items[:k]
    for entry in per_query.values():
        entry["P@10"], entry["NDCG@10"] = _mean(entry["P@10"]), _mean(entry["NDCG@10"])
    latencies = [a.latency_ms for a in answers]
    return {
        "answers": len(answers),
        "P@10": _mean(r[2] for r in rows),
        "NDCG@10": _mean(r[3] for r in rows),
        "core_recall@10": _mean(r[4] for r in rows),
        "median_popularity_rank": round(float(np.median([ranks[i] for i in answered])), 1) if answered else None,
        "median_events": float(np.median([events.get(i, 0) for i in answered])) if answered else None,
        "short_answers": sum(len(a.items) < k for a in answers),
        "degraded_share": round(sum(bool(a.degraded) for a in answers) / len(answers), 4) if answers else None,
        "degraded_reasons": dict(Counter(a.degraded for a in answers if a.degraded)),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "P@10_by_facet": {facet: _mean(values) for facet, values in sorted(facets.items())},
        "per_query": per_query,
    }


def judged_popularity(queries: Sequence[JudgedQuery], ranks: Mapping[str, float], events: Mapping[str, int]
                      ) -> tuple[float, float]:
    """The judged relevant items' median popularity rank and median number of events (each item
    once, over all queries)."""
    judged = {i for q in queries for i in q.relevant}
    return (round(float(np.median([ranks[i] for i in judged])), 1),
            float(np.median([events.get(i, 0) for i in judged])))


# --- driving the mesh -----------------------------------------------------------------------------


@dataclass
class VarData:
    """What the benchmark reads from one var: its catalog ids, item events and users' histories."""

    label: str
    root: Path
    catalog: list[str]
    ranks: dict[str, float]
    events: dict[str, int]  # item events per item (items without any are absent)
    # Each user's item events in time order (stable on ties): (item, strength, timestamp seconds).
    histories: dict[str, list[tuple[str, float, int]]] = field(repr=False)


def read_var(root: Path, label: str) -> VarData:
    """The var's imported catalog and event log (datasets.from_var). FileNotFoundError when the
    var has no imported catalog."""
    from recmesh.tools.eval import datasets

    dataset = datasets.from_var(root)
    histories: dict[str, list[tuple[str, float, int]]] = defaultdict(list)
    for x in dataset.interactions:
        histories[x.user].append((x.item, x.rating, x.timestamp))
    for events in histories.values():
        events.sort(key=lambda e: e[2])  # stable: log order on equal timestamps
    ranks = popularity_ranks((x.item for x in dataset.interactions), dataset.item_ids)
    events = Counter(x.item for x in dataset.interactions)
    return VarData(label, root, dataset.item_ids, ranks, dict(events), dict(histories))


def draw_warm_users(vars_: Sequence[VarData], n: int, seed: int) -> list[str]:
    """n users with >= WARM_MIN_EVENTS item events in every var, drawn with `seed` (the same users
    for every var). UsageError naming --warm-users when fewer than n qualify."""
    if n <= 0:
        return []
    eligible = set.intersection(*({u for u, ev in v.histories.items() if len(ev) >= WARM_MIN_EVENTS}
                                  for v in vars_))
    if len(eligible) < n:
        raise UsageError(f"--warm-users {n}: only {len(eligible)} users have >= {WARM_MIN_EVENTS} item events "
                         "in every var's event log")
    return random.Random(seed).sample(sorted(eligible), n)


def _ask(client, user: str, query: str, query_id: str, warm_user: str | None) -> Answer:
    import grpc

    started = time.perf_counter()
    try:
        reply = client.recommend(user, query=query, k=K)
    except grpc.RpcError as e:  # a failed call is a failed answer, counted, not a crashed run
        return Answer(query_id, warm_user, [], f"rpc:{e.code().name.lower()}",
                      (time.perf_counter() - started) * 1000)
    return Answer(query_id, warm_user, [item.item_id for item in reply.items], ",".join(reply.degraded),
                  (time.perf_counter() - started) * 1000)


def ask_var(var: VarData, queries: Sequence[JudgedQuery], warm_users: Sequence[str]) -> dict[str, list[Answer]]:
    """Every query through a fresh private mesh over the var's catalog: cold, then for each warm user."""
    from tqdm import tqdm

    from recmesh.client import Event
    from recmesh.tools.eval.live import fresh_mesh, track_all

    answers: dict[str, list[Answer]] = {c: [] for c in CONDITIONS}
    env = {"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false"}
    with fresh_mesh(var_paths(var.root).catalog, env=env) as client:
        for i in range(WARMUP_CALLS):
            _ask(client, f"qb-warmup-{i}", queries[i % len(queries)].query, "", None)
        with tqdm(total=len(queries) * (1 + len(warm_users)), desc=f"{var.label}: queries", unit="ask") as bar:
            for q in queries:
                answers["cold"].append(_ask(client, f"qb-cold-{q.id}", q.query, q.id, None))
                bar.update()
                for user in warm_users:
                    live = f"qb-warm-{user}-{q.id}"
                    track_all(client, [Event(live, item, "rate", value=strength, timestamp_ms=stamp * 1000,
                                             event_id=f"{live}-{n}")
                                       for n, (item, strength, stamp) in
                                       enumerate(var.histories[user][-WARM_HISTORY:])])
                    answers["warm"].append(_ask(client, live, q.query, q.id, user))
                    bar.update()
    return answers


def parse_var(spec: str) -> tuple[Path, str]:
    """--var PATH[=LABEL]: the var's path and its label (default: the folder's name). UsageError
    for an empty path."""
    path, _, label = spec.partition("=")
    if not path:
        raise UsageError(f"--var {spec!r}: give a path, optionally =LABEL")
    root = Path(path).expanduser().absolute()
    return root, label or root.name


def run(queries_path: Path, var_specs: Sequence[str], warm_users_n: int, seed: int, out: Path) -> dict:
    """Every query of `queries_path` through a fresh mesh per var (var_specs: "PATH[=LABEL]", none:
    the current var), cold and for `warm_users_n` users drawn with `seed`; writes queries-<set>.json,
    .md and .png under `out` and returns the results. QuerySetError before any mesh starts when an
    item is missing from a var's catalog; UsageError for repeated labels or too few warm users."""
    specs = [parse_var(s) for s in var_specs] or [(var_paths().root, var_paths().root.name)]
    labels = [label for _, label in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--var: labels {labels} repeat; name each var with PATH=LABEL")
    vars_ = [read_var(root, label) for root, label in specs]
    queries = []
    for v in vars_:  # every var must hold every judged item: checked before any mesh starts
        queries = load_queries(queries_path, set(v.catalog), f"the catalog of {v.root}")
    warm_users = draw_warm_users(vars_, warm_users_n, seed)
    set_name = queries_path.stem
    started = time.perf_counter()
    results: dict = {"set": set_name, "queries_file": str(queries_path), "queries": len(queries),
                     "facets": dict(Counter(q.facet for q in queries)), "k": K, "seed": seed,
                     "warm_users": warm_users, "warm_history": WARM_HISTORY, "vars": {}}
    for v in vars_:
        answers = ask_var(v, queries, warm_users)
        judged_rank, judged_events = judged_popularity(queries, v.ranks, v.events)
        results["vars"][v.label] = {
            "var": str(v.root), "catalog_items": len(v.catalog),
            "judged_median_popularity_rank": judged_rank, "judged_median_events": judged_events,
            **{c: score_answers(answers[c], queries, v.ranks, v.events) for c in CONDITIONS if answers[c]},
        }
    results["seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"queries-{set_name}.json").write_text(json.dumps(results, indent=2))
    (out / f"queries-{set_name}.md").write_text(markdown(results))
    plot(results, out / f"queries-{set_name}.png")
    return results


# --- reports --------------------------------------------------------------------------------------

ROWS = (("P@10", "P@10"), ("NDCG@10", "NDCG@10"), ("core recall@10", "core_recall@10"),
        ("median popularity rank of answers", "median_popularity_rank"),
        ("median events of answered items", "median_events"), ("answers < 10 items", "short_answers"),
        ("degraded share", "degraded_share"), ("p50 latency (ms)", "p50_ms"))


def _cell(value, base) -> str:
    if value is None:
        return "-"
    text = f"{value:,}" if isinstance(value, int) else f"{value:g}"
    if base is None or isinstance(value, int) or not base:
        return text
    return f"{text} ({value / base:.2f}x)"


def markdown(results: dict) -> str:
    """The vars side by side per condition, each after the first with its ratio to the first."""
    labels = list(results["vars"])
    first = results["vars"][labels[0]]
    lines = [f"# Typed queries: {results['set']} ({results['queries']} queries, k = {results['k']}, "
             f"warm users: {len(results['warm_users'])})", "",
             "| condition | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for c in CONDITIONS:
        if c not in first:
            continue
        for name, key in ROWS:
            cells = [_cell(results["vars"][lab][c][key], first[c][key] if lab != labels[0] else None)
                     for lab in labels]
            lines.append(f"| {c} | {name} | " + " | ".join(cells) + " |")
    for name, key in (("judged items' median popularity rank", "judged_median_popularity_rank"),
                      ("judged items' median events", "judged_median_events")):
        lines.append(f"| | {name} | " + " | ".join(f"{results['vars'][lab][key]:g}" for lab in labels) + " |")
    lines.append("| | catalog items | " + " | ".join(f"{results['vars'][lab]['catalog_items']:,}" for lab in labels)
                 + " |")
    lines += ["", "P@10 per facet:", "", "| facet | queries | " + " | ".join(f"{lab} {c}" for lab in labels
                                                                              for c in CONDITIONS if c in first) + " |",
              "|---|---|" + "---|" * (len(labels) * sum(c in first for c in CONDITIONS))]
    for facet, n in sorted(results["facets"].items()):
        cells = [_cell(results["vars"][lab][c]["P@10_by_facet"].get(facet), None)
                 for lab in labels for c in CONDITIONS if c in first]
        lines.append(f"| {facet} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["vars"])
    groups = [(c, key) for c in CONDITIONS if c in results["vars"][labels[0]]
              for key in ("P@10", "NDCG@10", "core_recall@10")]
    x = np.arange(len(groups))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(8, 4))
    for n, lab in enumerate(labels):
        values = [results["vars"][lab][c][key] or 0.0 for c, key in groups]
        ax.bar(x + (n - (len(labels) - 1) / 2) * width, values, width, label=lab)
    ax.set_xticks(x, [f"{c}\n{key}" for c, key in groups])
    ax.set_title(f"Typed queries through the served path: {results['set']} ({results['queries']} queries)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from recmesh.tools.extras import require

    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.eval.queries", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="judged query set (JSONL)")
    parser.add_argument("--var", action="append", default=[], metavar="PATH[=LABEL]",
                        help="a var to ask (repeatable; default: $RECMESH_VAR, else var/); ratios are to the first")
    parser.add_argument("--warm-users", type=int, default=5, help="users with history asked every query (0: cold only)")
    parser.add_argument("--seed", type=int, default=0, help="draws the warm users")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "eval")
    args = parser.parse_args(argv)
    if args.warm_users < 0:
        parser.error("--warm-users must be >= 0")
    require(parser.prog, "serve", "bench")  # the mesh and the plot: checked before the work
    try:
        results = run(args.queries, args.var, args.warm_users, args.seed, args.out)
    except (QuerySetError, UsageError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: {e}\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
