"""Every call is counted and timed, streams included (the interceptor's docstring said streams
were counted; Updater.WatchParameters never appeared in the metrics)."""

from __future__ import annotations

import asyncio

import grpc

from recmesh.common.metrics import RPC_LATENCY, RPCS, MetricsInterceptor

SERVICE = "metrics-probe"


async def generator_stream(request: bytes, context):
    for i in range(3):
        yield bytes([i])


async def writer_stream(request: bytes, context):  # grpc.aio's other streaming style
    for i in range(2):
        await context.write(bytes([i]))


async def unary(request: bytes, context):
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "x: no")


def count(method: str, code: str) -> float:
    return RPCS.labels(SERVICE, method, code)._value.get()


def timed(method: str) -> float:
    return RPC_LATENCY.labels(SERVICE, method)._sum.get()


def test_unary_and_both_streaming_styles_are_counted_with_their_status():
    handlers = grpc.method_handlers_generic_handler("probe.Probe", {
        "Gen": grpc.unary_stream_rpc_method_handler(generator_stream),
        "Write": grpc.unary_stream_rpc_method_handler(writer_stream),
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
    })
    before = {m: count(m, c) for m, c in (("Gen", "OK"), ("Write", "OK"), ("Unary", "INVALID_ARGUMENT"))}

    async def run():
        server = grpc.aio.server(interceptors=[MetricsInterceptor(SERVICE)])
        server.add_generic_rpc_handlers((handlers,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            gen = [r async for r in channel.unary_stream("/probe.Probe/Gen")(b"")]
            write = [r async for r in channel.unary_stream("/probe.Probe/Write")(b"")]
            try:
                await channel.unary_unary("/probe.Probe/Unary")(b"")
            except grpc.aio.AioRpcError as exc:
                refused = exc.code()
        await server.stop(None)
        return gen, write, refused

    gen, write, refused = asyncio.run(run())
    assert len(gen) == 3 and len(write) == 2 and refused == grpc.StatusCode.INVALID_ARGUMENT
    assert count("Gen", "OK") == before["Gen"] + 1
    assert count("Write", "OK") == before["Write"] + 1
    assert count("Unary", "INVALID_ARGUMENT") == before["Unary"] + 1
    assert timed("Gen") > 0 and timed("Write") > 0


async def echo(request: bytes, context):
    if request == b"bad":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    return request


def test_a_method_is_wrapped_once_and_every_call_still_counted():
    """The wrapped handler is made once per method (not per call), and each call - whatever
    its status - is counted and timed as before."""
    handlers = grpc.method_handlers_generic_handler("probe.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    interceptor = MetricsInterceptor(SERVICE)
    before_ok, before_bad = count("Echo", "OK"), count("Echo", "INVALID_ARGUMENT")
    seen = []

    async def run():
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((handlers,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/probe.Echo/Echo")
            for i in range(5):
                assert await call(bytes([i])) == bytes([i])
                seen.append(interceptor._wrapped["/probe.Echo/Echo"][1])
            try:
                await call(b"bad")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        await server.stop(None)

    asyncio.run(run())
    assert all(w is seen[0] for w in seen)
    assert count("Echo", "OK") == before_ok + 5
    assert count("Echo", "INVALID_ARGUMENT") == before_bad + 1
