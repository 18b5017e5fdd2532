"""Helpers for running recmesh's processes on one machine (launcher, tests, benchmarks)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> list[str]:
    """Command prefix so that the kernel sends the child SIGTERM if the launcher dies outright:
    no orphans. setpriv rather than a preexec_fn: forking a process that runs gRPC threads and
    then running Python code in the child can abort it."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []
