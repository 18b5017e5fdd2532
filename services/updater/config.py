from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from recmesh.common import limits
from recmesh.common.config import ServiceSettings
from recmesh.common.paths import var_paths
from recmesh.events import weights
from recmesh.models.ranking.scorer import start_params_dir


class UpdaterSettings(ServiceSettings, weights.EventWeightsSetting):
    model_config = SettingsConfigDict(env_prefix="RECMESH_UPDATER_")

    port: int = 50064
    # sqlite: the log in a SQLite file in WAL mode, state in memory (rebuilt from the log at
    # start) - one replica. redis: log (a Redis Stream) and state in a Redis server shared by
    # any number of replicas (recmesh/events/stores.py).
    store: Literal["sqlite", "redis"] = "sqlite"
    # Default: the var's, $RECMESH_VAR/updater/events.sqlite (recmesh/common/paths.py).
    log_path: Path = Field(default_factory=lambda: var_paths().event_log)
    # The stored business rules (sqlite store; recmesh/events/rulestore.py): a file of their own
    # beside the log. Default: rules.sqlite in log_path's folder. The redis store keeps them in
    # its Redis, shared by the replicas.
    rules_path: Path | None = None
    # The experiments (sqlite store; recmesh/events/rulestore.py) and their outcomes (answers
    # shown under one joined with feedback: recmesh/experiments/outcomes.py). Defaults:
    # experiments.sqlite and outcomes.sqlite in log_path's folder. The redis store keeps both in
    # its Redis, shared by the replicas (outcomes: recmesh/experiments/outcomes_redis.py).
    experiments_path: Path | None = None
    outcomes_path: Path | None = None
    # The guardrail (services/updater/experiments.py): the running experiment is checked every
    # guardrail_s; a variant whose primary metric is worse than the control's with the whole
    # guardrail_level interval of the difference below zero, both arms having at least
    # guardrail_min_users users, stops the experiment. report_level: the reports' intervals.
    guardrail_s: float = Field(default=5.0, gt=0)
    guardrail_min_users: int = Field(default=100, ge=2)
    guardrail_level: float = Field(default=0.99, gt=0, lt=1)
    report_level: float = Field(default=0.95, gt=0, lt=1)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "recmesh"
    # How long an event_id is remembered for idempotency in Redis (SQLite: forever).
    dedupe_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    # Redis only: on first start with an empty stream, import this SQLite log (from `recmesh bootstrap`).
    seed_log: Path | None = None
    # Per-user state limits.
    recent_items: int = Field(default=200, ge=1)
    # Narrows limits.SEEN_ITEMS, never widens it (retrieval accepts that many excluded ids).
    seen_items: int = Field(default=limits.SEEN_ITEMS, ge=1)
    recent_queries: int = Field(default=20, ge=1)
    # Items hidden or disliked remembered per user (never shown again); narrows limits.HIDDEN_ITEMS.
    hidden_items: int = Field(default=limits.HIDDEN_ITEMS, ge=1)
    default_max_recent: int = Field(default=50, ge=1)

    @field_validator("seen_items", "hidden_items")
    @classmethod
    def _within_shared_limit(cls, value: int, info) -> int:
        constant = {"seen_items": "SEEN_ITEMS", "hidden_items": "HIDDEN_ITEMS"}[info.field_name]
        return limits.at_most(value, getattr(limits, constant), constant)
    # Online learning of the ranker (services/updater/learning.py and joiner.py,
    # recmesh/models/ranking/training.py).
    learn: bool = True
    # Where published versions go (the newest is served after a restart); the learner starts
    # from the newest there, else from the newest start version: the var's own blend from
    # `recmesh train` ($RECMESH_VAR/models/served/params) when it has one, else the shipped ones.
    # (`recmesh train` retires the versions learned online for the model it replaces.)
    params_dir: Path = Field(default_factory=lambda: var_paths().ranker_params)  # $RECMESH_VAR/ranker/params
    shipped_params_dir: Path = Field(default_factory=lambda: start_params_dir())
    learn_interval_s: float = Field(default=0.5, gt=0)
    # Feedback joins an impression shown at most this long before it.
    join_window_s: float = Field(default=1800.0, gt=0)
    max_impression_items: int = Field(default=1000, ge=1)
    max_impressions_per_call: int = Field(default=1000, ge=1)
