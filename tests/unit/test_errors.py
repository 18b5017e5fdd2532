"""rpc_method: domain errors become their status codes, and a call that queued past its
deadline is refused without running the handler."""

import asyncio

import grpc
import pytest

from recmesh.common.errors import InvalidArgument, rpc_method


class Context:
    def __init__(self, remaining):
        self.remaining, self.aborted = remaining, None

    def time_remaining(self):
        return self.remaining

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


class Servicer:
    def __init__(self):
        self.handled = 0

    @rpc_method
    async def Work(self, request, context):
        self.handled += 1
        if request == "bad":
            raise InvalidArgument("limit", "must be positive")
        return "done"


@pytest.mark.parametrize("remaining", [None, 0.05])
def test_a_call_with_time_left_is_handled(remaining):
    servicer = Servicer()
    assert asyncio.run(servicer.Work("ok", Context(remaining))) == "done" and servicer.handled == 1


def test_a_call_past_its_deadline_is_refused_unhandled():
    servicer, context = Servicer(), Context(-0.001)
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(servicer.Work("ok", context))
    assert context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED and servicer.handled == 0


def test_a_bad_field_is_invalid_argument_naming_it():
    servicer, context = Servicer(), Context(None)
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(servicer.Work("bad", context))
    assert context.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "limit: must be positive")
