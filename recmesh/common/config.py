"""Typed service settings: environment variables first, then command-line flags."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses set their own env_prefix."""

    model_config = SettingsConfigDict(extra="forbid", cli_kebab_case=True)

    host: str = "127.0.0.1"
    port: int = 0
    # Seconds in-flight calls get to finish after SIGTERM.
    grace_s: float = 5.0
    # Clients are asked to reconnect after this long (0 = never), so that their calls spread
    # over the replicas behind a Service, new ones included (deploy/k8s sets it).
    max_connection_age_s: float = Field(default=0.0, ge=0)
    # Prometheus metrics over HTTP on this port; 0 = not exported.
    metrics_port: int = 0
    # OpenTelemetry spans: off, console, or otlp (to OTEL_EXPORTER_OTLP_ENDPOINT).
    trace_exporter: Literal["off", "console", "otlp"] = "off"
    log_level: str = "INFO"
    # Transport security (recmesh/common/transport.py; `make certs` makes a development CA).
    tls_cert_file: Path | None = None  # this service's certificate: served, and shown as a client
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None  # set: callers must present a certificate it signed (mTLS)
    tls_ca_file: Path | None = None  # set: calls to other services use TLS, trusting this CA
    # Set: internal services refuse calls without it; the gateway and ranker send it.
    internal_token: str = Field(default="", repr=False)

    @model_validator(mode="after")
    def _tls_files(self):
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "tls_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no file at {path}")
        return self


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], argv: list[str] | None = None) -> S:
    """Build settings from env and flags; on a bad value exit with a clear message."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return cls(_cli_parse_args=args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SystemExit(f"invalid {cls.__name__} configuration: {problems}") from None
