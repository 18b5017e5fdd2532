"""Prometheus metrics every service exports: RPC counts by method and status, latency
histograms by method, and what is being served (versions); services add their own (degraded
reasons, commit sizes, published versions). Exposed over HTTP on `metrics_port` (0 = off)."""

from __future__ import annotations

import time

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Milliseconds matter here: a Recommend's budget is 100 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                   2.5, 5.0)

RPCS = Counter("recmesh_rpc_requests_total", "RPCs handled", ["service", "method", "code"])
RPC_LATENCY = Histogram("recmesh_rpc_latency_seconds", "RPC handling time", ["service", "method"],
                        buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("recmesh_rpc_in_flight", "RPCs being handled", ["service"])
VERSION = Gauge("recmesh_serving_version_info", "What this process serves (value 1)", ["service", "component",
                                                                                         "version"])


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    if port:
        start_http_server(port, addr=host)


_current: dict[tuple[str, str], str] = {}


def set_version(service: str, component: str, version: str) -> None:
    """One version per component: the previous one's series is removed."""
    old = _current.get((service, component))
    if old is not None and old != version:
        VERSION.remove(service, component, old)
    _current[(service, component)] = version
    VERSION.labels(service, component, version).set(1)


def _code_name(context) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times unary calls; streams are counted when they end."""

    def __init__(self, service: str):
        self._service = service

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner, service = handler.unary_unary, self._service

        async def timed(request, context):
            started = time.perf_counter()
            IN_FLIGHT.labels(service).inc()
            failed = None
            try:
                return await inner(request, context)
            except BaseException as exc:
                failed = exc
                raise
            finally:
                IN_FLIGHT.labels(service).dec()
                code = _code_name(context) if failed is None or context.code() is not None else "UNKNOWN"
                RPCS.labels(service, method, code).inc()
                RPC_LATENCY.labels(service, method).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
