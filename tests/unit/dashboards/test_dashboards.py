"""The Grafana dashboard and the Prometheus rules against the metrics the service really exports.

The legal metric names are not listed here: they are collected from a registry holding exactly
what a replica registers (``ServiceMetrics``, ``GpuSampler``, the process collectors), with
Prometheus' exposition suffixes applied by metric type. A query that names anything else, or a
label the service never sets, fails.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

from telemetry import names
from telemetry.gpu import GpuSampler
from telemetry.http import ConnectionMetrics
from telemetry.loop import LoopLagMonitor
from telemetry.metrics import ServiceMetrics, register_process_collectors
from telemetry.startup import StartupMetrics

REPO = Path(__file__).resolve().parents[3]
GENERATOR = REPO / "dashboards" / "generate.py"
DASHBOARD = REPO / "dashboards" / "tokenbooth-service.json"
PROVISIONING = REPO / "dashboards" / "provisioning"
RULES = REPO / "deploy" / "prometheus" / "rules.yml"

# Series Prometheus itself attaches to every target.
SCRAPE_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)
# Labels added at scrape time (target labels, Kubernetes relabelling, the histogram bucket bound).
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "accelerator", names.LABEL_REVISION, "le"}
)
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__range", "__all"})


# ---------------------------------------------------------------------------------------------
# What the service exports
# ---------------------------------------------------------------------------------------------


def _exposed_names(family_name: str, family_type: str) -> set[str]:
    """Series names of one collected family in the Prometheus text/OpenMetrics exposition."""
    if family_type == "counter":
        return {f"{family_name}_total", f"{family_name}_created"}
    if family_type == "histogram":
        return {f"{family_name}_{suffix}" for suffix in ("bucket", "sum", "count", "created")}
    if family_type == "info":
        return {f"{family_name}_info"}
    if family_type in ("gauge", "unknown"):
        return {family_name}
    raise AssertionError(f"unexpected metric type {family_type} of {family_name}")


@cache
def exported_families() -> dict[str, str]:
    """``{family name: type}`` of everything a replica registers, read off a fresh registry."""
    registry = CollectorRegistry()
    ServiceMetrics(registry, model="m", revision="r", max_batch_size=4)
    GpuSampler(registry)  # registers its gauges in __init__; NVML is only touched on entry
    ConnectionMetrics(registry)
    LoopLagMonitor(registry)  # registers its histogram in __init__; samples only on entry
    StartupMetrics(registry)  # the family only; phases appear once the replica is ready
    register_process_collectors(registry)
    return {family.name: family.type for family in registry.collect()}


@cache
def exported_series() -> frozenset[str]:
    """Every series name a replica can expose, plus the series Prometheus adds per target."""
    series: set[str] = set(SCRAPE_SERIES)
    for family, kind in exported_families().items():
        series |= _exposed_names(family, kind)
    return frozenset(series)


def service_labels() -> frozenset[str]:
    """Label keys the service puts on its series (names.LABEL_*) plus scrape-time labels."""
    keys = {getattr(names, n) for n in names.__all__ if n.startswith("LABEL_")}
    # Process/platform collector labels (python_info).
    keys |= {"implementation", "major", "minor", "patchlevel", "version"}
    return frozenset(keys | TARGET_LABELS)


def metric_constants() -> dict[str, str]:
    """The metric-name constants of telemetry.names (GEN_AI_SERVER_* and TOKENBOOTH_*)."""
    return {
        n: getattr(names, n)
        for n in names.__all__
        if n.startswith(("GEN_AI_SERVER_", "TOKENBOOTH_")) and isinstance(getattr(names, n), str)
    }


# ---------------------------------------------------------------------------------------------
# PromQL scanning
# ---------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan", "start", "end"}
)  # fmt: skip
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*),\s*([a-zA-Z_]\w*)\s*\)\s*$")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and labels excluded)."""
    text = _MATCHERS.sub(" ", _STRING.sub('""', expr))
    text = _GROUPING.sub(" ", _RANGE.sub(" ", text))
    found: set[str] = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        found.add(word)
    return found


def promql_label_names(expr: str) -> set[str]:
    """Label keys an expression matches on or groups by."""
    keys: set[str] = set()
    for block in _MATCHERS.findall(expr):
        keys |= {m.group(1) for m in _MATCHER.finditer(block)}
    for group in _GROUPING.findall(_STRING.sub('""', expr)):
        keys |= {k.strip() for k in group.split(",") if k.strip()}
    return keys


def promql_label_values(expr: str, label: str) -> set[str]:
    """Literal values an expression compares ``label`` with (regex alternatives split on |)."""
    values: set[str] = set()
    for block in _MATCHERS.findall(expr):
        for m in _MATCHER.finditer(block):
            if m.group(1) == label and m.group(3):
                values |= set(m.group(3).split("|"))
    return values


def test_promql_scanner_finds_metrics_and_ignores_everything_else() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, model) (rate(foo_seconds_bucket{a="b(c) d_total",'
        ' le!="1"}[5m] offset 1m))) / on (instance) group_left () bar_total '
        'unless level:baz:rate5m > bool 0.5 or absent(up{job="x"}) * $__rate_interval_thing'
    )
    assert promql_metric_names(expr) == {
        "foo_seconds_bucket",
        "bar_total",
        "level:baz:rate5m",
        "up",
    }
    assert promql_label_names(expr) == {"a", "le", "model", "instance", "job"}
    assert promql_label_values('x{outcome=~"error|timeout", model="m"}', "outcome") == {
        "error",
        "timeout",
    }


def test_promql_scanner_catches_a_misspelt_metric() -> None:
    expr = "sum(rate(tokenbooth_request_total[5m]))"
    assert promql_metric_names(expr) - exported_series() == {"tokenbooth_request_total"}


# ---------------------------------------------------------------------------------------------
# The legal set itself is tied to telemetry.names
# ---------------------------------------------------------------------------------------------


def test_every_names_constant_is_exported_and_every_service_family_has_a_constant() -> None:
    exported = exported_series()
    constants = metric_constants()
    for const, value in constants.items():
        assert value in exported or f"{value}_bucket" in exported, (
            f"names.{const} = {value!r} is not exported by a replica"
        )
    for family, kind in exported_families().items():
        if family.startswith(("process_", "python_")):
            continue  # prometheus_client's process and platform collectors
        spelled = _exposed_names(family, kind)
        assert family in constants.values() or spelled & set(constants.values()), (
            f"family {family} has no constant in telemetry.names"
        )


# ---------------------------------------------------------------------------------------------
# Dashboard
# ---------------------------------------------------------------------------------------------


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tokenbooth_dashboard_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def _variable_queries(dashboard: dict[str, Any]) -> Iterator[str]:
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            yield query["query"] if isinstance(query, dict) else query


def test_committed_dashboard_equals_generated(generator: ModuleType) -> None:
    expected = generator.render(generator.build_dashboard())
    assert DASHBOARD.read_text(encoding="utf-8") == expected, (
        "dashboards/tokenbooth-service.json is stale: run python dashboards/generate.py"
    )


def test_generate_check_flag_detects_a_stale_file(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "dash.json"
    stale.write_text(DASHBOARD.read_text(encoding="utf-8").replace("p95", "p96"), encoding="utf-8")
    bad = subprocess.run(
        [sys.executable, str(GENERATOR), "--check", "--output", str(stale)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "out of date" in bad.stderr


def test_dashboard_queries_use_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_series()
    exprs = [t["expr"] for _, t in _targets(dashboard)]
    assert len(exprs) > 40
    for expr in exprs:
        used = promql_metric_names(expr)
        assert used, f"no metric found in {expr!r}"
        assert used <= exported, f"{sorted(used - exported)} in {expr!r} are not exported"
    for query in _variable_queries(dashboard):
        m = _LABEL_VALUES.match(query)
        assert m, query
        assert promql_metric_names(m.group(1)) <= exported
        assert m.group(2) in service_labels()


def test_dashboard_queries_use_only_known_labels_and_outcomes(dashboard: dict[str, Any]) -> None:
    labels = service_labels()
    for _, target in _targets(dashboard):
        expr = target["expr"]
        assert promql_label_names(expr) <= labels, expr
        assert promql_label_values(expr, names.LABEL_OUTCOME) <= set(names.OUTCOMES), expr
        reasons = promql_label_values(expr, names.LABEL_REASON)
        assert reasons <= set(names.CONNECTION_CLOSE_REASONS), expr


def test_unlabelled_replica_series_are_not_selected_by_model(dashboard: dict[str, Any]) -> None:
    # The connection and event-loop series carry no model label: model=~"$model" on them would
    # match nothing once a model is picked.
    unlabelled = {
        names.TOKENBOOTH_HTTP_CONNECTIONS_OPEN,
        names.TOKENBOOTH_HTTP_CONNECTIONS_CLOSED,
        names.TOKENBOOTH_EVENT_LOOP_LAG + "_bucket",
    }
    checked = 0
    for _, target in _targets(dashboard):
        expr = target["expr"]
        if promql_metric_names(expr) & unlabelled:
            assert names.LABEL_MODEL not in promql_label_names(expr), expr
            assert 'instance=~"$instance"' in expr, expr
            checked += 1
    assert checked >= 5


def test_connection_close_panels_split_guard_closes_from_ordinary_ones(
    dashboard: dict[str, Any],
) -> None:
    ordinary = {names.CONNECTION_CLOSE_NORMAL, names.CONNECTION_CLOSE_IDLE}
    by_panel: dict[str, set[str]] = {}
    for panel, target in _targets(dashboard):
        if names.TOKENBOOTH_HTTP_CONNECTIONS_CLOSED in promql_metric_names(target["expr"]):
            by_panel[panel["title"]] = promql_label_values(target["expr"], names.LABEL_REASON)
    assert sorted(by_panel.values(), key=len) == [
        ordinary,
        set(names.CONNECTION_CLOSE_REASONS) - ordinary,
    ]


def test_dashboard_covers_the_required_signals(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for _, target in _targets(dashboard):
        used |= promql_metric_names(target["expr"])
    required = {
        names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN + "_bucket",
        names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN + "_bucket",
        names.TOKENBOOTH_INTER_TOKEN_LATENCY + "_bucket",
        names.GEN_AI_SERVER_REQUEST_DURATION + "_bucket",
        names.TOKENBOOTH_GENERATION_TOKENS,
        names.TOKENBOOTH_PROMPT_TOKENS,
        names.TOKENBOOTH_REQUESTS,
        names.TOKENBOOTH_REQUESTS_WAITING,
        names.TOKENBOOTH_REQUESTS_RUNNING,
        names.TOKENBOOTH_BATCHES_RUNNING,
        names.TOKENBOOTH_QUEUE_WAIT + "_bucket",
        names.TOKENBOOTH_BATCH_SIZE + "_bucket",
        names.TOKENBOOTH_BATCH_FILL_RATIO + "_sum",
        names.TOKENBOOTH_BATCH_PREFILL + "_bucket",
        names.TOKENBOOTH_BATCH_DECODE + "_bucket",
        names.TOKENBOOTH_GPU_UTILIZATION,
        names.TOKENBOOTH_GPU_MEMORY_USED,
        names.TOKENBOOTH_GPU_POWER,
        names.TOKENBOOTH_GPU_TEMPERATURE,
        names.TOKENBOOTH_MODEL_INFO,
        names.TOKENBOOTH_BUILD_INFO,
        names.TOKENBOOTH_HTTP_CONNECTIONS_OPEN,
        names.TOKENBOOTH_HTTP_CONNECTIONS_CLOSED,
        names.TOKENBOOTH_EVENT_LOOP_LAG + "_bucket",
        names.PROCESS_CPU_SECONDS,
        names.PROCESS_RESIDENT_MEMORY,
    }
    assert required <= used, sorted(required - used)


def test_latency_panels_show_exemplars(dashboard: dict[str, Any]) -> None:
    latency = {
        names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
        names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
        names.TOKENBOOTH_INTER_TOKEN_LATENCY,
        names.GEN_AI_SERVER_REQUEST_DURATION,
    }
    checked = 0
    for panel, target in _targets(dashboard):
        expr = target["expr"]
        if panel["type"] != "timeseries":
            continue  # stat panels have no time axis to draw exemplars on
        if "histogram_quantile" in expr and any(f"{h}_bucket" in expr for h in latency):
            assert target["exemplar"] is True, expr
            checked += 1
    assert checked >= 12


def test_dashboard_grafana_structure(dashboard: dict[str, Any], generator: ModuleType) -> None:
    assert dashboard["uid"] == generator.DASHBOARD_UID
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    occupied: set[tuple[int, int]] = set()
    for panel in _panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]
            assert panel.get("description"), panel["title"]


def test_dashboard_variables_and_datasources_resolve(
    dashboard: dict[str, Any], generator: ModuleType
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "model", "instance"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["current"]["value"] == generator.PROMETHEUS_UID
    provisioned = {ds["uid"] for ds in _provisioned_datasources()}

    def check_ref(ref: dict[str, Any], where: str) -> None:
        uid = ref["uid"]
        if uid.startswith("${"):
            var = uid[2:-1]
            assert var in variables and variables[var]["type"] == "datasource", where
        elif ref.get("type") != "grafana":
            assert uid in provisioned, where

    for panel in _panels(dashboard):
        if "datasource" in panel:
            check_ref(panel["datasource"], panel["title"])
        for target in panel.get("targets", []):
            check_ref(target["datasource"], panel["title"])
            for var in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert var in variables or var in GRAFANA_BUILTINS, (var, target["expr"])
    for var in variables.values():
        if "datasource" in var:
            check_ref(var["datasource"], var["name"])


def test_slo_variables_are_exact_bucket_boundaries(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for var, buckets in (
        ("ttft_slo", names.TIME_TO_FIRST_TOKEN_BUCKETS),
        ("tpot_slo", names.TIME_PER_OUTPUT_TOKEN_BUCKETS),
    ):
        for option in variables[var]["options"]:
            value = option["value"]
            # Spelt exactly as prometheus_client renders `le`, or le="$var" matches nothing.
            assert value == floatToGoString(float(value)), value  # type: ignore[no-untyped-call]
            assert float(value) in buckets, value


# ---------------------------------------------------------------------------------------------
# Provisioning
# ---------------------------------------------------------------------------------------------


def _provisioned_datasources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        out += yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    return out


def test_datasource_provisioning_links_exemplars_to_the_trace_store(generator: ModuleType) -> None:
    by_uid = {ds["uid"]: ds for ds in _provisioned_datasources()}
    prom = by_uid[generator.PROMETHEUS_UID]
    assert prom["type"] == "prometheus"
    destinations = prom["jsonData"]["exemplarTraceIdDestinations"]
    assert [d["name"] for d in destinations] == [names.EXEMPLAR_TRACE_ID]
    traces = by_uid[destinations[0]["datasourceUid"]]
    assert traces["uid"] == generator.TRACES_UID
    assert traces["type"] in ("jaeger", "tempo")


def test_dashboard_provider_points_at_a_mounted_directory() -> None:
    providers = yaml.safe_load(
        (PROVISIONING / "dashboards" / "tokenbooth.yaml").read_text(encoding="utf-8")
    )["providers"]
    assert len(providers) == 1
    path = providers[0]["options"]["path"]
    compose = yaml.safe_load((REPO / "deploy/compose/compose.yaml").read_text(encoding="utf-8"))
    mounts = compose["services"]["grafana"]["volumes"]
    targets = {m.split(":")[1]: m.split(":")[0] for m in mounts}
    mounted = f"{path}/{DASHBOARD.name}"
    assert mounted in targets, f"{mounted} is not mounted into grafana"
    compose_dir = REPO / "deploy" / "compose"
    assert (compose_dir / targets[mounted]).resolve() == DASHBOARD
    assert (compose_dir / targets["/etc/grafana/provisioning"]).resolve() == PROVISIONING


# ---------------------------------------------------------------------------------------------
# Prometheus rules
# ---------------------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_use_only_exported_or_recorded_metrics() -> None:
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    legal = exported_series() | recorded
    for rule in rules:
        used = promql_metric_names(rule["expr"])
        # An SLO objective is the one rule that is a constant (the burn-rate alerts divide by it).
        if rule.get("record", "").endswith("_slo_objective:ratio"):
            assert re.fullmatch(r"vector\(0\.\d+\)", rule["expr"]), rule["expr"]
            continue
        assert used, rule["expr"]
        assert used <= legal, f"{sorted(used - legal)} in {rule['expr']!r}"
    # Recorded series must be computed from service metrics, not from each other in a loop.
    for rule in rules:
        if "record" in rule:
            assert rule["record"] not in promql_metric_names(rule["expr"])


def test_rules_use_only_known_labels_and_outcomes() -> None:
    labels = service_labels()
    for rule in _rules():
        expr = rule["expr"]
        assert promql_label_names(expr) <= labels, expr
        assert promql_label_values(expr, names.LABEL_OUTCOME) <= set(names.OUTCOMES), expr
        reasons = promql_label_values(expr, names.LABEL_REASON)
        assert reasons <= set(names.CONNECTION_CLOSE_REASONS), expr


def test_rules_cover_the_required_recordings_and_alerts() -> None:
    rules = _rules()
    recorded = {r["record"]: r["expr"] for r in rules if "record" in r}
    for q in ("p50", "p95", "p99"):
        expr = recorded[f"model:{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}:{q}_5m"]
        assert "histogram_quantile" in expr
        assert f"{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}_bucket" in expr
    assert (
        names.TOKENBOOTH_GENERATION_TOKENS in recorded["model:tokenbooth_generation_tokens:rate5m"]
    )
    assert names.TOKENBOOTH_REQUESTS in recorded["model_outcome:tokenbooth_requests:rate5m"]
    assert (
        names.TOKENBOOTH_BATCH_FILL_RATIO in recorded["model:tokenbooth_batch_fill_ratio:mean_5m"]
    )
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert {
        "TokenboothTTFTHigh",
        "TokenboothQueueBackingUp",
        "TokenboothHighErrorRate",
        "TokenboothTargetDown",
        "TokenboothModelNotLoaded",
        "TokenboothGpuMissing",
        "TokenboothSlowClients",
        "TokenboothEventLoopLag",
    } <= set(alerts)
    # Slow clients: every close the server forces, and none of the ordinary ones.
    slow = promql_label_values(alerts["TokenboothSlowClients"]["expr"], names.LABEL_REASON)
    assert slow == set(names.CONNECTION_CLOSE_REASONS) - {
        names.CONNECTION_CLOSE_NORMAL,
        names.CONNECTION_CLOSE_IDLE,
    }
    lag = f"instance:{names.TOKENBOOTH_EVENT_LOOP_LAG}:p99_5m"
    assert f"{names.TOKENBOOTH_EVENT_LOOP_LAG}_bucket" in recorded[lag]
    assert lag in alerts["TokenboothEventLoopLag"]["expr"]
    # A client that stops reading ends "aborted" (write_timeout): its own doing, not a failure.
    failed = recorded["model:tokenbooth_requests_failed:ratio_rate5m"]
    assert promql_label_values(failed, names.LABEL_OUTCOME) == {
        names.OUTCOME_ERROR,
        names.OUTCOME_TIMEOUT,
    }
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
