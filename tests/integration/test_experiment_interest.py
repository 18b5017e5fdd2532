"""An experiment between two interest models on the live mesh (the real tritonserver binary
serving both as interest_encoder's version folders, Qdrant Edge, the five services): the var's
served model and a second real artifact installed beside it with `recmesh interest-models add`
(the served one with its sequence weights moved: the same item tower, so the same catalog space).
Each user always gets their variant's model, named in every reply's versions; for one and the same
history the two models give different interests (the encoder asked directly) and different
answers; the report counts each variant's answers by the encoder version that encoded them. A
model the encoder does not serve, and one it serves but trained for another catalog space, are
refused at PutExperiment with FAILED_PRECONDITION naming the variant's field."""

from __future__ import annotations

import shutil
import uuid
from collections import Counter, defaultdict

import grpc
import numpy as np
import pytest

from recmesh.client import Event, RecmeshClient
from recmesh.common.paths import served_artifact, var_paths
from recmesh.common.vectors import first_row, to_matrix
from recmesh.models.interest.served import artifact_identity
from recmesh.tools import interest_models
from recmesh.tools.devstack import Stack
from recmesh.tools.eval.experiment_replay import perturbed_interest_model
from recmesh.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from tests.integration.answers import report_when, undegraded

pytestmark = pytest.mark.integration

USERS = 60
ANSWERS_PER_USER = 2
# One history for everyone (Toy Story, Star Wars, Matrix): the variants' answers differ only by model.
FILMS = ["1", "260", "2571"]
SECOND, OTHER_SPACE = "interest-b", "interest-other-space"


@pytest.fixture(scope="module")
def mesh(catalog, tmp_path_factory):
    var = tmp_path_factory.mktemp("var-interest-experiments")
    shutil.copytree(catalog / "catalog", var / "catalog")  # an empty event log: only this test's users
    work = tmp_path_factory.mktemp("artifacts")
    served = served_artifact(catalog)
    # The second model, installed through the product's path (it checks the item space).
    interest_models.add(perturbed_interest_model(served, work / "b.pt", "b-trained", scale=0.5, seed=7), SECOND, var)
    # One trained for another catalog space: `add` refuses it, so it is placed by hand - the
    # encoder serves it, but no variant may use it.
    other = perturbed_interest_model(served, work / "x.pt", OTHER_SPACE, scale=0.5, seed=8, item_tower=True)
    with pytest.raises(ValueError, match="item space"):
        interest_models.add(other, None, var)
    (var_paths(var).interest_variants / OTHER_SPACE).mkdir(parents=True)
    shutil.copy2(other, var_paths(var).interest_variants / OTHER_SPACE / "interest_model.pt")
    env = {"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false",
           "RECMESH_UPDATER_GUARDRAIL_S": "0.5", "RECMESH_UPDATER_GUARDRAIL_MIN_USERS": "100000"}
    with Stack(var=var, interest_model=served, env=env) as stack, \
            RecmeshClient(stack.address("gateway"), timeout_s=5.0) as client:
        yield stack, client, artifact_identity(served)[0]


def test_the_encoder_serves_both_models_from_triton_and_they_differ_for_one_history(mesh):
    stack, _, default = mesh
    with grpc.insecure_channel(stack.address("encoder")) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        listed = stub.ListInterestModels(encoder_pb2.ListInterestModelsRequest(), timeout=5)
        assert [(m.version, m.default, m.catalog_compatible) for m in listed.models] == [
            (default, True, True), (SECOND, False, True), (OTHER_SPACE, False, False)]
        history = [encoder_pb2.HistoryEntry(item_id=f, type=common_pb2.EVENT_TYPE_VIEW, timestamp_ms=k * 60_000)
                   for k, f in enumerate(FILMS)]
        vectors = np.random.default_rng(0).normal(size=(len(FILMS), 64)).astype(np.float32)
        replies = {v: stub.EncodeInterest(encoder_pb2.EncodeInterestRequest(
            history=history, item_vectors=to_matrix(vectors), interest_model_version=v), timeout=5)
            for v in ("", default, SECOND)}
    assert replies[""].model_version == replies[default].model_version
    assert replies[""].model_version.endswith(f"+llm-seq/{default}@triton")
    assert replies[SECOND].model_version.endswith(f"+llm-seq/{SECOND}@triton")
    a, b = (first_row(replies[v].interest, "interest") for v in (default, SECOND))
    assert not np.allclose(a, b, atol=1e-3)
    assert np.allclose(first_row(replies[""].interest, "interest"), a)


def test_two_interest_models_each_user_always_gets_theirs_named_in_every_reply(mesh):
    stack, client, default = mesh
    name = f"interest-{uuid.uuid4().hex[:8]}"
    stored = client.put_experiment(name, [{"name": "A", "share": 0.5},
                                          {"name": "B", "share": 0.5, "interest_model": SECOND}])
    assert [v.overrides.interest_model_version for v in stored.variants] == ["", SECOND]
    expected = {"A": f"+llm-seq/{default}@triton", "B": f"+llm-seq/{SECOND}@triton"}
    try:
        users = [f"im-{uuid.uuid4().hex[:10]}" for _ in range(USERS)]
        client.track_events([Event(u, f, "view") for u in users for f in FILMS])
        seen: dict[str, set[str]] = defaultdict(set)
        encoders: dict[str, set[str]] = defaultdict(set)
        answers, lists = Counter(), defaultdict(set)
        for _ in range(ANSWERS_PER_USER):
            for user in users:
                reply = undegraded(lambda u=user: client.recommend(u, k=10))
                variant = reply.variant.rsplit("/", 1)[1]
                seen[user].add(variant)
                encoders[variant].add(reply.versions["encoder"])
                answers[variant] += 1
                lists[variant].add(tuple(i.item_id for i in reply.items))
        assert all(len(v) == 1 for v in seen.values())  # sticky
        assert set(answers) == {"A", "B"}, answers
        for variant, versions in encoders.items():  # every reply named its variant's model, only that
            assert len(versions) == 1 and next(iter(versions)).endswith(expected[variant]), (variant, versions)
        # One history, one model: one answer per variant; the two models answer differently.
        assert len(lists["A"]) == 1 and len(lists["B"]) == 1 and lists["A"] != lists["B"], lists
        report = report_when(client, name, lambda r: {v: r["variants"].get(v, {}).get("answers") for v in "AB"}
                              == {v: answers[v] for v in "AB"})
        for variant in "AB":
            shown = report["variants"][variant]
            assert shown["answers"] == answers[variant]
            assert shown["encoder_versions"] == {next(iter(encoders[variant])): answers[variant]}
        assert report["variants"]["B"]["interest_model_version"] == SECOND
        assert report["variants"]["A"]["interest_model_version"] == ""
    finally:
        client.stop_experiment(name, reason="test done")


@pytest.mark.parametrize(("model", "says"), [("never-installed", "serves no interest model"),
                                             (OTHER_SPACE, "trained for another catalog space")])
def test_a_model_not_served_or_of_another_catalog_space_is_refused_naming_the_field(mesh, model, says):
    _, client, _ = mesh
    with pytest.raises(grpc.RpcError) as err:
        client.put_experiment(f"refused-{uuid.uuid4().hex[:6]}", [{"name": "A", "share": 0.5},
                                                                  {"name": "B", "share": 0.5, "interest_model": model}])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details().startswith("experiment.variants[1].overrides.interest_model_version:"), \
        err.value.details()
    assert says in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.put_experiment("malformed", [{"name": "A", "share": 0.5},
                                            {"name": "B", "share": 0.5, "interest_model": "../x"}])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("experiment.variants[1].overrides.interest_model_version:")
