"""Does the served path reproduce the offline metric? For a var (its imported catalog and event
log, the interest model and ranker start version it serves), on the same users (those the
installed interest model trained on, scored on their held-out last item):

  model     the interest model alone, the evaluation protocol in process (full ranking);
  offline   what the mesh computes, in process over every item (full ranking, history
            excluded): the installed model's interest, the session direction and the ranker's
            features and start weights (the blend `recmesh train` chose for this var, else the
            shipped one), over the shard's own text vectors, popularity and categories - the
            same code the services run;
  served    through the live mesh: the user's history (train + validation events) is sent with
            TrackEvents, then Recommend (k = 10, seen items excluded) goes gateway -> Triton
            (interest_encoder) -> Qdrant (candidates from three sources) -> ranker.

served vs offline measures the serving path (candidate recall, Triton, the services' plumbing);
offline vs model what the session and ranker add; ItemKNN (item co-occurrence, the simplest
strong baseline) is scored on the same users and split. Writes results/eval/served.json."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recmesh.client import Event
from recmesh.common.local import REPO
from recmesh.common.paths import served_artifact, var_paths
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel
from recmesh.tools.eval import baselines, datasets
from recmesh.tools.eval.live import fresh_mesh, track_all
from recmesh.tools.eval.mesh import MeshScorer
from recmesh.tools.eval.protocol import K, evaluate, top_k_metrics
from recmesh.tools.eval.train import ModelScorer


def offline_model(artifact: Path, text_vectors: np.ndarray) -> tuple[SequenceInterestModel, list[str]]:
    blob = torch.load(artifact, map_location="cpu", weights_only=True)
    model = SequenceInterestModel(ModelConfig(**blob["config"]), text_vectors)
    model.load_state_dict(blob["state"], strict=False)  # the text table comes from text_vectors
    return model.eval(), blob["holdout_users"]


def served_ranks(s: datasets.Split, dataset: datasets.Dataset, users: list[str], var: Path | None = None
                 ) -> tuple[list[int], dict]:
    """Rank (0-based) of each user's test item in the served top K, -1 when absent."""
    ranks, latencies, degraded = [], [], 0
    # The model path as shipped, without the exploration slot and with the shipped ranker
    # version throughout (no online learning): what is compared is serving, not policy.
    with fresh_mesh(var_paths(var).catalog,
                    env={"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false"}) as client:
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


@dataclass
class ServedCatalog:
    """What the var's shard holds, aligned with the dataset's items: the text vectors, the
    popularity and the categories the mesh ranks with (n_items rows)."""

    text_vectors: np.ndarray  # n_items x text_dim
    popularity: np.ndarray  # n_items, in [0, 1]
    categories: list[list[str]]


def served_catalog(var: Path, item_ids: list[str]) -> ServedCatalog:
    """Read from the shard itself, so the offline twin ranks with exactly what retrieval serves.
    ValueError when the shard and the imported catalog disagree on the items."""
    from recmesh.index.edge import EdgeItemStore

    store = EdgeItemStore.open(var_paths(var).shard_dir)
    try:
        rows: dict[str, tuple[dict, np.ndarray]] = {}
        for payloads, _, texts in store.export(2048, ["item_id", "popularity", "categories"]):
            rows.update({p["item_id"]: (p, t) for p, t in zip(payloads, texts, strict=True)})
    finally:
        store.close()
    missing = [i for i in item_ids if i not in rows]
    if missing or len(rows) != len(item_ids):
        raise ValueError(f"the shard in {var_paths(var).shard_dir} holds {len(rows)} items, the imported catalog "
                         f"{len(item_ids)} ({len(missing)} not in the shard): import or bootstrap again")
    return ServedCatalog(np.stack([rows[i][1] for i in item_ids]).astype(np.float32),
                         np.array([float(rows[i][0].get("popularity", 0.0)) for i in item_ids], np.float32),
                         [list(rows[i][0].get("categories", [])) for i in item_ids])


def run(users_n: int, out: Path, var: Path | None = None) -> dict:
    """The var's data (its imported catalog and event log: `datasets.from_var`), its served
    interest model and its ranker start version (the blend `recmesh train` chose, else the
    shipped one), through a fresh mesh over a copy of its catalog."""
    var = var_paths(var).root
    artifact = served_artifact(var)  # what the mesh serves for this var
    dataset = datasets.from_var(var)
    full = datasets.split(dataset)
    catalog = served_catalog(var, dataset.item_ids)
    model, holdout = offline_model(artifact, catalog.text_vectors)
    # Users the model trained on (their test item never was) - the held-out ones are the streaming replay's.
    trained = sorted(set(full.train) - set(holdout))
    users = trained[:users_n] if users_n else trained
    s = full.without([u for u in full.train if u not in set(users)])
    alone = evaluate(ModelScorer(model, s, "LLM-Seq"), s, "test")
    # The simplest strong baseline on the same users (co-occurrence from every user's train events).
    item_knn = evaluate(baselines.ItemKNN(full), s, "test")
    offline = evaluate(MeshScorer(s, dataset.item_ids, catalog.text_vectors, artifact, catalog.popularity,
                                  catalog.categories), s, "test")
    ranks, timing = served_ranks(s, dataset, users, var)
    served = top_k_metrics(ranks)
    results = {
        "dataset": dataset.name, "var": str(var), "users": len(users), "artifact": str(artifact),
        "model": alone, "ItemKNN": item_knn, "offline": offline, "served": served,
        "served_timing": timing, "offline_vs_model_NDCG": round(offline["NDCG@10"] / max(alone["NDCG@10"], 1e-9), 4),
        "served_vs_offline_NDCG": round(served["NDCG@10"] / max(offline["NDCG@10"], 1e-9), 4),
        "served_vs_offline_HR": round(served["HR@10"] / max(offline["HR@10"], 1e-9), 4),
        "served_vs_model_NDCG": round(served["NDCG@10"] / max(alone["NDCG@10"], 1e-9), 4),
        "served_vs_ItemKNN_NDCG": round(served["NDCG@10"] / max(item_knn["NDCG@10"], 1e-9), 4),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "served.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.eval.served", description=__doc__)
    parser.add_argument("--users", type=int, default=0, help="first N trained-on users (0 = all)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "eval")
    parser.add_argument("--var", type=Path, default=None, help="the var to check (default: $RECMESH_VAR, else var/)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.users, args.out, args.var), indent=2))


if __name__ == "__main__":
    main()
