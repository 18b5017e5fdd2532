from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from recmesh.common.config import ServiceSettings
from recmesh.common.paths import var_paths


class RetrievalSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECMESH_RETRIEVAL_")

    port: int = 50062
    # edge: a Qdrant Edge shard in this process (one node); qdrant: a Qdrant server or cluster
    # through qdrant-client (recmesh/index/qdrant_server.py).
    backend: Literal["edge", "qdrant"] = "edge"
    # The Qdrant Edge shard; `recmesh bootstrap` fills it (default: the var's, $RECMESH_VAR/catalog/qdrant).
    shard_dir: Path = Field(default_factory=lambda: var_paths().shard_dir)
    # The server backend: http://host:6333 (spoken to over gRPC on 6334); `recmesh
    # publish-catalog` creates and fills the collection.
    qdrant_url: str = "http://127.0.0.1:6333"
    collection: str = "recmesh-items"
    max_limit: int = Field(default=1000, ge=1)
    # HNSW search breadth (ef; Qdrant searches with max(ef, the hits asked for)): higher is more
    # exact and slower. Unset: the ef the catalog build chose for its size and recorded with the
    # shard (recmesh.index.hnsw.search_ef: 256 up to 200 k items, 1024 above, so recall@100
    # against exact search >= 0.95 for every source; docs/scaling.md "Catalog scale").
    hnsw_ef: int | None = Field(default=None, ge=1)
