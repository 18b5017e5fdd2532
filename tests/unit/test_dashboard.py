"""The Grafana dashboard queries only metrics the services export."""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dashboard_queries_exported_metrics():
    dashboard = json.loads((REPO / "deploy" / "grafana" / "recmesh-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"recmesh_[a-z_]+", e)}
    source = "\n".join(p.read_text() for d in ("recmesh", "services") for p in (REPO / d).rglob("*.py"))
    declared = set(re.findall(r'"(recmesh_[a-z_]+)"', source))
    suffixes = ("_bucket", "_count", "_sum")
    missing = {m for m in used if m not in declared and not any(m.endswith(s) and m[: -len(s)] in declared
                                                                for s in suffixes)}
    assert used and not missing, missing
