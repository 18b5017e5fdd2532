"""Does the served path reproduce the offline metric? On the same users (those the installed
interest model trained on, scored on their held-out last item):

  model     the interest model alone, the evaluation protocol in process (full ranking);
  offline   what the mesh computes, in process over every item (full ranking, history
            excluded): the installed model's interest, the session direction and the ranker's
            shipped features and weights - the same code the services run;
  served    through the live mesh: the user's history (train + validation events) is sent with
            TrackEvents, then Recommend (k = 10, seen items excluded) goes gateway -> Triton
            (interest_encoder) -> Qdrant (candidates from three sources) -> ranker.

served vs offline measures the serving path (candidate recall, Triton, the services' plumbing);
offline vs model what the session and ranker add. Writes results/eval/served.json."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from recmesh.client import Event
from recmesh.common.local import REPO
from recmesh.common.paths import served_artifact, var_paths
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel
from recmesh.tools.catalog import movielens
from recmesh.tools.eval import datasets
from recmesh.tools.eval.live import fresh_mesh, track_all
from recmesh.tools.eval.mesh import MeshScorer
from recmesh.tools.eval.protocol import K, evaluate, top_k_metrics
from recmesh.tools.eval.run import item_vectors
from recmesh.tools.eval.train import ModelScorer


def offline_model(artifact: Path, text_vectors: np.ndarray) -> tuple[SequenceInterestModel, list[str]]:
    blob = torch.load(artifact, map_location="cpu", weights_only=True)
    model = SequenceInterestModel(ModelConfig(**blob["config"]), text_vectors)
    model.load_state_dict(blob["state"], strict=False)  # the text table comes from text_vectors
    return model.eval(), blob["holdout_users"]


def served_ranks(s: datasets.Split, dataset: datasets.Dataset, users: list[str]) -> tuple[list[int], dict]:
    """Rank (0-based) of each user's test item in the served top K, -1 when absent."""
    ranks, latencies, degraded = [], [], 0
    # The model path as shipped, without the exploration slot and with the shipped ranker
    # version throughout (no online learning): what is compared is serving, not policy.
    with fresh_mesh(env={"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false"}) as client:
        for n, user in enumerate(users, start=1):
            live = f"served-{user}"
            events = zip(s.history(user, "test"), s.ratings[user], s.timestamps[user], strict=True)
            track_all(client, [
                Event(live, dataset.item_ids[item], "rate", value=rating, timestamp_ms=stamp * 1000,
                      event_id=f"{live}-{i}")
                for i, (item, rating, stamp) in enumerate(events)
            ])
            started = time.perf_counter()
            reply = client.recommend(live, k=K)
            latencies.append((time.perf_counter() - started) * 1000)
            degraded += bool(reply.degraded)
            ids = [item.item_id for item in reply.items]
            target = dataset.item_ids[s.test[user]]
            ranks.append(ids.index(target) if target in ids else -1)
            print(f"\rserved {n}/{len(users)} users", end="", flush=True)
    print()
    return ranks, {"p50_ms": round(float(np.percentile(latencies, 50)), 1),
                   "p99_ms": round(float(np.percentile(latencies, 99)), 1), "degraded": degraded}


def run(users_n: int, out: Path, artifact: Path | None = None) -> dict:
    artifact = served_artifact() if artifact is None else artifact  # what the mesh serves for this var
    dataset = datasets.load(REPO / "data" / "ml-latest-small")
    full = datasets.split(dataset)
    text = item_vectors(dataset, var_paths().eval_cache)
    model, holdout = offline_model(artifact, text)
    # Users the model trained on (their test item never was) - the held-out ones are the streaming replay's.
    trained = sorted(set(full.train) - set(holdout))
    users = trained[:users_n] if users_n else trained
    s = full.without([u for u in full.train if u not in set(users)])
    alone = evaluate(ModelScorer(model, s, "LLM-Seq"), s, "test")
    catalog = movielens.load(REPO / "data" / "ml-latest-small")  # the popularity and categories the mesh has
    assert [it.item_id for it in catalog.items] == dataset.item_ids
    offline = evaluate(MeshScorer(s, dataset.item_ids, text, artifact, np.asarray(catalog.popularity),
                                  [list(it.categories) for it in catalog.items]), s, "test")
    ranks, timing = served_ranks(s, dataset, users)
    served = top_k_metrics(ranks)
    results = {
        "users": len(users), "artifact": str(artifact), "model": alone, "offline": offline, "served": served,
        "served_timing": timing, "offline_vs_model_NDCG": round(offline["NDCG@10"] / max(alone["NDCG@10"], 1e-9), 4),
        "served_vs_offline_NDCG": round(served["NDCG@10"] / max(offline["NDCG@10"], 1e-9), 4),
        "served_vs_offline_HR": round(served["HR@10"] / max(offline["HR@10"], 1e-9), 4),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "served.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.eval.served", description=__doc__)
    parser.add_argument("--users", type=int, default=0, help="first N trained-on users (0 = all)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "eval")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.users, args.out), indent=2))


if __name__ == "__main__":
    main()
