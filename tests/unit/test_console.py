"""The console's parts without a mesh: live numbers from Prometheus text, its settings, its
login and its answers to bad input and to a gateway that is not there (services/console)."""

from __future__ import annotations

import asyncio
import base64

import pytest
from aiohttp.test_utils import TestClient, TestServer

from recmesh.common.auth import make_key
from recmesh.common.config import load_settings
from recmesh.common.local import free_port
from services.console.config import ConsoleSettings
from services.console.live import Live, Round, Sample, combined, parse_gateway, parse_ranker, quantile
from services.console.server import build_app, changes

GATEWAY_TEXT = """\
# TYPE recmesh_rpc_requests_total counter
recmesh_rpc_requests_total{service="gateway",method="Recommend",code="OK"} 90.0
recmesh_rpc_requests_total{service="gateway",method="Recommend",code="INVALID_ARGUMENT"} 5.0
recmesh_rpc_requests_total{service="gateway",method="SimilarItems",code="OK"} 10.0
recmesh_rpc_requests_total{service="gateway",method="TrackEvents",code="OK"} 1000.0
# TYPE recmesh_rpc_latency_seconds histogram
recmesh_rpc_latency_seconds_bucket{service="gateway",method="Recommend",le="0.01"} 50.0
recmesh_rpc_latency_seconds_bucket{service="gateway",method="Recommend",le="0.1"} 95.0
recmesh_rpc_latency_seconds_bucket{service="gateway",method="Recommend",le="+Inf"} 95.0
recmesh_rpc_latency_seconds_count{service="gateway",method="Recommend"} 95.0
recmesh_rpc_latency_seconds_sum{service="gateway",method="Recommend"} 2.0
recmesh_rpc_latency_seconds_bucket{service="gateway",method="SimilarItems",le="0.01"} 0.0
recmesh_rpc_latency_seconds_bucket{service="gateway",method="SimilarItems",le="0.1"} 10.0
recmesh_rpc_latency_seconds_bucket{service="gateway",method="SimilarItems",le="+Inf"} 10.0
recmesh_rpc_latency_seconds_count{service="gateway",method="SimilarItems"} 10.0
recmesh_rpc_latency_seconds_sum{service="gateway",method="SimilarItems"} 0.5
# TYPE recmesh_degraded_answers_total counter
recmesh_degraded_answers_total 4.0
"""


def test_a_gateway_scrape_counts_answers_degraded_ones_and_latency_buckets():
    sample = parse_gateway(GATEWAY_TEXT, at=100.0)
    assert (sample.calls, sample.answered, sample.degraded) == (105, 100, 4)  # TrackEvents is not an answer
    assert sample.buckets == ((0.01, 50.0), (0.1, 105.0), (float("inf"), 105.0))


def test_p99_is_interpolated_inside_its_bucket_as_prometheus_does():
    assert quantile(0.5, [(0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)]) == pytest.approx(0.01)
    assert quantile(0.99, [(0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)]) == pytest.approx(0.0982)
    assert quantile(0.99, [(0.01, 0.0), (0.1, 0.0), (float("inf"), 10.0)]) == pytest.approx(0.1)  # past the last
    assert quantile(0.99, [(0.01, 0.0), (float("inf"), 0.0)]) is None


def window(old: Sample, new: Sample):
    return combined(Round(old.at, {"gw-0": old}), Round(new.at, {"gw-0": new}))


def test_a_window_is_the_difference_of_two_scrapes():
    old = Sample(100.0, 100, 90, 10, ((0.01, 80.0), (0.1, 100.0), (float("inf"), 100.0)))
    new = Sample(110.0, 200, 190, 15, ((0.01, 80.0), (0.1, 200.0), (float("inf"), 200.0)))
    w = window(old, new)
    assert w.throughput == pytest.approx(10.0) and w.calls == 100
    assert 10 < w.p99_ms < 100  # every new call fell in 10..100 ms, none below
    assert w.degraded_share == pytest.approx(0.05)
    quiet = window(new, Sample(120.0, 200, 190, 15, new.buckets))
    assert quiet.throughput == 0 and quiet.p99_ms is None and quiet.degraded_share is None


def test_replicas_add_up_and_one_that_restarted_counts_from_its_restart():
    fast = ((0.01, 0.0), (float("inf"), 0.0))
    old = Round(0.0, {"gw-0": Sample(0.0, 1000, 1000, 0, ((0.01, 1000.0), (float("inf"), 1000.0))),
                      "gw-1": Sample(0.0, 500, 500, 0, ((0.01, 0.0), (float("inf"), 500.0)))})
    new = Round(10.0, {"gw-0": Sample(10.0, 1100, 1100, 0, ((0.01, 1100.0), (float("inf"), 1100.0))),
                       "gw-1": Sample(10.0, 20, 20, 10, ((0.01, 0.0), (float("inf"), 20.0))),  # restarted
                       "gw-2": Sample(10.0, 7, 7, 0, fast)})  # new: counts from the next round
    w = combined(old, new)
    assert w.calls == 120 and w.throughput == pytest.approx(12.0)
    assert w.degraded_share == pytest.approx(10 / 120)
    assert w.p99_ms == pytest.approx(10.0)  # past the last finite bound (the restarted one's 20): that bound


def test_the_live_window_spans_live_window_s():
    live = Live(ConsoleSettings(gateway_metrics_url="http://127.0.0.1:1/metrics", scrape_interval_s=5,
                                live_window_s=10))
    for t in range(0, 30, 5):
        live.add(Round(float(t), {"gw-0": Sample(float(t), 10.0 * t, 10.0 * t, 0, ())}))
    assert live.current().seconds == 10 and live.current().calls == 100
    assert len(live.series()) == 5


def test_the_ranker_scrape_gives_its_version_and_freshness():
    text = ('recmesh_serving_version_info{service="ranker",component="parameters",version="ranker-online-1"} 1.0\n'
            "recmesh_ranker_parameters_trained_through_seconds 1700000000.5\n"
            "recmesh_ranker_parameters_serving_since_seconds 1700000001.0\n")
    ranker = parse_ranker(text)
    assert (ranker.version, ranker.trained_through, ranker.serving_since) == ("ranker-online-1", 1700000000.5,
                                                                              1700000001.0)
    assert parse_ranker("recmesh_ranker_parameters_serving_since_seconds 1.0\n") is None


def test_what_a_query_changed():
    plain = {"items": [{"item_id": i} for i in ("a", "b", "c")]}
    with_query = {"items": [{"item_id": i} for i in ("c", "d", "a")]}
    assert changes(plain, with_query) == {"entering": ["d"], "leaving": ["b"]}


@pytest.mark.parametrize("env, named", [
    ({"RECMESH_CONSOLE_GATEWAY_METRICS_URL": "gateway:9090/metrics"}, "gateway_metrics_url"),
    ({"RECMESH_CONSOLE_SCRAPE_INTERVAL_S": "10", "RECMESH_CONSOLE_LIVE_WINDOW_S": "5"}, "live_window_s"),
    ({"RECMESH_CONSOLE_CALL_TIMEOUT_S": "0"}, "call_timeout_s"),
    ({"RECMESH_CONSOLE_API_KEYS_FILE": "/no/such/keys"}, "api_keys_file"),
    ({"RECMESH_CONSOLE_MAX_CONNECTION_AGE_S": "60"}, "max_connection_age_s"),
])
def test_a_bad_setting_stops_the_console_naming_it(monkeypatch, env, named):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings(ConsoleSettings, [])
    assert named in str(stopped.value)


ADMIN, ADMIN_LINE = make_key(["admin"], "ops")
WEB, WEB_LINE = make_key(["recommend"], "web")


async def _client(**settings) -> TestClient:
    # A gateway address nothing listens on: calls fail UNAVAILABLE within the deadline.
    app = build_app(ConsoleSettings(gateway_addr=f"127.0.0.1:{free_port()}", call_timeout_s=0.5, **settings))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


def test_the_console_asks_for_an_admin_token():
    async def run():
        client = await _client(api_keys=f"{ADMIN_LINE};{WEB_LINE}")
        try:
            refused = await client.get("/")
            assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
            assert (await client.get("/", headers={"Authorization": "Bearer rmk_nope"})).status == 401
            no_scope = await client.get("/", headers={"Authorization": f"Bearer {WEB}"})
            assert no_scope.status == 403 and "lacks scope 'admin'" in await no_scope.text()
            assert (await client.get("/", headers={"Authorization": f"Bearer {ADMIN}"})).status == 200
            basic = base64.b64encode(f"anyone:{ADMIN}".encode()).decode()
            assert (await client.get("/", headers={"Authorization": f"Basic {basic}"})).status == 200
            assert (await client.get("/healthz")).status == 200  # probes stay open
        finally:
            await client.close()
    asyncio.run(run())


def test_bad_input_is_400_naming_the_field_and_a_gateway_failure_is_shown():
    async def run():
        client = await _client()
        try:
            for path, field in (("/api/users/u1?k=ten", "k"), ("/api/users/u1?k=101", "k"),
                                ("/api/search?text=", "text"), ("/api/users/" + "x" * 200, "user_id"),
                                ("/api/users/u1?query=" + "q" * 1001, "query"),
                                # bytes that are not UTF-8: aiohttp would read the path's as the
                                # literal text "%FF" and the query's as U+FFFD
                                ("/api/users/%FF", "user_id"), ("/api/items/a%C3", "item_id"),
                                ("/api/users/u1?query=%FE", "query"), ("/api/search?text=ab%E9", "text"),
                                ("/api/experiments/e%FF", "name")):
                reply = await client.get(path)
                assert reply.status == 400, path
                assert (await reply.json())["error"]["field"] == field, path
            form = await client.get("/go?user_id=%FF", allow_redirects=False)  # no redirect to a mangled id
            assert form.status == 400 and "user_id: is not UTF-8" in await form.text()
            page = await client.get("/users/u1?k=ten")
            assert page.status == 400 and "k: must be a whole number" in await page.text()
            slashed = await client.get("/api/users/a%2Fb?k=0")  # an id with a slash reaches its page
            assert slashed.status == 400 and (await slashed.json())["error"]["field"] == "k"
            down = await client.get("/api/items/260")
            error = (await down.json())["error"]
            assert down.status == 502 and error["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
            assert error["gateway"] == "SimilarItems"
            ready = await client.get("/readyz")  # still ready: the console shows the gateway's failure
            assert ready.status == 200 and "not SERVING" in await ready.text()
        finally:
            await client.close()
    asyncio.run(run())


def test_the_live_plot_is_a_png():
    from services.console.plots import live_png

    old = Sample(100.0, 100, 90, 10, ((0.01, 80.0), (float("inf"), 100.0)))
    new = Sample(105.0, 150, 140, 12, ((0.01, 120.0), (float("inf"), 150.0)))
    assert live_png([(105.0, window(old, new))], now=106.0).startswith(b"\x89PNG")
    assert live_png([], now=106.0).startswith(b"\x89PNG")


@pytest.mark.parametrize("keys, named", [
    (WEB_LINE, "no key has the admin scope"),
    ("sha256:abc admin ops", "RECMESH_CONSOLE_API_KEYS:1"),
])
def test_keys_no_one_could_use_stop_the_console_at_start(keys, named):
    import subprocess
    import sys

    from recmesh.common.local import REPO

    env = {"PATH": "/usr/bin:/bin", "RECMESH_CONSOLE_API_KEYS": keys, "RECMESH_CONSOLE_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-m", "services.console"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and named in done.stderr


def test_sigterm_lets_a_request_in_flight_finish_then_stops():
    """A stand-in gateway that takes a second to answer GetUserProfile: SIGTERM arrives while
    the console waits for it; the page is still answered, then the console exits 0."""
    import signal
    import subprocess
    import sys
    import threading
    import time
    import urllib.request
    from concurrent import futures

    import grpc

    from recmesh.common.local import REPO
    from recmesh.v1 import recommendations_pb2, recommendations_pb2_grpc

    class SlowGateway(recommendations_pb2_grpc.RecommendationsServicer):
        def GetUserProfile(self, request, context):
            time.sleep(1.0)
            return recommendations_pb2.UserProfile(user_id=request.user_id, event_count=3)

        def Recommend(self, request, context):
            return recommendations_pb2.RecommendResponse(request_id="r")

    server = grpc.server(futures.ThreadPoolExecutor(4))
    recommendations_pb2_grpc.add_RecommendationsServicer_to_server(SlowGateway(), server)
    gateway_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "RECMESH_CONSOLE_PORT": str(port), "RECMESH_CONSOLE_GRACE_S": "5",
           "RECMESH_CONSOLE_GATEWAY_ADDR": f"127.0.0.1:{gateway_port}"}
    console = subprocess.Popen([sys.executable, "-m", "services.console"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
                break
            except OSError:
                assert console.poll() is None and time.monotonic() < deadline, console.stderr.read()
                time.sleep(0.1)
        answered = {}

        def ask():
            with urllib.request.urlopen(f"{url}/api/users/u1", timeout=10) as reply:
                answered["status"], answered["body"] = reply.status, reply.read()

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(0.4)  # the console is waiting for the slow profile
        console.send_signal(signal.SIGTERM)
        asking.join(10)
        assert answered["status"] == 200 and b'"event_count": 3' in answered["body"]
        assert console.wait(10) == 0
    finally:
        if console.poll() is None:
            console.kill()
        server.stop(0)


def test_a_local_stack_with_the_console_points_it_at_its_gateway_and_metrics(tmp_path):
    from recmesh.tools.devstack import Stack

    stack = Stack(var=tmp_path, console=True)
    env = stack._env("console")
    assert env["RECMESH_CONSOLE_GATEWAY_ADDR"] == stack.address("gateway")
    assert env["RECMESH_CONSOLE_PORT"] == str(stack.ports["console"])
    assert env["RECMESH_CONSOLE_GATEWAY_METRICS_URL"] == f"http://127.0.0.1:{stack.metrics_ports['gateway']}/metrics"
    assert env["RECMESH_CONSOLE_RANKER_METRICS_URL"] == f"http://127.0.0.1:{stack.metrics_ports['ranker']}/metrics"
    assert "console" not in Stack(var=tmp_path).ports  # only when asked


def test_the_lookup_form_redirects_to_the_id_as_one_encoded_segment():
    """/go?user_id=../../admin redirected to /users/../../admin, which a browser resolves to
    /admin (hostile-input review): the id is one percent-encoded segment, dot segments refused."""
    async def run():
        client = await _client()
        try:
            for value, location in (("../../admin", "/users/..%2F..%2Fadmin"), ("a b/c", "/users/a%20b%2Fc"),
                                    ("42", "/users/42")):
                reply = await client.get("/go", params={"user_id": value}, allow_redirects=False)
                assert reply.status == 302 and reply.headers["Location"] == location, value
            item = await client.get("/go", params={"item_id": "x/y"}, allow_redirects=False)
            assert item.headers["Location"] == "/items/x%2Fy"
            dots = await client.get("/go", params={"user_id": ".."}, allow_redirects=False)
            assert dots.status == 400 and "user_id" in await dots.text()
        finally:
            await client.close()
    asyncio.run(run())


class _ExperimentsGateway:
    """Stands in for the gateway's two experiment calls: one stopped experiment, its report made
    by the real report code over real per-user sums."""

    def __init__(self, real):
        self._real = real

    async def experiments(self):
        from recmesh.v1 import common_pb2

        return [common_pb2.Experiment(
            name="e1", control="A", primary_metric="ctr_at_k", state=common_pb2.EXPERIMENT_STATE_STOPPED,
            stopped_reason="guardrail: B against A on ctr_at_k: significantly worse", created_ms=1_000,
            stopped_ms=2_000, variants=[common_pb2.ExperimentVariant(name="A", share=0.5),
                                        common_pb2.ExperimentVariant(name="B", share=0.5, overrides=common_pb2.
                                                                     VariantOverrides(diversity=0.3))])]

    async def experiment_report(self, name):
        import numpy as np

        from recmesh.experiments.outcomes import VariantSample
        from recmesh.experiments.report import summarize

        rng = np.random.default_rng(0)

        def sample(p):
            clicked = (rng.random(200) < p).astype(float)
            ones = np.ones(200)
            return VariantSample(ones, clicked, clicked * 0, clicked, ones * 0, ones * 10)
        return {**summarize(name, {"A": sample(0.3), "B": sample(0.1)}, control="A"), "state": "STOPPED",
                "stopped_reason": "guardrail"}

    async def close(self):
        await self._real.close()


def test_the_experiments_pages_list_them_and_show_a_report_with_its_plot():
    from services.console.server import GATEWAY

    async def run():
        app = build_app(ConsoleSettings(gateway_addr=f"127.0.0.1:{free_port()}", call_timeout_s=0.5))
        app[GATEWAY] = _ExperimentsGateway(app[GATEWAY])
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            listed = await (await client.get("/api/experiments")).json()
            assert listed["experiments"][0]["state"] == "STOPPED"
            assert listed["experiments"][0]["variants"][1]["overrides"] == {"diversity": pytest.approx(0.3)}
            page = await client.get("/experiments")
            assert page.status == 200 and "significantly worse" in await page.text()
            report = await client.get("/experiments/e1")
            text = await report.text()
            assert report.status == 200 and "B - A on ctr_at_k" in text and "/experiments/e1.png" in text
            png = await client.get("/experiments/e1.png")
            assert png.status == 200 and (await png.read()).startswith(b"\x89PNG")
            bad = await client.get("/api/experiments/no%20spaces")
            assert bad.status == 400 and (await bad.json())["error"]["field"] == "name"
        finally:
            await client.close()
    asyncio.run(run())


def test_the_experiments_page_shows_a_gateway_failure():
    async def run():
        client = await _client()
        try:
            down = await client.get("/api/experiments")
            assert down.status == 502 and (await down.json())["error"]["gateway"] == "ListExperiments"
        finally:
            await client.close()
    asyncio.run(run())
