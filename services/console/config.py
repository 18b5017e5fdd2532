from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from recmesh.common.config import ServiceSettings


class ConsoleSettings(ServiceSettings):
    """The console: an HTTP process (aiohttp) in front of the gateway's public API, for people
    operating the mesh. Its pages are admin scope: see api_keys."""

    model_config = SettingsConfigDict(env_prefix="RECMESH_CONSOLE_")

    # HTTP, not gRPC: the page, its JSON endpoints, /healthz and /readyz.
    port: int = 8080
    gateway_addr: str = "127.0.0.1:50060"
    # The bearer token the console shows the gateway: a key with the `admin` scope (GetUserProfile)
    # and `recommend` (Recommend, SimilarItems); empty: the gateway is open (development).
    gateway_token: str = Field(default="", repr=False)
    # Who may open the console: key lines `sha256:<hex> <scopes> <name>` (the gateway's format,
    # recmesh make-key), from a file and/or this variable (';'-separated); a key needs the
    # `admin` scope. A browser logs in with HTTP Basic (any user name, the token as password),
    # a script sends `Authorization: Bearer <token>`. None given: the console is open - for a
    # laptop, never for a deployment.
    api_keys_file: Path | None = None
    api_keys: str = Field(default="", repr=False)
    # Deadlines of the console's gRPC calls to the gateway, seconds. Recommend and SimilarItems
    # keep the gateway's own budget inside this; the rest is for a slow network.
    call_timeout_s: float = Field(default=2.0, gt=0)
    # Live numbers: the gateway's Prometheus endpoint (http://host:port/metrics); empty: the
    # live section says it is not configured.
    gateway_metrics_url: str = ""
    # Freshness of the ranker's parameters: the ranker's Prometheus endpoint; empty: versions
    # are shown without their age.
    ranker_metrics_url: str = ""
    scrape_interval_s: float = Field(default=5.0, gt=0)
    scrape_timeout_s: float = Field(default=2.0, gt=0)
    # Throughput, p99 and degraded share are over this window (at least two scrapes).
    live_window_s: float = Field(default=60.0, gt=0)
    # Scrapes kept for the live plot.
    live_history: int = Field(default=120, ge=2)
    # Recommendations per list on the user page (1..the gateway's max_k).
    default_k: int = Field(default=10, ge=1, le=100)

    @field_validator("gateway_metrics_url", "ranker_metrics_url")
    @classmethod
    def _http_url(cls, value: str, info) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{info.field_name}: must be an http:// or https:// URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def _windows(self):
        if self.max_connection_age_s:
            raise ValueError("max_connection_age_s: a gRPC server setting; the console serves HTTP")
        if self.live_window_s < self.scrape_interval_s:
            raise ValueError(f"live_window_s ({self.live_window_s}) must be at least scrape_interval_s "
                             f"({self.scrape_interval_s})")
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"api_keys_file: no file at {self.api_keys_file}")
        return self
