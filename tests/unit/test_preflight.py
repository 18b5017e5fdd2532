"""What a command checks before its work (found by a newcomer trying two catalogs side by side):
a bad RECMESH_VAR failed after 30-40 s of encoding with a traceback, or hung `recmesh run` for
3 minutes; `recmesh run` served a catalog placed with another interest model, and started a
second mesh on a port already in use."""

from __future__ import annotations

import json
import socket

import pytest

from recmesh.common.paths import SHIPPED_ARTIFACT, VAR_ENV
from recmesh.models.interest.served import artifact_version
from recmesh.tools.preflight import check_catalog, check_port, check_var


def test_a_usable_var_is_created_and_passes(tmp_path):
    var = tmp_path / "new" / "var"
    check_var(var)
    assert var.is_dir() and not list(var.iterdir())  # the write probe leaves nothing


@pytest.mark.parametrize("make, problem", [
    (lambda t: (t / "file").write_text("x") and t / "file", "not a directory"),
    (lambda t: t / "with space" / "var", "a path with whitespace is not supported"),
    (lambda t: (t / "f").write_text("x") and t / "f" / "under-a-file", "cannot write there"),
])
def test_an_unusable_var_is_refused_in_one_line_naming_recmesh_var(tmp_path, make, problem):
    var = make(tmp_path)
    with pytest.raises(SystemExit) as exc:
        check_var(var)
    message = str(exc.value.code)
    assert message.startswith(f"{VAR_ENV}={var}: {problem}") and "\n" not in message


def test_run_needs_a_catalog_placed_with_the_model_the_var_serves(tmp_path):
    with pytest.raises(SystemExit, match="no catalog in .*run `recmesh import`.* or `recmesh bootstrap`"):
        check_catalog(tmp_path)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "BUILD.json").write_text(json.dumps({"interest_model": "llm-seq/19990101T000000Z"}))
    with pytest.raises(SystemExit, match="placed with interest model llm-seq/19990101T000000Z.*place it "
                                         "again .*`recmesh import`, or `recmesh bootstrap`"):
        check_catalog(tmp_path)
    shipped = artifact_version(SHIPPED_ARTIFACT)  # this var has no model of its own: the shipped one
    (catalog / "BUILD.json").write_text(json.dumps({"interest_model": f"llm-seq/{shipped}"}))
    check_catalog(tmp_path)


def test_a_port_in_use_is_refused_naming_the_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit, match="port .* is in use .*--port"):
            check_port(taken.getsockname()[1])
    check_port(0)


def test_a_command_given_its_own_var_checks_that_one_and_a_dry_run_creates_nothing(tmp_path, monkeypatch):
    from recmesh.tools import cli

    monkeypatch.setenv("RECMESH_VAR", str(tmp_path / "default-var"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"--var .*a-file/var: .*[Nn]ot a directory"):
        cli.main(["import", "--var", str(blocker / "var"), "--items", str(tmp_path / "items.csv")])
    assert not (tmp_path / "default-var").exists()  # the var the command was not given is left alone
    with pytest.raises(SystemExit):  # no such items file: the dry run stops, and wrote nothing
        cli.main(["import", "--var", str(tmp_path / "fresh"), "--items", str(tmp_path / "items.csv"), "--dry-run"])
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "default-var").exists()
