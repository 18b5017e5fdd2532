"""Import boundaries between the library, the tooling and the services (README "Layout").

- services/<a>/ never imports services.<b> (b != a): a service's peers are reached over gRPC;
- the library (recmesh/ outside recmesh/tools/) and deploy/ (the Triton models) never import
  services.* or recmesh.tools.*: they sit below both;
- the tooling (recmesh/tools/, and recmesh/__main__.py that starts its CLI) imports of a
  service only services.<name>.config, its typed settings (the declared interface); anything
  else of a service is an internal. One named exception, COMPUTE_FLOOR: the compute floor
  (recmesh/tools/bench/floor.py) runs the gateway's pipeline over the services' servicers in
  one process - measuring them without the mesh is its purpose; no other tooling module may.

Every .py file is read with ast: `import x`, `from x import y` (also inside functions) and
importlib.import_module / __import__ calls with a literal module name count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# `python -m recmesh` is the CLI: recmesh/__main__.py only hands over to recmesh.tools.cli.
TOOLING_ENTRY = ("recmesh", "__main__.py")
# The one tooling module that may import services' internals (module docstring).
COMPUTE_FLOOR = ("recmesh", "tools", "bench", "floor.py")
SKIP = {".git", ".venv", "var", "results", "build", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def python_files() -> list[Path]:
    return sorted(p for p in REPO.rglob("*.py")
                  if not SKIP.intersection(p.relative_to(REPO).parts[:-1]) and "egg-info" not in str(p))


def _resolve(node: ast.ImportFrom, module: str) -> str:
    """The absolute name of a relative import (`from . import x` in package `module`'s parent)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[: -node.level]
    return ".".join([*base, node.module] if node.module else base)


def _names_in(node: ast.AST, assigned: dict[str, ast.AST]) -> list[str]:
    """The string constants an import call's argument can be: a literal, or the values of a
    module-level table it indexes (`importlib.import_module(COMMANDS[name])`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    names = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in assigned:
            names += [c.value for c in ast.walk(assigned[sub.id])
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return names


def imported_modules(rel: str, source: str) -> list[tuple[int, str]]:
    """(line, module) for every import in the file at `rel` (relative to the repo). `from a
    import b` counts as a.b (b may be a module: `from services.ranker import features`), a star
    import as a."""
    module = ".".join(Path(rel).with_suffix("").parts)
    tree = ast.parse(source, rel)
    assigned = {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module)
            found += [(node.lineno, base if alias.name == "*" else f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found += [(node.lineno, target) for target in _names_in(node.args[0], assigned)]
    return found


def _is(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(rel: str, source: str) -> list[str]:
    parts = Path(rel).parts
    broken = []
    for line, module in imported_modules(rel, source):
        names = module.split(".")
        if not _is(module, "services") and not _is(module, "recmesh.tools"):
            continue
        if parts[0] == "services" and len(parts) > 2:  # services/<a>/...
            if names[0] != "services":
                broken.append(f"line {line}: {module} (a service never imports the tooling)")
            elif len(names) > 1 and names[1] != parts[1]:
                broken.append(f"line {line}: {module} (another service's code: call it over gRPC)")
        elif parts[:2] == ("recmesh", "tools") or parts == TOOLING_ENTRY:  # the tooling
            if names[0] == "services" and names[2:3] != ["config"] and parts != COMPUTE_FLOOR:
                broken.append(f"line {line}: {module} (tooling may import only a service's config)")
        elif parts[0] in ("recmesh", "deploy"):  # the library and the Triton models
            broken.append(f"line {line}: {module} (the library is below the services and the tooling)")
    return broken


FILES = python_files()


def test_the_rules_see_the_tree():
    """A scan that finds nothing checks nothing."""
    names = {str(p.relative_to(REPO)) for p in FILES}
    assert {"services/gateway/server.py", "recmesh/client.py", "recmesh/tools/cli.py",
            "deploy/triton/models/text_encoder/1/model.py"} <= names


@pytest.mark.parametrize(("rel", "source", "broken"), [
    ("services/updater/server.py", "from services.ranker.model import Scorer", True),
    ("services/updater/server.py", "def f():\n    import services.ranker.features", True),
    ("services/updater/server.py", "from services import ranker", True),
    ("services/updater/server.py", "from recmesh.tools.devstack import Stack", True),
    ("services/updater/server.py", "from services.updater.joiner import now_ms", False),
    ("services/updater/server.py", "from recmesh.models.ranking.scorer import Scorer", False),
    ("recmesh/models/interest/served.py", "from services.encoder.config import SERVED_ARTIFACT", True),
    ("recmesh/common/server.py", "from recmesh.tools import extras", True),
    ("recmesh/index/edge.py", "import importlib\nimportlib.import_module('services.retrieval.server')", True),
    ("deploy/triton/models/x/1/model.py", "from services.encoder.learned import ServedInterestModel", True),
    ("deploy/triton/models/x/1/model.py", "from recmesh.models.text import load_text_model", False),
    ("recmesh/tools/bench/ranker.py", "from services.ranker.server import RankerServicer", True),
    ("recmesh/tools/eval/mesh.py", "from services.gateway.recommend import History", True),
    ("recmesh/tools/eval/mesh.py", "from services.ranker import features", True),
    ("recmesh/tools/eval/mesh.py", "import services.ranker", True),
    ("recmesh/tools/cli.py", "M = {'x': 'services.ranker.server'}\nimportlib.import_module(M[name])", True),
    ("recmesh/tools/eval/mesh.py", "from services.ranker.config import RankerSettings", False),
    ("recmesh/tools/eval/mesh.py", "from services.ranker import config", False),
    ("recmesh/tools/eval/run.py", "from recmesh.tools.eval import datasets", False),
    ("recmesh/__main__.py", "from recmesh.tools.cli import main", False),
    ("tests/unit/test_x.py", "from services.ranker.server import RankerServicer", False),
    ("recmesh/tools/bench/floor.py", "from services.gateway.pipeline import Pipeline", False),
    ("recmesh/tools/bench/latency.py", "from services.gateway.pipeline import Pipeline", True),
    ("recmesh/tools/loadtest.py", "from services.ranker.server import RankerServicer", True),
    ("services/gateway/pipeline.py", "from recmesh.tools.bench.floor import Floor", True),
])
def test_the_rules_catch_what_they_forbid(rel, source, broken):
    assert bool(violations(rel, source)) is broken


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_respect_the_layout(path):
    rel = str(path.relative_to(REPO))
    assert violations(rel, path.read_text()) == [], f"{rel} crosses a boundary"
