"""`recmesh train`: train the interest model that the mesh serves and install it in Triton's
model repository (deploy/triton/models/interest_encoder/1/), where the encoder, the catalog
bootstrap and Triton all read it.

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
from recmesh.models.interest import SERVED_ARTIFACT
from recmesh.models.interest.sequence_model import ModelConfig
from recmesh.models.interest.served import export_served
from recmesh.tools.eval import datasets
from recmesh.tools.eval.run import item_vectors
from recmesh.tools.eval.train import TrainConfig, save_report, train

# Users eligible for the streaming replay: enough events for a prefix and a stream.
HOLDOUT_MIN_EVENTS, HOLDOUT_MAX_EVENTS = 30, 600


def holdout_users(s: datasets.Split, n: int, seed: int) -> list[str]:
    eligible = sorted(u for u, items in s.train.items() if HOLDOUT_MIN_EVENTS <= len(items) + 2 <= HOLDOUT_MAX_EVENTS)
    return sorted(random.Random(seed).sample(eligible, min(n, len(eligible))))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="recmesh train", description=__doc__)
    parser.add_argument("--data", default=str(REPO / "data" / "ml-latest-small"))
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "models")
    parser.add_argument("--install", type=Path, default=SERVED_ARTIFACT,
                        help="where the served artifact goes (Triton's interest_encoder version folder)")
    parser.add_argument("--holdout", type=int, default=100, help="users kept out of training entirely")
    parser.add_argument("--time-cap", type=float, default=280.0, help="seconds of training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    dataset = datasets.load(args.data)
    s = datasets.split(dataset)
    held = holdout_users(s, args.holdout, args.seed)
    vectors = item_vectors(dataset, REPO / "var" / "eval")
    model, report = train(s.without(held), ModelConfig(s.n_items, text_dim=vectors.shape[1], use_ids=True), vectors,
                          TrainConfig(time_cap_s=args.time_cap, seed=args.seed), "LLM-Seq-served")
    report["holdout_users"] = held
    folder = save_report(report, args.models_dir, "LLM-Seq-served")
    export_served(model, dataset.item_ids, held, folder.name, args.install)
    shutil.copy2(args.install, folder / args.install.name)
    print(json.dumps({"artifact": str(folder), "installed": str(args.install), "version": folder.name,
                      "valid_ndcg": report["valid_ndcg"], "holdout_users": len(held)}, indent=2))
    return args.install


if __name__ == "__main__":
    main()
