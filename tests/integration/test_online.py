"""Online learning end to end, on its own stack (exploration and learning on, as shipped):
feedback on what Recommend showed becomes a new ranker version within seconds, served by the
next Recommends, and kept across restarts."""

from __future__ import annotations

import re
import shutil
import signal
import time

import grpc
import pytest

from recmesh.client import Event, RecmeshClient
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import load_params, newest_params
from recmesh.tools.devstack import Stack
from recmesh.v1 import updater_pb2, updater_pb2_grpc
from services.ranker.config import RankerSettings
from tests.integration.answers import undegraded

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def learning(catalog, tmp_path_factory):
    var = tmp_path_factory.mktemp("var-online")
    shutil.copytree(catalog / "catalog", var / "catalog")  # an empty event log: only this test's users
    # In-process encoder: these tests are about the updater, the ranker and observability, and
    # need no second Triton. Spans go to the services' logs (console exporter).
    tracing = {f"RECMESH_{name.upper()}_TRACE_EXPORTER": "console" for name in ("gateway", "ranker")}
    with Stack(var=var, encoder_backend="inprocess", env=tracing) as stack, \
            RecmeshClient(stack.address("gateway"), timeout_s=2.0) as client:
        yield stack, client


def served_version(client, user="probe") -> str:
    return client.recommend(user, k=10).versions["ranker"]


def test_feedback_is_served_by_a_new_version_within_seconds_and_survives_restarts(learning):
    stack, client = learning
    shipped = served_version(client)
    assert shipped == load_params(newest_params(RankerSettings().params_dir)).version
    for u in range(15):  # users pick the last item shown: a preference the shipped weights do not have
        user = f"learner-{u}"
        client.track_events([Event(user, "1", "click")])
        reply = client.recommend(user, k=10)
        client.track_events([Event(user, reply.items[-1].item_id, "click", request_id=reply.request_id)])
    fed = time.monotonic()
    while (version := served_version(client)) == shipped and time.monotonic() - fed < 10:
        time.sleep(0.05)
    freshness = time.monotonic() - fed
    assert version.startswith("ranker-online-"), version
    assert freshness < 5.0, f"feedback took {freshness:.1f} s to be served"
    published = sorted((stack.var / "ranker" / "params").glob("*.json"))
    assert published and published[-1].stem >= version  # on disk, whole (written then renamed)

    # A restarted ranker starts from its shipped version and is brought up to date by the stream;
    # a restarted updater serves the newest version it published.
    stack.signal("ranker", signal.SIGKILL)
    stack.restart("ranker")
    deadline = time.monotonic() + 5
    while served_version(client) != version and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served_version(client) >= version
    stack.signal("updater", signal.SIGKILL)
    stack.restart("updater")
    time.sleep(0.5)
    assert served_version(client) >= version


def test_supervisor_restarts_what_dies(learning):
    stack, client = learning
    supervisor = stack.supervise()
    for name in ("ranker", "retrieval"):
        stack.procs[name].kill()
    deadline = time.monotonic() + 30
    while {r[0] for r in supervisor.restarts} != {"ranker", "retrieval"}:
        assert time.monotonic() < deadline, supervisor.restarts
        time.sleep(0.1)
    undegraded(lambda: client.recommend("after-restarts", k=5))  # raises if never full


def test_one_trace_spans_the_gateway_and_the_ranker(learning):
    stack, client = learning
    client.recommend("traced", k=5)
    span = re.compile(r'"name": "([^"]+)",\s*"context": \{\s*"trace_id": "(0x[0-9a-f]+)"')
    deadline = time.monotonic() + 15  # spans are exported in batches (every 5 s)
    while time.monotonic() < deadline:
        gateway = dict(span.findall(stack.log_path("gateway").read_text()))
        ranker = {trace for name, trace in span.findall(stack.log_path("ranker").read_text())
                  if name.endswith("Ranker/Rank")}
        recommend = [trace for name, trace in gateway.items() if name.endswith("Recommendations/Recommend")]
        if recommend and set(recommend) & ranker:
            return
        time.sleep(0.5)
    raise AssertionError("no Recommend trace reached the ranker")


@pytest.mark.parametrize("impression, field", [
    (updater_pb2.Impression(request_id="r", user_id="u", feature_names=["nonsense"]), "feature_names"),
    (updater_pb2.Impression(request_id="", user_id="u", feature_names=FEATURES), "request_id"),
    (updater_pb2.Impression(request_id="r", user_id="u", feature_names=FEATURES,
                            items=[updater_pb2.ImpressedItem(item_id="1", features=[1.0])]), "items[0].features"),
])
def test_malformed_impression_is_invalid_argument(learning, impression, field):
    """The second impression of the batch is the bad one: the error names it, and the whole
    batch is refused."""
    stack, _ = learning
    good = updater_pb2.Impression(request_id="ok", user_id="u", feature_names=FEATURES)
    with grpc.insecure_channel(stack.address("updater")) as channel:
        with pytest.raises(grpc.RpcError) as err:
            updater_pb2_grpc.UpdaterStub(channel).LogImpressions(
                updater_pb2.LogImpressionsRequest(impressions=[good, impression]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"impressions[1].{field}:"), err.value.details()
