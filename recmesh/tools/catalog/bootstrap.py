"""`recmesh bootstrap`: the bundled MovieLens as the var's catalog - one more source of the
importer (`recmesh.tools.catalog.importer`): its items (genres, frequent tags) and ratings go
through the same apply as `recmesh import`: text vectors (progress bar) -> Qdrant Edge shard
with popularity in the payload, the ratings as the updater's first events, the catalog snapshot
(catalog/items.jsonl).

Cached: a second run with the same inputs, models and recipe does nothing."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from recmesh.common.catalog import ITEM_TEXT_RECIPE, item_text
from recmesh.common.errors import InvalidArgument
from recmesh.common.local import REPO
from recmesh.common.paths import served_artifact, served_text_model, text_model_name, var_dir, var_paths
from recmesh.common.validation import check_item
from recmesh.tools.catalog import movielens
from recmesh.tools.catalog.importer import (
    IMPORT_RECIPE,
    EventStaging,
    ImportFailed,
    TextModelSpec,
    apply,
    catalog_lock,
    check_shard_free,
    describe,
    peak_rss_mib,
    text_digest,
)
from recmesh.v1 import common_pb2

log = logging.getLogger("recmesh.bootstrap")
DEFAULT_DATA = REPO / "data" / "ml-latest-small"
FILES = ("movies.csv", "tags.csv", "ratings.csv")


def text_key(data: Path, model_dir: Path, model_name: str, variant: str) -> str:
    """What the language-model vectors of the item texts depend on: the data, the model's
    config and whole weights (a fine-tuned model differs from its base in the weights only), the
    runtime (also the name of the text-vector cache of bootstraps before the importer's
    content-addressed one: still read, once)."""
    from recmesh.models.text import model_key

    digest = hashlib.sha256(f"{ITEM_TEXT_RECIPE}|{model_name}|{variant}".encode())
    for name in FILES:
        path = data / name
        if path.is_file():
            digest.update(path.read_bytes())
    digest.update(model_key(model_dir).encode())
    return digest.hexdigest()[:16]


def input_key(text: str, interest_model: Path) -> str:
    """... and the catalog, also on the interest model that places the items, the shard layout,
    the import recipe and the HNSW parameters (`recmesh.index.hnsw`)."""
    from recmesh.index.hnsw import hnsw_params
    from recmesh.index.layout import LAYOUT

    hnsw = sorted(hnsw_params().as_dict().items())
    return hashlib.sha256(f"{text}|{LAYOUT}|{IMPORT_RECIPE}|{hnsw}".encode() + interest_model.read_bytes()
                          ).hexdigest()[:16]


def _legacy_vectors(path: Path, items: list[common_pb2.Item]) -> dict[bytes, np.ndarray]:
    """The text vectors an earlier bootstrap cached in one matrix aligned with the MovieLens
    items (text-<key>.npy), by text digest; empty when there is none that fits."""
    if not path.is_file():
        return {}
    vectors = np.load(path)
    if len(vectors) != len(items):
        return {}
    return {text_digest(item_text(it)): vec for it, vec in zip(items, vectors, strict=True)}


def bootstrap(data: Path, var: Path, model_dir: Path, model_name: str, threads: int, force: bool = False,
              variant: str = "onnx-fp32", interest_model: Path | None = None) -> dict:
    """interest_model: what places the items (default: the var's own, else the shipped one).
    Returns BUILD.json's fields and cached: whether it was there already."""
    paths = var_paths(var)
    interest_model = served_artifact(var) if interest_model is None else interest_model
    spec = TextModelSpec(model_dir, model_name, variant, threads)
    texts_key = text_key(data, model_dir, model_name, variant)
    key = input_key(texts_key, interest_model)
    manifest_path = paths.catalog / "BUILD.json"

    def cached() -> dict | None:
        if force or not (manifest_path.is_file() and paths.shard_dir.is_dir() and paths.catalog_items.is_file()):
            return None
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("input_key") != key:
            return None
        print(f"catalog {manifest['key']} is already built in {paths.shard_dir} ({manifest['items']} items): "
              "reusing it")
        return manifest | {"cached": True}

    if (manifest := cached()) is not None:
        return manifest
    with catalog_lock(paths.catalog, wait=True):  # another bootstrap of this var may be building it
        if (manifest := cached()) is not None:
            return manifest
        check_shard_free(paths.shard_dir)
        catalog = movielens.load(data)
        print(f"loaded {len(catalog.items)} items and {len(catalog.ratings)} ratings from {data}")
        for item in catalog.items:  # as every stage checks an item
            try:
                check_item(item, "item")
            except InvalidArgument as exc:
                raise ImportFailed(f"{data / 'movies.csv'}: movie {item.item_id}: {exc}") from None
        staging = EventStaging(paths.catalog)
        try:
            # Ids as bootstraps always gave them: a var bootstrapped before gains no duplicates.
            rate = common_pb2.EventType.EVENT_TYPE_RATE
            rows = [(f"ml-{r.user_id}-{r.item_id}", r.user_id, r.item_id, rate, "", r.rating, r.timestamp_ms)
                    for r in catalog.ratings]
            staging.add(rows)
            staging.seal()
            legacy = paths.catalog / f"text-{texts_key}.npy"
            files = {"items": {"path": str(data / "movies.csv"), "format": "movielens", "columns": {},
                               "rows": len(catalog.items), "kept": len(catalog.items), "dropped": {}},
                     "events": {"path": str(data / "ratings.csv"), "format": "movielens", "columns": {},
                                "rows": len(rows), "kept": len(rows), "dropped": {}}}
            report = apply(var, catalog.items, staging, spec, interest_model, {"var": str(var), "files": files},
                           seed_vectors=_legacy_vectors(legacy, catalog.items),
                           build_extra={"input_key": key, "source": str(data)}, force=force)
        finally:
            staging.close()
        legacy.unlink(missing_ok=True)  # its vectors are in the content-addressed cache now
        report["seconds"] = report["seconds_apply"]
        report["peak_rss_mib"] = peak_rss_mib()
        (paths.catalog / "IMPORT.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(describe(report))
    manifest = json.loads(manifest_path.read_text())
    print(f"catalog {manifest['key']} built in {manifest['total_seconds']} s "
          f"(encoding {report['catalog']['encode_seconds']} s, {report['events']['new']} events seeded)")
    return manifest | {"cached": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens ml-latest-small folder")
    parser.add_argument("--var", type=Path, default=None,
                        help="where shards and logs live (default: $RECMESH_VAR, else var/ in the repo)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="Hugging Face model folder (default: the var's own text model from `recmesh train`, "
                             "else the bundled MiniLM)")
    parser.add_argument("--model-name", default=None, help="the text model's name in versions (default: from the "
                        "folder: all-MiniLM-L6-v2, or a tuned model's version)")
    parser.add_argument("--variant", default="onnx-fp32", help="text model runtime (same vectors as the served one)")
    parser.add_argument("--threads", type=int, default=2, help="threads for the one-off encoding")
    parser.add_argument("--interest-model", type=Path, default=None,
                        help="the served interest model (places the items in the catalog's space; default: "
                             "the var's own from `recmesh train`, else the shipped one)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")


def run(args: argparse.Namespace) -> dict:
    var = var_dir() if args.var is None else args.var
    # The var's own text model (`recmesh train` installs a fine-tuned one), else the bundled one.
    model_dir = served_text_model(var) if args.model_dir is None else args.model_dir
    try:
        return bootstrap(args.data, var, model_dir, args.model_name or text_model_name(model_dir), args.threads,
                         args.force, args.variant, args.interest_model)
    except ImportFailed as exc:
        raise SystemExit(f"recmesh bootstrap: {exc}") from None
