"""Bearer-token authentication with scopes, and a per-client rate limit, as a gRPC server
interceptor.

Keys are stored hashed: a key file holds one line per client, `sha256:<hex digest of the
token> <scope>[,<scope>...] <client name>` (`recmesh make-key` prints a token and its line).
A call names its token in the `authorization` metadata (`Bearer <token>`). Methods not in the
scope table (health, reflection) are open; a missing or unknown token is UNAUTHENTICATED, a
known one without the method's scope PERMISSION_DENIED, a client over its rate
RESOURCE_EXHAUSTED. Tokens never reach the logs: only client names do."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import grpc

SCOPES = ("recommend", "track", "catalog:write", "admin")
# Metadata the gateway adds to a call it forwards on a client's behalf (PutRule, DeleteRule):
# the authenticated client's name, for the audit log of the service that acts on it. Internal
# services trust it as they trust the gateway (the internal credential).
CLIENT_HEADER = "x-recmesh-client"


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Client:
    name: str
    scopes: frozenset[str]


def parse_keys(text: str, source: str = "keys") -> dict[str, Client]:
    """Lines of `sha256:<hex> <scopes> <name>`; # comments and blank lines are skipped. A bad
    line stops the service at start, naming it."""
    keys: dict[str, Client] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[0].startswith("sha256:") or len(parts[0]) != 7 + 64:
            raise ValueError(f"{source}:{n}: expected 'sha256:<64 hex> <scope,...> <client name>'")
        scopes = frozenset(parts[1].split(","))
        if unknown := scopes - set(SCOPES):
            raise ValueError(f"{source}:{n}: unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
        keys[parts[0]] = Client(parts[2], scopes)
    return keys


def load_keys(path: Path) -> dict[str, Client]:
    return parse_keys(path.read_text(), str(path))


def make_key(scopes: list[str], name: str) -> tuple[str, str]:
    """A new random token and its key-file line."""
    if unknown := set(scopes) - set(SCOPES):
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    token = "rmk_" + secrets.token_urlsafe(32)
    return token, f"{digest(token)} {','.join(scopes)} {name}"


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    at: float = field(default_factory=time.monotonic)
    tokens: float = field(init=False)  # starts full

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def refusal(code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """What a server interceptor returns to refuse a call before it reaches the servicer."""
    async def refuse(request, context):
        await context.abort(code, details)

    return grpc.unary_unary_rpc_method_handler(refuse)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """method_scopes: full method name -> the scope it needs. keys None: authentication off
    (all callers then share one rate-limit bucket)."""

    def __init__(self, method_scopes: dict[str, str], keys: dict[str, Client] | None, rate_per_s: float = 0.0,
                 burst: float = 0.0, max_clients: int = 100_000):
        self._scopes = method_scopes
        self._keys = keys
        self._rate, self._burst = rate_per_s, max(burst, 1.0)
        self._buckets: dict[str, TokenBucket] = {}
        self._max_clients = max_clients

    async def intercept_service(self, continuation: Callable[..., Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        scope = self._scopes.get(details.method)
        if scope is None:
            return await continuation(details)
        client_id = "anonymous"
        if self._keys is not None:
            token = _bearer(details.invocation_metadata)
            client = self._lookup(token) if token else None
            if client is None:
                return refusal(grpc.StatusCode.UNAUTHENTICATED,
                               "authorization: a valid 'Bearer <token>' is required" if token is None
                               else "authorization: unknown token")
            if scope not in client.scopes:
                return refusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"authorization: client {client.name!r} lacks scope {scope!r}")
            client_id = client.name
        if self._rate > 0 and not self._allow(client_id):
            return refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"rate limit: at most {self._rate:g} calls/s (burst {self._burst:g}) per client")
        return await continuation(details)

    def _lookup(self, token: str) -> Client | None:
        # By digest: timing can tell at most how much of a hash matched, which says nothing of a token.
        return self._keys.get(digest(token))

    def _allow(self, client_id: str) -> bool:
        bucket = self._buckets.get(client_id)
        if bucket is None:
            if len(self._buckets) >= self._max_clients:  # bounded: forget the oldest clients
                for stale in list(self._buckets)[: self._max_clients // 10]:
                    del self._buckets[stale]
            bucket = self._buckets[client_id] = TokenBucket(self._rate, self._burst)
        return bucket.take(time.monotonic())


def client_name(metadata, keys: dict[str, Client] | None) -> str:
    """The name of the client a call's `authorization` metadata names: "anonymous" when
    authentication is off (keys None) or the token is unknown (the interceptor has refused
    such a call already)."""
    token = _bearer(metadata) if keys is not None else None
    client = keys.get(digest(token)) if token else None
    return client.name if client is not None else "anonymous"


def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None
