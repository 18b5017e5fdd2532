"""Run one grpc.aio service: health (SERVING only after warm-up), reflection,
graceful shutdown on SIGTERM/SIGINT (NOT_SERVING, drain, stop(grace))."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recmesh.common import tracing
from recmesh.common.channels import EXCLUSIVE_PORT, GRPC_OPTIONS, IDENTITY_ONLY
from recmesh.common.config import ServiceSettings, load_settings
from recmesh.common.heap import freeze_heap
from recmesh.common.logs import setup_logging
from recmesh.common.metrics import MetricsInterceptor, serve_metrics
from recmesh.common.transport import InternalTokenInterceptor, server_credentials
from recmesh.common.wire import ParseRequests


@dataclass
class Service:
    """What a service plugs into the runner."""

    name: str
    # Registers servicers and returns their full service names, e.g. "recmesh.v1.Encoder".
    register: Callable[[grpc.aio.Server], list[str]]
    warmup: Callable[[], Awaitable[None]] | None = None
    shutdown: Callable[[], Awaitable[None]] | None = None
    # Run after metrics and tracing (so refused calls are counted and traced), e.g. auth.
    interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    # Internal services refuse calls without the internal credential when one is configured.
    internal: bool = True


def server_interceptors(service: Service, settings: ServiceSettings) -> list[grpc.aio.ServerInterceptor]:
    """Outermost first: metrics and tracing see every call, refused ones included; then the
    internal credential and the service's own (auth); ParseRequests last, so request bytes that
    do not parse are INVALID_ARGUMENT (not grpc's UNKNOWN "Unexpected DecodeError") - counted,
    traced and authorised like any call, and never reaching the servicer."""
    internal = [InternalTokenInterceptor(settings.internal_token)] if service.internal and settings.internal_token \
        else []
    return [MetricsInterceptor(service.name), *tracing.server_interceptors(), *internal, *service.interceptors,
            ParseRequests()]


async def run_service(service: Service, settings: ServiceSettings) -> None:
    log = logging.getLogger(f"recmesh.{service.name}")
    # A client keeps one HTTP/2 connection to one replica behind a Kubernetes Service: a maximum
    # connection age makes clients reconnect now and then, so calls spread over new replicas.
    # (round_robin over a headless Service was tried: with grpcio 1.81 a channel to a restarted
    # peer stayed failed for >15 s, where pick_first is back within a second.)
    age = [("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
           ("grpc.max_connection_age_grace_ms", 5000)] if settings.max_connection_age_s > 0 else []
    internal = service.internal and bool(settings.internal_token)
    server = grpc.aio.server(options=GRPC_OPTIONS + IDENTITY_ONLY + EXCLUSIVE_PORT + age,
                             interceptors=server_interceptors(service, settings))
    service_names = service.register(server)
    serve_metrics(settings.metrics_port)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )

    async def set_status(status: int) -> None:
        for name in ("", *service_names):
            await health_servicer.set(name, status)

    await set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:  # in use (or not an address of this host): say which setting names it
        prefix = type(settings).model_config.get("env_prefix", "")
        raise SystemExit(f"{service.name}: cannot listen on {address} ({exc}): another process has it? "
                         f"set {prefix}PORT (or --port)") from None
    await server.start()
    log.info("listening", extra={"address": f"{settings.host}:{port}", "tls": credentials is not None,
                                 "mtls": settings.tls_client_ca_file is not None,
                                 "internal_credential": internal})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    warm = asyncio.ensure_future(service.warmup()) if service.warmup else None
    if warm is not None:
        done, _ = await asyncio.wait({warm, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if warm in done:
            warm.result()  # a failed warm-up ends the process with its error
        else:
            warm.cancel()
    if not stop.is_set():
        freeze_heap()  # what warm-up loaded lives as long as the process
        await set_status(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"services": service_names})
        await stop.wait()

    log.info("stopping", extra={"grace_s": settings.grace_s})
    await set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(settings.grace_s)
    if service.shutdown:
        await service.shutdown()
    log.info("stopped")


def main(name: str, settings_cls: type[ServiceSettings], service_factory: Callable[[Any], Service]) -> None:
    """The body of every `python -m services.<name>`: settings (env + flags, fail fast),
    JSON logs, then serve until SIGTERM."""
    settings = load_settings(settings_cls)
    setup_logging(name, settings.log_level)
    tracing.setup(name, settings.trace_exporter)  # before the service builds its client channels

    async def amain() -> None:
        # Built inside the loop: grpc.aio channels bind to the loop that creates them.
        await run_service(service_factory(settings), settings)

    asyncio.run(amain())
