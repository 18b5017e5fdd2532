"""Experiments on the live mesh (its own stack: an experiment applies to every Recommend, so the
session's other tests must not meet one): two variants - the ranker's order against retrieval
order - each user always in the same one, the shares within statistical tolerance, every reply
naming its variant, the retrieval-order variant really skipping the ranker without being marked
degraded, and the report's counts equal to the answers and the feedback sent. Durable across an
updater restart; stopped, nobody is assigned; bad definitions INVALID_ARGUMENT naming the field.
Variants pinning ranker parameter versions (an older published one, the shipped start one) are
served exactly those while the control follows the updater's current one; a version the
updater does not have is refused at PutExperiment, naming the field."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections import Counter, defaultdict

import grpc
import pytest
from scipy.stats import chisquare

from recmesh.client import Event, RecmeshClient
from recmesh.common.paths import var_paths
from recmesh.models.ranking.scorer import SHIPPED_PARAMS, newest_params
from recmesh.tools.devstack import Stack
from recmesh.v1 import common_pb2
from tests.integration.answers import report_when

pytestmark = pytest.mark.integration

USERS = 300
# Well-known MovieLens films (Toy Story, Heat, Star Wars, Pulp Fiction, Forrest Gump, Jurassic
# Park, Matrix, Fight Club, Shawshank, Lion King, Alien, Fargo).
FILMS = ["1", "6", "260", "296", "356", "480", "2571", "2959", "318", "364", "1214", "608"]
ANSWERS_PER_USER = 2
# Two versions "published" before the mesh starts (the shipped weights under other names, so the
# other tests' orders are the shipped ones): the updater serves the newer, the ranker follows it.
SHIPPED_VERSION = json.loads(newest_params(SHIPPED_PARAMS).read_text())["version"]
OLDER, NEWER = "ranker-online-20260101T000000-00001", "ranker-online-20260101T000000-00002"


@pytest.fixture(scope="module")
def mesh(catalog, tmp_path_factory):
    var = tmp_path_factory.mktemp("var-experiments")
    shutil.copytree(catalog / "catalog", var / "catalog")  # an empty event log: only this test's users
    published = var_paths(var).ranker_params
    published.mkdir(parents=True)
    for version in (OLDER, NEWER):
        spec = json.loads(newest_params(SHIPPED_PARAMS).read_text()) | {"version": version}
        (published / f"{version}.json").write_text(json.dumps(spec))
    # No exploration (answers are the ranker's order), no learning; the guardrail checks often
    # but waits for more users than this test has (tests/unit/test_experiment_guardrail.py tests
    # its decisions).
    env = {"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false",
           "RECMESH_UPDATER_GUARDRAIL_S": "0.5", "RECMESH_UPDATER_GUARDRAIL_MIN_USERS": "100000"}
    with Stack(var=var, encoder_backend="inprocess", env=env) as stack, \
            RecmeshClient(stack.address("gateway"), timeout_s=5.0) as client:
        yield stack, client


def _chosen(user: str, salt: str) -> float:
    """A per-user number in [0, 1) independent of the assignment's hash: who clicks, where."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{user}".encode()).digest()[:8], "big") / 2.0**64


def test_two_variants_sticky_shares_hold_and_report_counts_what_was_sent(mesh):
    stack, client = mesh
    name = f"live-{uuid.uuid4().hex[:8]}"
    stored = client.put_experiment(name, [{"name": "A", "share": 0.5},
                                          {"name": "B", "share": 0.5, "ranking": "retrieval_order"}])
    assert stored.state == common_pb2.EXPERIMENT_STATE_RUNNING and stored.control == "A"
    assert stored.primary_metric == "ctr_at_k" and stored.created_ms > 0

    users = [f"exp-{uuid.uuid4().hex[:10]}" for _ in range(USERS)]
    # A little history each (two films of their own), so that answers are personal and the
    # ranker's order differs from retrieval's.
    history = [Event(u, FILMS[int(_chosen(u, f"film{j}") * len(FILMS))], "view") for u in users for j in range(2)]
    for start in range(0, len(history), 500):
        client.track_events(history[start:start + 500])
    seen_variant: dict[str, set[str]] = defaultdict(set)
    first_answer = {}
    answers = Counter()
    for round_ in range(ANSWERS_PER_USER):
        for user in users:
            reply = client.recommend(user, k=10)
            assert reply.variant in (f"{name}/A", f"{name}/B"), reply.variant
            variant = reply.variant.rsplit("/", 1)[1]
            seen_variant[user].add(variant)
            answers[variant] += 1
            if variant == "B":  # the variant's design, not a fault: no ranker, not marked degraded
                assert "ranker" not in reply.versions, reply.versions
                assert not [r for r in reply.degraded if "ranker" in r], list(reply.degraded)
            elif not reply.degraded:
                assert "ranker" in reply.versions
            if round_ == 0:
                first_answer[user] = (variant, reply)

    # Sticky: every user saw one variant on every answer.
    assert all(len(v) == 1 for v in seen_variant.values())
    per_variant = Counter(next(iter(v)) for v in seen_variant.values())
    # Shares: 50/50 within tolerance (chi-square, p > 0.001: a false alarm once in a thousand runs).
    assert chisquare([per_variant["A"], per_variant["B"]]).pvalue > 0.001, per_variant

    # Every answer recorded (impressions leave in batches, off the request path).
    report = report_when(client, name, lambda r: {v: r["variants"].get(v, {}).get("answers") for v in "AB"}
                          == {v: answers[v] for v in "AB"})
    assert {v: report["variants"][v]["answers"] for v in "AB"} == {v: answers[v] for v in "AB"}
    assert {v: report["variants"][v]["users"] for v in "AB"} == {v: per_variant[v] for v in "AB"}

    # Feedback on the first answers: a third of the users click one shown item (at a position of
    # their own), half of those buy it; a click on an item not shown answers nothing.
    clicks, conversions, events = Counter(), Counter(), []
    for user, (variant, reply) in first_answer.items():
        if not reply.items or _chosen(user, "click") >= 1 / 3:
            continue
        item = reply.items[int(_chosen(user, "position") * len(reply.items))].item_id
        events.append(Event(user, item, "click", request_id=reply.request_id))
        clicks[variant] += 1
        if _chosen(user, "buy") < 0.5:
            events.append(Event(user, item, "purchase", request_id=reply.request_id))
            conversions[variant] += 1
    shown_first = {i.item_id for i in first_answer[users[0]][1].items}
    not_shown = next(str(i) for i in range(1, 100) if str(i) not in shown_first)
    events.append(Event(users[0], not_shown, "view", request_id=first_answer[users[0]][1].request_id))
    for start in range(0, len(events), 100):
        client.track_events(events[start:start + 100])

    def counted(r):
        return all(r["variants"][v]["clicks"] == clicks[v] and r["variants"][v]["conversions"] == conversions[v]
                   for v in "AB")

    report = report_when(client, name, counted)
    for v in "AB":
        got = report["variants"][v]
        assert (got["answers"], got["clicks"], got["conversions"]) == (answers[v], clicks[v], conversions[v]), v
        ctr = got["metrics"]["ctr_at_k"]
        assert ctr["low"] <= clicks[v] / answers[v] <= ctr["high"]
        assert got["latency_ms"]["p50"] > 0
    assert set(report["against_control"]) == {"B"}
    assert report["against_control"]["B"]["guardrail"]["stop"] is False  # too few users for it

    # Durable: the updater restarted, the experiment is still running and users keep their variant.
    stack.restart("updater")
    listed = {e.name: e for e in client.list_experiments()}
    assert listed[name].state == common_pb2.EXPERIMENT_STATE_RUNNING
    probe = users[:20]
    assert all(client.recommend(u, k=5).variant == f"{name}/{next(iter(seen_variant[u]))}" for u in probe)

    # One runs at a time.
    with pytest.raises(grpc.RpcError) as err:
        client.put_experiment(f"{name}-2", [{"name": "x", "share": 0.5}, {"name": "y", "share": 0.5}])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    stopped = client.stop_experiment(name, reason="test over")
    assert stopped.state == common_pb2.EXPERIMENT_STATE_STOPPED and stopped.stopped_reason == "test over"
    after = client.recommend(users[0], k=5)
    assert after.variant == ""
    assert "ranker" in after.versions or after.degraded  # served the defaults: the ranker's order again
    assert client.experiment_report(name)["state"] == "STOPPED"


@pytest.mark.parametrize("variants, field", [
    ([{"name": "A", "share": 0.5}, {"name": "B", "share": 0.4}], "experiment.variants"),
    ([{"name": "A", "share": 1.0}], "experiment.variants"),
    ([{"name": "A", "share": 0.5}, {"name": "A", "share": 0.5}], "experiment.variants[1].name"),
    ([{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, "diversity": 2.0}],
     "experiment.variants[1].overrides.diversity"),
    ([{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, "exploration": -0.1}],
     "experiment.variants[1].overrides.exploration"),
    ([{"name": "A", "share": 0.0}, {"name": "B", "share": 1.0}], "experiment.variants[0].share"),
])
def test_bad_experiments_are_invalid_argument_naming_the_field(mesh, variants, field):
    _, client = mesh
    with pytest.raises(grpc.RpcError) as err:
        client.put_experiment("bad-one", variants)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:"), err.value.details()


def test_unknown_experiments_are_not_found_and_bad_names_invalid(mesh):
    _, client = mesh
    for call in (client.experiment_report, client.stop_experiment):
        with pytest.raises(grpc.RpcError) as err:
            call("never-made")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details().startswith("name:")
        with pytest.raises(grpc.RpcError) as err:
            call("no spaces allowed")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("name:")
    with pytest.raises(grpc.RpcError) as err:
        client.put_experiment("x", [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}], control="C")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(
        "experiment.control:")


def _serving(client: RecmeshClient, version: str, timeout_s: float = 20.0) -> None:
    """Waits until the ranker serves `version` (it follows the updater's stream after starting
    from its own start version)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = client.recommend(f"probe-{uuid.uuid4().hex[:8]}", k=5)
        if reply.versions.get("ranker") == version:
            return
        assert time.monotonic() < deadline, f"the ranker serves {reply.versions.get('ranker')!r}, not {version!r}"
        time.sleep(0.2)


def test_variants_pinning_ranker_versions_are_served_those_while_the_control_follows_the_current(mesh):
    stack, client = mesh
    _serving(client, NEWER)
    name = f"pinned-{uuid.uuid4().hex[:8]}"
    # B: an older published version (the ranker asks the updater for it); C: the shipped start one.
    stored = client.put_experiment(name, [{"name": "A", "share": 0.4},
                                          {"name": "B", "share": 0.3, "ranker_version": OLDER},
                                          {"name": "C", "share": 0.3, "ranker_version": SHIPPED_VERSION}])
    assert [v.overrides.ranker_version for v in stored.variants] == ["", OLDER, SHIPPED_VERSION]
    expected = {"A": NEWER, "B": OLDER, "C": SHIPPED_VERSION}
    served = defaultdict(Counter)
    users = [f"pin-{uuid.uuid4().hex[:10]}" for _ in range(60)]
    client.track_events([Event(u, FILMS[int(_chosen(u, "pinfilm") * len(FILMS))], "view") for u in users])
    try:
        for user in users:
            reply = client.recommend(user, k=10)
            variant = reply.variant.rsplit("/", 1)[1]
            # A pinned version is no ranker failure (other stages may be late on a loaded machine).
            assert "fallback:retrieval_order" not in reply.degraded, (variant, list(reply.degraded))
            # A brownout skipping the ranker on a loaded machine answers unranked ("" in the report).
            served[variant][reply.versions.get("ranker", "")] += 1
        assert set(served) == {"A", "B", "C"}, served
        for variant, versions in served.items():
            assert set(versions) - {""} == {expected[variant]}, (variant, versions)
        # Every answer recorded for the report, as any variant's, with the version that ranked it.
        report = report_when(client, name, lambda r: all(
            r["variants"].get(v, {}).get("answers") == sum(served[v].values()) for v in "ABC"))
        assert {v: report["variants"][v]["answers"] for v in "ABC"} == {v: sum(served[v].values()) for v in "ABC"}
        assert {v: report["variants"][v]["ranker_versions"] for v in "ABC"} == {v: dict(served[v]) for v in "ABC"}
    finally:
        client.stop_experiment(name, reason="test over")


def test_an_unknown_ranker_version_is_refused_at_put_naming_the_field(mesh):
    _, client = mesh
    with pytest.raises(grpc.RpcError) as err:
        client.put_experiment("pin-unknown", [{"name": "A", "share": 0.5},
                                              {"name": "B", "share": 0.5, "ranker_version": "ranker-never-published"}])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details().startswith("experiment.variants[1].overrides.ranker_version:"), err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.put_experiment("pin-bad", [{"name": "A", "share": 0.5},
                                          {"name": "B", "share": 0.5, "ranker_version": "../../etc/passwd"}])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("experiment.variants[1].overrides.ranker_version:"), err.value.details()
    assert "pin-unknown" not in {e.name for e in client.list_experiments()}


def test_a_pinned_version_gone_before_first_use_answers_retrieval_order_saying_why(mesh):
    stack, client = mesh
    _serving(client, NEWER)
    published = var_paths(stack.var).ranker_params
    version = f"ranker-online-20260101T000000-{uuid.uuid4().hex[:5]}"  # published while the mesh runs
    spec = json.loads(newest_params(SHIPPED_PARAMS).read_text()) | {"version": version}
    (published / f"{version}.json").write_text(json.dumps(spec))
    name = f"gone-{uuid.uuid4().hex[:8]}"
    client.put_experiment(name, [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, "ranker_version": version}])
    try:
        (published / f"{version}.json").unlink()  # removed by hand before any answer asked for it
        seen = set()
        for user in (f"gone-{uuid.uuid4().hex[:10]}" for _ in range(40)):
            reply = client.recommend(user, k=10)
            variant = reply.variant.rsplit("/", 1)[1]
            seen.add(variant)
            if variant == "B":  # the ranker refused (NOT_FOUND), the gateway fell back, saying why
                assert reply.items and "ranker" not in reply.versions, reply.versions
                assert {"ranker:not_found", "fallback:retrieval_order"} <= set(reply.degraded), list(reply.degraded)
            else:
                assert "fallback:retrieval_order" not in reply.degraded
                assert reply.versions.get("ranker", NEWER) == NEWER  # (absent only in a brownout)
        assert seen == {"A", "B"}
    finally:
        client.stop_experiment(name, reason="test over")
