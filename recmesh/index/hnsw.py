"""HNSW parameters of the item index, in the field's terms: `m` (links per node) and
`ef_construct` (candidates while building) are fixed when a shard or collection is built;
`ef` (candidates while searching, Qdrant's `hnsw_ef`) is chosen by the build from the catalog's
size (`search_ef`) and recorded with the shard; the retrieval service searches with it unless
RECMESH_RETRIEVAL_HNSW_EF overrides it. Qdrant searches a segment whose vectors take fewer than
`full_scan_threshold_kb` KiB exactly (no graph).

The defaults were chosen on the real embeddings (MovieLens, 9,742 items) and checked by
`recmesh scale` (docs/scaling.md, "Catalog scale") at 100 k items and at 1 M's ratio of
synthetic to real items (100 k mixed from 1,000 real ones; a 1 M mix catalog is not yet
measured): m 16 / ef_construct 100 with search ef 256 holds recall@100 against exact search
>= 0.95 for every source the retrieval queries up to 100 k items; at ~100 synthetic items per
real one the text source needs ef 1024. The build reads m and ef_construct from the environment
(RECMESH_INDEX_HNSW_M, _EF_CONSTRUCT, _FULL_SCAN_THRESHOLD_KB); the catalog's manifest
(catalog/BUILD.json) and the shard's metadata record the values it was built with and its
search ef."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RECMESH_INDEX_HNSW_"
# Search ef by catalog size, (most items, ef), the first that holds the catalog: recall@100 >= 0.95
# for every source measured at 9,742 and 100 k items with 256, and at the ratio of 1 M (~100
# synthetic items per real one) only with 1024 (text: 0.94 at 512). Between 100 k and 1 M
# nothing was measured: the larger ef from 200 k.
SEARCH_EF_BY_ITEMS = ((200_000, 256), (None, 1024))
# A shard whose metadata records no search ef (built before it was recorded).
DEFAULT_SEARCH_EF = 256


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


def search_ef(items: int) -> int:
    """The search ef (candidates while searching) a catalog of `items` items is built to be
    searched with: SEARCH_EF_BY_ITEMS. ValueError for a negative count."""
    if items < 0:
        raise ValueError(f"items must be >= 0, got {items}")
    return next(ef for most, ef in SEARCH_EF_BY_ITEMS if most is None or items <= most)


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
