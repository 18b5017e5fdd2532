"""TLS, mutual TLS and the internal credential, from files and settings.

- A service with tls_cert_file + tls_key_file serves TLS; with tls_client_ca_file as well, it
  requires a client certificate signed by that CA (mTLS).
- Its channels to other services use TLS when tls_ca_file is set (trusting that CA), presenting
  its own certificate as the client's.
- internal_token: internal services refuse calls without it (`x-recmesh-internal` metadata);
  the gateway and the ranker attach it to their calls. Health and reflection stay open, for
  probes."""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from recmesh.common.auth import refusal

INTERNAL_HEADER = "x-recmesh-internal"
# A Recommend carrying this metadata (value "1") is a preview, not shown to the user (the
# console): answered in full, but no impression is logged - an impression makes every item in
# it "shown and not chosen" for the user's next answers, so looking would change what is seen.
PREVIEW_HEADER = "x-recmesh-preview"
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def server_credentials(settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None:
        return None
    client_ca = _read(settings.tls_client_ca_file)
    return grpc.ssl_server_credentials([(_read(settings.tls_key_file), _read(settings.tls_cert_file))],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


def aio_channel(target: str, settings, options: list, interceptors=()) -> grpc.aio.Channel:
    """A channel to another service: TLS (with this service's certificate, for mTLS) when
    settings.tls_ca_file is set; the internal credential on every call when configured."""
    interceptors = [*interceptors, *internal_client_interceptors(settings.internal_token)]
    if settings.tls_ca_file is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(_read(settings.tls_ca_file), _read(settings.tls_key_file),
                                               _read(settings.tls_cert_file))
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._token = token

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        given = dict(details.invocation_metadata or ()).get(INTERNAL_HEADER, "")
        if not hmac.compare_digest(str(given), self._token):
            return refusal(grpc.StatusCode.UNAUTHENTICATED, f"{INTERNAL_HEADER}: internal calls only")
        return await continuation(details)


class _AddInternalToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str):
        self._metadata = (INTERNAL_HEADER, token)

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._metadata)
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_token(details), request)


def internal_client_interceptors(token: str) -> list:
    return [_AddInternalToken(token)] if token else []
