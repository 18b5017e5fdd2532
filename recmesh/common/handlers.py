"""Wrapping a grpc.aio method handler's behaviour, whatever its kind (unary or streaming
requests and responses): what server interceptors that see every call need."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import grpc

_MAKE = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def behaviour_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The handler's function, whichever of the four kinds it is."""
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


def is_asyncio(behaviour: Callable[..., Any]) -> bool:
    """A coroutine function or an async generator function (grpc.aio's two styles)."""
    return inspect.isasyncgenfunction(behaviour) or inspect.iscoroutinefunction(behaviour)


def with_behaviour(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any],
                   request_deserializer: Callable[[bytes], Any] | None) -> grpc.RpcMethodHandler:
    """A handler of the same kind and response serializer with another behaviour."""
    return _MAKE[handler.request_streaming, handler.response_streaming](
        behaviour, request_deserializer=request_deserializer, response_serializer=handler.response_serializer)
