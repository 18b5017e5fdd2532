"""The typed-query benchmark: its metrics on hand-computed cases, the query file's validation,
and the committed judged sets' properties."""

import csv
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from recmesh.common.paths import REPO
from recmesh.tools.eval.queries import (
    Answer,
    JudgedQuery,
    QuerySetError,
    UsageError,
    VarData,
    core_recall_at_k,
    draw_warm_users,
    judged_popularity,
    load_queries,
    markdown,
    ndcg_at_k,
    parse_var,
    popularity_ranks,
    precision_at_k,
    score_answers,
)

ML_SET = REPO / "data" / "queries" / "ml-latest-small.jsonl"
AMAZON_SET = REPO / "data" / "queries" / "amazon-office.jsonl"
AMAZON_DATA = REPO.parent / "shared" / "data" / "amazon-office"
FACETS = ("mood", "theme", "era", "setting", "audience", "style", "sub-genre")
# Words that carry no content: a query's other words of >= 4 letters must not be what finds its items.
STOP_WORDS = frozenset(
    "a about after all also an and any are as at be been before but by can could does each every for from "
    "has have into just like made make makes more most much must need near only other over same should "
    "some such than that their them then there these they this those through very want what when where "
    "which while will with without would your movie movies film films something".split())


def content_words(query: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", query.lower()) if len(w) >= 4 and w not in STOP_WORDS}


def title_has(word: str, title: str) -> bool:
    """The title holds the word, or its plural / singular (years and numbers are not words)."""
    tokens = set(re.findall(r"[a-z]+", title.lower()))
    return bool({word, word + "s", word + "es"} & tokens or (word.endswith("s") and word[:-1] in tokens))


def title_share(query: JudgedQuery, titles: dict[str, str]) -> float:
    words = content_words(query.query)
    return sum(any(title_has(w, titles[i]) for w in words) for i in query.relevant) / len(query.relevant)


def write_set(tmp_path: Path, *records: dict | str) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def record(**fields) -> dict:
    return {"id": "q1", "query": "heist movie", "facet": "sub-genre", "relevant": ["1", "2", "3"], "core": ["1"],
            **fields}


# --- metrics ---------------------------------------------------------------------------------------


def test_precision_counts_missing_places_as_misses():
    assert precision_at_k(["a", "x", "c"], {"a", "c", "z"}) == pytest.approx(0.2)  # 2 hits of 10 places
    assert precision_at_k([str(i) for i in range(12)], {"0", "11"}) == pytest.approx(0.1)  # rank 12 is past k


def test_ndcg_binary_relevance_against_hand_computed_values():
    # hits at ranks 2 and 4 (1-based), two relevant items: ideal = 1 + 1/log2(3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert ndcg_at_k(["x", "a", "y", "b"], {"a", "b"}) == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a", "b"], {"a", "b"}) == pytest.approx(1.0)
    # 12 relevant items: the ideal has 10 hits, so 3 hits at the top of a 3-item answer is far from 1
    relevant = {str(i) for i in range(12)}
    ideal10 = sum(1 / math.log2(r + 2) for r in range(10))
    assert ndcg_at_k(["0", "1", "2"], relevant) == pytest.approx(sum(1 / math.log2(r + 2) for r in range(3)) / ideal10)
    assert ndcg_at_k([], {"a"}) == 0.0
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], set())


def test_core_recall_and_empty_core():
    assert core_recall_at_k(["a", "x", "c"], {"a", "b", "c"}) == pytest.approx(2 / 3)
    assert core_recall_at_k([str(i) for i in range(10)] + ["a"], {"a"}) == 0.0  # 11th place does not count
    assert core_recall_at_k(["a"], set()) is None


def test_popularity_ranks_share_ties():
    ranks = popularity_ranks(["a", "a", "a", "b", "c"], ["e", "d", "c", "b", "a"])
    assert ranks == {"a": 1.0, "b": 2.5, "c": 2.5, "d": 4.5, "e": 4.5}


def test_score_answers_by_hand():
    queries = [JudgedQuery("q1", "first", "mood", ("a", "b"), ("a",)),
               JudgedQuery("q2", "second", "era", ("c",), ())]
    ranks = {"a": 1.0, "b": 2.0, "c": 3.0, "x": 4.0}
    answers = [Answer("q1", None, ["a", "x", "b"], "", 10.0),
               Answer("q2", None, ["x"] * 9 + ["c"], "encoder:deadline_exceeded", 30.0)]
    m = score_answers(answers, queries, ranks, {"a": 9, "b": 5, "c": 2})
    assert m["P@10"] == pytest.approx((0.2 + 0.1) / 2)
    q1_ndcg = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["NDCG@10"] == pytest.approx(round((q1_ndcg + 1 / math.log2(11)) / 2, 4))
    assert m["core_recall@10"] == 1.0  # q2 has no core: left out of the mean
    assert m["short_answers"] == 1 and m["degraded_share"] == 0.5
    assert m["degraded_reasons"] == {"encoder:deadline_exceeded": 1}
    assert m["p50_ms"] == 20.0
    # answered items, pooled: a, x, b + 9 x + c -> ranks 1, 2, 3 and ten 4s: median 4
    assert m["median_popularity_rank"] == 4.0 and m["median_events"] == 0.0
    assert m["P@10_by_facet"] == {"era": 0.1, "mood": 0.2}
    assert m["per_query"]["q1"]["top"] == ["a", "x", "b"]
    assert judged_popularity(queries, ranks, {"a": 9, "b": 5, "c": 2}) == (2.0, 5.0)


def test_warm_answers_are_kept_per_user():
    queries = [JudgedQuery("q1", "first", "mood", ("a",), ("a",))]
    m = score_answers([Answer("q1", "u1", ["a"]), Answer("q1", "u2", ["x"])], queries, {"a": 1.0, "x": 2.0}, {"a": 3})
    assert m["per_query"]["q1"]["top"] == {"u1": ["a"], "u2": ["x"]}
    assert m["per_query"]["q1"]["P@10"] == 0.05 and m["core_recall@10"] == 0.5


# --- the query file --------------------------------------------------------------------------------


def test_a_valid_file_loads(tmp_path):
    path = write_set(tmp_path, record(), record(id="q2", core=[]), "")
    queries = load_queries(path, catalog={"1", "2", "3"})
    assert [q.id for q in queries] == ["q1", "q2"] and queries[0].relevant == ("1", "2", "3")


@pytest.mark.parametrize("records, message", [
    ([record(), record()], "query id 'q1' already used on line 1"),
    ([record(core=["9"])], "core item '9' is not in 'relevant'"),
    ([record(query="  ")], "field 'query' must be a non-empty string"),
    ([record(relevant=[])], "field 'relevant' is empty"),
    ([record(relevant=["1", "1"])], "lists item '1' more than once"),
    ([record(relevant="1,2")], "field 'relevant' must be a list"),
    (['{"id": "q1", '], "not a JSON object"),
    ([{"query": "x", "facet": "mood", "relevant": ["1"]}], "field 'id' must be a non-empty string"),
])
def test_bad_files_name_the_problem(tmp_path, records, message):
    with pytest.raises(QuerySetError, match=re.escape(message)):
        load_queries(write_set(tmp_path, *records))


def test_an_item_outside_the_catalog_names_query_and_item(tmp_path):
    with pytest.raises(QuerySetError, match=r"query q1: item '3' is not in the catalog of /v"):
        load_queries(write_set(tmp_path, record()), catalog={"1", "2"}, catalog_name="the catalog of /v")


def test_var_flags_and_warm_users():
    assert parse_var("/tmp/some/var=base") == (Path("/tmp/some/var"), "base")
    assert parse_var("/tmp/some/var")[1] == "var"
    with pytest.raises(UsageError):
        parse_var("=label")

    def var(label, counts):
        return VarData(label, Path("/v"), [], {}, {}, {u: [("i", 4.0, t) for t in range(n)] for u, n in counts.items()})

    a = var("a", {"u1": 25, "u2": 30, "u3": 19, "u4": 40})
    b = var("b", {"u1": 25, "u2": 30, "u3": 40})
    drawn = draw_warm_users([a, b], 2, seed=3)
    assert sorted(drawn) == ["u1", "u2"]  # u3 has < 20 events in a, u4 is not in b
    assert draw_warm_users([a, b], 2, seed=3) == drawn and draw_warm_users([a], 0, seed=3) == []
    with pytest.raises(UsageError, match="--warm-users 3"):
        draw_warm_users([a, b], 3, seed=0)


def test_markdown_puts_vars_side_by_side_with_ratios():
    cond = {"P@10": 0.2, "NDCG@10": 0.1, "core_recall@10": None, "median_popularity_rank": 100.0, "median_events": 3.0,
            "short_answers": 0, "degraded_share": 0.0, "p50_ms": 10.0, "P@10_by_facet": {"mood": 0.2}}
    better = {**cond, "P@10": 0.3}
    results = {"set": "s", "queries": 1, "k": 10, "warm_users": [], "facets": {"mood": 1},
               "vars": {lab: {"catalog_items": 5, "judged_median_popularity_rank": 2.0, "judged_median_events": 9.0,
                              "cold": c} for lab, c in (("base", cond), ("new", better))}}
    text = markdown(results)
    assert "| cold | P@10 | 0.2 | 0.3 (1.50x) |" in text and "| mood | 1 | 0.2 | 0.2 |" in text


# --- the committed sets ----------------------------------------------------------------------------


def movie_titles() -> dict[str, str]:
    with (REPO / "data" / "ml-latest-small" / "movies.csv").open(encoding="utf-8", newline="") as f:
        return {row["movieId"]: row["title"] for row in csv.DictReader(f)}


def check_judgements(queries: list[JudgedQuery]) -> None:
    for q in queries:
        assert 3 <= len(q.core) <= 8, f"{q.id}: {len(q.core)} core items"
        assert 10 <= len(q.relevant) <= 40, f"{q.id}: {len(q.relevant)} relevant items"


def test_the_movielens_set():
    titles = movie_titles()
    queries = load_queries(ML_SET, catalog=titles.keys(), catalog_name="movies.csv")
    assert len(queries) >= 48
    facets = Counter(q.facet for q in queries)
    assert set(facets) == set(FACETS) and min(facets.values()) >= 4, facets
    check_judgements(queries)
    assert len({q.query.lower() for q in queries}) == len(queries)
    for q in queries:  # the typed words must not simply be the answers' titles
        assert title_share(q, titles) <= 0.25, f"{q.id} {q.query!r}: {title_share(q, titles):.2f}"


def test_the_title_rule_catches_a_literal_query():
    titles = {"1": "Heist (2001)", "2": "Tower Heist (2011)", "3": "Ocean's Eleven (2001)"}
    literal = JudgedQuery("q", "heist movies", "sub-genre", ("1", "2", "3"), ())
    assert title_share(literal, titles) == pytest.approx(2 / 3)
    assert title_share(JudgedQuery("q", "the 1940s", "era", ("1",), ()), {"1": "Laura (1944)"}) == 0.0


@pytest.mark.skipif(not AMAZON_DATA.is_dir(), reason="the amazon-office data is not checked out beside the repo")
def test_the_amazon_set():
    titles = {}
    with (AMAZON_DATA / "items.jsonl").open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            titles[item["item_id"]] = item.get("title") or ""
    queries = load_queries(AMAZON_SET, catalog=titles.keys(), catalog_name="amazon-office items.jsonl")
    assert len(queries) >= 24
    check_judgements(queries)
    for q in queries:
        untitled = [i for i in q.relevant if not titles[i].strip()]
        assert not untitled, f"{q.id}: {untitled} have no title, so `recmesh import` leaves them out of the catalog"
        assert title_share(q, titles) <= 0.25, f"{q.id} {q.query!r}: {title_share(q, titles):.2f}"
