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
    # exact and slower. 256: recall@100 against exact search >= 0.95 for every source at 100 k
    # items (m 16, ef_construct 100; docs/scaling.md "Catalog scale"), where 128 gave 0.88 for
    # the interest source.
    hnsw_ef: int = Field(default=256, ge=1)
