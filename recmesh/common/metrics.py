"""Prometheus metrics every service exports: RPC counts by method and status, latency
histograms by method, and what is being served (versions); services add their own (degraded
reasons, commit sizes, published versions). Exposed over HTTP on `metrics_port` (0 = off)."""

from __future__ import annotations

import asyncio
import inspect
import time

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from recmesh.common.handlers import behaviour_of, is_asyncio, with_behaviour

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
    """Counts and times every call, unary and streaming (a stream such as
    Updater.WatchParameters is counted, with its status, and timed when it ends), and keeps the
    in-flight gauge. The wrapped handler of a method is made once and reused while the inner
    handler is the same object (a servicer's registered one is), and the metrics' labelled
    series are looked up once: per call only the counting is left."""

    def __init__(self, service: str):
        self._service = service
        self._in_flight = IN_FLIGHT.labels(service)
        # method name -> (the inner handler, its wrapped one); known methods only.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full_method = handler_call_details.method
        cached = self._wrapped.get(full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, full_method.rsplit("/", 1)[-1])
        self._wrapped[full_method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        inner = behaviour_of(handler)
        if not is_asyncio(inner):
            return handler  # not an asyncio handler: left as it is
        generator = inspect.isasyncgenfunction(inner)
        service, in_flight = self._service, self._in_flight
        latency = RPC_LATENCY.labels(service, method)
        counts: dict[str, Counter] = {}  # status code name -> its series

        def begin() -> float:
            in_flight.inc()
            return time.perf_counter()

        def end(started: float, context, failed: BaseException | None) -> None:
            in_flight.dec()
            code = _code_name(context) if failed is None or context.code() is not None else "UNKNOWN"
            if isinstance(failed, (asyncio.CancelledError, GeneratorExit)) and context.code() is None:
                code = "CANCELLED"  # the client went away (a watcher disconnecting)
            count = counts.get(code)
            if count is None:
                count = counts[code] = RPCS.labels(service, method, code)
            count.inc()
            latency.observe(time.perf_counter() - started)

        if generator:
            async def behaviour(request, context):
                started, failed = begin(), None
                try:
                    async for response in inner(request, context):
                        yield response
                except BaseException as exc:
                    failed = exc
                    raise
                finally:
                    end(started, context, failed)
        else:
            async def behaviour(request, context):
                started, failed = begin(), None
                try:
                    return await inner(request, context)
                except BaseException as exc:
                    failed = exc
                    raise
                finally:
                    end(started, context, failed)

        return with_behaviour(handler, behaviour, handler.request_deserializer)
