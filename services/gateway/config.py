from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from recmesh.common import limits
from recmesh.common.config import ServiceSettings
from recmesh.events import weights

# Gateway settings that narrow a limit every stage shares: (ceiling, its name in limits.py).
_SHARED_LIMITS = {
    "max_query_chars": (limits.QUERY_CHARS, "QUERY_CHARS"),
    "max_session_events": (limits.SESSION_EVENTS, "SESSION_EVENTS"),
    "max_events_per_call": (limits.EVENTS_PER_CALL, "EVENTS_PER_CALL"),
    "max_items_per_upsert": (limits.ITEMS_PER_CALL, "ITEMS_PER_CALL"),
    "max_filter_values": (limits.FILTER_VALUES, "FILTER_VALUES"),
}


class GatewaySettings(ServiceSettings, weights.EventWeightsSetting):
    model_config = SettingsConfigDict(env_prefix="RECMESH_GATEWAY_")

    port: int = 50060
    # Bearer tokens (recmesh/common/auth.py): key lines `sha256:<hex> <scopes> <name>` from a
    # file (a mounted secret) and/or this variable (lines separated by ';'). None given: the
    # public API is open - for a laptop, never for a deployment.
    api_keys_file: Path | None = None
    api_keys: str = ""
    # Per-client token bucket (calls/s, burst); 0 = no limit.
    rate_limit_per_s: float = Field(default=0.0, ge=0)
    rate_limit_burst: float = Field(default=50.0, ge=1)
    updater_addr: str = "127.0.0.1:50064"
    encoder_addr: str = "127.0.0.1:50061"
    retrieval_addr: str = "127.0.0.1:50062"
    ranker_addr: str = "127.0.0.1:50063"

    # Soft real-time budget of a Recommend; a shorter client deadline wins.
    budget_ms: float = Field(default=100.0, gt=0)
    # Kept back from every stage for the gateway's own work and the reply.
    reply_margin_ms: float = Field(default=4.0, ge=0)
    # A stage with less time than this left is skipped, not called.
    min_stage_ms: float = Field(default=2.0, ge=0)
    # Per-stage caps, so one slow stage cannot eat the whole budget.
    user_state_cap_ms: float = Field(default=15.0, gt=0)
    history_cap_ms: float = Field(default=15.0, gt=0)
    encoder_cap_ms: float = Field(default=50.0, gt=0)
    retrieval_cap_ms: float = Field(default=30.0, gt=0)
    ranker_cap_ms: float = Field(default=25.0, gt=0)
    # SimilarItems: the anchor item's lookup (retrieval GetItems; a free-text anchor's encoding
    # has encoder_cap_ms).
    anchor_cap_ms: float = Field(default=15.0, gt=0)
    # Writes (TrackEvents, catalog) are not on the real-time path but still bounded.
    write_timeout_s: float = Field(default=10.0, gt=0)

    default_k: int = Field(default=10, ge=1)
    max_k: int = Field(default=100, ge=1)
    # Per retrieval source (interest, session, query): up to three times this many are ranked.
    # 100 keeps the served top 10 identical to full ranking (results/eval/served.json) at half
    # the retrieval time of 200.
    candidates: int = Field(default=100, ge=1)
    history_items: int = Field(default=50, ge=1)
    affinity_items: int = Field(default=20, ge=1)
    # Admission: Recommends in progress at most; beyond, the popular list is answered at once.
    max_in_flight: int = Field(default=16, ge=1)
    # Adaptive shedding (services/gateway/shedding.py): while the mesh is slow, a share of
    # Recommends skips the ranker, then the encoder, then everything (the popular list) - just
    # enough that at most shed_slow_share of the answered ones use more than shed_slow of their
    # budget (a tail well inside it: measured, 0.6 / 2 % keeps >= 99.5 % in time on a saturated
    # host, where 0.75 / 1 % did not). shed_slow 0 = off.
    shed_slow: float = Field(default=0.6, ge=0, le=1)
    shed_slow_share: float = Field(default=0.02, gt=0, lt=1)
    # A Recommend arriving with less of its client's deadline left gets the popular list at once.
    min_admit_ms: float = Field(default=15.0, ge=0)
    # Impressions buffered for the updater at most; beyond, they are dropped.
    impression_queue: int = Field(default=256, ge=0)
    # A batch of impressions leaves this long after its first one (or once 64 wait): one
    # LogImpressions call per batch, not per Recommend - each call costs the gateway and the
    # updater about as much CPU as a pipeline stage. Training signal only: feedback naming the
    # request waits for its impression on the updater (services/updater/joiner.py).
    impression_flush_ms: float = Field(default=250.0, ge=0)
    # Narrow recmesh/common/limits.py's (what every stage accepts), never widen: checked at start.
    max_query_chars: int = Field(default=limits.QUERY_CHARS, ge=1)
    max_filter_values: int = Field(default=limits.FILTER_VALUES, ge=0)
    max_events_per_call: int = Field(default=limits.EVENTS_PER_CALL, ge=1)
    # A Recommend's inline session_events (a guest's recent events) at most.
    max_session_events: int = Field(default=limits.SESSION_EVENTS, ge=0)
    max_items_per_upsert: int = Field(default=256, ge=1)

    @field_validator(*_SHARED_LIMITS)
    @classmethod
    def _within_shared_limits(cls, value: int, info) -> int:
        ceiling, constant = _SHARED_LIMITS[info.field_name]
        return limits.at_most(value, ceiling, constant)

    # Stored business rules (services/gateway/stored_rules.py): listed from the updater this
    # often - a rule put through another gateway replica applies here within it (one put
    # through this gateway at once).
    rules_refresh_s: float = Field(default=0.5, gt=0)
    # When business rules re-order a ranked answer (boost, promote), its diversity is chosen here
    # over the boosted scores (services/gateway/rules.py): maximal marginal relevance over this
    # many times k of the best. Keep it equal to the ranker's RECMESH_RANKER_MMR_POOL_FACTOR.
    mmr_pool_factor: int = Field(default=3, ge=1)
    # SimilarItems' blend (recmesh/models/similar.py; chosen on MovieLens, docs/similar.md): a
    # warm anchor's similarity is this share behaviour (cosine in the catalog space) and the
    # rest text (cosine of the language-model vectors); the user's interest (cosine with it)
    # is added with the second weight - enough to re-order the anchor's neighbours, not to
    # replace them. 0: no re-ordering.
    similar_behaviour_weight: float = Field(default=0.6, ge=0, le=1)
    similar_interest_weight: float = Field(default=0.3, ge=0, le=10)

    popular_pool: int = Field(default=500, ge=1)
    popular_refresh_s: float = Field(default=30.0, gt=0)
    interest_cache_users: int = Field(default=100_000, ge=0)
    # Catalog items (metadata + vector) kept for users' histories, and for how long at most: an
    # item changed through another gateway replica reaches this one's histories within that.
    # 0 items or 0 s: every Recommend looks its history items up in retrieval.
    item_cache_items: int = Field(default=50_000, ge=0)
    item_cache_ttl_s: float = Field(default=60.0, ge=0)
    # A user's interest vector is reused, without calling the encoder, while the history it
    # came from is exactly the same (same events, same item vectors) - for at most this long,
    # which bounds how stale it can be after the interest model itself changes. 0: never.
    interest_reuse_s: float = Field(default=30.0, ge=0)
    # How old a user's last interest may be to stand in when the encoder is late, down or browned
    # out (also bounds how long it survives a deletion through another gateway replica).
    interest_standin_s: float = Field(default=600.0, ge=0)
    # Each user's seen items (services/gateway/seen.py), so that answers made without the
    # updater (shed, the anonymous fallback) still leave them out: for this many users, this
    # many ids in all (~110 bytes each), for at most this long after the updater last said - an
    # event tracked through another replica reaches such an answer within it. 0 users or 0 s:
    # off (shed answers then exclude only the request's ids; a late arrival asks the updater).
    seen_cache_users: int = Field(default=100_000, ge=0)
    seen_cache_ids: int = Field(default=500_000, ge=0)
    seen_cache_ttl_s: float = Field(default=60.0, ge=0)

    # A dislike pushes down the candidates like the disliked item (services/gateway/dislikes.py):
    # by dislike_push score units at cosine 1 between their catalog vectors, falling linearly to
    # 0 at dislike_similar_from (in this space an item's nearest neighbours are at 0.8-0.9, its
    # 99th percentile ~0.6); the user's newest dislikes_pushing dislikes push. 0 push: off.
    dislike_push: float = Field(default=4.0, ge=0, allow_inf_nan=False)
    dislike_similar_from: float = Field(default=0.6, ge=-1, lt=1)
    dislikes_pushing: int = Field(default=20, ge=0)
