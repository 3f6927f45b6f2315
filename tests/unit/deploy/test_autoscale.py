"""Autoscaling manifests: the HPA without CPU, KEDA's ScaledObject, the adapter's added rule.

The scaling behaviour of both is :func:`reports.autoscaling.scale_behaviour` of the reference
cold start, and the lags it assumes are the manifests' own (probe periods, scrape interval,
KEDA polling), so changing one without the other fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from reports.autoscaling import (
    HPA_SYNC_PERIOD_S,
    METRIC_LAG_S,
    PROBE_PERIOD_S,
    REFERENCE_COLD_START_S,
    scale_behaviour,
)
from telemetry import names
from tests.unit.deploy.crdschema import crd_errors
from tests.unit.deploy.test_deploy import K8S, container, one, render

CPU_WORKLOADS = ("base", "overlays/cpu", "overlays/monitoring", "overlays/keda")
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"


def _hpa_behaviour(objects: list[dict[str, Any]]) -> dict[str, Any]:
    behavior: dict[str, Any] = one(objects, "HorizontalPodAutoscaler")["spec"]["behavior"]
    return behavior


@pytest.mark.parametrize("kustomization", ["base", "overlays/cpu", "overlays/monitoring"])
def test_hpa_has_no_cpu_metric_on_cpu_pods(kubectl: str, kustomization: str) -> None:
    objects = render(kubectl, kustomization)
    hpa = one(objects, "HorizontalPodAutoscaler")
    # CPU replicas run batch_workers busy threads on as many cores: ~100 % CPU whenever they
    # have work, so a CPU target would scale out at any load.
    resources = [
        m for m in hpa["spec"]["metrics"] if m["type"] in ("Resource", "ContainerResource")
    ]
    assert resources == []
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [names.TOKENBOOTH_REQUESTS_WAITING]


def test_hpa_behaviour_is_sized_from_the_reference_cold_start(kubectl: str) -> None:
    behaviour = scale_behaviour(REFERENCE_COLD_START_S)
    assert _hpa_behaviour(render(kubectl, "overlays/cpu")) == behaviour.manifest()
    # A step lets the pods it added become ready and counted before the next one.
    assert behaviour.step_period_s >= REFERENCE_COLD_START_S + 2 * PROBE_PERIOD_S + METRIC_LAG_S
    assert behaviour.step_period_s % HPA_SYNC_PERIOD_S == 0
    # A slower model gets slower steps: the derivation is live, not a copied number.
    assert scale_behaviour(120.0).step_period_s > behaviour.step_period_s


@pytest.mark.parametrize("kustomization", CPU_WORKLOADS)
def test_probe_periods_are_what_the_lead_time_assumes(kubectl: str, kustomization: str) -> None:
    c = container(render(kubectl, kustomization))
    assert c["startupProbe"]["periodSeconds"] == PROBE_PERIOD_S
    assert c["readinessProbe"]["periodSeconds"] == PROBE_PERIOD_S


@pytest.mark.parametrize(
    "kustomization",
    ["base", "overlays/cpu", "overlays/gpu", "overlays/keda", "overlays/canary", "overlays/istio"],
)
def test_autoscaled_deployments_leave_the_replica_count_to_the_autoscaler(
    kubectl: str, kustomization: str
) -> None:
    objects = render(kubectl, kustomization)
    scaled = {
        o["spec"]["scaleTargetRef"]["name"]
        for o in objects
        if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    }
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        name = deployment["metadata"]["name"]
        # Autoscaled: a count in the manifest would reset the fleet on every apply.
        # Not autoscaled (the canary): the manifest must say how many.
        assert ("replicas" in deployment["spec"]) != (name in scaled), name


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def test_keda_overlay_replaces_the_hpa_with_a_scaled_object(kubectl: str) -> None:
    objects = render(kubectl, "overlays/keda")
    # KEDA creates its own HPA; a second one on the same Deployment would fight it.
    assert [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"] == []
    scaled = one(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert crd_errors(scaled) == []
    deployment = one(objects, "Deployment")
    spec = scaled["spec"]
    ref = spec["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    hpa = one(render(kubectl, "overlays/cpu"), "HorizontalPodAutoscaler")["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == scale_behaviour(REFERENCE_COLD_START_S).manifest()
    # Blind (no series yet on a fresh install): hold the current count, never jump to the max.
    assert spec["fallback"]["behavior"] == "currentReplicasIfHigher"
    assert spec["fallback"]["replicas"] == spec["minReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith("http://")
    assert re.fullmatch(
        rf'sum\({names.TOKENBOOTH_REQUESTS_WAITING}\{{job="tokenbooth",'
        rf'namespace="{deployment["metadata"]["namespace"]}",'
        rf'revision="{deployment["spec"]["selector"]["matchLabels"]["revision"]}"\}}\)',
        meta["query"],
    )
    # The same per-replica target as the HPA's Pods metric.
    target = next(m for m in hpa["metrics"] if m["type"] == "Pods")["pods"]["target"]
    assert float(meta["threshold"]) == float(target["averageValue"])
    assert meta["ignoreNullValues"] == "false"
    # The scaler's view lags by one scrape plus one poll: what the report's lead time assumes.
    monitor = one(objects, "ServiceMonitor")
    # The query's revision label is only on the series if the monitor copies it from the pod.
    assert "revision" in monitor["spec"]["podTargetLabels"]
    scrape_s = max(_seconds(e["interval"]) for e in monitor["spec"]["endpoints"])
    assert scrape_s + spec["pollingInterval"] == METRIC_LAG_S


def test_scaled_object_schema_rejects_a_misspelt_trigger_field(kubectl: str) -> None:
    scaled = one(render(kubectl, "overlays/keda"), "ScaledObject")
    scaled["spec"]["minReplicaCounts"] = 2
    assert crd_errors(scaled)


def test_prometheus_adapter_adds_the_hpa_rule_to_the_chart_defaults(kubectl: str) -> None:
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    rules = values["rules"]
    # Added, not replacing: the chart's default rules stay on, and no `existing` ConfigMap
    # (which overrides default, custom, external and resource rules alike).
    assert rules["default"] is True
    assert "existing" not in rules
    hpa = one(render(kubectl, "overlays/cpu"), "HorizontalPodAutoscaler")
    wanted = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    served = {rule["name"]["as"]: rule for rule in rules["custom"]}
    assert wanted and set(wanted) <= set(served)
    for metric in wanted:
        rule = served[metric]
        assert rule["seriesQuery"].startswith(names.TOKENBOOTH_REQUESTS_WAITING + "{")
        assert re.fullmatch(rule["name"]["matches"], names.TOKENBOOTH_REQUESTS_WAITING)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert not (Path(ADAPTER_VALUES.parent) / "kustomization.yaml").exists()
