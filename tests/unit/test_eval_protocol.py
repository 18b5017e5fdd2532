"""The evaluation protocol on data small enough to check by hand."""

import numpy as np

from recmesh.tools.eval import baselines, datasets
from recmesh.tools.eval.protocol import evaluate


def toy() -> datasets.Dataset:
    rows = [
        # user a: items 0,1,2,3 then 4 (valid) 5 (test); two events in the same second keep file order
        ("a", "i0", 1), ("a", "i1", 2), ("a", "i2", 3), ("a", "i3", 3), ("a", "i4", 4), ("a", "i5", 5),
        ("b", "i5", 1), ("b", "i4", 2), ("b", "i3", 3), ("b", "i2", 4), ("b", "i1", 5),
        ("c", "i0", 1), ("c", "i1", 2),  # fewer than 5: dropped
    ]
    interactions = [datasets.Interaction(u, i, t) for u, i, t in rows]
    ids = [f"i{n}" for n in range(8)]
    return datasets.Dataset("toy", interactions, ids, ids)


def test_split_is_time_ordered_leave_one_out_with_stable_ties():
    s = datasets.split(toy())
    assert sorted(s.train) == ["a", "b"]
    assert s.train["a"] == [0, 1, 2, 3] and (s.valid["a"], s.test["a"]) == (4, 5)
    assert s.history("a", "valid") == [0, 1, 2, 3] and s.history("a", "test") == [0, 1, 2, 3, 4]


def test_perfect_and_hopeless_scorers():
    s = datasets.split(toy())

    def oracle(users, stage):
        targets = s.valid if stage == "valid" else s.test
        out = np.zeros((len(users), s.n_items))
        for row, u in enumerate(users):
            out[row, targets[u]] = 1.0
        return out

    assert evaluate(oracle, s, "test")["NDCG@10"] == 1.0
    nan = evaluate(lambda users, stage: np.full((len(users), s.n_items), np.nan), s, "test")
    assert nan["HR@10"] == 0.0  # NaN scores never count as hits


def test_history_is_excluded_from_the_ranking():
    s = datasets.split(toy())

    def loves_history(users, stage):
        out = np.zeros((len(users), s.n_items))
        for row, u in enumerate(users):
            out[row, s.history(u, stage)] = 10.0
            out[row, (s.test if stage == "test" else s.valid)[u]] = 1.0
        return out

    assert evaluate(loves_history, s, "test")["MRR@10"] == 1.0


def test_popularity_counts_train_only():
    s = datasets.split(toy())
    scores = baselines.Popularity(s)(["a"], "test")[0]
    # a trains on i0..i3, b on i5, i4, i3; valid and test items do not count
    assert scores.tolist() == [1, 1, 1, 2, 1, 1, 0, 0]


def test_top_k_metrics_from_ranks_in_shown_lists():
    from recmesh.tools.eval.protocol import top_k_metrics

    m = top_k_metrics([0, -1, 2])  # hit at the top, a miss, hit at the third slot
    assert m == {"HR@10": round(2 / 3, 4), "NDCG@10": round((1 + 0.5) / 3, 4), "MRR@10": round((1 + 1 / 3) / 3, 4)}
