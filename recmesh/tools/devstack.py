"""Start Triton and the five services as local processes on loopback, wait until each is
ready, and stop them all (SIGTERM, then SIGKILL) - used by `recmesh run`, the integration tests
and the benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recmesh.common.local import REPO, die_with_parent, free_port
from recmesh.common.paths import VAR_ENV, served_artifact, var_dir, var_paths
from recmesh.models.ranking.scorer import start_params_dir
from recmesh.tools.redisserver import RedisServer
from recmesh.tools.tritonserver import TritonServer

# Leaves first: the gateway waits for retrieval before it reports SERVING.
SERVICES = ("updater", "retrieval", "ranker", "encoder", "gateway")
# Over the gateway, HTTP (services/console), started last when a stack has it (Stack.console).
CONSOLE = "console"


def bootstrapped(var: Path | None = None) -> tuple[Path, Path]:
    """What `recmesh bootstrap` builds in a var (default: $RECMESH_VAR's): the catalog (Qdrant
    shard, vectors) and the event log."""
    paths = var_paths(var)
    return paths.catalog, paths.updater


def process_tree_cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each named process and all its live descendants (Triton
    runs each python-backend model instance as a child process), read from /proc in one pass;
    0 for one that is gone."""
    stats: dict[int, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    tick = os.sysconf("SC_CLK_TCK")

    def tree(pid: int) -> float:
        fields = stats.get(pid)
        own = (int(fields[11]) + int(fields[12])) / tick if fields else 0.0  # utime, stime
        return own + sum(tree(child) for child in children.get(pid, []))

    return {name: tree(pid) for name, pid in pids.items()}


def process_tree_rss_mib(pids: dict[str, int]) -> dict[str, float]:
    """Resident memory (MiB) of each named process and all its live descendants (Triton's model
    stubs are its children), from /proc; 0 for one that is gone. Pages shared between a parent
    and its children count in each."""
    parents: dict[int, int] = {}
    rss: dict[int, float] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        pid = int(status.parent.name)
        parents[pid] = int(fields.get("PPid", "0").strip() or 0)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024 if "VmRSS" in fields else 0.0
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)

    def tree(pid: int) -> float:
        return rss.get(pid, 0.0) + sum(tree(child) for child in children.get(pid, []))

    return {name: round(tree(pid), 1) for name, pid in pids.items()}


def wait_serving(address: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = log.read_text()[-3000:] if log and log.exists() else ""
                raise RuntimeError(f"{address} exited with {proc.returncode} before serving:\n{tail}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} not SERVING after {timeout_s} s")


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Until `url` answers 200 (the console's /healthz)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{url} exited with {proc.returncode} before serving:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not answering after {timeout_s} s")


@dataclass
class Stack:
    # Where this stack's state lives (default: $RECMESH_VAR, else var/ in the repo).
    var: Path = field(default_factory=var_dir)
    env: dict[str, str] = field(default_factory=dict)
    # The interest model Triton (or the in-process encoder) serves; None: the var's own if it
    # has one, else the shipped one (recmesh/common/paths.py served_artifact).
    interest_model: Path | None = None
    # The ranker versions the ranker and the updater's learner start from; None: the var's own
    # blend from `recmesh train` if it has one, else the shipped ones (scorer.start_params_dir).
    start_params: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    host: str = "127.0.0.1"
    # "triton": the encoder's models on a tritonserver this stack starts; "inprocess": no Triton.
    encoder_backend: str = "triton"
    triton: TritonServer | None = None
    # "sqlite": one updater, its log on local disk; "redis": log and state in a redis-server this
    # stack starts, so that updater replicas (start_replica) share them.
    updater_store: str = "sqlite"
    redis: RedisServer | None = None
    # Extra instances: name -> (service, env of their own); see start_replica.
    replicas: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    # Prometheus endpoints (http://host:port/metrics), one per service.
    metrics_ports: dict[str, int] = field(default_factory=dict)
    stopping: bool = False
    # Also start the console (services/console: pages over the gateway, its live numbers from
    # the gateway's and the ranker's metrics), open: no keys on loopback.
    console: bool = False
    # Seconds `with Stack(...)` waits for each process to serve (retrieval loads its catalog
    # first: ~2 min for 1 M items on this project's 2-core host).
    start_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        for name in (*SERVICES, CONSOLE) if self.console else SERVICES:
            self.ports.setdefault(name, free_port())
            self.metrics_ports.setdefault(name, free_port())
        self.var = Path(self.var)
        if self.interest_model is None:
            self.interest_model = served_artifact(self.var)
        if self.start_params is None:
            self.start_params = start_params_dir(self.var)
        (self.var / "logs").mkdir(parents=True, exist_ok=True)
        if self.encoder_backend == "triton" and self.triton is None:
            self.triton = TritonServer(var_paths(self.var).triton, interest_model=self.interest_model)
        if self.updater_store == "redis" and self.redis is None:
            self.redis = RedisServer(self.var / "redis")

    def address(self, name: str) -> str:
        return f"{self.host}:{self.ports[name]}"

    @property
    def console_url(self) -> str:
        return f"http://{self.address(CONSOLE)}/"

    def log_path(self, name: str) -> Path:
        return self.var / "logs" / f"{name}.log"

    def _env(self, name: str) -> dict[str, str]:
        prefix = f"RECMESH_{name.upper()}_"
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            VAR_ENV: str(self.var),
            f"{prefix}HOST": self.host,
            f"{prefix}PORT": str(self.ports[name]),
            f"{prefix}METRICS_PORT": str(self.metrics_ports[name]),
        }
        paths = var_paths(self.var)
        if name == "retrieval":
            env[f"{prefix}SHARD_DIR"] = str(paths.shard_dir)
        if name == "updater":
            env[f"{prefix}LOG_PATH"] = str(paths.event_log)
            env[f"{prefix}PARAMS_DIR"] = str(paths.ranker_params)
            env.setdefault(f"{prefix}SHIPPED_PARAMS_DIR", str(self.start_params))
            if self.redis is not None:
                env[f"{prefix}STORE"] = "redis"
                env[f"{prefix}REDIS_URL"] = self.redis.url
                env[f"{prefix}SEED_LOG"] = env[f"{prefix}LOG_PATH"]
        if name == "ranker":
            env[f"{prefix}UPDATER_ADDR"] = self.address("updater")
            env.setdefault(f"{prefix}PARAMS_DIR", str(self.start_params))
        if name == "encoder":
            env[f"{prefix}BACKEND"] = self.encoder_backend
            env.setdefault(f"{prefix}INTEREST_MODEL", str(self.interest_model))  # one set in the shell wins
            if self.triton is not None:
                env[f"{prefix}TRITON_URL"] = self.triton.grpc_url
        if name == "gateway":
            for upstream in SERVICES[:-1]:
                env[f"{prefix}{upstream.upper()}_ADDR"] = self.address(upstream)
        if name == CONSOLE:
            env[f"{prefix}GATEWAY_ADDR"] = self.address("gateway")
            env[f"{prefix}GATEWAY_METRICS_URL"] = f"http://{self.host}:{self.metrics_ports['gateway']}/metrics"
            env[f"{prefix}RANKER_METRICS_URL"] = f"http://{self.host}:{self.metrics_ports['ranker']}/metrics"
        env.update({k: v for k, v in self.env.items() if k.startswith(prefix) or not k.startswith("RECMESH_")})
        return env

    def start_one(self, name: str) -> subprocess.Popen:
        service, own_env = self.replicas.get(name, (name, {}))
        env = self._env(service)
        if name in self.replicas:
            prefix = f"RECMESH_{service.upper()}_"
            env |= {f"{prefix}PORT": str(self.ports[name]), f"{prefix}METRICS_PORT": str(self.metrics_ports[name]),
                    **own_env}
        log = self.log_path(name).open("ab")
        proc = subprocess.Popen(
            [*die_with_parent(), sys.executable, "-m", f"services.{service}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a terminal's Ctrl-C reaches the launcher only, which stops the
            # services in order (gateway first) instead of all of them racing.
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def wait(self, name: str, timeout_s: float = 120.0) -> None:
        if self.replicas.get(name, (name, {}))[0] == CONSOLE:
            wait_http(f"http://{self.address(name)}/healthz", timeout_s, self.procs.get(name), self.log_path(name))
            return
        wait_serving(self.address(name), timeout_s, self.procs.get(name), self.log_path(name))

    def start_replica(self, service: str, replica: str, upstreams: dict[str, str] | None = None,
                      env: dict[str, str] | None = None, timeout_s: float = 120.0, wait: bool = True) -> str:
        """Another instance of a service, named f"{service}-{replica}", on its own ports;
        upstreams: {upstream service: instance} it calls instead of the first instances (a
        gateway replica behind its own updater, say); env: settings of its own. Returns its
        address."""
        name = f"{service}-{replica}"
        prefix = f"RECMESH_{service.upper()}_"
        own_env = {f"{prefix}{up.upper()}_ADDR": self.address(instance) for up, instance in (upstreams or {}).items()}
        own_env |= env or {}
        self.replicas[name] = (service, own_env)
        self.ports[name], self.metrics_ports[name] = free_port(), free_port()
        self.start_one(name)
        if wait:
            self.wait(name, timeout_s)
        return self.address(name)

    def start(self, timeout_s: float = 180.0) -> "Stack":
        try:
            if self.redis is not None:
                self.redis.start()
            if self.triton is not None:
                self.triton.start(timeout_s)
            for name in SERVICES:
                self.start_one(name)
            for name in SERVICES:
                self.wait(name, timeout_s)
            if self.console:
                self.start_one(CONSOLE)
                self.wait(CONSOLE, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, name: str, timeout_s: float = 120.0) -> None:
        self.start_one(name)
        self.wait(name, timeout_s)

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)
        if sig == signal.SIGKILL:
            self.procs[name].wait(10)

    def stop(self, grace_s: float = 10.0) -> None:
        self.stopping = True
        order = [*[n for n in self.procs if n not in SERVICES], *reversed(SERVICES)]  # replicas first
        live = [self.procs[n] for n in order if n in self.procs and self.procs[n].poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.triton is not None:
            self.triton.stop()
        if self.redis is not None:
            self.redis.stop()

    def exited(self) -> dict[str, tuple[int, str]]:
        """{name: (exit code, last lines of its log)} of every process this stack started that
        is no longer running (services, replicas, Triton, Redis): what a failing test should
        name when a stage it needed died under it."""
        logs = {name: self.log_path(name) for name in self.procs}
        procs = dict(self.procs)
        if self.triton is not None and self.triton.proc is not None:
            procs["triton"], logs["triton"] = self.triton.proc, self.triton.log_path
        if self.redis is not None and self.redis.proc is not None:
            procs["redis"] = self.redis.proc
        dead = {}
        for name, proc in procs.items():
            if proc.poll() is None:
                continue
            log = logs.get(name)
            tail = log.read_text(errors="replace")[-2500:] if log is not None and log.exists() else ""
            dead[name] = (proc.returncode, tail)
        return dead

    def _live_pids(self) -> dict[str, int]:
        procs = {**self.procs, **{name: server.proc for name, server in (("triton", self.triton), ("redis", self.redis))
                                  if server is not None and server.proc is not None}}
        return {name: p.pid for name, p in procs.items() if p.poll() is None}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each live service process, Triton (with its model stubs)
        and Redis."""
        return process_tree_cpu_s(self._live_pids())

    def rss_mib(self) -> dict[str, float]:
        """Resident memory (MiB) now of each live service process, Triton (with its model
        stubs) and Redis."""
        return process_tree_rss_mib(self._live_pids())

    def supervise(self, interval_s: float = 0.1) -> "Supervisor":
        """Restart any service (and Triton) that exits, until the stack stops."""
        supervisor = Supervisor(self, interval_s)
        supervisor.start()
        return supervisor

    def __enter__(self) -> "Stack":
        return self.start(self.start_timeout_s)

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def private_stack(*folders: Path, interest_variants: dict[str, Path] | None = None,
                  **settings) -> Iterator["Stack"]:
    """A running local mesh over a temporary copy of `folders` (each becomes var/<its name>;
    default: the bootstrapped catalog and event log of $RECMESH_VAR), serving the interest model
    and the ranker start versions of the var they come from (the first folder's parent): what
    the run writes is thrown away. interest_variants: further interest models {name: artifact}
    installed in the copy for experiments' variants (recmesh/tools/interest_models.py: ValueError
    for one of another item space).
    settings: Stack's fields (env, encoder_backend, ...)."""
    from recmesh.tools import interest_models

    folders = folders or bootstrapped()
    settings.setdefault("interest_model", served_artifact(Path(folders[0]).parent))
    settings.setdefault("start_params", start_params_dir(Path(folders[0]).parent))
    var = Path(tempfile.mkdtemp(prefix="recmesh-"))
    try:
        for folder in folders:
            shutil.copytree(folder, var / folder.name)
        for name, artifact in (interest_variants or {}).items():
            interest_models.add(artifact, name, var, default=settings["interest_model"])
        with Stack(var=var, **settings) as stack:
            yield stack
    finally:
        shutil.rmtree(var, ignore_errors=True)


class Supervisor(threading.Thread):
    """A local process supervisor: a crashed service (or Triton) is started again at once and
    waited for until it serves; restarts are recorded (name, exited at, serving again at)."""

    def __init__(self, stack: Stack, interval_s: float):
        super().__init__(name="recmesh-supervisor", daemon=True)
        self.stack, self.interval_s = stack, interval_s
        self.restarts: list[tuple[str, float, float]] = []

    def run(self) -> None:
        stack = self.stack
        while not stack.stopping:
            for name, proc in list(stack.procs.items()):
                if proc.poll() is not None and not stack.stopping:
                    exited = time.monotonic()
                    try:
                        stack.restart(name)
                        self.restarts.append((name, exited, time.monotonic()))
                    except Exception:  # it will be tried again on the next round
                        pass
            triton = stack.triton
            if triton is not None and triton.proc is not None and triton.proc.poll() is not None \
                    and not stack.stopping:
                exited = time.monotonic()
                try:
                    triton.start()
                    self.restarts.append(("triton", exited, time.monotonic()))
                except Exception:
                    pass
            time.sleep(self.interval_s)
