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
import multiprocessing
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from recmesh.common.local import REPO
from recmesh.common.paths import served_text_model, text_model_name, var_paths
from recmesh.models.interest.sequence_model import ModelConfig
from recmesh.models.interest.served import export_served
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import SHIPPED_PARAMS, load_params, newest_params
from recmesh.tools.eval import baselines, datasets, tune
from recmesh.tools.eval.mesh import MeshScorer, train_popularity
from recmesh.tools.eval.protocol import evaluate
from recmesh.tools.eval.train import ModelScorer, TrainConfig, query_bank, save_report, train
from recmesh.tools.extras import require


def _imported_vectors(texts: list[str], model_dir: Path) -> np.ndarray | None:
    """The texts' vectors from the var's import cache (same model and variant) when it holds every
    one, else None."""
    from recmesh.tools.catalog.importer import TextModelSpec, TextVectorCache, text_digest

    stored = TextVectorCache(var_paths().catalog, TextModelSpec(model_dir, text_model_name(model_dir))).load()
    digests = [text_digest(t) for t in texts]
    if not digests or not all(d in stored for d in digests):
        return None
    return np.stack([stored[d] for d in digests]).astype(np.float32)


def item_vectors(dataset: datasets.Dataset, cache: Path, model_dir: Path | None = None) -> np.ndarray:
    """The language model's vectors of the item texts (onnx-fp32, the served variant), cached by
    content and model; texts the var's catalog holds are not encoded again. model_dir: the text
    model (default: the var's served one - its fine-tuned model if `recmesh train` installed
    one, else the bundled all-MiniLM-L6-v2)."""
    from recmesh.models.text import encode_with_progress, load_text_model, model_key

    model_dir = served_text_model() if model_dir is None else Path(model_dir)
    key = hashlib.sha256("\n".join(dataset.item_texts).encode()).hexdigest()[:16]
    path = cache / f"{dataset.name}-{key}-{model_key(model_dir)}-onnx-fp32.npy"
    if path.is_file():
        return np.load(path)
    imported = _imported_vectors(dataset.item_texts, model_dir)
    if imported is not None:  # the var's catalog encoded these texts when it was imported
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, imported)
        return imported
    model = load_text_model("onnx-fp32", model_dir, text_model_name(model_dir), threads=2)
    vectors = encode_with_progress(model, dataset.item_texts, desc="encoding items")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def _mean_std(values: list[float]) -> tuple[float, float]:
    return round(float(np.mean(values)), 4), round(float(np.std(values)), 4)


def summarise(runs: dict[int, dict]) -> dict:
    """Per model over the seeds: mean and spread (population std) of every metric, the per-seed
    values, and for trained models the epochs (best / run) and seconds of each seed."""
    names = list(dict.fromkeys(name for models in runs.values() for name in models))
    out = {}
    for name in names:
        per_seed = {seed: models[name] for seed, models in runs.items() if name in models}
        entry: dict = {"seeds": list(per_seed)}
        for stage in ("valid", "test"):
            metrics = next(iter(per_seed.values()))[stage]
            entry[stage] = {m: _mean_std([r[stage][m] for r in per_seed.values()])[0] for m in metrics}
            entry[f"{stage}_std"] = {m: _mean_std([r[stage][m] for r in per_seed.values()])[1] for m in metrics}
            entry[f"{stage}_per_seed"] = {m: [r[stage][m] for r in per_seed.values()] for m in ("NDCG@10", "HR@10")}
        trained = [r["training"] for r in per_seed.values() if "training" in r]
        if trained:
            entry["epochs"] = [f"{t['best_epoch']}/{t['epochs_run']}" for t in trained]
            entry["train_seconds"] = [t["train_seconds"] for t in trained]
            entry["stopped_by"] = [t.get("stopped_by", "") for t in trained]
        out[name] = entry
    return out


def markdown(results: dict, command: str, stats: dict) -> str:
    seeds = results["seeds"]
    lines = [
        f"Dataset `{results['dataset']}`: {stats['users']} users, {stats['items']} items, "
        f"{stats['interactions']} interactions after filtering; seeds {', '.join(map(str, seeds))} "
        "(mean ± population std over the seeds; the deterministic baselines once).",
        "",
        "| model | valid NDCG@10 | test NDCG@10 | test NDCG@10 per seed | test HR@10 | test MRR@10 | coverage@10 "
        "| epochs (best/run) | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        v, t, ts = r["valid"], r["test"], r["test_std"]
        per_seed = " / ".join(f"{x:.4f}" for x in r["test_per_seed"]["NDCG@10"])
        epochs = ", ".join(r.get("epochs", [])) or "-"
        seconds = ", ".join(f"{x:.0f}" for x in r.get("train_seconds", [])) or "-"
        lines.append(f"| {name} | {v['NDCG@10']:.4f} ± {r['valid_std']['NDCG@10']:.4f} | **{t['NDCG@10']:.4f}** ± "
                     f"{ts['NDCG@10']:.4f} | {per_seed} | {t['HR@10']:.4f} | {t['MRR@10']:.4f} "
                     f"| {t['coverage@10']:.3f} | {epochs} | {seconds} |")
    best = results.get("best_baseline")
    if best:
        lines += ["", f"Best baseline: {best['name']} (test NDCG@10 {best['test_ndcg']:.4f}); "
                  + "; ".join(f"{n} {x:.2f}×" for n, x in best["ratios"].items())]
    lines += ["", f"Reproduce: `{command}`", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    x = np.arange(len(names))
    models = results["models"]
    a.bar(x - 0.2, [models[n]["valid"]["NDCG@10"] for n in names], 0.4, label="validation",
          yerr=[models[n]["valid_std"]["NDCG@10"] for n in names])
    a.bar(x + 0.2, [models[n]["test"]["NDCG@10"] for n in names], 0.4, label="test",
          yerr=[models[n]["test_std"]["NDCG@10"] for n in names])
    a.set_xticks(x, names, rotation=15)
    a.set_ylabel("NDCG@10")
    a.set_title(f"{results['dataset']}: full ranking, leave-one-out, {len(results['seeds'])} seed(s)")
    a.legend()
    for seed, run in results["runs"].items():
        for name, r in run.items():
            if "training" in r:
                hist = r["training"]["history"]
                b.plot([h["epoch"] for h in hist], [h["NDCG@10"] for h in hist], label=f"{name} seed {seed}")
    b.set_xlabel("epoch")
    b.set_ylabel("validation NDCG@10")
    b.set_title("training (early stopping on validation NDCG@10)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


BASELINES = ("Pop", "ItemKNN", "ZeroShot-LLM", "SASRec-ID")


def best_baseline(models: dict) -> dict | None:
    """The baseline with the highest mean test NDCG@10, and every other model's ratio to it."""
    present = [n for n in BASELINES if n in models]
    if not present:
        return None
    name = max(present, key=lambda n: models[n]["test"]["NDCG@10"])
    top = models[name]["test"]["NDCG@10"]
    return {"name": name, "test_ndcg": top,
            "ratios": {n: round(m["test"]["NDCG@10"] / top, 3) for n, m in models.items()
                       if n not in BASELINES and top}}


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


def run_seed(args: argparse.Namespace, dataset: datasets.Dataset, s: datasets.Split, vectors: np.ndarray,
             queries, seed: int) -> dict:
    """The trained models of one seed on split s: {name: {"valid", "test", "training", ...}}."""
    run: dict = {}

    def record(name: str, scorer, extra: dict | None = None) -> None:
        run[name] = {"valid": evaluate(scorer, s, "valid"), "test": evaluate(scorer, s, "test"), **(extra or {})}
        print(f"seed {seed}", name, json.dumps({k: v for k, v in run[name].items() if k != "training"}), flush=True)

    cfg = TrainConfig(time_cap_s=args.time_cap, seed=seed, samples=args.samples)
    fusion = args.query_fusion == "on"
    sequence_models = {
        "SASRec-ID": ModelConfig(s.n_items, text_dim=0, use_ids=True),
        "LLM-Seq": ModelConfig(s.n_items, text_dim=vectors.shape[1], use_ids=True,
                               query_dim=vectors.shape[1] if fusion else 0),
    }
    for name, model_config in sequence_models.items():
        if name in args.skip:
            continue
        model, report = train(s, model_config, vectors if model_config.text_dim else None, cfg, name,
                              queries=queries if model_config.query_dim else None)
        folder = save_report(report, args.models_dir, name)
        record(name, ModelScorer(model, s, name), {"training": report, "artifact": str(folder)})
        # The mesh's ranking over this LLM-Seq, its blend chosen on validation.
        if model_config.text_dim and MeshScorer.name not in args.skip:
            artifact = folder / "interest_model.pt"
            export_served(model, dataset.item_ids, [], folder.name, artifact)
            mesh_row(record, dataset, s, vectors, artifact, seed)
    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="recmesh eval", description=__doc__)
    parser.add_argument("--data", default=str(REPO / "data" / "ml-latest-small"),
                        help="MovieLens folder (latest csv, 100k, 1m) or an interactions CSV/JSONL")
    parser.add_argument("--items", default=None, help="items CSV/JSONL for the generic format")
    parser.add_argument("--var", type=Path, default=None,
                        help="a var's imported catalog and event log instead of --data (`recmesh import`)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "eval")
    parser.add_argument("--models-dir", type=Path, default=var_paths().models)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one full run per seed: mean and spread")
    parser.add_argument("--samples", choices=("prefixes", "windows"), default=TrainConfig.samples,
                        help="training samples (recmesh.tools.eval.train.TrainConfig.samples)")
    parser.add_argument("--time-cap", type=float, default=None,
                        help="seconds of training per model (default: none, until validation stops improving)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 'windows' samples and at most 60 s of training per model")
    parser.add_argument("--query-fusion", choices=("on", "off"), default="on",
                        help="LLM-Seq as `recmesh train` trains it: typed queries fused in and a cold-start vector")
    parser.add_argument("--skip", nargs="*", default=[], help="model names to leave out")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained at once, one process each (each trains on one core; default 1)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    require(parser.prog, "bench")  # the plot comes last: check before the work
    command = "python -m recmesh.tools.eval.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.quick:
        args.samples, args.time_cap = "windows", min(args.time_cap or 60.0, 60.0)

    started = time.perf_counter()
    dataset = datasets.from_var(args.var) if args.var is not None else datasets.load(args.data, args.items)
    s = datasets.split(dataset)
    vectors = item_vectors(dataset, var_paths().eval_cache)
    results: dict = {"dataset": dataset.name, "protocol": "time-ordered leave-one-out, full ranking, history "
                     "excluded, users with >= 5 interactions", "split": s.stats(), "seeds": args.seeds,
                     "training": {"samples": args.samples, "time_cap_s": args.time_cap}, "runs": {}}

    queries = query_bank(dataset, var_paths().eval_cache, args.var) if args.query_fusion == "on" else None
    deterministic: dict = {}
    for baseline in (baselines.Popularity(s), baselines.ItemKNN(s), baselines.ZeroShotText(s, vectors)):
        if baseline.name not in args.skip:
            deterministic[baseline.name] = {"valid": evaluate(baseline, s, "valid"),
                                            "test": evaluate(baseline, s, "test")}
            print(baseline.name, json.dumps(deterministic[baseline.name]), flush=True)

    if args.jobs > 1 and len(args.seeds) > 1:
        # One process per seed (spawned: each its own torch threads); the split and the vectors
        # are the parent's, so every seed ranks the same users over the same catalog.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.jobs, len(args.seeds)), mp_context=context) as pool:
            futures = {seed: pool.submit(run_seed, args, dataset, s, vectors, queries, seed) for seed in args.seeds}
            trained = {seed: future.result() for seed, future in futures.items()}
    else:
        trained = {seed: run_seed(args, dataset, s, vectors, queries, seed) for seed in args.seeds}
    for seed in args.seeds:
        results["runs"][seed] = dict(deterministic) | trained[seed]

    results["models"] = summarise(results["runs"])
    results["best_baseline"] = best_baseline(results["models"])
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
