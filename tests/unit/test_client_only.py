"""The client side (recmesh.client, recmesh.replicas) imports with only recmesh's base
dependencies: a client-only install has no prometheus_client, OpenTelemetry or torch."""

from __future__ import annotations

import subprocess
import sys

SERVER_ONLY = ["prometheus_client", "opentelemetry", "torch", "qdrant_edge", "qdrant_client", "redis"]


def test_clients_import_without_the_servers_dependencies():
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in SERVER_ONLY)  # import -> ImportError
    code = f"import sys; {blocked}; import recmesh.client, recmesh.replicas; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
