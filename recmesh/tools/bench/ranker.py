"""Ranker cost per call, in process (no network): 500 candidates with catalog and text vectors,
a query, a session and 10 recent items - features, the shipped scorer and a wide & deep one,
diversity on and off, reasons for the top 10. Each call is what the ranker service's Rank runs
(recmesh.models.ranking.rank) under the service's settings. Writes results/ranker.json."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from recmesh.common.local import REPO
from recmesh.common.vectors import l2_normalize, to_matrix
from recmesh.models.ranking.rank import rank
from recmesh.models.ranking.scorer import Scorer, load_params, newest_params
from recmesh.models.ranking.training import WideDeepTrainer
from recmesh.v1 import ranker_pb2, retrieval_pb2
from services.ranker.config import RankerSettings


def request(n: int, diversity: float, rng: np.random.Generator) -> ranker_pb2.RankRequest:
    genres = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi", "Romance"]
    return ranker_pb2.RankRequest(
        candidates=[retrieval_pb2.Candidate(item_id=str(i), title=f"item {i}", categories=[genres[i % 6]],
                                            popularity=float(rng.random())) for i in range(n)],
        candidate_vectors=to_matrix(rng.normal(size=(n, 64)).astype(np.float32)),
        candidate_text_vectors=to_matrix(l2_normalize(rng.normal(size=(n, 384)).astype(np.float32))),
        interest=to_matrix(rng.normal(size=64).astype(np.float32)),
        session=to_matrix(l2_normalize(rng.normal(size=64).astype(np.float32))),
        query_vector=to_matrix(l2_normalize(rng.normal(size=384).astype(np.float32))),
        category_affinity={"Horror": 0.6, "Drama": 0.4},
        recent=[ranker_pb2.RecentItem(item_id=f"r{i}", title=f"recent {i}") for i in range(10)],
        recent_vectors=to_matrix(rng.normal(size=(10, 64)).astype(np.float32)),
        k=10, diversity=diversity,
    )


def timed(settings: RankerSettings, scorer: Scorer, req, calls: int) -> dict:
    rng = np.random.default_rng()  # the service's: unseeded, one per process
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        rank(req, scorer, rng, max_candidates=settings.max_candidates, exploration=settings.exploration,
             mmr_pool_factor=settings.mmr_pool_factor, max_reasons=settings.max_reasons)
        times.append((time.perf_counter() - started) * 1000)
    t = np.asarray(times[calls // 10 :])  # the first tenth warms up
    return {"p50_ms": round(float(np.percentile(t, 50)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3)}


def run(out: Path, n: int, calls: int) -> dict:
    rng = np.random.default_rng(0)
    settings = RankerSettings(exploration=0.05, updater_addr="")
    shipped = load_params(newest_params(settings.params_dir))
    wide_deep = WideDeepTrainer(shipped).scorer("wide-deep", 0)
    results = {"candidates": n, "calls": calls}
    for name, scorer in (("shipped_linear", shipped), ("wide_deep", wide_deep)):
        for diversity in (0.0, 0.5):
            results[f"{name}/diversity={diversity}"] = timed(settings, scorer, request(n, diversity, rng), calls)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ranker.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.bench.ranker", description=__doc__)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.out, args.candidates, args.calls), indent=2))


if __name__ == "__main__":
    main()
