"""OpenTelemetry tracing across the hops: the gRPC server and client interceptors of
opentelemetry-instrumentation-grpc carry the trace context from the gateway to every service
(and from the encoder to Triton). Off by default - no provider, no interceptors, no cost;
"console" prints spans, "otlp" exports them (OTEL_EXPORTER_OTLP_ENDPOINT, the standard variable)."""

from __future__ import annotations

from typing import Literal

Exporter = Literal["off", "console", "otlp"]
_enabled = False


def setup(service: str, exporter: Exporter) -> None:
    global _enabled
    if exporter == "off":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": f"recmesh-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _enabled = True


def server_interceptors() -> list:
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list:
    """For grpc.aio channels to other services."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return aio_client_interceptors()
