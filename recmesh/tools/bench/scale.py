"""`recmesh scale` / `make scale`: the catalog at 100 k and 1 M items, measured.

A measurement, not a test: JSON under results/scale/ and a PNG (docs/scaling.md, "Catalog
scale"). Four commands:

- `derive --base-var V --items N --out-var W`: a var of N items derived from V's catalog. V's
  items stay as they are (ids, vectors, popularity; its event log is copied, so users, the
  interest model and the ranker work as over V). Synthetic item number j (j = 0 .. N - n_real
  - 1) is anchored on real item j mod n_real (round robin): its title (suffixed " ~<copy>"),
  description, categories, tags and attributes are the anchor's; its vector, in every space
  the catalog holds - the catalog vector (the interest model's space, `interest`/`similar`)
  and the language-model text vector (`text`) - is, by `--model`:
  - `mix` (default): a MIX of the anchor and 1-2 other real items drawn at random (2 or 3
    parts, weights Dirichlet(1, ..)), the same parts and weights in both spaces, plus
    Gaussian noise; rescaled to the weighted mean of the parts' norms (unit text vectors stay
    unit). Every synthetic item is a distinct point between real ones, as a grown catalog's
    new items are, with no two sharing a centre.
  - `copies`: a JITTERED COPY of the anchor (plus noise, rescaled to the anchor's norm). At
    ~100 copies per real item (1 M from MovieLens) the copies form tight clusters that a HNSW
    graph of m 16 does not connect (recall@100 0.4-0.8 whatever the jitter, docs/scaling.md):
    an artefact of the copies, kept to reproduce that measurement.
  The noise, per dimension: sigma_space = jitter x (median distance from a real item to its
  nearest real neighbour in that space) / sqrt(dim), so it moves a point about `jitter`
  nearest-neighbour distances (default 0.25 for mix, 0.5 for copies). Synthetic items have no
  events: popularity 0. The shard is built with the HNSW parameters of `recmesh.index.hnsw`
  (RECMESH_INDEX_HNSW_*, or --m/--ef-construct).
  Reports: the whole build's seconds (bootstrap time), filling and index-build seconds, the
  shard's size on disk, and what opening it costs a retrieval process (seconds, RSS).
- `recall --var W`: recall@100 of the var's own shard against exact search (numpy, over the
  same vectors) for each source the retrieval queries - `interest` (dot product; queries:
  real users' interest vectors from the served interest model over their last events),
  `similar` (cosine; the users' session direction, `recmesh.models.session`), `text` (cosine;
  typed phrases from the catalog's categories and tags, through the var's language model) -
  at each search ef (`--ef`), with single-query latency p50/p99; Qdrant Edge's exact search
  and qdrant-client's local mode (brute force, in Python: `--local-max-items`) beside it.
  `--grid` builds a vector-only shard per (m, ef_construct) (every segment searched through
  its graph: full_scan_threshold 1 KiB) to choose the parameters.
- `models --var V --items N --base-items 1000,9742 --model mix,copies`: which synthetic model
  to trust, on vector-only shards (as --grid): for each base size (a random subset of V's real
  items) and model, N items derived from it, recall@100 of the real queries per source and ef.
  A base of 1,000 at 100 k items has the ratio of synthetic to real items of 1 M derived from
  MovieLens's 9,742, at a tenth of the build.
- `plot`: results/scale/*.json into one PNG (recall@100 against latency per ef and size) and
  markdown tables (scale.md: build, memory, recall, and `recmesh load --out <folder>/load-<N>`).

Everything runs in this process, the shard opened directly (qdrant_edge), no services."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from recmesh.common.local import REPO
from recmesh.index.hnsw import HnswParams, hnsw_params
from recmesh.index.layout import INTEREST, QUERY, SESSION, ShardInUse
from recmesh.v1 import common_pb2

K = 100
# The spaces a catalog holds, by the named vector that stores each (SESSION repeats INTEREST).
SPACES = (INTEREST, QUERY)
# Each source the retrieval queries: the named vector searched and its metric.
SOURCES = {INTEREST: "dot", SESSION: "cosine", QUERY: "cosine"}
SUFFIX = " ~"
# How a synthetic item's vectors are made (`derive --model`) and each model's default jitter.
MODELS = {"mix": 0.25, "copies": 0.5}
MIX_PARTS = (2, 3)  # real items per mix: the anchor and 1-2 others


# --- Jitter --------------------------------------------------------------------------------


def nn_distance(vectors: np.ndarray, rng: np.random.Generator, sample: int = 1000) -> float:
    """Median Euclidean distance from `sample` rows of vectors (n, d) to their nearest other row."""
    vectors = np.asarray(vectors, np.float32)
    rows = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    sq = (vectors ** 2).sum(axis=1)
    d2 = sq[rows, None] + sq[None, :] - 2.0 * vectors[rows] @ vectors.T
    d2[np.arange(len(rows)), rows] = np.inf  # not itself
    return float(np.median(np.sqrt(np.maximum(d2.min(axis=1), 0.0))))


def jittered(vectors: np.ndarray, sources: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Copies of vectors[sources] (m, d) plus N(0, sigma^2) noise per dimension, each rescaled to
    its original's norm (a unit vector stays unit). float32."""
    original = np.asarray(vectors, np.float32)[sources]
    noisy = original + rng.normal(0.0, sigma, original.shape).astype(np.float32)
    scale = np.linalg.norm(original, axis=1, keepdims=True) / np.maximum(np.linalg.norm(noisy, axis=1, keepdims=True),
                                                                         1e-12)
    return (noisy * scale).astype(np.float32)


def mixed(vectors: np.ndarray, parts: np.ndarray, weights: np.ndarray, sigma: float,
          rng: np.random.Generator) -> np.ndarray:
    """Mixes (m, d) of rows of vectors (n, d): sum_p weights[i, p] x vectors[parts[i, p]]
    (parts, weights: (m, P); a weight 0 leaves its part out) plus N(0, sigma^2) noise per
    dimension, each rescaled to the weighted mean of its parts' norms (unit vectors give unit
    mixes; a dot-product catalog keeps its norms' spread). float32."""
    vectors = np.asarray(vectors, np.float32)
    weights = np.asarray(weights, np.float32)
    mix = np.zeros((len(parts), vectors.shape[1]), np.float32)
    for p in range(parts.shape[1]):  # part by part: vectors[parts] at once would be P x the output
        mix += weights[:, p, None] * vectors[parts[:, p]]
    mix += sigma * rng.standard_normal(mix.shape, dtype=np.float32)
    target = (weights * np.linalg.norm(vectors, axis=1)[parts]).sum(axis=1, keepdims=True)
    mix *= target / np.maximum(np.linalg.norm(mix, axis=1, keepdims=True), 1e-12)
    return mix


def mix_parts(anchors: np.ndarray, n_real: int, rng: np.random.Generator, most: int = MIX_PARTS[1],
              least: int = MIX_PARTS[0]) -> tuple[np.ndarray, np.ndarray]:
    """For each anchor (m,): its parts (m, most) - the anchor first, then distinct other real
    rows drawn at random - and their weights (m, most): Dirichlet(1, ..) over least..most parts
    (how many: uniform), 0 for the parts left out; each row sums to 1."""
    if not 1 <= least <= most or most > n_real:
        raise ValueError(f"a mix needs 1 <= least <= most <= {n_real} real items, got {least}..{most}")
    m = len(anchors)
    parts = np.empty((m, most), np.int64)
    parts[:, 0] = anchors
    # Distinct partners, none the anchor: offsets 1..n_real-1 from it, each drawn uniformly among
    # those not yet drawn (a draw among the fewer left, shifted past the drawn ones in order).
    offsets = np.empty((m, most - 1), np.int64)
    for p in range(most - 1):
        o = rng.integers(1, n_real - p, m)
        for drawn in np.sort(offsets[:, :p], axis=1).T:
            o += o >= drawn
        offsets[:, p] = o
    parts[:, 1:] = (anchors[:, None] + offsets) % n_real
    used = rng.integers(least, most + 1, m)
    weights = rng.dirichlet(np.ones(most), m)
    weights[np.arange(most)[None, :] >= used[:, None]] = 0.0
    return parts, weights / weights.sum(axis=1, keepdims=True)


def copy_sources(n_real: int, n_items: int) -> np.ndarray:
    """The real row each synthetic item copies (n_items - n_real of them): round robin, so every
    real item has the same number of copies (+- 1)."""
    if n_items < n_real:
        raise ValueError(f"--items must be at least the base catalog's {n_real}, got {n_items}")
    return np.arange(n_items - n_real) % n_real


def synthetic_item(item: common_pb2.Item, copy: int) -> common_pb2.Item:
    """Copy number `copy` (>= 1) of a real item: id and title suffixed " ~<copy>"/"~<copy>",
    everything else (description, categories, tags, attributes) as the original's."""
    out = common_pb2.Item()
    out.CopyFrom(item)
    out.item_id = f"{item.item_id}~{copy}"
    out.title = f"{item.title}{SUFFIX}{copy}"
    return out


@dataclass
class Derived:
    items: list[common_pb2.Item]
    popularity: list[float]
    vectors: np.ndarray  # (N, dim) catalog vectors
    text_vectors: np.ndarray  # (N, text_dim) language-model vectors
    sigma: dict[str, float]  # per space: the noise's standard deviation per dimension
    nn_distance: dict[str, float]  # per space: the real items' median nearest-neighbour distance


def synthetic_vectors(spaces: dict[str, np.ndarray], n_items: int, jitter: float, model: str,
                      rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, float]]:
    """Per space (name -> real vectors (n, d), rows aligned across spaces): the real rows and
    n_items - n synthetic ones after them (n_items, d), by `model` ("mix" or "copies"; module
    docstring); with each space's noise sigma per dimension and real nearest-neighbour
    distance. ValueError for an unknown model or n_items < n."""
    if model not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    spaces = {name: np.asarray(v, np.float32) for name, v in spaces.items()}
    n_real = len(next(iter(spaces.values())))
    sources = copy_sources(n_real, n_items)
    nn = {name: nn_distance(v, rng) for name, v in spaces.items()}
    sigma = {name: jitter * nn[name] / math.sqrt(v.shape[1]) for name, v in spaces.items()}
    if model == "copies":
        out = {name: np.concatenate([v, jittered(v, sources, sigma[name], rng)]) for name, v in spaces.items()}
    else:
        parts, weights = mix_parts(sources, n_real, rng)  # the same mix in every space
        out = {name: np.concatenate([v, mixed(v, parts, weights, sigma[name], rng)]) for name, v in spaces.items()}
    return out, sigma, nn


def derive_catalog(items: Sequence[common_pb2.Item], popularity: Sequence[float], vectors: np.ndarray,
                   text_vectors: np.ndarray, n_items: int, jitter: float, seed: int, model: str = "mix") -> Derived:
    """The real catalog (items, popularity, catalog vectors (n, dim), text vectors (n, text_dim),
    aligned) and n_items - n synthetic items after it, by `model` ("mix" or "copies"; module
    docstring). ValueError for an unknown model or n_items < n."""
    rng = np.random.default_rng(seed)
    out, sigma, nn = synthetic_vectors({INTEREST: vectors, QUERY: text_vectors}, n_items, jitter, model, rng)
    sources = copy_sources(len(items), n_items)
    copies = np.arange(len(sources)) // len(items) + 1
    synthetic = [synthetic_item(items[s], int(c)) for s, c in zip(sources.tolist(), copies.tolist(), strict=True)]
    return Derived([*items, *synthetic], [*popularity, *[0.0] * len(synthetic)], out[INTEREST], out[QUERY],
                   sigma, nn)


# --- Recall --------------------------------------------------------------------------------


def exact_top_k(matrix: np.ndarray, queries: np.ndarray, k: int, metric: str, chunk: int = 32) -> np.ndarray:
    """Row indices (q, k) of the k best rows of matrix (n, d) for each query (q, d), best first:
    by dot product, or by cosine (rows and queries normalised first)."""
    if metric not in ("dot", "cosine"):
        raise ValueError(f"metric must be dot or cosine, got {metric!r}")
    matrix = np.asarray(matrix, np.float32)
    queries = np.asarray(queries, np.float32)
    if metric == "cosine":
        matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    k = min(k, len(matrix))
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ matrix.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(found: Sequence[Sequence], exact: Sequence[Sequence], k: int = K) -> float:
    """Mean over queries of |found[:k] & exact[:k]| / min(k, len(exact)): the share of the true k
    nearest that the index returned."""
    if len(found) != len(exact) or not exact:
        raise ValueError(f"need one found list per exact list, got {len(found)} and {len(exact)}")
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / max(1, min(k, len(e))) for f, e in zip(found, exact,
                                                                                                 strict=True)]))


def latency(samples_s: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def edge_search(shard, name: str, queries: np.ndarray, k: int, ef: int | None, bound: float | None
                ) -> tuple[list[list[int]], list[float]]:
    """Point ids of the k best per query through the shard (ef None: exact search), one query at
    a time as the retrieval sends them (INTEREST as `interest_query` with the shard's norm
    bound), with each one's seconds."""
    import qdrant_edge as qe

    from recmesh.index.edge import interest_query

    params = qe.SearchParams(exact=True) if ef is None else qe.SearchParams(hnsw_ef=ef)
    found, seconds = [], []
    for q in queries:
        vector = interest_query(q, bound) if name == INTEREST else q.tolist()
        request = qe.QueryRequest(query=qe.Query.Nearest(vector, using=name), limit=k, params=params,
                                  with_payload=False)
        started = time.perf_counter()
        hits = shard.query(request)
        seconds.append(time.perf_counter() - started)
        found.append([h.id for h in hits])
    return found, seconds


def measure_shard(shard, point_ids: np.ndarray, matrices: dict[str, np.ndarray], queries: dict[str, np.ndarray],
                  efs: Sequence[int], bound: float | None, k: int = K, exact_queries: int | None = None) -> dict:
    """Per source: recall@k and latency at each ef, and Qdrant's exact search's latency (and
    its recall: 1 unless Qdrant and numpy disagree) over the first exact_queries queries (None:
    all; 0: none). matrices: INTEREST (n, dim) and QUERY (n, text_dim) rows aligned with point_ids;
    queries: (q, d) per source."""
    out = {}
    for name, metric in SOURCES.items():
        matrix = matrices[INTEREST if name == SESSION else name]
        truth = point_ids[exact_top_k(matrix, queries[name], k, metric)].tolist()
        row = {"metric": metric, "queries": len(queries[name]), "by_ef": {}}
        for ef in efs:
            found, seconds = edge_search(shard, name, queries[name], k, ef, bound)
            row["by_ef"][str(ef)] = {"recall_at_100": round(recall_at_k(found, truth, k), 4), **latency(seconds)}
        some = len(queries[name]) if exact_queries is None else exact_queries
        if some:
            found, seconds = edge_search(shard, name, queries[name][:some], k, None, bound)
            row["exact"] = {"recall_at_100": round(recall_at_k(found, truth[:some], k), 4), **latency(seconds),
                            "queries": len(found)}
        out[name] = row
        print(f"  {name}: " + ", ".join(f"ef {ef} recall@100 {v['recall_at_100']} p50 {v['p50_ms']} ms"
                                        for ef, v in row["by_ef"].items())
              + (f"; exact p50 {row['exact']['p50_ms']} ms" if some else ""), flush=True)
    return out


def local_mode(point_ids: np.ndarray, matrices: dict[str, np.ndarray], queries: dict[str, np.ndarray],
               k: int = K) -> dict:
    """qdrant-client's local mode (in-process, brute force in numpy) over the same vectors:
    load seconds, and per source recall@k against numpy and single-query latency."""
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    client = QdrantClient(location=":memory:")
    dim, text_dim = matrices[INTEREST].shape[1], matrices[QUERY].shape[1]
    client.create_collection("scale", vectors_config={
        INTEREST: qm.VectorParams(size=dim, distance=qm.Distance.DOT),
        SESSION: qm.VectorParams(size=dim, distance=qm.Distance.COSINE),
        QUERY: qm.VectorParams(size=text_dim, distance=qm.Distance.COSINE)})
    started = time.perf_counter()
    for s in range(0, len(point_ids), 2048):
        ids = point_ids[s : s + 2048].tolist()
        client.upload_collection("scale", vectors={INTEREST: matrices[INTEREST][s : s + 2048],
                                                   SESSION: matrices[INTEREST][s : s + 2048],
                                                   QUERY: matrices[QUERY][s : s + 2048]}, ids=ids)
    out: dict = {"load_seconds": round(time.perf_counter() - started, 1)}
    for name, metric in SOURCES.items():
        matrix = matrices[INTEREST if name == SESSION else name]
        truth = point_ids[exact_top_k(matrix, queries[name], k, metric)].tolist()
        found, seconds = [], []
        for q in queries[name]:
            t = time.perf_counter()
            hits = client.query_points("scale", query=q.tolist(), using=name, limit=k).points
            seconds.append(time.perf_counter() - t)
            found.append([h.id for h in hits])
        out[name] = {"recall_at_100": round(recall_at_k(found, truth, k), 4), **latency(seconds)}
        print(f"  qdrant-client local {name}: recall@100 {out[name]['recall_at_100']} p50 {out[name]['p50_ms']} ms",
              flush=True)
    client.close()
    return out


def vector_shard(folder: Path, ids: np.ndarray, matrices: dict[str, np.ndarray], params: HnswParams,
                 completed: bool = True):
    """A vector-only Edge shard in folder of the points ids (n,) with INTEREST (n, dim) (also
    SESSION) and QUERY (n, text_dim) vectors, its graphs built with params' m and ef_construct
    and every segment searched through its graph (full_scan_threshold 1 KiB); INTEREST
    norm-completed as the catalog build stores it (completed) or plain. Returns the open shard
    (the caller closes it), the INTEREST norm bound (None: plain) and the fill and index-build
    seconds."""
    import qdrant_edge as qe

    from recmesh.index.edge import EdgeItemStore, interest_stored

    dim, text_dim = matrices[INTEREST].shape[1], matrices[QUERY].shape[1]
    forced = HnswParams(params.m, params.ef_construct, full_scan_threshold_kb=1)
    config = EdgeItemStore.shard_config(dim, text_dim, forced, completed)
    config = qe.EdgeConfig(vectors=config.vectors, hnsw_config=config.hnsw_config,
                           optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1))
    shard = qe.EdgeShard.create(str(folder), config)
    bound = float(np.linalg.norm(matrices[INTEREST], axis=1).max()) if completed else None
    stored = interest_stored(matrices[INTEREST], bound)
    started = time.perf_counter()
    for s in range(0, len(ids), 1024):
        shard.update(qe.UpdateOperation.upsert_points([
            qe.Point(id=int(i), vector={INTEREST: a.tolist(), SESSION: v.tolist(), QUERY: b.tolist()})
            for i, a, v, b in zip(ids[s : s + 1024], stored[s : s + 1024], matrices[INTEREST][s : s + 1024],
                                  matrices[QUERY][s : s + 1024], strict=True)]))
    filled = time.perf_counter()
    shard.optimize()
    return shard, bound, {"fill_seconds": round(filled - started, 1),
                          "index_seconds": round(time.perf_counter() - filled, 1)}


# --- The var: its vectors, real queries --------------------------------------------------------


def shard_vectors(shard, dim: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every point's id (n,) and its catalog vector (INTEREST's first dim components: (n, dim))
    and QUERY (n, text_dim) vectors."""
    import qdrant_edge as qe

    ids, interest, text = [], [], []
    offset = None
    while True:  # numpy per batch: a million vectors as Python floats would not fit in memory
        records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=4096, with_payload=False,
                                                        with_vector=[INTEREST, QUERY]))
        if records:
            ids.append(np.array([r.id for r in records], np.int64))
            interest.append(np.array([r.vector[INTEREST][:dim] for r in records], np.float32))
            text.append(np.array([r.vector[QUERY] for r in records], np.float32))
        if offset is None:
            break
    return np.concatenate(ids), {INTEREST: np.concatenate(interest), QUERY: np.concatenate(text)}


def real_queries(var: Path, point_ids: np.ndarray, vectors: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """n queries per source from the var's real users and catalog (module docstring): users
    with at least 5 events on catalog items, sampled; their last events (the interest model's
    window) give the interest vector and the session direction; typed phrases from the items'
    first two categories and tags (synthetic copies left out), encoded by the var's language
    model. point_ids (n,) and vectors (n, dim): the shard's points and catalog vectors."""
    from recmesh.common.paths import served_artifact, served_text_model, text_model_name, var_paths
    from recmesh.events.eventlog import EventLog
    from recmesh.index.layout import point_id
    from recmesh.models.interest.served import ServedInterestModel
    from recmesh.models.session import session_vector
    from recmesh.models.text import load_text_model
    from recmesh.tools.catalog.snapshot import read_items

    paths = var_paths(var)
    rng = np.random.default_rng(seed)
    row_of = {int(p): row for row, p in enumerate(point_ids.tolist())}
    log = EventLog(paths.event_log)
    try:
        by_user: dict[str, list] = {}
        for e in log.replay():
            by_user.setdefault(e.user_id, []).append(e)
    finally:
        log.close()
    model = ServedInterestModel(served_artifact(var), threads=1, runtime="onnx")
    users = sorted(u for u, events in by_user.items() if len(events) >= 5)
    interest, session = [], []
    for u in rng.permutation(users).tolist():
        events = [e for e in sorted(by_user[u], key=lambda e: e.timestamp_ms)[-model.config.max_len:]
                  if point_id(e.item_id) in row_of]
        if len(events) < 5:
            continue
        vecs = vectors[[row_of[point_id(e.item_id)] for e in events]]
        interest.append(model.interest(vecs, [e.type for e in events], [e.value for e in events],
                                       [e.timestamp_ms for e in events]))
        session.append(session_vector(vecs))
        if len(interest) == n:
            break
    phrases = sorted({" ".join([*it.categories[:2], *list(it.tags)[:2]]).lower()
                      for it in read_items(paths.catalog_items)
                      if (it.categories or it.tags) and SUFFIX not in it.title})
    phrases = [phrases[i] for i in rng.choice(len(phrases), size=min(n, len(phrases)), replace=False)]
    model_dir = served_text_model(var)
    text = load_text_model("onnx-fp32", model_dir, text_model_name(model_dir), threads=2).encode(phrases)
    return {INTEREST: np.asarray(interest, np.float32), SESSION: np.asarray(session, np.float32),
            QUERY: np.asarray(text, np.float32)}


def dir_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def open_cost(var: Path) -> dict:
    """What opening the var's shard costs a retrieval process (EdgeItemStore.open: the shard and
    the catalog mirror), measured in a fresh interpreter: seconds, RSS before and after (MiB)."""
    code = ("import json, time, resource, sys; from pathlib import Path\n"
            "def rss():\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024\n"
            "from recmesh.index.edge import EdgeItemStore\n"
            "before = rss(); t = time.perf_counter(); s = EdgeItemStore.open(Path(sys.argv[1]))\n"
            "print(json.dumps({'open_seconds': round(time.perf_counter() - t, 1), 'rss_mib_before': round(before, 1),"
            " 'rss_mib_after': round(rss(), 1), 'items': s.count()}))\n")
    from recmesh.common.paths import var_paths

    out = subprocess.run([sys.executable, "-c", code, str(var_paths(var).shard_dir)], check=True, cwd=REPO,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- Commands ------------------------------------------------------------------------------


def derive(base_var: Path, out_var: Path, n_items: int, jitter: float, seed: int, hnsw: HnswParams,
           model: str = "mix") -> dict:
    """The var of n_items at out_var (module docstring); returns what was measured."""
    from recmesh.common.paths import var_paths
    from recmesh.index.edge import EdgeItemStore
    from recmesh.tools.catalog.importer import write_shard
    from recmesh.tools.catalog.snapshot import read_items, write_items

    base, out = var_paths(base_var), var_paths(out_var)
    if out.catalog.exists():
        raise SystemExit(f"recmesh scale derive: {out.catalog} exists: give a new --out-var")
    started = time.perf_counter()
    items = {it.item_id: it for it in read_items(base.catalog_items)}
    store = EdgeItemStore.open(base.shard_dir)
    try:
        payloads, vectors, texts = [], [], []
        for p, v, t in store.export(2048, ["item_id", "popularity"]):
            payloads += p
            vectors.append(v)
            texts.append(t)
    finally:
        store.close()
    # Items upserted live are in the shard only (no catalog/items.jsonl line to copy): left out.
    known = np.array([p["item_id"] in items for p in payloads], bool)
    if not known.all():
        print(f"left out of the base: {int((~known).sum())} items upserted live (not in {base.catalog_items.name})",
              flush=True)
    payloads = [p for p, k in zip(payloads, known, strict=True) if k]
    real = [items[p["item_id"]] for p in payloads]
    derived = derive_catalog(real, [float(p.get("popularity", 0.0)) for p in payloads],
                             np.concatenate(vectors)[known], np.concatenate(texts)[known], n_items, jitter, seed, model)
    generated = time.perf_counter()
    print(f"derived {n_items} items ({n_items - len(real)} synthetic) from {len(real)} in "
          f"{generated - started:.1f} s; sigma per dimension {derived.sigma}", flush=True)
    base_manifest = json.loads((base.catalog / "BUILD.json").read_text())
    recipe = {"base_var": str(base_var), "base_key": base_manifest.get("key"), "base_items": len(real),
              "items": n_items, "method": {"mix": "vector mix", "copies": "vector jitter"}[model],
              "model": model, "mix_parts": list(MIX_PARTS) if model == "mix" else None,
              "jitter_nn_distances": jitter, "seed": seed,
              "sigma_per_dim": {k: round(v, 6) for k, v in derived.sigma.items()},
              "real_nn_distance": {k: round(v, 4) for k, v in derived.nn_distance.items()}}
    key = hashlib.sha256(json.dumps([recipe, hnsw.as_dict()], sort_keys=True).encode()).hexdigest()[:16]
    out.catalog.mkdir(parents=True)
    for folder in (base.updater, base.models / "served"):  # the events; the var's own models, if any
        if folder.is_dir():
            shutil.copytree(folder, out.root / folder.relative_to(base.root))
    print(f"building the shard with HNSW {hnsw.as_dict()} ...", flush=True)
    built = write_shard(out.shard_dir, f"catalog-{key}", derived.items, derived.popularity, derived.vectors,
                        derived.text_vectors, hnsw)
    print(f"shard filled in {built['fill_seconds']} s, indexes built in {built['index_seconds']} s", flush=True)
    write_items(out.catalog_items, derived.items)
    total = round(time.perf_counter() - started, 1)
    manifest = {"key": key, "items": n_items, "dim": int(derived.vectors.shape[1]),
                "text_model": base_manifest.get("text_model"), "interest_model": base_manifest.get("interest_model"),
                "hnsw": built["hnsw"], "search_ef": built["search_ef"], "synthetic": recipe, "total_seconds": total}
    (out.catalog / "BUILD.json").write_text(json.dumps(manifest, indent=2))
    result = {"items": n_items, "recipe": recipe, "hnsw": built["hnsw"], "search_ef": built["search_ef"],
              "bootstrap_seconds": total,
              "generate_seconds": round(generated - started, 1), "fill_seconds": built["fill_seconds"],
              "index_seconds": built["index_seconds"], "shard_disk_mib": dir_mib(out.shard_dir),
              "shard_segments_mib": dir_mib(out.shard_dir / "segments"),
              "peak_rss_mib_build": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    result["retrieval_open"] = opened = open_cost(out_var)
    if opened["items"] != n_items:
        raise SystemExit(f"recmesh scale derive: the shard holds {opened['items']} items, not {n_items}")
    return result


def recall(var: Path, efs: Sequence[int], n_queries: int, seed: int, local_max_items: int,
           grid: Sequence[tuple[HnswParams, bool]] = (), exact_queries: int | None = None) -> dict:
    """recall@100 and latency of the var's shard (and of a vector-only shard per grid entry:
    (parameters, whether INTEREST is stored norm-completed as the shard build stores it, or
    plain as shards before it))."""
    import qdrant_edge as qe

    from recmesh.common.paths import var_paths

    paths = var_paths(var)
    meta = json.loads((paths.shard_dir.parent / f"{paths.shard_dir.name}.meta.json").read_text())
    bound = meta.get("interest_norm_bound")
    shard = qe.EdgeShard.load(str(paths.shard_dir))
    try:
        ids, matrices = shard_vectors(shard, int(meta["dim"]))
        queries = real_queries(var, ids, matrices[INTEREST], n_queries, seed)
        print(f"{var}: {len(ids)} items, HNSW {meta.get('hnsw', 'Qdrant defaults')}, INTEREST norm bound {bound}",
              flush=True)
        result = {"var": str(var), "items": len(ids), "k": K,
                  "queries": {name: len(q) for name, q in queries.items()},
                  "shard": {"hnsw": meta.get("hnsw", HnswParams().as_dict()), "interest_norm_bound": bound,
                            "sources": measure_shard(shard, ids, matrices, queries, efs, bound,
                                                     exact_queries=exact_queries)}}
    finally:
        shard.close()
    if grid:
        result["grid"] = []
        for params, completed in grid:
            with tempfile.TemporaryDirectory(prefix="recmesh-hnsw-", dir=paths.root) as tmp:
                g, g_bound, timing = vector_shard(Path(tmp), ids, matrices, params, completed)
                print(f"grid m={params.m} ef_construct={params.ef_construct} "
                      f"interest {'norm-completed' if completed else 'plain'}: built in {timing['index_seconds']} s",
                      flush=True)
                entry = {"m": params.m, "ef_construct": params.ef_construct,
                         "interest": "norm-completed" if completed else "plain", **timing,
                         "sources": measure_shard(g, ids, matrices, queries, efs, g_bound)}
                g.close()
            result["grid"].append(entry)
    if len(ids) <= local_max_items:
        result["qdrant_client_local"] = local_mode(ids, matrices, queries)
    else:
        result["qdrant_client_local"] = {"skipped": f"{len(ids)} items > --local-max-items {local_max_items}: "
                                                    "local mode searches by brute force in Python"}
    return result


def compare_models(var: Path, n_items: int, base_sizes: Sequence[int], models: Sequence[str],
                   jitter: float | None, grid: Sequence[HnswParams], efs: Sequence[int], n_queries: int,
                   seed: int) -> dict:
    """recall@100 per source and ef of vector-only shards of synthetic catalogs of n_items, one
    per (base size, model, HNSW parameters): the base, a random subset of the var's real items
    (all of them when the size is at least theirs), and its synthetic items by the model (jitter:
    the model's default when None); queries: the var's real ones (`real_queries`, over the whole
    real catalog), truth by numpy. So a small base at n_items has as many synthetic items per
    real one as the full catalog at a larger size (1,000 -> 100 k: 100 each, as 9,742 -> 1 M),
    at a tenth of the build. Also each set's median nearest-neighbour distance over its base's."""
    import qdrant_edge as qe

    from recmesh.common.paths import var_paths

    paths = var_paths(var)
    meta = json.loads((paths.shard_dir.parent / f"{paths.shard_dir.name}.meta.json").read_text())
    shard = qe.EdgeShard.load(str(paths.shard_dir))
    try:
        real_ids, real = shard_vectors(shard, int(meta["dim"]))
    finally:
        shard.close()
    queries = real_queries(var, real_ids, real[INTEREST], n_queries, seed)
    result = {"var": str(var), "real_items": len(real_ids), "items": n_items, "k": K,
              "queries": {name: len(q) for name, q in queries.items()}, "sets": []}
    ids = np.arange(1, n_items + 1, dtype=np.int64)
    for base_size in base_sizes:
        for model in models:
            rng = np.random.default_rng(seed)
            rows = (np.arange(len(real_ids)) if base_size >= len(real_ids)
                    else np.sort(rng.choice(len(real_ids), base_size, replace=False)))
            used = MODELS[model] if jitter is None else jitter
            base = {name: real[name][rows] for name in SPACES}
            matrices, sigma, nn = synthetic_vectors(base, n_items, used, model, rng)
            spread = {name: round(nn_distance(matrices[name], rng) / nn[name], 3) for name in SPACES}
            for params in grid:
                print(f"base {len(rows)}, model {model}, jitter {used}, m={params.m} "
                      f"ef_construct={params.ef_construct}: {n_items} items", flush=True)
                with tempfile.TemporaryDirectory(prefix="recmesh-models-", dir=paths.root) as tmp:
                    g, bound, timing = vector_shard(Path(tmp), ids, matrices, params)
                    entry = {"base_items": len(rows), "synthetic_per_real": round((n_items - len(rows)) / len(rows), 1),
                             "model": model, "jitter_nn_distances": used, "m": params.m,
                             "ef_construct": params.ef_construct, **timing,
                             "nn_distance_over_base": spread, "sigma_per_dim": sigma,
                             "sources": measure_shard(g, ids, matrices, queries, efs, bound, exact_queries=0)}
                    g.close()
                result["sets"].append(entry)
    return result


def plot(results: list[dict], path: Path) -> None:
    """recall@100 against single-query latency per source, one line per catalog size (points:
    search ef), from `recall` results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SOURCES), figsize=(6 * len(SOURCES), 4.5))
    for ax, name in zip(axes, SOURCES, strict=True):
        for r in sorted(results, key=lambda r: r["items"]):
            row = r["shard"]["sources"][name]
            efs = list(row["by_ef"])
            ax.plot([row["by_ef"][e]["p50_ms"] for e in efs], [row["by_ef"][e]["recall_at_100"] for e in efs],
                    marker="o", label=f"{r['items']:,} items, HNSW m={r['shard']['hnsw']['m']}")
            for e in efs:
                ax.annotate(f"ef {e}", (row["by_ef"][e]["p50_ms"], row["by_ef"][e]["recall_at_100"]), fontsize=7)
            ax.scatter([row["exact"]["p50_ms"]], [1.0], marker="x")
        ax.axhline(0.95, color="grey", linestyle="--", label="recall@100 0.95")
        ax.set_xscale("log")
        ax.set_xlabel("single-query latency p50 (ms; x: exact search)")
        ax.set_ylabel("recall@100 vs exact")
        ax.set_title(f"source {name} ({SOURCES[name]})")
        ax.legend(fontsize=7)
    fig.suptitle("Qdrant Edge HNSW at catalog scale (synthetic items derived from MovieLens; 2-core shared host)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def report(folder: Path) -> str:
    """Markdown tables of what `derive`, `recall` and `recmesh load --out <folder>/load-<N>` wrote
    in folder: build and memory per catalog size, recall@100 and latency per source and ef, and
    the load steps (with each process's RSS after them)."""
    derived = sorted((json.loads(f.read_text()) for f in folder.glob("derive-*.json")), key=lambda r: r["items"])
    recalls = sorted((json.loads(f.read_text()) for f in folder.glob("recall-*.json")), key=lambda r: r["items"])
    lines = []
    if derived:
        base = derived[0]["retrieval_open"]
        lines += ["| items | build (bootstrap) s | fill s | HNSW build s | shard on disk MiB (segments) "
                  "| retrieval: open s | retrieval RSS MiB | RSS per added item (KiB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for d in derived:
            o = d["retrieval_open"]
            added = d["items"] - derived[0]["items"]
            per = f"{(o['rss_mib_after'] - base['rss_mib_after']) * 1024 / added:.2f}" if added else "-"
            lines.append(f"| {d['items']:,} | {d['bootstrap_seconds']} | {d['fill_seconds']} | {d['index_seconds']} | "
                         f"{d['shard_disk_mib']} ({d.get('shard_segments_mib', '-')}) | {o['open_seconds']} | "
                         f"{o['rss_mib_after']} | {per} |")
        lines.append("")
    for r in recalls:
        efs = list(next(iter(r["shard"]["sources"].values()))["by_ef"])
        local = r.get("qdrant_client_local", {})
        lines += [f"{r['items']:,} items, HNSW {r['shard']['hnsw']}: recall@100 (p50 / p99 ms per query)", "",
                  "| source | " + " | ".join(f"ef {e}" for e in efs) + " | Edge exact | qdrant-client local |",
                  "|---|" + "---|" * (len(efs) + 2)]
        for name, row in r["shard"]["sources"].items():
            cells = [f"{v['recall_at_100']:.3f} ({v['p50_ms']:.2f} / {v['p99_ms']:.2f})" for v in row["by_ef"].values()]
            ex = row["exact"]
            loc = local.get(name)
            lines.append(f"| {name} ({row['metric']}) | " + " | ".join(cells) + f" | {ex['recall_at_100']:.3f} "
                         f"({ex['p50_ms']:.2f} / {ex['p99_ms']:.2f}) | "
                         + (f"{loc['recall_at_100']:.3f} ({loc['p50_ms']:.2f} / {loc['p99_ms']:.2f})" if loc else "-")
                         + " |")
        for g in r.get("grid", []):
            cells = [f"{name} " + "/".join(f"{v['recall_at_100']:.3f}" for v in row["by_ef"].values())
                     for name, row in g["sources"].items()]
            lines.append(f"| grid m={g['m']} ef_construct={g['ef_construct']} {g.get('interest', '')} "
                         f"(built {g['index_seconds']} s) | " + "; ".join(cells) + " |" + " |" * (len(efs) + 1))
        lines.append("")
    for f in sorted(folder.glob("models-*.json")):
        r = json.loads(f.read_text())
        efs = list(next(iter(r["sets"][0]["sources"].values()))["by_ef"]) if r["sets"] else []
        lines += [f"Synthetic models at {r['items']:,} items: recall@100 at ef " + " / ".join(efs), "",
                  "| base items (synthetic per real) | model, jitter | HNSW m / ef_construct (build s) "
                  "| nearest-neighbour distance / base's | " + " | ".join(SOURCES) + " |",
                  "|---|---|---|---|" + "---|" * len(SOURCES)]
        for e in r["sets"]:
            cells = ["/".join(f"{v['recall_at_100']:.3f}" for v in e["sources"][name]["by_ef"].values())
                     for name in SOURCES]
            lines.append(f"| {e['base_items']:,} ({e['synthetic_per_real']:g}) | {e['model']}, "
                         f"{e['jitter_nn_distances']} | {e['m']} / {e['ef_construct']} ({e['index_seconds']}) | "
                         + ", ".join(f"{k} {v}" for k, v in e["nn_distance_over_base"].items()) + " | "
                         + " | ".join(cells) + " |")
        lines.append("")
    for f in sorted(folder.glob("load-*/load.json"), key=lambda f: int(f.parent.name.split("-")[1])):
        r = json.loads(f.read_text())
        lines += [f"`recmesh load` over {int(f.parent.name.split('-')[1]):,} items: highest full-service rate "
                  f"{r['highest_full_service_per_s']:g}/s, highest sustainable {r['highest_sustainable_per_s']:g}/s; "
                  f"RSS after the steps (MiB): {r.get('rss_mib_after_steps')}", "",
                  "| offered/s | achieved/s | p50 ms | p99 ms | in time | degraded "
                  "| CPU ms per Recommend (retrieval) |",
                  "|---|---|---|---|---|---|---|"]
        for st in r["steps"]:
            cpu = st.get("cpu_ms_per_recommend", {})
            lines.append(f"| {st['offered_per_s']:g} | {st['achieved_per_s']} | {st['p50_ms']} | {st['p99_ms']} | "
                         f"{st['in_time_share']:.2%} | {st['degraded_share']:.2%} | {cpu.get('total', '-')} "
                         f"({cpu.get('retrieval', '-')}) |")
        lines.append("")
    return "\n".join(lines)


def grid_entry(text: str) -> tuple[HnswParams, bool]:
    """"m:ef_construct" (INTEREST norm-completed) or "m:ef_construct:plain"."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "plain"):
        raise argparse.ArgumentTypeError(f"--grid: entries m:ef_construct or m:ef_construct:plain, got {text!r}")
    m, ef_construct = _ints("--grid", ",".join(parts[:2]))
    return HnswParams(m, ef_construct), len(parts) == 2


def _ints(flag: str, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}: comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{flag}: comma-separated integers >= 1, got {value!r}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recmesh scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("derive", help="a var of N items, synthetic ones mixed (or copied) from a real var's catalog")
    d.add_argument("--base-var", type=Path, required=True, help="the real var (read only)")
    d.add_argument("--items", type=int, required=True, help="items in the derived catalog (>= the base's)")
    d.add_argument("--out-var", type=Path, required=True, help="the new var (must not hold a catalog)")
    d.add_argument("--model", choices=list(MODELS), default="mix",
                   help="mix: each synthetic item a mix of 2-3 real items (default); copies: a jittered copy of one")
    d.add_argument("--jitter", type=float, default=None,
                   help="noise norm in real nearest-neighbour distances (per space; default: mix 0.25, copies 0.5)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--m", type=int, default=None, help="HNSW m (default: RECMESH_INDEX_HNSW_M, else the chosen)")
    d.add_argument("--ef-construct", type=int, default=None, help="HNSW ef_construct (default: as --m)")
    r = sub.add_parser("recall", help="recall@100 of a var's shard against exact search, per source and ef")
    r.add_argument("--var", type=Path, required=True)
    r.add_argument("--ef", default="32,64,128,256", help="search ef values (comma-separated)")
    r.add_argument("--queries", type=int, default=300, help="queries per source")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--exact-queries", type=int, default=None,
                   help="queries per source through Qdrant's exact search (default: all; it is slow at 1 M)")
    r.add_argument("--grid", default="",
                   help="HNSW m:ef_construct to build and compare, e.g. 8:64,16:100,32:200; m:ef_construct:plain "
                        "stores INTEREST without the norm-completing component (as shards before it)")
    r.add_argument("--local-max-items", type=int, default=100_000,
                   help="qdrant-client local mode beside Edge up to this many items")
    c = sub.add_parser("models", help="recall@100 of vector-only shards of each synthetic model, from a real var")
    c.add_argument("--var", type=Path, required=True, help="the real var (read only)")
    c.add_argument("--items", type=int, default=100_000, help="items in each synthetic set")
    c.add_argument("--base-items", default="1000,9742",
                   help="real items each set is derived from (a random subset; comma-separated)")
    c.add_argument("--model", default="mix,copies", help="synthetic models (comma-separated: mix, copies)")
    c.add_argument("--jitter", type=float, default=None, help="noise in nearest-neighbour distances (default: "
                   "each model's)")
    c.add_argument("--grid", default="16:100", help="HNSW m:ef_construct per set (comma-separated)")
    c.add_argument("--ef", default="128,256,512", help="search ef values (comma-separated)")
    c.add_argument("--queries", type=int, default=300, help="queries per source")
    c.add_argument("--seed", type=int, default=0)
    for p in (d, r, c):
        p.add_argument("--out", type=Path, default=REPO / "results" / "scale", help="JSON goes here")
    p = sub.add_parser("plot", help="results/scale/recall-*.json into one PNG")
    p.add_argument("--results", type=Path, default=REPO / "results" / "scale")
    p.add_argument("--png", type=Path, default=REPO / "results" / "scale" / "scale.png")
    args = parser.parse_args(argv)
    if args.command == "plot":
        found = [json.loads(f.read_text()) for f in sorted(args.results.glob("recall-*.json"))]
        if not found:
            parser.error(f"--results: no recall-*.json in {args.results}")
        plot(found, args.png)
        (args.results / "scale.md").write_text(report(args.results))
        print(report(args.results))
        print(f"wrote {args.png} and {args.results / 'scale.md'}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        _run(parser, args)
    except ShardInUse as exc:
        raise SystemExit(f"recmesh scale {args.command}: {exc}") from None


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command == "derive":
        jitter = MODELS[args.model] if args.jitter is None else args.jitter
        if jitter < 0:
            parser.error(f"--jitter must be >= 0, got {jitter}")
        try:
            env = hnsw_params()
        except ValueError as exc:
            parser.error(str(exc))
        hnsw = HnswParams(args.m or env.m, args.ef_construct or env.ef_construct, env.full_scan_threshold_kb)
        result = derive(args.base_var, args.out_var, args.items, jitter, args.seed, hnsw, args.model)
        path = args.out / f"derive-{args.items}.json"
    elif args.command == "models":
        try:
            efs = _ints("--ef", args.ef)
            bases = _ints("--base-items", args.base_items)
            grid = [grid_entry(pair)[0] for pair in args.grid.split(",") if pair]
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
        models = [m for m in args.model.split(",") if m]
        unknown = sorted(set(models) - set(MODELS))
        if unknown or not models:
            parser.error(f"--model: comma-separated {', '.join(MODELS)}, got {args.model!r}")
        if not grid:
            parser.error("--grid: at least one m:ef_construct")
        if args.jitter is not None and args.jitter < 0:
            parser.error(f"--jitter must be >= 0, got {args.jitter}")
        result = compare_models(args.var, args.items, bases, models, args.jitter, grid, efs, args.queries, args.seed)
        path = args.out / f"models-{args.items}.json"
    else:
        try:
            efs = _ints("--ef", args.ef)
            grid = [grid_entry(pair) for pair in args.grid.split(",") if pair]
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
        result = recall(args.var, efs, args.queries, args.seed, args.local_max_items, grid, args.exact_queries)
        path = args.out / f"recall-{result['items']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("grid", "shard", "sets")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
