"""kube-prometheus-stack fit: the generated PrometheusRule, release labels, SLO alerts, runbook.

``deploy/prometheus/rules.yml`` is the one source of rules; the PrometheusRule manifest in the
monitoring component is generated from it (``python -m scripts.gen_prometheusrule``) and must
equal what the generator writes now. Every overlay with the monitoring component carries both
Operator objects with the same ``release`` label, and one kustomize patch changes it on both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import gen_prometheusrule
from service.settings import ServiceSettings
from telemetry import names
from tests.unit.deploy.test_deploy import K8S, PROMETHEUS_DIR, _render, one, render

RULES = PROMETHEUS_DIR / "rules.yml"
RUNBOOK = K8S.parent / "RUNBOOK.md"
MONITORING_OVERLAYS = ("overlays/monitoring", "overlays/monitoring-gpu")
DEFAULT_RELEASE = "kube-prometheus-stack"


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in _rules() if "alert" in r}


# ---------------------------------------------------------------------------------- one source


def test_committed_prometheusrule_equals_generated() -> None:
    committed = gen_prometheusrule.OUTPUT.read_text(encoding="utf-8")
    assert committed == gen_prometheusrule.render(gen_prometheusrule.build()), (
        "stale: run python -m scripts.gen_prometheusrule"
    )
    # And the same objects, not just the same text: YAML round trip of groups and rules.
    manifest = yaml.safe_load(committed)
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    monitor = yaml.safe_load(gen_prometheusrule.SERVICE_MONITOR.read_text())
    assert manifest["metadata"]["labels"] == monitor["metadata"]["labels"]


def test_generator_check_flag_detects_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text(gen_prometheusrule.OUTPUT.read_text().replace("for: 5m", "for: 6m", 1))
    assert gen_prometheusrule.main(["--check", "--output", str(stale)]) == 1
    assert gen_prometheusrule.main(["--output", str(stale)]) == 0
    assert gen_prometheusrule.main(["--check", "--output", str(stale)]) == 0


def test_generated_rules_pass_promtool(promtool: str, tmp_path: Path) -> None:
    # What the Operator hands Prometheus: spec.groups as a rule file.
    manifest = yaml.safe_load(gen_prometheusrule.OUTPUT.read_text())
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ release label


@pytest.mark.parametrize("kustomization", MONITORING_OVERLAYS)
def test_monitoring_overlays_carry_both_operator_objects_with_the_release_label(
    kubectl: str, kustomization: str
) -> None:
    objects = render(kubectl, kustomization)
    monitor = one(objects, "ServiceMonitor")
    rule = one(objects, "PrometheusRule")
    deployment = one(objects, "Deployment")
    for obj in (monitor, rule):
        assert obj["metadata"]["labels"]["release"] == DEFAULT_RELEASE
        assert obj["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    if kustomization.endswith("gpu"):
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert str(limits["nvidia.com/gpu"]) == "1"


@pytest.mark.parametrize("kustomization", ("overlays/cpu", "overlays/gpu"))
def test_plain_overlays_need_no_operator_crds(kubectl: str, kustomization: str) -> None:
    kinds = {o["kind"] for o in render(kubectl, kustomization)}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


RELEASE_PATCH = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../monitoring-gpu]
patches:
  - target:
      group: monitoring.coreos.com
    patch: |-
      - op: replace
        path: /metadata/labels/release
        value: prom
"""


def test_one_patch_changes_the_release_on_both_objects(kubectl: str, tmp_path: Path) -> None:
    # The patch deploy/README.md shows; kustomize refuses absolute paths, so build in a copy.
    readme = (K8S.parent / "README.md").read_text(encoding="utf-8")
    assert RELEASE_PATCH.split("patches:\n", 1)[1] in readme
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    mine = tree / "overlays" / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(RELEASE_PATCH)
    objects = list(_render(kubectl, mine))
    operator = [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {o["kind"] for o in operator} == {"ServiceMonitor", "PrometheusRule"}
    assert all(o["metadata"]["labels"]["release"] == "prom" for o in operator)


# -------------------------------------------------------------------------------- SLO alerts


def _objective(record: str) -> float:
    expr = next(r["expr"] for r in _rules() if r.get("record") == record)
    match = re.fullmatch(r"vector\((0\.\d+)\)", expr)
    assert match, expr
    return float(match.group(1))


def test_slo_objectives_are_defined_once() -> None:
    assert _objective("tokenbooth:ttft_slo_objective:ratio") == 0.99
    assert _objective("tokenbooth:error_slo_objective:ratio") == 0.995
    for rule in _rules():
        if "alert" in rule:
            # Alerts refer to the objective series, never spell 0.99 / 0.995 themselves.
            assert not re.search(r"\b0\.99", rule["expr"]), rule["alert"]


def test_ttft_slo_bucket_is_the_service_default_slo_boundary() -> None:
    slo_s = ServiceSettings().ttft_slo_ms / 1000  # type: ignore[operator]
    boundaries = names.with_slo_boundaries(names.TIME_TO_FIRST_TOKEN_BUCKETS, slo_s)
    rules = {r["record"]: r["expr"] for r in _rules() if "record" in r}
    les = set()
    for window in ("5m", "30m", "1h", "6h"):
        expr = rules[f"model:{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}:slo_miss_ratio_rate{window}"]
        assert f"[{window}]" in expr
        les |= set(re.findall(r'le="([^"]+)"', expr))
    assert les == {str(slo_s)}
    assert slo_s in boundaries


@pytest.mark.parametrize(
    ("alert", "long", "short", "factor", "severity"),
    [
        ("TokenboothTTFTBudgetBurnFast", "1h", "5m", "14.4", "critical"),
        ("TokenboothTTFTBudgetBurnSlow", "6h", "30m", "6", "warning"),
        ("TokenboothErrorBudgetBurnFast", "1h", "5m", "14.4", "critical"),
        ("TokenboothErrorBudgetBurnSlow", "6h", "30m", "6", "warning"),
    ],
)
def test_burn_rate_alerts_pair_the_workbook_windows(
    alert: str, long: str, short: str, factor: str, severity: str
) -> None:
    rule = _alerts()[alert]
    expr = rule["expr"]
    windows = re.findall(r":(?:slo_miss_ratio|ratio)_rate(\d+[mh])\b", expr)
    assert windows == [long, short], expr
    assert re.search(r"\)\s+and\s+\(", expr), expr
    assert expr.count(f"({factor} * (1 - tokenbooth:") == 2
    assert rule["labels"]["severity"] == severity


def test_absent_alert_selects_the_scrape_job_of_every_config() -> None:
    expr = _alerts()["TokenboothReplicasAbsent"]["expr"]
    assert expr == 'absent(up{job="tokenbooth"})'
    # Compose and in-cluster Prometheus name the job; the ServiceMonitor's is the Service name.
    for config in ("prometheus.yml", "prometheus-kubernetes.yml"):
        jobs = {
            j["job_name"]
            for j in yaml.safe_load((PROMETHEUS_DIR / config).read_text())["scrape_configs"]
        }
        assert "tokenbooth" in jobs, config


def test_saturation_alerts_use_exported_gpu_and_queue_series() -> None:
    recorded = {r["record"]: r["expr"] for r in _rules() if "record" in r}
    gpu = recorded["instance_gpu:tokenbooth_gpu_memory_used:ratio"]
    assert gpu == f"{names.TOKENBOOTH_GPU_MEMORY_USED} / {names.TOKENBOOTH_GPU_MEMORY_TOTAL}"
    queue = recorded["instance:tokenbooth_queue_fill:ratio"]
    assert queue == f"{names.TOKENBOOTH_REQUESTS_WAITING} / {names.TOKENBOOTH_QUEUE_CAPACITY}"
    assert "instance:tokenbooth_queue_fill:ratio" in _alerts()["TokenboothQueueSaturated"]["expr"]


# --------------------------------------------------------------------------------- runbook


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_links_its_own_runbook_section() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = {_anchor(h) for h in re.findall(r"^## (.+)$", text, flags=re.M)}
    alerts = _alerts()
    for name, rule in alerts.items():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "deploy/RUNBOOK.md", name
        assert anchor == name.lower() and anchor in sections, name
        assert "runbook" not in rule["annotations"], name  # the old README link is gone
    # And no section for an alert that does not exist.
    assert sections == {name.lower() for name in alerts}
    # Each section gives commands to run, not only prose.
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        assert "```" in block, block.splitlines()[0]
