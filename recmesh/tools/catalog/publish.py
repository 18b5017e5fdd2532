"""`recmesh publish-catalog`: copy the catalog built by `recmesh bootstrap` (a Qdrant Edge
shard) into a Qdrant server or cluster collection, created with the given shards and
replication factor - the retrieval service's `qdrant` backend serves it from there.

A collection already holding this catalog version is left as it is (the command can run in
every deployment's init Job); another version is replaced."""

from __future__ import annotations

import argparse
from pathlib import Path

from recmesh.common.paths import var_paths


def publish(shard_dir: Path, url: str, collection: str, shards: int, replication: int, batch: int = 256) -> dict:
    from tqdm import tqdm

    from recmesh.index.edge import EdgeItemStore
    from recmesh.index.layout import OlderLayout
    from recmesh.index.qdrant_server import QdrantServerStore, connect

    edge = EdgeItemStore.open(shard_dir)
    client = connect(url)
    try:
        total = edge.count()
        if client.collection_exists(collection):
            try:
                live = QdrantServerStore.open(client, collection)
            except OlderLayout:  # ours, of another layout: replaced below (anything else is refused)
                live = None
            if live is not None and live.version == edge.version and live.count() == total:
                print(f"{collection} already holds {edge.version} ({total} items): leaving it")
                return {"collection": collection, "version": edge.version, "items": total, "published": False}
            client.delete_collection(collection)
        server = QdrantServerStore.create(client, collection, edge.dim, edge.text_dim, edge.version, shards,
                                          replication, hnsw=edge.hnsw, search_ef=edge.search_ef)
        with tqdm(total=total, desc=f"publishing to {collection}", unit="item") as bar:
            for payloads, vectors, texts in edge.export(batch):
                bar.update(server.upsert(payloads, vectors, texts))
        return {"collection": collection, "version": edge.version, "items": server.count(), "published": True,
                "shards": shards, "replication": replication}
    finally:
        edge.close()
        client.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--var", type=Path, default=None,
                        help="where `recmesh bootstrap` built the catalog (default: $RECMESH_VAR, else var/)")
    parser.add_argument("--qdrant-url", required=True, help="http://host:6333 (gRPC on 6334), or path:DIR")
    parser.add_argument("--collection", default="recmesh-items")
    parser.add_argument("--shards", type=int, default=6, help="spread over the cluster's nodes")
    parser.add_argument("--replication", type=int, default=2, help="copies of each shard (survives a node loss)")


def run(args: argparse.Namespace) -> dict:
    return publish(var_paths(args.var).shard_dir, args.qdrant_url, args.collection, args.shards, args.replication)
