"""The compute floor (recmesh/tools/bench/floor.py) does the mesh's work: for the same request
its in-process pipeline answers what the real mesh answers, and `recmesh load` reports it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from recmesh.common.clock import now_ms
from recmesh.common.local import REPO
from recmesh.common.paths import served_artifact, var_paths
from recmesh.models.ranking.scorer import start_params_dir
from recmesh.tools.bench.floor import GENEROUS_MS, Floor
from recmesh.tools.devstack import Stack
from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc
from services.ranker.config import RankerSettings

pytestmark = pytest.mark.integration

HORROR = ["1258", "1214", "1982", "1997", "1407"]
DRAMA = ["318", "1704", "2324", "527", "1193"]
FAMILY = ["1", "6377", "4306", "4886", "364"]
# (history, typed query): a history alone, a history and a query, a query alone, nothing.
CASES = [(DRAMA, ""), (HORROR, "animated film for children"), (FAMILY, ""), ([], "space opera"), ([], "")]
GENEROUS = {f"RECMESH_GATEWAY_{name.upper()}": str(GENEROUS_MS) for name in
            ("budget_ms", "user_state_cap_ms", "history_cap_ms", "encoder_cap_ms", "retrieval_cap_ms",
             "ranker_cap_ms")}


def copy_var(catalog: Path, dest: Path) -> Path:
    for folder in (var_paths(catalog).catalog, var_paths(catalog).updater):
        shutil.copytree(folder, dest / folder.name)
    return dest


@pytest.fixture(scope="module")
def mesh(catalog: Path, tmp_path_factory):
    """A mesh of its own (no other test's users or items), deterministic (no exploration, no
    online learning) and with the floor's generous budget, so that every answer is in full."""
    var = copy_var(catalog, tmp_path_factory.mktemp("floor-mesh"))
    with Stack(var=var, interest_model=served_artifact(catalog),
               env={"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false", **GENEROUS}) as stack:
        yield stack


def events(user: str, items: list[str]) -> recommendations_pb2.TrackEventsRequest:
    start = now_ms() - 60_000
    return recommendations_pb2.TrackEventsRequest(events=[
        common_pb2.Event(event_id=f"{user}-{i}", user_id=user, item_id=item, type=common_pb2.EVENT_TYPE_CLICK,
                         timestamp_ms=start + i * 1000) for i, item in enumerate(items)])


def test_the_floor_answers_what_the_mesh_answers(mesh, catalog, tmp_path):
    var = copy_var(catalog, tmp_path / "floor")  # the state the mesh started from

    async def compare() -> list[tuple[list[str], list[str]]]:
        floor = await Floor.open(var, served_artifact(catalog), start_params_dir(catalog),
                                 ranker=RankerSettings(params_dir=start_params_dir(catalog), updater_addr="",
                                                       exploration=0.0))
        pairs = []
        try:
            async with grpc.aio.insecure_channel(mesh.address("gateway")) as channel:
                gateway = recommendations_pb2_grpc.RecommendationsStub(channel)
                for history, query in CASES:
                    # A new user per case, asked once: an answer's impression changes the next
                    # one's ranking (its items count as skipped).
                    user = f"floor-{uuid.uuid4().hex[:10]}"
                    request = recommendations_pb2.RecommendRequest(user_id=user, query=query, k=10)
                    if history:
                        track = events(user, history)
                        await gateway.TrackEvents(track, timeout=10)
                        await floor.track(track)
                    served = await gateway.Recommend(request, timeout=10)
                    ours = await floor.recommend(request)
                    assert not served.degraded and not ours.degraded, (served.degraded, ours.degraded)
                    pairs.append(([i.item_id for i in served.items], [i.item_id for i in ours.items]))
        finally:
            await floor.close()
        return pairs

    pairs = asyncio.run(compare())
    for (served, ours), case in zip(pairs, CASES, strict=True):
        assert len(served) == 10, case
        assert ours == served, case


def test_recmesh_load_reports_the_floor_and_the_ratio(tmp_path):
    out = tmp_path / "load"
    done = subprocess.run(
        [sys.executable, "-m", "recmesh", "load", "--rates", "5", "--seconds", "2", "--floor-requests", "20",
         "--floor-warm-up", "5", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "load.json").read_text())
    floor = results["compute_floor"]
    assert floor["requests"] == 20 and floor["compute_floor_ms_per_recommend"] > 0
    assert floor["degraded_answers"] == 0, floor["degraded_reasons"]
    step = results["steps"][0]
    assert step["cpu_to_floor_ratio"] == pytest.approx(
        step["cpu_ms_per_recommend"]["total"] / floor["compute_floor_ms_per_recommend"], abs=0.01)
    lines = done.stdout.strip().splitlines()
    assert lines[-3].startswith("highest full-service rate")
    assert "compute floor" in lines[-2] and lines[-1].startswith("highest sustainable rate")
