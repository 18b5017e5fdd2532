"""The compute floor's in-process plumbing (recmesh/tools/bench/floor.py) and how `recmesh
load` reports it (recmesh/tools/loadtest.py)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from recmesh.common.errors import InvalidArgument, rpc_method
from recmesh.tools.bench.floor import Direct, InProcessAbort, InProcessContext
from recmesh.tools.loadtest import summary_lines, with_floor
from services.gateway.budget import Budget


class Servicer:
    def __init__(self):
        self.seen = []

    @rpc_method
    async def Echo(self, request, context):
        self.seen.append((request, context.time_remaining()))
        return request

    @rpc_method
    async def Refuse(self, request, context):
        raise InvalidArgument("user_id", "must not be empty")


def test_direct_hands_the_request_itself_and_the_timeout_to_the_servicer():
    servicer = Servicer()
    request = object()
    reply = asyncio.run(Direct(servicer).Echo(request, timeout=2.0))
    assert reply is request  # no copy, no serialisation
    (seen, remaining), = servicer.seen
    assert seen is request and 1.9 < remaining <= 2.0
    asyncio.run(Direct(servicer).Echo(request))
    assert servicer.seen[-1][1] is None  # no timeout: none, as grpc says it


def test_an_abort_in_process_is_what_a_stub_raises_and_a_stage_degrades_on_it():
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(Direct(Servicer()).Refuse(object(), timeout=1.0))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "user_id: must not be empty"

    budget = Budget(1.0, None, 0.0, 0.0)
    assert asyncio.run(budget.call("ranker", 1.0, lambda t: Direct(Servicer()).Refuse(object(), timeout=t))) is None
    assert budget.trace.degraded == ["ranker:invalid_argument"]


def test_a_call_past_its_deadline_is_refused_as_in_the_mesh():
    context = InProcessContext(0.0)
    assert context.time_remaining() == 0.0
    with pytest.raises(InProcessAbort) as caught:
        asyncio.run(Direct(Servicer()).Echo(object(), timeout=0.0))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def step(offered: float, cpu_total: float, degraded: float = 0.0, p99: float = 40.0) -> dict:
    return {"offered_per_s": offered, "p99_ms": p99, "budget_ms": 100.0, "in_time_share": 1.0,
            "degraded_share": degraded, "cpu_ms_per_recommend": {"gateway": cpu_total / 2, "total": cpu_total}}


def results(steps: list[dict], floor: dict | None, full: float, sustainable: float) -> dict:
    return {"steps": steps, "compute_floor": floor, "highest_full_service_per_s": full,
            "highest_sustainable_per_s": sustainable}


def test_each_step_gets_its_cpu_as_a_multiple_of_the_floor():
    steps = [step(20, 26.4), step(40, 19.3)]
    with_floor(steps, {"compute_floor_ms_per_recommend": 8.0})
    assert [s["cpu_to_floor_ratio"] for s in steps] == [3.3, 2.41]
    untouched = [step(20, 26.4)]
    with_floor(untouched, None)
    assert "cpu_to_floor_ratio" not in untouched[0]


def test_the_summary_leads_with_the_full_service_rate_then_the_ratio_there():
    steps = [step(20, 26.4), step(40, 19.3), step(80, 12.0, degraded=0.4)]
    floor = {"compute_floor_ms_per_recommend": 8.0}
    with_floor(steps, floor)
    first, second, third = summary_lines(results(steps, floor, 40.0, 80.0), 100.0)
    assert first.startswith("highest full-service rate") and first.endswith(": 40 Recommend/s")
    assert "at that rate, 40/s: 19.3 ms" in second and "2.41x the compute floor of 8.0 ms" in second
    assert third.startswith("highest sustainable rate") and third.endswith(": 80 Recommend/s")


def test_with_no_step_in_full_the_ratio_is_the_lowest_steps_and_without_a_floor_it_says_so():
    steps = [step(120, 12.0, degraded=0.9), step(150, 9.8, degraded=0.99)]
    floor = {"compute_floor_ms_per_recommend": 8.0}
    with_floor(steps, floor)
    _, second, _ = summary_lines(results(steps, floor, 0.0, 150.0), 100.0)
    assert "lowest step (none in full), 120/s: 12.0 ms" in second and "1.5x" in second
    bare = [step(40, 19.3)]
    _, second, _ = summary_lines(results(bare, None, 40.0, 40.0), 100.0)
    assert second.endswith("(compute floor not measured)")


@pytest.mark.parametrize("argv, flag", [
    (["--query-share", "1.5"], "--query-share"), (["--track-ratio", "-1"], "--track-ratio"),
    (["--requests", "0"], "--requests"), (["--warm-up", "-2"], "--warm-up"),
])
def test_the_floor_cli_refuses_a_bad_mix_naming_the_flag(argv, flag, capsys):
    from recmesh.tools.bench.floor import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["--query-share", "-0.1"], "--query-share"), (["--floor-requests", "0"], "--floor-requests"),
    (["--floor-warm-up", "-1"], "--floor-warm-up"),
])
def test_recmesh_load_refuses_a_bad_mix_naming_the_flag(argv, flag, capsys):
    from recmesh.tools.loadtest import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and flag in capsys.readouterr().err
