"""HNSW parameters of the item index, in the field's terms: `m` (links per node) and
`ef_construct` (candidates while building) are fixed when a shard or collection is built;
`ef` (candidates while searching, Qdrant's `hnsw_ef`) is the retrieval service's setting
(RECMESH_RETRIEVAL_HNSW_EF). Qdrant searches a segment whose vectors take fewer than
`full_scan_threshold_kb` KiB exactly (no graph).

The defaults were chosen on the real embeddings (MovieLens, 9,742 items) and checked at 100 k
items by `recmesh scale` (docs/scaling.md, "Catalog scale"): with search ef 256, recall@100
against exact search >= 0.95 for every source the retrieval queries. The build
reads them from the environment (RECMESH_INDEX_HNSW_M, _EF_CONSTRUCT,
_FULL_SCAN_THRESHOLD_KB); the catalog's manifest (catalog/BUILD.json) and the shard's
metadata record the values it was built with."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RECMESH_INDEX_HNSW_"


@dataclass(frozen=True)
class HnswParams:
    """Build-time HNSW parameters. m: links per node (>= 2); ef_construct: candidates kept
    while inserting (>= 4); full_scan_threshold_kb: segments below this many KiB of a vector
    are searched exactly (Qdrant's unit)."""

    m: int = 16
    ef_construct: int = 100
    full_scan_threshold_kb: int = 10_000

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class HnswSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    m: int = Field(default=HnswParams.m, ge=2, le=128)
    ef_construct: int = Field(default=HnswParams.ef_construct, ge=4, le=4096)
    full_scan_threshold_kb: int = Field(default=HnswParams.full_scan_threshold_kb, ge=0)


def hnsw_params() -> HnswParams:
    """The build parameters from the environment (defaults: HnswParams'). ValueError naming the
    variable for a bad value."""
    try:
        s = HnswSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = f"{ENV_PREFIX}{str(first['loc'][0]).upper()}"
        raise ValueError(f"{name}: {first['msg']}, got {first.get('input')!r}") from None
    return HnswParams(s.m, s.ef_construct, s.full_scan_threshold_kb)
