"""Where state lives: every command and service resolves its state in the var ($RECMESH_VAR,
default var/ in the repo); a var serves its own interest model when `recmesh train` installed one,
else the shipped one; installing one writes nothing in the source tree, and Triton serves it from
a model repository assembled in the var."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import model_config_pb2

from recmesh.common.paths import REPO, SHIPPED_ARTIFACT, SHIPPED_MODEL_REPOSITORY, served_artifact, var_dir, var_paths
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel
from recmesh.models.interest.served import ServedInterestModel, export_served

N_ITEMS, TEXT_DIM = 20, 12
VERSION = "20990101T000000Z"


@pytest.fixture
def var(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "shop"
    monkeypatch.setenv("RECMESH_VAR", str(folder))
    for name in ("RECMESH_RETRIEVAL_SHARD_DIR", "RECMESH_UPDATER_LOG_PATH", "RECMESH_UPDATER_PARAMS_DIR",
                 "RECMESH_ENCODER_INTEREST_MODEL"):
        monkeypatch.delenv(name, raising=False)
    return folder


def tiny_model() -> tuple[SequenceInterestModel, list[str]]:
    torch.manual_seed(0)
    text = np.random.default_rng(0).normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    model = SequenceInterestModel(ModelConfig(N_ITEMS, text_dim=TEXT_DIM, d=16, max_len=8), text).eval()
    return model, [f"item-{i}" for i in range(N_ITEMS)]


def own_artifact(var: Path) -> Path:
    """A var with its own (tiny) interest model, where `recmesh train` installs one."""
    model, ids = tiny_model()
    path = var_paths(var).own_artifact
    export_served(model, ids, ["held-out"], VERSION, path)
    return path


# -- (a) the var's location and its places ------------------------------------------------------

def test_the_var_is_repo_var_unless_recmesh_var_names_another(monkeypatch, tmp_path):
    monkeypatch.delenv("RECMESH_VAR", raising=False)
    assert var_dir() == REPO / "var"
    monkeypatch.setenv("RECMESH_VAR", str(tmp_path / "shop"))
    assert var_dir() == tmp_path / "shop"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECMESH_VAR", "relative")
    assert var_dir() == tmp_path / "relative"  # absolute from where the command started


def test_every_well_known_place_is_inside_the_var(var):
    paths = var_paths()
    places = [paths.catalog, paths.shard_dir, paths.updater, paths.event_log, paths.ranker_params, paths.models,
              paths.eval_cache, paths.own_artifact, paths.triton, paths.triton_models, paths.logs, paths.certs]
    assert all(var in place.parents for place in places)
    assert len(set(places)) == len(places)


def test_service_settings_default_to_the_var(var):
    from services.encoder.config import EncoderSettings
    from services.retrieval.config import RetrievalSettings
    from services.updater.config import UpdaterSettings

    assert RetrievalSettings().shard_dir == var / "catalog" / "qdrant"
    updater = UpdaterSettings()
    assert updater.log_path == var / "updater" / "events.sqlite"
    assert updater.params_dir == var / "ranker" / "params"
    assert EncoderSettings().interest_model == SHIPPED_ARTIFACT  # nothing trained in this var yet


def test_a_services_own_setting_still_wins(var, monkeypatch, tmp_path):
    from services.retrieval.config import RetrievalSettings
    from services.updater.config import UpdaterSettings

    monkeypatch.setenv("RECMESH_RETRIEVAL_SHARD_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("RECMESH_UPDATER_LOG_PATH", str(tmp_path / "log.sqlite"))
    assert RetrievalSettings().shard_dir == tmp_path / "elsewhere"
    assert UpdaterSettings().log_path == tmp_path / "log.sqlite"


def test_the_commands_resolve_their_state_in_the_var(var, monkeypatch):
    import argparse

    from recmesh.tools.catalog import bootstrap, publish
    from recmesh.tools.eval import release

    seen = {}
    monkeypatch.setattr(bootstrap, "bootstrap", lambda data, var, *rest: seen.setdefault("bootstrap", var))
    parser = argparse.ArgumentParser()
    bootstrap.add_arguments(parser)
    bootstrap.run(parser.parse_args(["--model-dir", str(REPO)]))
    assert seen["bootstrap"] == var

    monkeypatch.setattr(publish, "publish", lambda shard_dir, *rest: seen.setdefault("publish", shard_dir))
    parser = argparse.ArgumentParser()
    publish.add_arguments(parser)
    publish.run(parser.parse_args(["--qdrant-url", "http://q:6333"]))
    assert seen["publish"] == var / "catalog" / "qdrant"

    train = release.parser().parse_args([])
    assert train.install == var / "models" / "served" / "interest_model.pt"
    assert train.models_dir == var / "models"


def test_a_local_stack_keeps_its_state_in_the_var(var):
    from recmesh.tools.devstack import Stack, bootstrapped

    assert bootstrapped() == (var / "catalog", var / "updater")
    stack = Stack()
    assert stack.var == var and stack.log_path("gateway").parent == var / "logs"
    assert stack.triton.workdir == var / "triton"
    assert stack._env("retrieval")["RECMESH_RETRIEVAL_SHARD_DIR"] == str(var / "catalog" / "qdrant")
    updater = stack._env("updater")
    assert updater["RECMESH_UPDATER_LOG_PATH"] == str(var / "updater" / "events.sqlite")
    assert updater["RECMESH_UPDATER_PARAMS_DIR"] == str(var / "ranker" / "params")
    assert {stack._env(name)["RECMESH_VAR"] for name in ("gateway", "encoder", "updater")} == {str(var)}


# -- (b) which interest model a var serves ----------------------------------------------------

def test_a_var_without_its_own_model_serves_the_shipped_one(var):
    assert SHIPPED_ARTIFACT.is_file()
    assert served_artifact() == SHIPPED_ARTIFACT
    assert served_artifact(var) == SHIPPED_ARTIFACT


def test_a_var_with_its_own_model_serves_it(var, tmp_path):
    own = own_artifact(var)
    assert own == var / "models" / "served" / "interest_model.pt"
    assert served_artifact() == own == served_artifact(var)
    assert served_artifact(tmp_path / "another") == SHIPPED_ARTIFACT  # vars side by side do not mix
    assert ServedInterestModel(runtime="torch").version == f"llm-seq/{VERSION}"


def test_the_encoder_and_a_stack_serve_the_vars_own_model(var):
    from recmesh.tools.devstack import Stack
    from services.encoder.config import EncoderSettings

    own = own_artifact(var)
    assert EncoderSettings().interest_model == own
    stack = Stack(encoder_backend="inprocess")
    assert stack._env("encoder")["RECMESH_ENCODER_INTEREST_MODEL"] == str(own)
    assert Stack().triton.interest_model == own


# -- (c) `recmesh train` writes nothing in the source tree ---------------------------------------

SKIP = {".git", ".venv", "var", "results", "build", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def source_tree() -> dict[str, tuple[int, int]]:
    """Every file of the source tree (outside var/, results/ and caches): mtime and size."""
    found = {}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.endswith(".egg-info")]
        for name in files:
            stat = (Path(root) / name).stat()
            found[str(Path(root, name).relative_to(REPO))] = (stat.st_mtime_ns, stat.st_size)
    return found


def deploy_hashes() -> dict[str, str]:
    return {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (REPO / "deploy").rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_installing_a_trained_model_writes_only_the_var(var):
    from recmesh.tools.eval import release
    from recmesh.tools.eval.train import save_report

    before, hashes = source_tree(), deploy_hashes()
    args = release.parser().parse_args([])
    model, ids = tiny_model()
    folder = save_report({"valid_ndcg": 0.0}, args.models_dir, "LLM-Seq-served")
    installed = release.install(model, ids, ["held-out"], folder, args.install)

    assert source_tree() == before and deploy_hashes() == hashes
    assert installed == var / "models" / "served" / "interest_model.pt" and installed.is_file()
    assert (folder / "interest_model.pt").is_file() and var in folder.parents
    assert served_artifact() == installed
    assert ServedInterestModel(runtime="torch").version == f"llm-seq/{folder.name}"


# -- (d) Triton serves the var's model ----------------------------------------------------------

def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def load_backend(repository: Path, name: str, monkeypatch):
    """The model's python backend (model.py) initialised the way Triton does it, from `repository`."""
    import importlib.util
    import sys
    import types

    import recmesh.models.interest.served as served

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.SimpleNamespace())
    # torch runtime: the ONNX export of a tiny test model need not land in the user's cache.
    monkeypatch.setattr(served, "ServedInterestModel", functools.partial(ServedInterestModel, runtime="torch"))
    spec = importlib.util.spec_from_file_location(f"triton_{name}_var", repository / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = MessageToDict(parse(repository / name / "config.pbtxt"), preserving_proto_field_name=True)
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repository / name),
                      "model_version": "1"})
    return model


def test_triton_serves_the_vars_own_model_from_a_repository_in_the_var(var, monkeypatch):
    from recmesh.tools.devstack import Stack

    own = own_artifact(var)
    hashes = deploy_hashes()
    triton = Stack().triton
    repository = triton.repository()
    assert repository == var / "triton" / "models"
    assert (repository / "interest_encoder" / "1" / "interest_model.pt").read_bytes() == own.read_bytes()
    interest = parse(repository / "interest_encoder" / "config.pbtxt")
    assert interest.parameters["version"].string_value == VERSION
    assert {p.name for p in repository.iterdir()} == {p.name for p in SHIPPED_MODEL_REPOSITORY.iterdir()}
    assert f"--model-repository={repository}" in triton.command()
    # Both models that read the interest model load the var's: interest_encoder (its version
    # checked against the config) and item_encoder (the file its config names).
    assert load_backend(repository, "interest_encoder", monkeypatch).model.version == f"llm-seq/{VERSION}"
    items = load_backend(repository, "item_encoder", monkeypatch).model
    assert items.version == f"llm-seq/{VERSION}" and len(items.item_index) == N_ITEMS
    assert deploy_hashes() == hashes  # the checked-in repository is untouched


def test_triton_serves_a_copy_of_the_checked_in_repository_for_a_var_without_its_own_model(var):
    """A copy even then: Triton's python backend wrote __pycache__ into deploy/ (found by a
    newcomer's check), and the source tree is never written at run time."""
    from recmesh.tools.devstack import Stack

    hashes = deploy_hashes()
    triton = Stack().triton
    repository = triton.repository()
    assert repository == var / "triton" / "models"
    assert (repository / "interest_encoder" / "1" / "interest_model.pt").read_bytes() == SHIPPED_ARTIFACT.read_bytes()
    assert {p.name for p in repository.iterdir()} == {p.name for p in SHIPPED_MODEL_REPOSITORY.iterdir()}
    assert deploy_hashes() == hashes


def test_the_gpu_profile_serves_the_vars_own_model_too(var):
    from recmesh.tools.tritonserver import TritonServer

    own = own_artifact(var)
    repository = TritonServer(var_paths().triton, interest_model=own, profile="gpu").repository()
    assert var in repository.parents
    assert (repository / "interest_encoder" / "1" / "interest_model.pt").read_bytes() == own.read_bytes()
    assert parse(repository / "interest_encoder" / "config.pbtxt").parameters["version"].string_value == VERSION
    text = parse(repository / "text_encoder" / "config.pbtxt")
    assert text.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_a_retrained_model_replaces_the_assembled_one(var):
    from recmesh.tools.tritonserver import TritonServer

    own = own_artifact(var)
    triton = TritonServer(var_paths().triton, interest_model=own)
    triton.repository()
    model, ids = tiny_model()
    export_served(model, ids, [], "21000101T000000Z", own)
    repository = triton.repository()
    assert parse(repository / "interest_encoder" / "config.pbtxt").parameters["version"].string_value \
        == "21000101T000000Z"
    assert not (repository.parent / "models.building").exists()
