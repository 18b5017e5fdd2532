from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from recmesh.common.config import ServiceSettings

_SHIPPED_PARAMS = Path(__file__).parent / "params"


class RankerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECMESH_RANKER_")

    port: int = 50063
    # Folder of versioned parameter files (<version>.json); the newest by version name is served.
    params_dir: Path = _SHIPPED_PARAMS
    max_candidates: int = Field(default=2000, ge=1)
    max_reasons: int = Field(default=2, ge=1)
