"""Checks a command makes before its work, each failing with one line that names what to change:
the var it writes (RECMESH_VAR), the catalog `recmesh run` serves, the port it listens on."""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

from recmesh.common.paths import VAR_ENV, served_artifact, var_paths


def check_var(var: Path, setting: str = VAR_ENV) -> None:
    """The var can hold what the command writes: a directory (created if missing), writable,
    with no whitespace in its path (Triton's python backend, whose folder is in the var, starts
    its stub through a shell with the path unquoted: such a var hung `recmesh run` for 3 min).
    Raises SystemExit naming the setting that chose it (RECMESH_VAR, or a command's --var)."""
    name = f"{setting}={var}"
    if any(ch.isspace() for ch in str(var)):
        raise SystemExit(f"{name}: a path with whitespace is not supported (Triton's python backend cannot "
                         "start from it): choose another folder")
    if var.exists() and not var.is_dir():
        raise SystemExit(f"{name}: not a directory")
    try:
        var.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=var, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise SystemExit(f"{name}: cannot write there ({exc.strerror or exc})") from None


def check_catalog(var: Path) -> None:
    """`recmesh run` needs the var's catalog, placed with the interest model the var now serves
    (a model installed by `recmesh train` needs the catalog placed again). Raises SystemExit
    naming the command that fixes it."""
    build = var_paths(var).catalog / "BUILD.json"
    if not build.is_file():
        raise SystemExit(f"no catalog in {build.parent} ({VAR_ENV}={var}): run `recmesh import` (your files) or "
                         f"`recmesh bootstrap` (the bundled MovieLens) first")
    placed_with = json.loads(build.read_text()).get("interest_model", "")
    from recmesh.models.interest.served import artifact_version

    serving = artifact_version(served_artifact(var))
    if not placed_with.endswith(f"/{serving}"):
        raise SystemExit(f"the catalog in {build.parent} was placed with interest model {placed_with}, but this var "
                         f"serves {serving} (installed by `recmesh train`): place it again with the command that "
                         f"built it (your `recmesh import`, or `recmesh bootstrap`)")


def check_port(port: int, host: str = "127.0.0.1") -> None:
    """The port is free on this host (0: any free port will do). Raises SystemExit naming --port."""
    if not port:
        return
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise SystemExit(f"port {port} is in use (another `recmesh run`?): recmesh run --port N, "
                             "or --port 0 for any free port") from None
