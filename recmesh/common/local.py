"""Helpers for running recmesh's processes on one machine (launcher, tests, benchmarks)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading

from recmesh.common.paths import REPO  # noqa: F401  (re-exported: the tools' name for the source tree)

_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A loopback port free now and never handed out before by this process: the kernel may give
    the same ephemeral port to two binds in a row once the first is closed (Triton refused to
    start when its gRPC and metrics ports came out equal). RuntimeError after 100 repeats."""
    with _HANDED_OUT_LOCK:
        for _ in range(100):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError("no free loopback port that this process has not handed out already")


def die_with_parent() -> list[str]:
    """Command prefix so that the kernel sends the child SIGTERM if the launcher dies outright:
    no orphans. setpriv rather than a preexec_fn: forking a process that runs gRPC threads and
    then running Python code in the child can abort it."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []


def stop_process(proc: subprocess.Popen | None, grace_s: float) -> None:
    """SIGTERM (after SIGCONT: a stopped process cannot act on it), then SIGKILL after grace_s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
