from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from recmesh.common.config import ServiceSettings
from recmesh.models.ranking.scorer import start_params_dir


class RankerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECMESH_RANKER_")

    port: int = 50063
    # Folder of versioned parameter files (<version>.json); the newest by version name is served
    # until the updater streams another. Default: the var's own blend from `recmesh train`
    # ($RECMESH_VAR/models/served/params) when it has one, else the shipped versions.
    params_dir: Path = Field(default_factory=lambda: start_params_dir())
    max_candidates: int = Field(default=2000, ge=1)
    max_reasons: int = Field(default=2, ge=1)
    # The updater's WatchParameters stream (online-learned versions); empty: shipped params only.
    updater_addr: str = "127.0.0.1:50064"
    # Share of replies where one slot shows a candidate from below the top k, chosen uniformly
    # (logged with its propensity), so that learning does not see only its own choices.
    exploration: float = Field(default=0.05, ge=0.0, le=1.0)
    # Parameter versions pinned by requests (RankRequest.parameters_version: an experiment's
    # variant) kept loaded, least recently used out first; a version not kept is loaded again
    # from params_dir or the updater (Updater.GetParameters) on its next request.
    pinned_versions: int = Field(default=4, ge=1)
    # Diversity (maximal marginal relevance) re-ranks this many times k of the best candidates.
    mmr_pool_factor: int = Field(default=3, ge=1)
