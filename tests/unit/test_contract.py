"""The checked-in stubs match protos/, and config errors are clear."""

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from recmesh.common.config import load_settings
from services.gateway.config import GatewaySettings
from services.ranker.config import RankerSettings

REPO = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path):
    protos = sorted(str(p.relative_to(REPO / "protos")) for p in (REPO / "protos").rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos],
        cwd=REPO / "protos", check=True,
    )
    generated = sorted(p.name for p in (tmp_path / "recmesh" / "v1").iterdir())
    checked_in = REPO / "recmesh" / "v1"
    stale = [n for n in generated if not filecmp.cmp(tmp_path / "recmesh" / "v1" / n, checked_in / n, shallow=False)]
    assert not stale, f"run `make protos`: stale {stale}"


def test_protos_have_a_package():
    for proto in (REPO / "protos").rglob("*.proto"):
        assert "package recmesh.v1;" in proto.read_text(), proto


def test_env_and_flags_configure_a_service(monkeypatch):
    monkeypatch.setenv("RECMESH_GATEWAY_BUDGET_MS", "80")
    settings = load_settings(GatewaySettings, ["--max-k", "50"])
    assert (settings.budget_ms, settings.max_k) == (80.0, 50)


def test_bad_config_fails_fast_naming_the_setting(monkeypatch):
    monkeypatch.setenv("RECMESH_GATEWAY_BUDGET_MS", "-5")
    with pytest.raises(SystemExit, match="budget_ms"):
        load_settings(GatewaySettings, [])
    monkeypatch.setenv("RECMESH_RANKER_PORT", "not-a-port")
    with pytest.raises(SystemExit, match="port"):
        load_settings(RankerSettings, [])
