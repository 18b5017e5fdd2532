"""Turning failures into the right gRPC status, never UNKNOWN."""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

import grpc

log = logging.getLogger("recmesh.rpc")


class InvalidArgument(ValueError):
    """A request field is wrong; the message names the field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(LookupError):
    """A request names something that does not exist (e.g. an unknown item); the message names
    the field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class Unavailable(RuntimeError):
    """This service cannot answer yet (warming up) or right now; callers may retry."""


class FailedPrecondition(RuntimeError):
    """The request is well formed but the system's state refuses it (e.g. the stored set of
    rules is full); the message says what to change first."""


class DependencyFailed(RuntimeError):
    """A dependency (e.g. Triton) failed; its status code is passed on to our caller."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def rpc_method(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Map domain errors to their status codes and anything unexpected to INTERNAL; a call whose
    deadline passed while it queued is refused without doing its work."""

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # queued past its deadline: the caller has moved on
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the call was handled")
        try:
            return await handler(self, request, context)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except Unavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except FailedPrecondition as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except DependencyFailed as exc:
            await context.abort(exc.code, str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # a bug or a broken dependency: say so, keep serving
            log.exception("unhandled error in %s", handler.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    return wrapper
