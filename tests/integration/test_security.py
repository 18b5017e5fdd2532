"""The public API behind bearer tokens with scopes and a per-client rate limit: a gateway
replica with API keys on the shared mesh. Every RPC refuses a call without a token, with an
unknown token and with a token lacking its scope; health stays open."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recmesh.common.auth import make_key
from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc
from services.gateway.server import METHOD_SCOPES
from tests.integration.answers import undegraded

pytestmark = pytest.mark.integration
R = recommendations_pb2

# One small, valid request per public RPC (user and item ids of this test only).
CALLS = {
    "Recommend": R.RecommendRequest(user_id="sec-user", k=3),
    "SimilarItems": R.SimilarItemsRequest(item_id="1", user_id="sec-user", k=3),
    "MergeUsers": common_pb2.MergeUsersRequest(from_user_id="sec-guest", into_user_id="sec-user"),
    "TrackEvents": R.TrackEventsRequest(events=[common_pb2.Event(
        event_id="sec-1", user_id="sec-user", item_id="1", type=common_pb2.EventType.EVENT_TYPE_VIEW)]),
    "UpsertItems": R.UpsertItemsRequest(items=[common_pb2.Item(item_id="sec-item", title="Security test film",
                                                               categories=["Drama"])]),
    "DeleteItems": R.DeleteItemsRequest(item_ids=["sec-item"]),
    "GetUserProfile": R.GetUserProfileRequest(user_id="sec-user"),
    "DeleteUser": R.DeleteUserRequest(user_id="sec-user"),
    # A rule of a surface no other test names.
    "PutRule": common_pb2.PutRuleRequest(rule=common_pb2.StoredRule(
        rule=common_pb2.Rule(name="sec-rule", exclude=True, match=common_pb2.ItemMatch(item_ids=["1"])),
        surfaces=["sec-surface"])),
    "ListRules": common_pb2.ListRulesRequest(),
    "DeleteRule": common_pb2.DeleteRuleRequest(name="sec-rule"),
    # Variants that serve alike (no overrides); `secured` stops it when the module ends. The
    # report and stop name one `secured` started and stopped already (stopping it again is OK).
    "PutExperiment": common_pb2.PutExperimentRequest(experiment=common_pb2.Experiment(
        name="sec-exp", variants=[common_pb2.ExperimentVariant(name="a", share=0.5),
                                  common_pb2.ExperimentVariant(name="b", share=0.5)])),
    "ListExperiments": common_pb2.ListExperimentsRequest(),
    "StopExperiment": common_pb2.StopExperimentRequest(name="sec-exp-stopped"),
    "GetExperimentReport": common_pb2.GetExperimentReportRequest(name="sec-exp-stopped"),
}


@pytest.fixture(scope="module")
def secured(stack):
    tokens, lines = {}, []
    for scope in ("recommend", "track", "catalog:write", "admin"):
        tokens[scope], line = make_key([scope], f"only-{scope.replace(':', '-')}")
        lines.append(line)
    env = {"RECMESH_GATEWAY_API_KEYS": ";".join(lines)}
    address = stack.start_replica("gateway", "secured", env=env)
    limited = stack.start_replica("gateway", "limited", env={
        "RECMESH_GATEWAY_API_KEYS": lines[0], "RECMESH_GATEWAY_RATE_LIMIT_PER_S": "2",
        "RECMESH_GATEWAY_RATE_LIMIT_BURST": "5"})
    with grpc.insecure_channel(address) as channel, grpc.insecure_channel(limited) as limited_channel:
        admin = recommendations_pb2_grpc.RecommendationsStub(channel)
        metadata = (("authorization", f"Bearer {tokens['admin']}"),)
        admin.PutExperiment(common_pb2.PutExperimentRequest(experiment=common_pb2.Experiment(
            name="sec-exp-stopped", variants=CALLS["PutExperiment"].experiment.variants)), timeout=10,
            metadata=metadata)
        admin.StopExperiment(CALLS["StopExperiment"], timeout=10, metadata=metadata)
        try:
            yield channel, limited_channel, tokens
        finally:  # the session's other tests are served outside any experiment
            try:
                admin.StopExperiment(common_pb2.StopExperimentRequest(name="sec-exp"), timeout=10, metadata=metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise


def call(channel, method: str, token: str | None):
    stub = recommendations_pb2_grpc.RecommendationsStub(channel)
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    return getattr(stub, method)(CALLS[method], timeout=10, metadata=metadata)


def test_every_public_rpc_has_a_scope():
    service = recommendations_pb2.DESCRIPTOR.services_by_name["Recommendations"]
    assert {f"/recmesh.v1.Recommendations/{m.name}" for m in service.methods} == set(METHOD_SCOPES)
    assert set(CALLS) == {m.name for m in service.methods}


@pytest.mark.parametrize("method", sorted(CALLS))
def test_rpc_refuses_missing_unknown_and_wrong_scope_tokens(secured, method):
    channel, _, tokens = secured
    needed = METHOD_SCOPES[f"/recmesh.v1.Recommendations/{method}"]
    for token, code in [(None, grpc.StatusCode.UNAUTHENTICATED), ("rmk_not-a-key", grpc.StatusCode.UNAUTHENTICATED),
                        ("", grpc.StatusCode.UNAUTHENTICATED),
                        *[(t, grpc.StatusCode.PERMISSION_DENIED) for s, t in tokens.items() if s != needed]]:
        with pytest.raises(grpc.RpcError) as err:
            call(channel, method, token)
        assert err.value.code() == code, (method, token)
        assert err.value.details().startswith("authorization:")
    call(channel, method, tokens[needed])  # the right scope: served


def test_health_needs_no_token(secured):
    channel, _, _ = secured
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_client_over_its_rate_is_told_resource_exhausted(secured):
    _, limited, tokens = secured
    codes = []
    for _ in range(12):
        try:
            call(limited, "Recommend", tokens["recommend"])
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert codes[:5] == [grpc.StatusCode.OK] * 5  # the burst
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[5:]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_delete_user_leaves_no_trace_in_any_store_or_log(stack, client, user):
    """The user's events reach the log file, state, the gateway's caches and the online
    learner's impressions; after DeleteUser none of it holds the user any more - down to the
    bytes of the SQLite file and its write-ahead log."""
    from recmesh.client import Event

    secret_query = f"private-query-{user}"
    client.track_events([Event(user, item, "click") for item in ("1", "260", "1196")])
    reply = client.recommend(user, query=secret_query, k=5)
    client.track_events([Event(user, reply.items[0].item_id, "click", request_id=reply.request_id)])
    assert client.profile(user).event_count == 4
    assert client.delete_user(user).events_deleted == 4
    profile = client.profile(user)
    assert profile.event_count == 0 and not profile.recent_events
    # A cold user again, exactly like one never seen: no cached interest, no skip counts.
    never_seen = undegraded(lambda: client.recommend(f"{user}-never-seen", k=5))
    deleted = undegraded(lambda: client.recommend(user, k=5))
    assert [it.item_id for it in deleted.items] == [it.item_id for it in never_seen.items]
    log_dir = stack.var / "updater"
    for path in log_dir.glob("events.sqlite*"):
        assert user.encode() not in path.read_bytes(), path.name
    for path in (stack.var / "logs").glob("*.log"):  # logs never hold the typed text or the user
        text = path.read_text(errors="replace")
        assert secret_query not in text and user not in text, path.name


def _wait_serving(channel, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError("not serving")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from recmesh.tools import devcerts

    return devcerts.make(tmp_path_factory.mktemp("certs"))


def test_public_port_serves_tls_only(stack, certs):
    address = stack.start_replica("gateway", "tls", wait=False, env={
        "RECMESH_GATEWAY_TLS_CERT_FILE": str(certs["service.pem"]),
        "RECMESH_GATEWAY_TLS_KEY_FILE": str(certs["service.key"])})
    tls = grpc.ssl_channel_credentials(certs["ca.pem"].read_bytes())
    with grpc.secure_channel(address, tls) as channel:
        _wait_serving(channel)
        assert len(call(channel, "Recommend", None).items) == 3
    with grpc.insecure_channel(address) as plaintext, pytest.raises(grpc.RpcError) as err:
        call(plaintext, "Recommend", None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_internal_service_wants_a_client_certificate_and_the_internal_credential(stack, certs):
    """A ranker replica with mTLS and an internal token; the client side is recmesh's own
    channel factory (what the gateway and the ranker use)."""
    from types import SimpleNamespace

    from recmesh.common.transport import aio_channel
    from recmesh.v1 import ranker_pb2, ranker_pb2_grpc

    tls = {"RECMESH_RANKER_TLS_CERT_FILE": str(certs["service.pem"]),
           "RECMESH_RANKER_TLS_KEY_FILE": str(certs["service.key"]),
           "RECMESH_RANKER_TLS_CLIENT_CA_FILE": str(certs["ca.pem"]), "RECMESH_RANKER_INTERNAL_TOKEN": "s3cret"}
    address = stack.start_replica("ranker", "internal", wait=False, env=tls)
    ca, cert, key = (certs[n].read_bytes() for n in ("ca.pem", "service.pem", "service.key"))
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert)) as mtls:
        _wait_serving(mtls)  # health needs a certificate, not the token (probes)
        with pytest.raises(grpc.RpcError) as err:
            ranker_pb2_grpc.RankerStub(mtls).Rank(ranker_pb2.RankRequest(k=1), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca)) as no_cert, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(no_cert).Check(health_pb2.HealthCheckRequest(), timeout=5)

    async def with_both():
        settings = SimpleNamespace(tls_ca_file=certs["ca.pem"], tls_cert_file=certs["service.pem"],
                                   tls_key_file=certs["service.key"], internal_token="s3cret")
        async with aio_channel(address, settings, []) as channel:
            return await ranker_pb2_grpc.RankerStub(channel).Rank(ranker_pb2.RankRequest(k=1), timeout=5)

    assert asyncio.run(with_both()).model_version  # an empty list, served
