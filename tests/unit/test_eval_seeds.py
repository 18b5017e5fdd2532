"""`recmesh eval` over several seeds: mean and spread per model, the best baseline and ratios."""

import json

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


def test_models_saved_in_the_same_second_get_their_own_folders(tmp_path):
    from recmesh.tools.eval.train import save_report

    folders = [save_report({"seed": n}, tmp_path, "SASRec-ID") for n in range(3)]
    assert len(set(folders)) == 3
    assert sorted(json.loads((f / "report.json").read_text())["seed"] for f in folders) == [0, 1, 2]


def test_seeds_in_parallel_processes_give_the_results_of_one_process(tmp_path, monkeypatch):
    """--jobs 2 trains each seed in its own process: the same split, the same numbers as
    training them one after the other (training is seeded; it runs to convergence here)."""
    import random

    from recmesh.tools.eval.run import main

    monkeypatch.setenv("RECMESH_VAR", str(tmp_path / "var"))
    rng = random.Random(3)
    genres = ["Comedy", "Drama", "Horror", "Sci-Fi"]
    items, events = tmp_path / "items.jsonl", tmp_path / "events.jsonl"
    items.write_text("".join(json.dumps({"id": str(i), "title": f"Film {i}", "categories": [genres[i % 4]]}) + "\n"
                             for i in range(40)))
    rows = [{"user": f"u{u}", "item": str(rng.randrange(u % 4, 40, 4)), "timestamp": 1000 * u + t}
            for u in range(40) for t in range(8)]  # each user keeps to one genre
    events.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--data", str(events), "--items", str(items), "--seeds", "0", "1", "--skip", "LLM-Seq",
              "Pop", "ZeroShot-LLM", "--models-dir", str(tmp_path / "models")]
    one = main([*common, "--out", str(tmp_path / "one")])
    two = main([*common, "--out", str(tmp_path / "two"), "--jobs", "2"])
    for seed in (0, 1):
        assert one["runs"][seed]["SASRec-ID"]["test"] == two["runs"][seed]["SASRec-ID"]["test"]
    assert one["runs"][0]["ItemKNN"] == two["runs"][1]["ItemKNN"]
    assert len(list((tmp_path / "models" / "SASRec-ID").iterdir())) == 4


def test_jobs_must_be_positive():
    from recmesh.tools.eval.run import main

    with pytest.raises(SystemExit):
        main(["--jobs", "0"])
