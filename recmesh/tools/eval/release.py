"""`recmesh train`: train the interest model that the mesh serves and install it in the var
($RECMESH_VAR/models/served/interest_model.pt), where the encoder, the catalog bootstrap, the
evaluations and Triton (a model repository assembled in the var) all read it. The source tree is
not written: the shipped model stays the default of any var without its own.

Same model, loss and selection as `make eval`'s LLM-Seq, with one difference: a set of users
is held out of training entirely (none of their events is seen), so that the streaming replay
through the live mesh measures users the model has never met."""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

from recmesh.common.local import REPO
from recmesh.common.paths import var_paths
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel
from recmesh.models.interest.served import export_served
from recmesh.tools.eval import datasets
from recmesh.tools.eval.run import item_vectors
from recmesh.tools.eval.train import TrainConfig, save_report, train

# Users eligible for the streaming replay: enough events for a prefix and a stream.
HOLDOUT_MIN_EVENTS, HOLDOUT_MAX_EVENTS = 30, 600


def holdout_users(s: datasets.Split, n: int, seed: int) -> list[str]:
    eligible = sorted(u for u, items in s.train.items() if HOLDOUT_MIN_EVENTS <= len(items) + 2 <= HOLDOUT_MAX_EVENTS)
    return sorted(random.Random(seed).sample(eligible, min(n, len(eligible))))


def install(model: SequenceInterestModel, item_ids: list[str], holdout: list[str], folder: Path,
            target: Path) -> Path:
    """The served artifact at `target` (a Triton config two folders up is stamped with its
    version) and a copy beside the training report in `folder`."""
    export_served(model, item_ids, holdout, folder.name, target)
    shutil.copy2(target, folder / target.name)
    return target


def parser() -> argparse.ArgumentParser:
    var = var_paths()
    parser = argparse.ArgumentParser(prog="recmesh train", description=__doc__)
    parser.add_argument("--data", default=str(REPO / "data" / "ml-latest-small"))
    parser.add_argument("--models-dir", type=Path, default=var.models)
    parser.add_argument("--install", type=Path, default=var.own_artifact,
                        help="where the served artifact goes (default: the var's, served from then on)")
    parser.add_argument("--holdout", type=int, default=100, help="users kept out of training entirely")
    parser.add_argument("--time-cap", type=float, default=280.0, help="seconds of training")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)

    dataset = datasets.load(args.data)
    s = datasets.split(dataset)
    held = holdout_users(s, args.holdout, args.seed)
    vectors = item_vectors(dataset, var_paths().eval_cache)
    model, report = train(s.without(held), ModelConfig(s.n_items, text_dim=vectors.shape[1], use_ids=True), vectors,
                          TrainConfig(time_cap_s=args.time_cap, seed=args.seed), "LLM-Seq-served")
    report["holdout_users"] = held
    folder = save_report(report, args.models_dir, "LLM-Seq-served")
    install(model, dataset.item_ids, held, folder, args.install)
    print(json.dumps({"artifact": str(folder), "installed": str(args.install), "version": folder.name,
                      "valid_ndcg": report["valid_ndcg"], "holdout_users": len(held)}, indent=2))
    return args.install


if __name__ == "__main__":
    main()
