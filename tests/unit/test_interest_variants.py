"""Interest models as experiment variants: a var serves further interest artifacts beside its own
(Triton version folders 2, 3, ...; the in-process encoder too), each named by its version; the
encoder encodes with the one a request names, refusing a malformed name (INVALID_ARGUMENT), one
it does not serve or one trained for another catalog space (FAILED_PRECONDITION); the gateway
passes the variant's model, keeps each user's interest and the cold-start interest per model
(never one model's vector for another's user), refuses at PutExperiment a model the encoder does
not serve or one of another item space, naming the field; the report counts the answers by the
encoder version that encoded them."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from recmesh.client import variant_proto
from recmesh.common.errors import InvalidArgument
from recmesh.common.paths import SHIPPED_ARTIFACT, var_paths
from recmesh.common.vectors import first_row, to_matrix
from recmesh.experiments.outcomes import OutcomeLog
from recmesh.experiments.report import METRICS, text
from recmesh.experiments.wire import check_experiment_proto
from recmesh.models.interest.served import ServedInterestModel, artifact_identity
from recmesh.models.interest.versions import parse_versions
from recmesh.tools import interest_models
from recmesh.tools.cli import _variant_flag
from recmesh.tools.eval.experiment_replay import perturbed_interest_model
from recmesh.tools.tritonserver import assemble_repository
from recmesh.v1 import common_pb2, encoder_pb2, updater_pb2
from services.encoder.backends import InProcessBackend
from services.encoder.config import EncoderSettings
from services.encoder.server import EncoderServicer
from services.gateway.experiments import Arm
from services.gateway.shedding import Plan
from tests.unit.test_answer_paths import DIM, Context, Mesh, gateway, recommend, track
from tests.unit.test_triton_models import FakeTensor, load_model, pb_utils  # noqa: F401

ET = common_pb2.EventType



@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("artifacts")
    return {"b": perturbed_interest_model(SHIPPED_ARTIFACT, folder / "b.pt", "interest-b", 0.5),
            "other-space": perturbed_interest_model(SHIPPED_ARTIFACT, folder / "x.pt", "interest-x", 0.5,
                                                          item_tower=True)}


# -- the artifact's catalog space -------------------------------------------------------------

def test_the_item_space_follows_the_item_tower_only(artifacts):
    _, shipped = artifact_identity(SHIPPED_ARTIFACT)
    name, space = artifact_identity(artifacts["b"])
    assert name == "interest-b" and space == shipped  # the sequence part moved, the item tower did not
    assert artifact_identity(artifacts["other-space"])[1] != shipped
    b = ServedInterestModel(artifacts["b"])
    assert b.name == "interest-b" and b.item_space == shipped


# -- the var's interest models (`recmesh interest-models`) --------------------------------------

def test_add_installs_a_model_of_the_catalog_space_and_refuses_another(tmp_path, artifacts):
    var = tmp_path / "var"
    installed = interest_models.add(artifacts["b"], "b-renamed", var)
    assert installed == var_paths(var).interest_variants / "b-renamed" / "interest_model.pt"
    assert artifact_identity(installed)[0] == "b-renamed"  # the name is the version the model answers by
    rows = interest_models.listing(var)
    assert [(r["version"], r["default"], r["catalog_compatible"]) for r in rows] == [
        (artifact_identity(SHIPPED_ARTIFACT)[0], True, True), ("b-renamed", False, True)]
    with pytest.raises(ValueError, match="item space"):
        interest_models.add(artifacts["other-space"], None, var)
    with pytest.raises(ValueError, match="served already"):
        interest_models.add(artifacts["b"], "b-renamed", var)
    with pytest.raises(ValueError, match="1..128"):
        interest_models.add(artifacts["b"], "../escape", var)
    interest_models.remove("b-renamed", var)
    assert len(interest_models.listing(var)) == 1


# -- Triton: version folders ---------------------------------------------------------------------

def test_the_repository_serves_each_model_in_its_own_version_folder(tmp_path, artifacts, pb_utils):  # noqa: F811
    repo = assemble_repository(tmp_path / "models", SHIPPED_ARTIFACT,
                               interest_variants=[artifacts["b"], artifacts["other-space"]])
    folder = repo / "interest_encoder"
    config_text = (folder / "config.pbtxt").read_text()
    assert "version_policy: { all { } }" in config_text
    from google.protobuf.json_format import MessageToDict

    from tests.unit.test_triton_models import parse

    config = MessageToDict(parse(folder / "config.pbtxt"), preserving_proto_field_name=True)
    versions = parse_versions(config["parameters"]["versions"]["string_value"], "")
    shipped_name, shipped_space = artifact_identity(SHIPPED_ARTIFACT)
    assert versions == {1: (shipped_name, shipped_space), 2: ("interest-b", shipped_space),
                        3: ("interest-x", artifact_identity(artifacts["other-space"])[1])}
    for number in ("2", "3"):
        assert (folder / number / "model.py").is_file() and (folder / number / "interest_model.pt").is_file()
    vectors = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    request = {"ITEM_VECTORS": FakeTensor("", vectors), "EVENT_TYPES": FakeTensor("", np.full(3, 5, np.int32)),
               "EVENT_VALUES": FakeTensor("", np.full(3, 4.0, np.float32)),
               "TIMESTAMPS_MS": FakeTensor("", np.arange(3, dtype=np.int64) * 60_000)}
    answers = {}
    for number in ("1", "2"):
        model = load_model("interest_encoder")
        model.initialize({"model_config": json.dumps(config), "model_repository": str(folder),
                          "model_version": number})
        answers[number] = model.execute([request])[0].output_tensors[0].as_numpy()
    assert not np.allclose(answers["1"], answers["2"])  # two models, two interests
    # A folder whose artifact is not the one the config names is refused at load.
    shutil.copy2(artifacts["b"], folder / "3" / "interest_model.pt")
    with pytest.raises(ValueError, match="config.pbtxt names interest-x"):
        load_model("interest_encoder").initialize({"model_config": json.dumps(config),
                                                   "model_repository": str(folder), "model_version": "3"})


def test_two_artifacts_of_one_version_are_refused(tmp_path):
    copy = shutil.copy2(SHIPPED_ARTIFACT, tmp_path / "same.pt")
    with pytest.raises(ValueError, match="served already"):
        assemble_repository(tmp_path / "models", SHIPPED_ARTIFACT, interest_variants=[Path(copy)])


# -- the encoder ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder(artifacts, tmp_path_factory):
    """The in-process encoder serving the shipped model and, as variants, interest-b (the
    catalog's space) and interest-x (another space)."""
    variants = tmp_path_factory.mktemp("variants")
    for key in ("b", "other-space"):
        name = artifact_identity(artifacts[key])[0]
        (variants / name).mkdir()
        shutil.copy2(artifacts[key], variants / name / "interest_model.pt")
    settings = EncoderSettings(backend="inprocess", interest_model=SHIPPED_ARTIFACT, interest_variants=variants)
    backend = InProcessBackend(settings)
    servicer = EncoderServicer(settings, backend)
    asyncio.run(servicer.warmup())
    yield servicer
    asyncio.run(backend.close())


class Aborted(Exception):
    def __init__(self, code, details):
        super().__init__(details)
        self.code, self.details = code, details


class AbortingContext:
    def time_remaining(self):
        return None

    def invocation_metadata(self):
        return ()

    async def abort(self, code, details):
        raise Aborted(code, details)


def encode(servicer, version: str) -> encoder_pb2.EncodeInterestResponse:
    history = [encoder_pb2.HistoryEntry(item_id=f"i{k}", type=ET.EVENT_TYPE_VIEW, timestamp_ms=k * 60_000)
               for k in range(3)]
    vectors = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    request = encoder_pb2.EncodeInterestRequest(history=history, item_vectors=to_matrix(vectors),
                                                interest_model_version=version)
    return asyncio.run(servicer.EncodeInterest(request, AbortingContext()))


def test_the_encoder_lists_its_models_with_their_catalog_space(encoder):
    listed = asyncio.run(encoder.ListInterestModels(encoder_pb2.ListInterestModelsRequest(), AbortingContext()))
    shipped_name, shipped_space = artifact_identity(SHIPPED_ARTIFACT)
    assert [(m.version, m.default, m.catalog_compatible) for m in listed.models] == [
        (shipped_name, True, True), ("interest-b", False, True), ("interest-x", False, False)]
    assert listed.models[1].item_space == shipped_space != listed.models[2].item_space


def test_the_encoder_encodes_with_the_model_named_and_says_which(encoder, artifacts, tmp_path):
    default, named_default, b = encode(encoder, ""), encode(encoder, artifact_identity(SHIPPED_ARTIFACT)[0]), \
        encode(encoder, "interest-b")
    assert default.model_version == named_default.model_version and "llm-seq/interest-b@" in b.model_version
    assert "llm-seq/interest-b" not in default.model_version
    assert np.allclose(first_row(default.interest, "i"), first_row(named_default.interest, "i"))
    assert not np.allclose(first_row(default.interest, "i"), first_row(b.interest, "i"))
    # interest-b's answer is that artifact's own, as the model computes it.
    vectors = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    reference = ServedInterestModel(artifacts["b"], cache_dir=tmp_path).interest(
        vectors, [ET.EVENT_TYPE_VIEW] * 3, [0.0] * 3, [0, 60_000, 120_000])
    assert np.allclose(first_row(b.interest, "i"), reference, atol=1e-5)


@pytest.mark.parametrize(("version", "code", "says"), [
    ("../etc", grpc.StatusCode.INVALID_ARGUMENT, "interest_model_version: a parameter version"),
    ("never-installed", grpc.StatusCode.FAILED_PRECONDITION, "interest_model_version: no interest model"),
    ("interest-x", grpc.StatusCode.FAILED_PRECONDITION, "interest_model_version: 'interest-x' was trained for"),
])
def test_the_encoder_refuses_a_model_it_cannot_serve_naming_the_field(encoder, version, code, says):
    with pytest.raises(Aborted) as err:
        encode(encoder, version)
    assert err.value.code == code and err.value.details.startswith(says), err.value.details


# -- the experiment's definition -------------------------------------------------------------------

def test_a_malformed_interest_model_is_invalid_naming_the_field():
    for bad in ("../x", ".hidden", "a b", "x" * 129):
        e = common_pb2.Experiment(name="e", variants=[
            variant_proto({"name": "A", "share": 0.5}),
            variant_proto({"name": "B", "share": 0.5, "interest_model": bad})])
        with pytest.raises(InvalidArgument) as err:
            check_experiment_proto(e)
        assert err.value.field == "experiment.variants[1].overrides.interest_model_version"


def test_the_flag_and_the_variant_name_the_interest_model():
    assert _variant_flag("B=0.5:interest_model=interest-b,diversity=0.2") == {
        "name": "B", "share": 0.5, "interest_model": "interest-b", "diversity": 0.2}
    with pytest.raises(argparse.ArgumentTypeError):
        _variant_flag("B=0.5:interest=interest-b")
    overrides = variant_proto({"name": "B", "share": 0.5, "interest_model": "interest-b"}).overrides
    assert overrides.interest_model_version == "interest-b"
    assert Arm("e", "B", overrides).serve(None, Plan()) == Plan(interest_model_version="interest-b")


# -- the gateway ---------------------------------------------------------------------------------

class ModelsMesh(Mesh):
    """An encoder serving two interest models of the catalog's space ("" = "m-a", "m-b") and one
    of another ("m-x"): each answers its own interest, and a cold-start interest."""

    VECTORS = {"m-a": 0.25, "m-b": -0.5}

    def __init__(self):
        super().__init__()
        self.stored: list = []

    async def EncodeInterest(self, request, timeout):
        self._call("EncodeInterest", request, timeout)
        model = request.interest_model_version or "m-a"
        q = np.ones((1, DIM), np.float32) if request.query else None
        return encoder_pb2.EncodeInterestResponse(
            interest=to_matrix(np.full((1, DIM), self.VECTORS[model], np.float32)), query_vector=to_matrix(q),
            model_version=f"lm+llm-seq/{model}@test")

    async def GetUserState(self, request, timeout):
        """Tracked items are the user's recent events too (a history the encoder is asked about)."""
        state = await super().GetUserState(request, timeout)
        state.recent.extend(common_pb2.Event(user_id=request.user_id, item_id=i, type=ET.EVENT_TYPE_VIEW,
                                             timestamp_ms=1_000 + k) for k, i in enumerate(state.seen_item_ids))
        state.event_count = len(state.seen_item_ids)
        return state

    async def ListInterestModels(self, request, timeout):
        self._call("ListInterestModels", request, timeout)
        return encoder_pb2.ListInterestModelsResponse(models=[
            encoder_pb2.InterestModel(version="m-a", default=True, item_space="s1", catalog_compatible=True),
            encoder_pb2.InterestModel(version="m-b", item_space="s1", catalog_compatible=True),
            encoder_pb2.InterestModel(version="m-x", item_space="s2", catalog_compatible=False)])

    async def PutExperiment(self, request, timeout, metadata=()):
        self._call("PutExperiment", request, timeout)
        stored = common_pb2.Experiment()
        stored.CopyFrom(request.experiment)
        stored.state, stored.created_ms = common_pb2.EXPERIMENT_STATE_RUNNING, len(self.stored) + 1
        self.stored.append(stored)
        return stored


def experiment(name: str, b_model: str, a_model: str = "") -> common_pb2.PutExperimentRequest:
    return common_pb2.PutExperimentRequest(experiment=common_pb2.Experiment(name=name, variants=[
        variant_proto({"name": "A", "share": 0.5, "interest_model": a_model}),
        variant_proto({"name": "B", "share": 0.5, "interest_model": b_model})]))


def users_by_variant(g) -> dict[str, str]:
    """One user in each variant of the running experiment."""
    found: dict[str, str] = {}
    for k in range(200):
        found.setdefault(g._recommender.experiments.assign(f"u{k}").variant, f"u{k}")
    return found


@pytest.mark.parametrize(("model", "says"), [("m-never", "serves no interest model 'm-never'"),
                                             ("m-x", "trained for another catalog space")])
def test_put_experiment_refuses_a_model_the_encoder_cannot_serve_naming_the_field(monkeypatch, model, says):
    async def scenario():
        mesh = ModelsMesh()
        g = await gateway(monkeypatch, mesh)
        with pytest.raises(AssertionError) as err:  # the test Context's abort
            await g.PutExperiment(experiment("e", model), Context(5.0))
        ok = await g.PutExperiment(experiment("e2", "m-b"), Context(5.0))
        return mesh, str(err.value), ok

    mesh, error, ok = asyncio.run(scenario())
    assert error.startswith("FAILED_PRECONDITION: experiment.variants[1].overrides.interest_model_version: "), error
    assert says in error
    assert [r.experiment.name for r, _ in mesh.called("PutExperiment")] == ["e2"]  # the refused one never stored
    assert ok.variants[1].overrides.interest_model_version == "m-b"


def test_each_variant_is_encoded_by_its_model_and_its_replies_say_so(monkeypatch):
    async def scenario():
        mesh = ModelsMesh()
        g = await gateway(monkeypatch, mesh)
        await g.PutExperiment(experiment("e", "m-b"), Context(5.0))
        users = users_by_variant(g)
        replies = {}
        for variant, user in users.items():
            await track(g, user, ["p7", "p8"])
            mesh.calls.clear()
            replies[variant] = (await recommend(g, user, 3), [r for r, _ in mesh.called("EncodeInterest")])
        await g._recommender.impressions.flush(timeout_s=1.0)
        return mesh, replies

    mesh, replies = asyncio.run(scenario())
    (a, a_asked), (b, b_asked) = replies["A"], replies["B"]
    assert [r.interest_model_version for r in a_asked] == [""]
    assert [r.interest_model_version for r in b_asked] == ["m-b"]
    assert a.versions["encoder"] == "lm+llm-seq/m-a@test" and b.versions["encoder"] == "lm+llm-seq/m-b@test"
    logged = {i.variant: i.encoder_version for i in mesh.impressions if i.experiment}
    assert logged == {"A": "lm+llm-seq/m-a@test", "B": "lm+llm-seq/m-b@test"}


def test_a_users_last_interest_stands_in_only_for_the_model_it_came_from(monkeypatch):
    """The user's interest from the default model; then the user's variant serves m-b and the
    encoder is down: the default's vector does not answer for m-b (fallback:session, no encoder
    version); up again, m-b's interest, which then stands in for m-b when the encoder is down;
    the experiment stopped, the default's own last interest stands in for the default."""
    async def scenario():
        mesh = ModelsMesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", ["p7", "p8"])
        first = await recommend(g, "u", 3)  # no experiment: the default model
        await g.PutExperiment(experiment("e", "m-b", a_model="m-b"), Context(5.0))  # everyone on m-b
        mesh.down = {"EncodeInterest"}
        under_b_down = await recommend(g, "u", 3)
        mesh.down = set()
        under_b = await recommend(g, "u", 3)
        reused = await recommend(g, "u", 3)  # the same history under the same model: m-b's interest again
        await track(g, "u", ["p9"])  # a new history: the encoder is asked
        mesh.down = {"EncodeInterest"}
        under_b_down_again = await recommend(g, "u", 3)
        g._recommender.experiments.put(stopped(mesh.stored[-1]))  # as StopExperiment through this gateway
        back = await recommend(g, "u", 3)
        return first, under_b_down, under_b, reused, under_b_down_again, back

    first, under_b_down, under_b, reused, again, back = asyncio.run(scenario())
    assert not first.degraded and first.versions["encoder"] == "lm+llm-seq/m-a@test"
    assert under_b_down.degraded == ["encoder:unavailable", "fallback:session"]
    assert "encoder" not in under_b_down.versions  # no interest answered
    assert not under_b.degraded and under_b.versions["encoder"] == "lm+llm-seq/m-b@test"
    assert not reused.degraded and reused.versions["encoder"] == "lm+llm-seq/m-b@test"
    assert again.degraded == ["encoder:unavailable", "fallback:cached_interest"]
    assert again.versions["encoder"] == "lm+llm-seq/m-b@test"
    assert back.degraded == ["encoder:unavailable", "fallback:cached_interest"] and not back.variant
    assert back.versions["encoder"] == "lm+llm-seq/m-a@test"


def stopped(e: common_pb2.Experiment) -> common_pb2.Experiment:
    out = common_pb2.Experiment()
    out.CopyFrom(e)
    out.state = common_pb2.EXPERIMENT_STATE_STOPPED
    return out


def test_the_cold_start_interest_is_kept_per_model(monkeypatch):
    async def scenario():
        mesh = ModelsMesh()
        g = await gateway(monkeypatch, mesh)
        await g.PutExperiment(experiment("e", "m-b"), Context(5.0))
        users = users_by_variant(g)
        replies = [await recommend(g, users[v], 3) for v in ("A", "B", "A", "B")]  # no history, no query
        return mesh, replies

    mesh, replies = asyncio.run(scenario())
    asked = [r.interest_model_version for r, _ in mesh.called("EncodeInterest")]
    assert asked == ["", "m-b"]  # once per model, then known
    assert [r.versions["encoder"] for r in replies] == ["lm+llm-seq/m-a@test", "lm+llm-seq/m-b@test"] * 2


# -- the report ------------------------------------------------------------------------------------

def test_the_report_counts_answers_by_the_encoder_version_and_names_each_variants_model(tmp_path):
    log = OutcomeLog(tmp_path / "outcomes.sqlite", window_ms=60_000)
    for k, (variant, version) in enumerate([("A", "lm+llm-seq/m-a"), ("A", ""), ("B", "lm+llm-seq/m-b"),
                                            ("B", "lm+llm-seq/m-b")]):
        log.record_answer(experiment="e", variant=variant, user_id=f"u{k}", request_id=f"r{k}", shown_ms=k,
                          item_ids=["x"], latency_ms=1.0, degraded=False, encoder_version=version)
    assert log.encoder_versions("e") == {"A": {"": 1, "lm+llm-seq/m-a": 1}, "B": {"lm+llm-seq/m-b": 2}}
    log.close()
    unmeasured = {m: {"value": None, "low": None, "high": None} for m in METRICS}
    summary = {"experiment": "e", "control": "A", "primary": "ctr_at_k", "level": 0.95, "against_control": {},
               "variants": {"A": {"users": 2, "answers": 2, "metrics": unmeasured, "interest_model_version": "",
                                  "encoder_versions": {"": 1, "lm+llm-seq/m-a": 1}},
                            "B": {"users": 2, "answers": 2, "metrics": unmeasured, "interest_model_version": "m-b",
                                  "encoder_versions": {"lm+llm-seq/m-b": 2}}}}
    lines = [line for line in text(summary).splitlines() if "interest model" in line]
    assert lines == ["A interest model: default; encoded by: no interest 1, lm+llm-seq/m-a 1",
                     "B interest model: m-b; encoded by: lm+llm-seq/m-b 2"]


def test_the_updaters_report_names_each_variants_model_and_counts_answers_by_encoder_version(tmp_path):
    from services.updater.config import UpdaterSettings
    from services.updater.experiments import ExperimentsRole

    async def scenario():
        role = ExperimentsRole(UpdaterSettings(log_path=tmp_path / "events.sqlite", guardrail_s=3600,
                                               event_weights_file=None))
        await role.open()
        await role.put(experiment("e", "m-b"), "test", "")
        impressions = [updater_pb2.Impression(request_id=f"r{k}", user_id=f"u{k}", timestamp_ms=1_000,
                                              experiment="e", variant=v, encoder_version=f"lm+llm-seq/{m}",
                                              items=[updater_pb2.ImpressedItem(item_id="x", position=0)])
                       for k, (v, m) in enumerate([("A", "m-a"), ("B", "m-b"), ("B", "m-b")])]
        role.check_impressions(impressions, [f"impressions[{n}]." for n in range(3)])
        with pytest.raises(InvalidArgument, match=r"^impressions\[0\]\.encoder_version:"):
            role.check_impressions([updater_pb2.Impression(request_id="r", user_id="u", experiment="e", variant="A",
                                                           encoder_version="v" * 129)], ["impressions[0]."])
        for latency in (float("nan"), float("inf"), -1.0):  # would break every later report
            with pytest.raises(InvalidArgument, match=r"^impressions\[0\]\.latency_ms:"):
                role.check_impressions([updater_pb2.Impression(request_id="r", user_id="u", experiment="e",
                                                               variant="A", latency_ms=latency)], ["impressions[0]."])
        role.record(impressions)
        await role._run(lambda: None)  # the writes submitted before have run
        report = json.loads((await role.report(common_pb2.GetExperimentReportRequest(name="e"))).report_json)
        await role.close()
        return report

    report = asyncio.run(scenario())
    assert report["variants"]["A"]["interest_model_version"] == ""
    assert report["variants"]["B"]["interest_model_version"] == "m-b"
    assert report["variants"]["A"]["encoder_versions"] == {"lm+llm-seq/m-a": 1}
    assert report["variants"]["B"]["encoder_versions"] == {"lm+llm-seq/m-b": 2}


# -- a broken further model (hostile-input findings) -------------------------------------------

def _broken(folder: Path, how: str) -> Path:
    """The shipped model made unservable: "missing" (a weight gone), "nan" (NaN weights),
    "text" (not a model file at all)."""
    import torch

    path = folder / f"{how}.pt"
    if how == "text":
        path.write_text("not a model")
        return path
    blob = torch.load(SHIPPED_ARTIFACT, map_location="cpu", weights_only=True)
    blob["version"] = f"broken-{how}"
    if how == "missing":
        del blob["state"]["position.weight"]
    else:
        blob["state"]["norm.bias"] = torch.full_like(blob["state"]["norm.bias"], float("nan"))
    torch.save(blob, path)
    return path


@pytest.mark.parametrize(("how", "says"), [("missing", "position.weight"), ("nan", "not finite"),
                                           ("text", "not a servable interest model")])
def test_add_refuses_a_model_that_does_not_load_whole_or_answers_nan(tmp_path, how, says):
    with pytest.raises(ValueError, match=says):
        interest_models.add(_broken(tmp_path, how), None, tmp_path / "var")
    assert interest_models.listing(tmp_path / "var")[1:] == []  # nothing installed


def test_a_broken_variant_on_disk_is_left_out_at_start_and_the_rest_still_serve(tmp_path, artifacts):
    """One bad file (copied in by hand, or broken after `add`) must not stop Triton or the
    encoder: the repository and the in-process encoder leave it out, the others serve."""
    variants = tmp_path / "variants"
    for name, source in (("good", artifacts["b"]), ("bad", _broken(tmp_path, "missing"))):
        (variants / name).mkdir(parents=True)
        shutil.copy2(source, variants / name / "interest_model.pt")
    found = sorted((variants / n / "interest_model.pt") for n in ("bad", "good"))
    repo = assemble_repository(tmp_path / "models", SHIPPED_ARTIFACT, interest_variants=found)
    config = (repo / "interest_encoder" / "config.pbtxt").read_text()
    assert "interest-b" in config and "broken-missing" not in config and not (repo / "interest_encoder" / "3").exists()
    settings = EncoderSettings(backend="inprocess", interest_model=SHIPPED_ARTIFACT, interest_variants=variants)
    backend = InProcessBackend(settings)
    servicer = EncoderServicer(settings, backend)
    asyncio.run(servicer.warmup())
    try:
        listed = asyncio.run(servicer.ListInterestModels(encoder_pb2.ListInterestModelsRequest(), AbortingContext()))
        assert [m.version for m in listed.models] == [artifact_identity(SHIPPED_ARTIFACT)[0], "interest-b"]
    finally:
        asyncio.run(backend.close())


def test_a_nan_interest_from_the_encoder_is_a_failed_stage_not_the_clients_bad_input(monkeypatch):
    class NanMesh(ModelsMesh):
        async def EncodeInterest(self, request, timeout):
            reply = await super().EncodeInterest(request, timeout)
            reply.interest.CopyFrom(to_matrix(np.full((1, DIM), np.nan, np.float32)))
            return reply

    async def scenario():
        mesh = NanMesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", ["p7", "p8"])
        return await recommend(g, "u", 3)

    reply = asyncio.run(scenario())
    assert "encoder:bad_reply" in reply.degraded and len(reply.items) == 3
    assert "fallback:session" in reply.degraded
