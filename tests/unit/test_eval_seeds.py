"""`recmesh eval` over several seeds: mean and spread per model, the best baseline and ratios."""

import pytest

from recmesh.tools.eval.run import best_baseline, markdown, summarise


def _result(ndcg: float, hr: float, epochs: tuple[int, int] | None = None) -> dict:
    metrics = {"HR@10": hr, "NDCG@10": ndcg, "MRR@10": ndcg / 2, "coverage@10": 0.1, "users": 10}
    out = {"valid": dict(metrics), "test": dict(metrics)}
    if epochs:
        out["training"] = {"best_epoch": epochs[0], "epochs_run": epochs[1], "train_seconds": 12.5,
                           "stopped_by": "patience", "history": []}
    return out


def test_mean_and_spread_over_seeds():
    runs = {0: {"ItemKNN": _result(0.03, 0.06), "SASRec-ID": _result(0.06, 0.1, (8, 18)),
                "LLM-Seq+session": _result(0.08, 0.14, (9, 19))},
            1: {"ItemKNN": _result(0.03, 0.06), "SASRec-ID": _result(0.08, 0.12, (11, 21)),
                "LLM-Seq+session": _result(0.10, 0.16, (7, 17))}}
    models = summarise(runs)
    assert models["SASRec-ID"]["test"]["NDCG@10"] == pytest.approx(0.07)
    assert models["SASRec-ID"]["test_std"]["NDCG@10"] == pytest.approx(0.01)
    assert models["SASRec-ID"]["test_per_seed"]["NDCG@10"] == [0.06, 0.08]
    assert models["SASRec-ID"]["epochs"] == ["8/18", "11/21"]
    assert models["ItemKNN"]["test_std"]["NDCG@10"] == 0
    best = best_baseline(models)
    assert best["name"] == "SASRec-ID" and best["ratios"]["LLM-Seq+session"] == pytest.approx(0.09 / 0.07, abs=1e-3)
    table = markdown({"seeds": [0, 1], "dataset": "d", "models": models, "best_baseline": best}, "cmd",
                     {"users": 10, "items": 5, "interactions": 50})
    assert "0.0700** ± 0.0100" in table and "0.0600 / 0.0800" in table and "8/18, 11/21" in table
    assert "LLM-Seq+session 1.29×" in table
