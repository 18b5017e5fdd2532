from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from recmesh.common.config import ServiceSettings


class RetrievalSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECMESH_RETRIEVAL_")

    port: int = 50062
    # The Qdrant Edge shard; `recmesh bootstrap` fills it.
    shard_dir: Path = Path("var/catalog/qdrant")
    max_limit: int = Field(default=1000, ge=1)
    max_ids: int = Field(default=10000, ge=1)
    # HNSW search breadth: higher is more exact and slower.
    hnsw_ef: int = Field(default=128, ge=1)
