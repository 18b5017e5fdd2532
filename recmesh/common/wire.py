"""Request bytes that do not parse are the caller's error: INVALID_ARGUMENT naming the field.

grpc's server runs a method's request deserializer before any handler or interceptor code
sees the call, and a DecodeError there is answered UNKNOWN "Unexpected DecodeError".
`ParseRequests` (the innermost server interceptor of every service, recmesh/common/server.py)
takes parsing over: grpc hands the handler raw bytes, the wrapper parses them with the
method's own message class and aborts with INVALID_ARGUMENT when they do not parse - a bad
message never reaches the handler. To say which field is wrong, `find_fault` walks the
protobuf wire format against the message's descriptor (google.protobuf has no public walker
that reports where parsing failed).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from recmesh.common.errors import InvalidArgument
from recmesh.common.handlers import behaviour_of, is_asyncio, with_behaviour

# upb's default nesting limit: deeper is malformed for the parser too.
MAX_DEPTH = 100
MAX_FIELD_NUMBER = (1 << 29) - 1
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = range(6)


class _Malformed(Exception):
    """The bytes are not a protobuf message (truncated, bad tag or wire type, too deep)."""


# Larger messages that fail to parse are refused without naming the field: walking a 16 MB
# message stalled a service's event loop for 6 s (found by attack). 64 KiB walks in ~20 ms.
MAX_WALK_BYTES = 64 * 1024


def find_fault(data: bytes, message: Descriptor) -> tuple[str, str] | None:
    """The first fault in `data` read as a `message`: (field path, problem), e.g.
    ("filters.include_categories[0]", "not valid UTF-8"); ("request", "...") when the bytes are
    not a message at all (truncated or malformed); None when none is found."""
    if len(data) > MAX_WALK_BYTES:  # the walk is Python on the event loop: ~0.35 s per MB
        return "request", _malformed(message)
    try:
        return _walk(memoryview(data), 0, len(data), message, "", 0)[0]
    except _Malformed:
        return "request", _malformed(message)


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:  # cut short, or longer than the 10 bytes of a 64-bit varint
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _walk(data: memoryview, pos: int, end: int, message: Descriptor | None, path: str, depth: int,
          group: int | None = None) -> tuple[tuple[str, str] | None, int]:
    """Walk the fields in data[pos:end]: (the first fault, where the walk ended). message None:
    unknown fields, only their structure is checked. group: the field number of the group being
    read (deprecated encoding; always an unknown field here), whose end tag ends the walk."""
    if depth > MAX_DEPTH:
        raise _Malformed
    seen: dict[int, int] = {}  # occurrences so far per repeated field: its index in the path
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if not 0 < number <= MAX_FIELD_NUMBER:
            raise _Malformed
        field = message.fields_by_number.get(number) if message is not None else None
        if wire_type == _VARINT:
            _, pos = _varint(data, pos, end)
        elif wire_type in (_I64, _I32):
            pos += 8 if wire_type == _I64 else 4
            if pos > end:
                raise _Malformed
        elif wire_type == _LEN:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _Malformed
            # A known field with another wire type is an unknown field to the parser too.
            if field is not None:
                fault = _value(data, pos, pos + length, field, _name(field, path, seen), depth)
                if fault is not None:
                    return fault, pos
            pos += length
        elif wire_type == _SGROUP:
            _, pos = _walk(data, pos, end, None, path, depth + 1, number)
        elif wire_type == _EGROUP and number == group:
            return None, pos
        else:  # wire types 6 and 7, or an end tag without its start
            raise _Malformed
    if group is not None:  # the group's end tag never came
        raise _Malformed
    return None, pos


def _name(field: FieldDescriptor, path: str, seen: dict[int, int]) -> str:
    name = f"{path}.{field.name}" if path else field.name
    if field.is_repeated:  # map entries too: by their order on the wire
        index = seen.get(field.number, 0)
        seen[field.number] = index + 1
        name = f"{name}[{index}]"
    return name


def _value(data: memoryview, start: int, end: int, field: FieldDescriptor, name: str,
           depth: int) -> tuple[str, str] | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            str(data[start:end], "utf-8")
        except UnicodeDecodeError as exc:
            return name, f"not valid UTF-8 (byte {exc.start} of {end - start})"
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        return _walk(data, start, end, field.message_type, name, depth + 1)[0]
    elif field.is_repeated and field.type != FieldDescriptor.TYPE_BYTES:
        _packed(data, start, end, field)
    return None


_FIXED_WIDTH = {FieldDescriptor.TYPE_DOUBLE: 8, FieldDescriptor.TYPE_FIXED64: 8, FieldDescriptor.TYPE_SFIXED64: 8,
                FieldDescriptor.TYPE_FLOAT: 4, FieldDescriptor.TYPE_FIXED32: 4, FieldDescriptor.TYPE_SFIXED32: 4}


def _packed(data: memoryview, pos: int, end: int, field: FieldDescriptor) -> None:
    """A packed run of scalars holds whole values only."""
    width = _FIXED_WIDTH.get(field.type)
    if width is not None:
        if (end - pos) % width:
            raise _Malformed
        return
    while pos < end:
        _, pos = _varint(data, pos, end)


def request_type(method: str, deserializer: Callable[[bytes], Any] | None) -> Descriptor | None:
    """The descriptor of the message a method's handler parses: the deserializer's class
    (generated code passes Message.FromString), else the method's input type found by its full
    name ("/pkg.Service/Method") in the default pool; None if neither."""
    found = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    if isinstance(found, Descriptor):
        return found
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        return descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name).input_type
    except KeyError:
        return None


def parser(deserializer: Callable[[bytes], Any], message: Descriptor | None) -> Callable[[bytes], Any]:
    """deserializer, raising InvalidArgument (naming the field where it can) on bytes it cannot
    parse."""
    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # DecodeError from protobuf; any failure of a deserializer is its input's
            if message is None:
                raise InvalidArgument("request", "not a valid request message (truncated or malformed)") from None
            fault = find_fault(raw, message) or ("request", _malformed(message))
            raise InvalidArgument(*fault) from None

    return parse


def _malformed(message: Descriptor) -> str:
    return f"not a valid {message.full_name} (truncated or malformed)"


class ParseRequests(grpc.aio.ServerInterceptor):
    """Request bytes parsed inside the call, a failure answered INVALID_ARGUMENT. The innermost
    interceptor: the ones before it (metrics, tracing, auth) still see and count every call, and
    a bad message never reaches the servicer. Handlers that are not async are left as they are
    (grpc.aio servers here have none), as are handlers already taking raw bytes."""

    def __init__(self) -> None:
        self._parsers: dict[str, Callable[[bytes], Any]] = {}  # per method: known methods only
        # Per method: (the servicer's handler, the parsing one made of it), reused while the
        # servicer's handler is the same object - not a new wrapper per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        parse = self._parsers.get(details.method)
        if parse is None:
            deserializer = handler.request_deserializer
            parse = self._parsers[details.method] = parser(deserializer, request_type(details.method, deserializer))
        wrapped = _parsing(handler, parse)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped


async def _parse(parse: Callable[[bytes], Any], raw: bytes, context: grpc.aio.ServicerContext) -> Any:
    try:
        return parse(raw)
    except InvalidArgument as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def _parsing(handler: grpc.RpcMethodHandler, parse: Callable[[bytes], Any]) -> grpc.RpcMethodHandler:
    """The same handler taking raw bytes (request_deserializer None) and parsing them itself.
    A request stream is parsed message by message as the handler reads it through its iterator
    (the reader API, context.read(), would see raw bytes: no handler here uses it)."""
    inner = behaviour_of(handler)
    if not is_asyncio(inner):
        return handler
    generator = inspect.isasyncgenfunction(inner)

    if handler.request_streaming:
        async def requests(raw_stream, context):
            async for raw in raw_stream:
                yield await _parse(parse, raw, context)

        async def prepare(raw, context):
            return requests(raw, context)
    else:
        async def prepare(raw, context):
            return await _parse(parse, raw, context)

    if generator:
        async def behaviour(raw, context):
            async for reply in inner(await prepare(raw, context), context):
                yield reply
    else:
        async def behaviour(raw, context):
            return await inner(await prepare(raw, context), context)

    return with_behaviour(handler, behaviour, request_deserializer=None)
