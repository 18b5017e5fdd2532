"""A var with its own interest model: a local mesh over it serves that model through Triton
(from a model repository assembled in the var), and the checked-in repository is not written."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from recmesh.client import Event, RecmeshClient
from recmesh.common.paths import REPO, SHIPPED_ARTIFACT, var_paths
from recmesh.tools.devstack import Stack
from tests.integration.answers import undegraded

pytestmark = pytest.mark.integration


def deploy_hashes() -> dict[str, str]:
    return {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (REPO / "deploy").rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_a_stack_over_a_var_serves_the_vars_own_model(catalog: Path, tmp_path, user):
    var = tmp_path / "shop"
    shutil.copytree(catalog / "catalog", var / "catalog")
    shutil.copytree(catalog / "updater", var / "updater")
    # The shipped weights under a version of this var's own: which one Triton serves is visible.
    blob = torch.load(SHIPPED_ARTIFACT, map_location="cpu", weights_only=True)
    own = var_paths(var).own_artifact
    own.parent.mkdir(parents=True)
    torch.save({**blob, "version": "var-own-test"}, own)
    before = deploy_hashes()

    with Stack(var=var, env={"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false"}) as stack, \
            RecmeshClient(stack.address("gateway"), timeout_s=2.0) as client:
        assert stack.triton.interest_model == own
        client.track_events([Event(user, "260", "click"), Event(user, "1196", "purchase")])
        reply = undegraded(lambda: client.recommend(user, k=5))
        assert len(reply.items) == 5
        assert "llm-seq/var-own-test@triton" in reply.versions["encoder"]

    assert (var / "triton" / "models" / "interest_encoder" / "1" / "interest_model.pt").read_bytes() == own.read_bytes()
    assert deploy_hashes() == before


def test_a_service_refuses_a_port_already_in_use_naming_the_setting(stack):
    """gRPC shares ports by default (SO_REUSEPORT): a second local mesh on 50060 silently took
    the first one's calls. Now a second process on a taken port stops at once, saying which
    setting to change - and the first keeps serving."""
    import os
    import subprocess
    import sys

    port = stack.ports["ranker"]
    env = {**os.environ, "RECMESH_RANKER_PORT": str(port), "RECMESH_RANKER_UPDATER_ADDR": ""}
    out = subprocess.run([sys.executable, "-m", "services.ranker"], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert f"ranker: cannot listen on 127.0.0.1:{port}" in out.stderr and "set RECMESH_RANKER_PORT" in out.stderr
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(stack.address("ranker")) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
