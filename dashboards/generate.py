"""Generate the tokenbooth Grafana dashboard from :mod:`telemetry.names`.

Every PromQL query is assembled from the metric and label constants of ``telemetry/names.py``,
so a renamed metric changes the dashboard the next time this runs, and
``tests/unit/dashboards/test_dashboards.py`` fails while the committed JSON is stale. Usage::

    python dashboards/generate.py            # rewrite dashboards/tokenbooth-service.json
    python dashboards/generate.py --check    # exit 1 if the committed JSON is out of date

The dashboard expects the datasources provisioned from ``dashboards/provisioning/``: Prometheus
(uid :data:`PROMETHEUS_UID`, with exemplar ``trace_id`` links) and the trace store (uid
:data:`TRACES_UID`). A ``datasource`` template variable lets it run against another Prometheus.
It is long because the dashboard is data: one declaration per panel, in the order they show.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

_REPO_ROOT: Final = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    # Lets `python dashboards/generate.py` work from a checkout without an installed package.
    sys.path.insert(0, str(_REPO_ROOT))

from telemetry import names  # noqa: E402

__all__ = [
    "DASHBOARD_PATH",
    "DASHBOARD_UID",
    "PROMETHEUS_UID",
    "TRACES_UID",
    "build_dashboard",
    "main",
    "render",
]

JSON = dict[str, Any]

DASHBOARD_PATH: Final = _REPO_ROOT / "dashboards" / "tokenbooth-service.json"
"""Where the generated dashboard is committed (and provisioned from)."""
DASHBOARD_UID: Final = "tokenbooth-service"
PROMETHEUS_UID: Final = "tokenbooth-prometheus"
"""uid of the provisioned Prometheus datasource (dashboards/provisioning/datasources)."""
TRACES_UID: Final = "tokenbooth-jaeger"
"""uid of the provisioned trace-store datasource that exemplar trace ids open in."""

_DS: Final[JSON] = {"type": "prometheus", "uid": "${datasource}"}
_RATE: Final = "$__rate_interval"
# Every query also filters on the rollout track (stable, canary): a target label from the pod
# label, absent outside Kubernetes, which the variable's ".*" for "All" still matches.
_REVISION_MATCHER: Final = f'{names.LABEL_REVISION}=~"$revision"'
_SERVICE_SELECTOR: Final = (
    f'{names.LABEL_MODEL}=~"$model", {_REVISION_MATCHER}, instance=~"$instance"'
)
_INSTANCE_SELECTOR: Final = f'{_REVISION_MATCHER}, instance=~"$instance"'
_QUANTILES: Final = (0.5, 0.95, 0.99)
_FAILED_OUTCOMES: Final = (names.OUTCOME_ERROR, names.OUTCOME_TIMEOUT)
# Connections the server cut to protect itself (slow or stalled clients, the connection cap),
# as opposed to the ordinary ends: the client or a response closed it, or keep-alive expired.
# The TokenboothSlowClients alert in deploy/prometheus/rules.yml keys on the same set.
_ORDINARY_CLOSES: Final = (names.CONNECTION_CLOSE_NORMAL, names.CONNECTION_CLOSE_IDLE)
_GUARD_CLOSES: Final = tuple(r for r in names.CONNECTION_CLOSE_REASONS if r not in _ORDINARY_CLOSES)

# Grafana grid: 24 columns; panels are 8 rows high unless a row says otherwise.
_GRID_WIDTH: Final = 24
_PANEL_HEIGHT: Final = 8


# ---------------------------------------------------------------------------------------------
# PromQL builders
# ---------------------------------------------------------------------------------------------


def _rate(series: str, selector: str = _SERVICE_SELECTOR) -> str:
    return f"rate({series}{{{selector}}}[{_RATE}])"


def _quantile(
    q: float, histogram: str, by: Sequence[str] = (), selector: str = _SERVICE_SELECTOR
) -> str:
    """``histogram_quantile`` over the summed rate of a histogram's ``_bucket`` series.

    ``q=1`` gives the upper bound of the highest bucket that received an observation in the
    window: the largest value seen, rounded up to a bucket boundary.
    """
    labels = ", ".join((*by, "le"))
    return (
        f"histogram_quantile({q:g}, sum by ({labels}) ({_rate(histogram + '_bucket', selector)}))"
    )


def _mean(histogram: str) -> str:
    """Mean observation over the window: rate of ``_sum`` over rate of ``_count``."""
    return f"sum({_rate(histogram + '_sum')}) / sum({_rate(histogram + '_count')})"


def _slo_ratio(histogram: str, variable: str) -> str:
    """Fraction of observations at or under the SLO bucket boundary held in ``$variable``."""
    selector = f'{_SERVICE_SELECTOR}, le="${variable}"'
    return f"sum({_rate(histogram + '_bucket', selector)}) / sum({_rate(histogram + '_count')})"


# ---------------------------------------------------------------------------------------------
# Panel builders
# ---------------------------------------------------------------------------------------------


def _target(
    expr: str,
    legend: str = "__auto",
    *,
    exemplar: bool = False,
    instant: bool = False,
    fmt: str = "time_series",
) -> JSON:
    return {
        "datasource": _DS,
        "editorMode": "code",
        "exemplar": exemplar,
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
    }


def _quantile_targets(histogram: str, *, exemplar: bool = True) -> list[JSON]:
    return [
        _target(_quantile(q, histogram), f"p{round(q * 100)}", exemplar=exemplar)
        for q in _QUANTILES
    ]


def _timeseries(
    title: str,
    description: str,
    targets: list[JSON],
    *,
    unit: str,
    width: int = 8,
    stack: bool = False,
    min_zero: bool = True,
) -> JSON:
    defaults: JSON = {
        "unit": unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if min_zero:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": _DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        "_width": width,
    }


def _stat(title: str, description: str, expr: str, *, unit: str, decimals: int = 2) -> JSON:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": _DS,
        "fieldConfig": {
            "defaults": {"unit": unit, "decimals": decimals, "color": {"mode": "thresholds"}},
            "overrides": [],
        },
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
        "targets": [_target(expr, "")],
        "_width": 4,
    }


def _heatmap(title: str, description: str, histogram: str) -> JSON:
    expr = f"sum by (le) (increase({histogram}_bucket{{{_SERVICE_SELECTOR}}}[{_RATE}]))"
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": _DS,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-9},
            "tooltip": {"mode": "single", "yHistogram": True},
            "yAxis": {"axisPlacement": "left", "unit": "s"},
        },
        "targets": [_target(expr, "{{le}}", exemplar=True, fmt="heatmap")],
        "_width": 8,
    }


def _table(title: str, description: str, expr: str) -> JSON:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": _DS,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
            }
        ],
        "targets": [_target(expr, "", instant=True, fmt="table")],
        "_width": 12,
    }


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def _overview() -> list[JSON]:
    failed = "|".join(_FAILED_OUTCOMES)
    failed_selector = f'{_SERVICE_SELECTOR}, {names.LABEL_OUTCOME}=~"{failed}"'
    return [
        _stat(
            "Replicas serving",
            "Replicas that have loaded a model (they export tokenbooth_model_info).",
            f"count({names.TOKENBOOTH_MODEL_INFO}{{{_SERVICE_SELECTOR}}})",
            unit="none",
            decimals=0,
        ),
        _stat(
            "Requests / s",
            "Finished or rejected requests per second, all outcomes.",
            f"sum({_rate(names.TOKENBOOTH_REQUESTS)})",
            unit="reqps",
        ),
        _stat(
            "Output tokens / s",
            "Generated tokens per second over all selected replicas.",
            f"sum({_rate(names.TOKENBOOTH_GENERATION_TOKENS)})",
            unit="none",
            decimals=1,
        ),
        _stat(
            "TTFT p95",
            "95th percentile time to first token.",
            _quantile(0.95, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN),
            unit="s",
            decimals=3,
        ),
        _stat(
            "TTFT within SLO",
            "Share of requests whose TTFT is at or under $ttft_slo s. The SLO is an exact "
            "bucket boundary (TOKENBOOTH_TTFT_SLO_MS), so this is a count, not an estimate.",
            _slo_ratio(names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, "ttft_slo"),
            unit="percentunit",
        ),
        _stat(
            "Failed requests",
            "Share of requests that ended in error or timeout (server-side failures).",
            f"sum({_rate(names.TOKENBOOTH_REQUESTS, failed_selector)}) "
            f"/ sum({_rate(names.TOKENBOOTH_REQUESTS)})",
            unit="percentunit",
        ),
    ]


def _latency() -> list[JSON]:
    return [
        _timeseries(
            "Time to first token",
            "Arrival to first generated token (gen_ai.server.time_to_first_token). Exemplars "
            "link to the request's trace.",
            _quantile_targets(names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN),
            unit="s",
        ),
        _timeseries(
            "Time per output token",
            "Per request (duration - TTFT) / (output tokens - 1) "
            "(gen_ai.server.time_per_output_token).",
            _quantile_targets(names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN),
            unit="s",
        ),
        _timeseries(
            "Inter-token latency",
            "Every gap between consecutive tokens of a request, not a per-request mean: the "
            "tail shows decode stalls.",
            _quantile_targets(names.TOKENBOOTH_INTER_TOKEN_LATENCY),
            unit="s",
        ),
        _timeseries(
            "Request duration",
            "End-to-end server time per request, arrival to last byte.",
            _quantile_targets(names.GEN_AI_SERVER_REQUEST_DURATION),
            unit="s",
        ),
        _timeseries(
            "TTFT p95 by replica",
            "One line per replica: a single slow replica hides in the fleet-wide percentile.",
            [
                _target(
                    _quantile(0.95, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, by=("instance",)),
                    "{{instance}}",
                    exemplar=True,
                )
            ],
            unit="s",
        ),
        _heatmap(
            "TTFT distribution",
            "Requests per TTFT bucket per interval.",
            names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
        ),
        _timeseries(
            "SLO attainment",
            "Share of requests within the TTFT SLO ($ttft_slo s) and the time-per-output-token "
            "SLO ($tpot_slo s).",
            [
                _target(_slo_ratio(names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, "ttft_slo"), "TTFT"),
                _target(_slo_ratio(names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, "tpot_slo"), "TPOT"),
            ],
            unit="percentunit",
        ),
    ]


def _throughput() -> list[JSON]:
    with_error_type = f'{_SERVICE_SELECTOR}, {names.LABEL_ERROR_TYPE}!=""'
    return [
        _timeseries(
            "Token throughput",
            "Prompt (input) and generated (output) tokens per second of finished requests.",
            [
                _target(f"sum({_rate(names.TOKENBOOTH_GENERATION_TOKENS)})", "output tokens/s"),
                _target(f"sum({_rate(names.TOKENBOOTH_PROMPT_TOKENS)})", "prompt tokens/s"),
            ],
            unit="none",
        ),
        _timeseries(
            "Requests by outcome",
            "stop/length: finished; aborted: client left; rejected: refused before queueing "
            "(queue full, draining, or a 4xx bad request); timeout/error: server-side failures.",
            [
                _target(
                    f"sum by ({names.LABEL_OUTCOME}) ({_rate(names.TOKENBOOTH_REQUESTS)})",
                    f"{{{{{names.LABEL_OUTCOME}}}}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
        _timeseries(
            "Failures by type",
            "Requests with an error_type, by outcome and error_type.",
            [
                _target(
                    f"sum by ({names.LABEL_OUTCOME}, {names.LABEL_ERROR_TYPE}) "
                    f"({_rate(names.TOKENBOOTH_REQUESTS, with_error_type)})",
                    f"{{{{{names.LABEL_OUTCOME}}}}} {{{{{names.LABEL_ERROR_TYPE}}}}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
    ]


def _queue_and_batching() -> list[JSON]:
    waiting = f"sum by (instance) ({names.TOKENBOOTH_REQUESTS_WAITING}{{{_SERVICE_SELECTOR}}})"
    running = f"sum by (instance) ({names.TOKENBOOTH_REQUESTS_RUNNING}{{{_SERVICE_SELECTOR}}})"
    batches = f"sum by (instance) ({names.TOKENBOOTH_BATCHES_RUNNING}{{{_SERVICE_SELECTOR}}})"
    return [
        _timeseries(
            "Requests waiting / running",
            "Queued requests not yet in a batch, requests in an executing batch, and busy "
            "batch workers (batches executing), read at scrape time. The HPA scales on the "
            "waiting gauge.",
            [
                _target(waiting, "waiting {{instance}}"),
                _target(running, "running {{instance}}"),
                _target(batches, "batches running {{instance}}"),
            ],
            unit="none",
        ),
        _timeseries(
            "Queue wait",
            "Time from arrival until the request's batch started.",
            _quantile_targets(names.TOKENBOOTH_QUEUE_WAIT),
            unit="s",
        ),
        _timeseries(
            "Batch formation delay",
            "Time the batcher held a batch's first request waiting for more to join.",
            _quantile_targets(names.TOKENBOOTH_BATCH_FORMATION_DELAY, exemplar=False),
            unit="s",
        ),
        _timeseries(
            "Batch size",
            "Requests per executed batch: mean and p95.",
            [
                _target(_mean(names.TOKENBOOTH_BATCH_SIZE), "mean"),
                _target(_quantile(0.95, names.TOKENBOOTH_BATCH_SIZE), "p95"),
            ],
            unit="none",
        ),
        _timeseries(
            "Batch fill ratio",
            "Batch size / TOKENBOOTH_MAX_BATCH_SIZE: how full the batches run.",
            [
                _target(_mean(names.TOKENBOOTH_BATCH_FILL_RATIO), "mean"),
                _target(_quantile(0.5, names.TOKENBOOTH_BATCH_FILL_RATIO), "p50"),
            ],
            unit="percentunit",
        ),
        _timeseries(
            "Batches / s",
            "Executed batches per second by replica.",
            [
                _target(
                    f"sum by (instance) ({_rate(names.TOKENBOOTH_BATCH_SIZE + '_count')})",
                    "{{instance}}",
                )
            ],
            unit="ops",
        ),
    ]


def _engine_phases() -> list[JSON]:
    def phase_targets(histogram: str, phase: str) -> list[JSON]:
        return [_target(_quantile(q, histogram), f"{phase} p{round(q * 100)}") for q in (0.5, 0.95)]

    return [
        _timeseries(
            "Prefill time per batch",
            "Prompt processing up to the first token, per executed batch.",
            phase_targets(names.TOKENBOOTH_BATCH_PREFILL, "prefill"),
            unit="s",
            width=12,
        ),
        _timeseries(
            "Decode time per batch",
            "First token to last token, per executed batch.",
            phase_targets(names.TOKENBOOTH_BATCH_DECODE, "decode"),
            unit="s",
            width=12,
        ),
    ]


def _gpu() -> list[JSON]:
    def gauge(name: str) -> str:
        return f"{name}{{{_INSTANCE_SELECTOR}}}"

    per_gpu = f"{{{{instance}}}} gpu{{{{{names.LABEL_GPU}}}}}"
    return [
        _timeseries(
            "GPU available",
            "1 when NVML sees a GPU. A host without one reports 0 and no other GPU series "
            "(never fake zeros), so the panels below stay empty on CPU replicas.",
            [_target(gauge(names.TOKENBOOTH_GPU_AVAILABLE), "{{instance}}")],
            unit="none",
        ),
        _timeseries(
            "GPU utilization",
            "Fraction of the sample period the GPU was busy.",
            [_target(gauge(names.TOKENBOOTH_GPU_UTILIZATION), per_gpu)],
            unit="percentunit",
        ),
        _timeseries(
            "GPU memory",
            "Memory in use (all processes) against memory installed.",
            [
                _target(gauge(names.TOKENBOOTH_GPU_MEMORY_USED), f"used {per_gpu}"),
                _target(gauge(names.TOKENBOOTH_GPU_MEMORY_TOTAL), f"total {per_gpu}"),
            ],
            unit="bytes",
        ),
        _timeseries(
            "GPU power",
            "Board power draw.",
            [_target(gauge(names.TOKENBOOTH_GPU_POWER), per_gpu)],
            unit="watt",
            width=12,
        ),
        _timeseries(
            "GPU temperature",
            "Core temperature.",
            [_target(gauge(names.TOKENBOOTH_GPU_TEMPERATURE), per_gpu)],
            unit="celsius",
            width=12,
        ),
    ]


def _connections() -> list[JSON]:
    def closes(reasons: Sequence[str]) -> str:
        selector = f'{_INSTANCE_SELECTOR}, {names.LABEL_REASON}=~"{"|".join(reasons)}"'
        return (
            f"sum by ({names.LABEL_REASON}) "
            f"({_rate(names.TOKENBOOTH_HTTP_CONNECTIONS_CLOSED, selector)})"
        )

    reason_legend = f"{{{{{names.LABEL_REASON}}}}}"
    # The connection and loop series carry no model label: select by replica only.
    lag = [
        _target(
            _quantile(q, names.TOKENBOOTH_EVENT_LOOP_LAG, ("instance",), _INSTANCE_SELECTOR),
            f"{legend} {{{{instance}}}}",
        )
        for q, legend in ((0.5, "p50"), (0.99, "p99"), (1.0, "max bucket"))
    ]
    return [
        _timeseries(
            "Open connections",
            "HTTP connections open on each replica: idle keep-alive, waiting for a request "
            "head, or serving one. Capped by TOKENBOOTH_MAX_CONNECTIONS (1024, at most the fd "
            "limit minus 64); at the cap idle ones are evicted first, then new ones refused.",
            [
                _target(
                    f"sum by (instance) "
                    f"({names.TOKENBOOTH_HTTP_CONNECTIONS_OPEN}{{{_INSTANCE_SELECTOR}}})",
                    "{{instance}}",
                )
            ],
            unit="none",
            width=12,
        ),
        _timeseries(
            "Connections cut by the server",
            "Closes per second the server forced: header_timeout (head not in within "
            "TOKENBOOTH_HEADER_TIMEOUT_S: slowloris, silent sockets), header_too_large "
            "(TOKENBOOTH_MAX_HEADER_BYTES), write_timeout (client stopped reading for "
            "TOKENBOOTH_WRITE_TIMEOUT_S), evicted (idle, to make room at "
            "TOKENBOOTH_MAX_CONNECTIONS), over_limit (refused with 503: all at the cap busy). "
            "Feeds the TokenboothSlowClients alert.",
            [_target(closes(_GUARD_CLOSES), reason_legend)],
            unit="ops",
            width=12,
            stack=True,
        ),
        _timeseries(
            "Connections closed normally",
            "Ordinary ends, per second: normal (the client closed, or the server after a "
            "response) and idle (keep-alive outlived TOKENBOOTH_KEEP_ALIVE_TIMEOUT_S).",
            [_target(closes(_ORDINARY_CLOSES), reason_legend)],
            unit="ops",
            width=12,
        ),
        _timeseries(
            "Event-loop lag",
            "How late each replica's event loop ran a 50 ms timer: p50, p99 and the highest "
            "bucket hit (the worst sample, rounded up to a bucket bound). Everything on the "
            "loop (token delivery to every stream, health probes, new requests) waits this "
            "long; a healthy loop stays under a few ms. TokenboothEventLoopLag fires on p99.",
            lag,
            unit="s",
            width=12,
        ),
    ]


def _process() -> list[JSON]:
    # prometheus_client's ProcessCollector, which the service registers (process_open_fds has
    # no constant: nothing but this panel reads it).
    return [
        _timeseries(
            "Process CPU",
            "CPU seconds per second (cores busy) of each replica process.",
            [
                _target(
                    f"rate({names.PROCESS_CPU_SECONDS}{{{_INSTANCE_SELECTOR}}}[{_RATE}])",
                    "{{instance}}",
                )
            ],
            unit="none",
        ),
        _timeseries(
            "Process memory",
            "Resident set size of each replica process.",
            [_target(f"{names.PROCESS_RESIDENT_MEMORY}{{{_INSTANCE_SELECTOR}}}", "{{instance}}")],
            unit="bytes",
        ),
        _timeseries(
            "Open file descriptors",
            "Open fds (sockets included) of each replica process.",
            [_target(f"process_open_fds{{{_INSTANCE_SELECTOR}}}", "{{instance}}")],
            unit="none",
        ),
    ]


def _model_and_build() -> list[JSON]:
    return [
        _table(
            "Model",
            "What each replica serves and how: model, revision, quantization, device, "
            "compute type.",
            f"{names.TOKENBOOTH_MODEL_INFO}{{{_SERVICE_SELECTOR}}}",
        ),
        _table(
            "Build",
            "tokenbooth, Python and CTranslate2 versions of each replica.",
            f"{names.TOKENBOOTH_BUILD_INFO}{{{_INSTANCE_SELECTOR}}}",
        ),
    ]


def _revisions() -> list[JSON]:
    by = (names.LABEL_REVISION,)
    legend = f"{{{{{names.LABEL_REVISION}}}}}"
    failed = "|".join(_FAILED_OUTCOMES)
    failed_selector = f'{_SERVICE_SELECTOR}, {names.LABEL_OUTCOME}=~"{failed}"'
    per_revision = f"sum by ({names.LABEL_REVISION})"
    return [
        _timeseries(
            "TTFT p95 by revision",
            "Stable and canary side by side (deploy/k8s/overlays/canary): promote the canary "
            "only while its line stays with stable's.",
            [
                _target(
                    _quantile(0.95, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, by=by),
                    legend,
                    exemplar=True,
                )
            ],
            unit="s",
        ),
        _timeseries(
            "Failed requests by revision",
            "Share of each revision's requests that ended in error or timeout.",
            [
                _target(
                    f"{per_revision} ({_rate(names.TOKENBOOTH_REQUESTS, failed_selector)}) "
                    f"/ {per_revision} ({_rate(names.TOKENBOOTH_REQUESTS)})",
                    legend,
                )
            ],
            unit="percentunit",
        ),
        _timeseries(
            "Requests / s by revision",
            "Traffic each revision receives: with the HTTPRoute at 90/10 the canary's share "
            "should be about a tenth.",
            [_target(f"{per_revision} ({_rate(names.TOKENBOOTH_REQUESTS)})", legend)],
            unit="reqps",
        ),
    ]


_ROWS: Final = (
    ("Overview", _overview),
    ("Revisions (stable vs canary)", _revisions),
    ("Latency", _latency),
    ("Throughput and outcomes", _throughput),
    ("Queue and batching", _queue_and_batching),
    ("Engine phases", _engine_phases),
    ("GPU", _gpu),
    ("Connections and event loop", _connections),
    ("Process", _process),
    ("Model and build", _model_and_build),
)


def _layout() -> list[JSON]:
    """Give every panel an id and a grid position, row by row, left to right."""
    panels: list[JSON] = []
    next_id = 1
    y = 0
    for title, build in _ROWS:
        panels.append(
            {
                "type": "row",
                "title": title,
                "id": next_id,
                "collapsed": False,
                "gridPos": {"h": 1, "w": _GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        for panel in build():
            width = int(panel.pop("_width"))
            if x + width > _GRID_WIDTH:
                x = 0
                y += _PANEL_HEIGHT
            height = 4 if panel["type"] == "stat" else _PANEL_HEIGHT
            panel["id"] = next_id
            panel["gridPos"] = {"h": height, "w": width, "x": x, "y": y}
            for ref, target in zip("ABCDEFGHIJ", panel["targets"], strict=False):
                target["refId"] = ref
            panels.append(panel)
            next_id += 1
            x += width
        y += _PANEL_HEIGHT
    return panels


def _templating() -> JSON:
    def query_var(name: str, label: str, query: str, *, all_value: str | None = None) -> JSON:
        extra: JSON = {} if all_value is None else {"allValue": all_value}
        return {
            **extra,
            "type": "query",
            "name": name,
            "label": label,
            "datasource": _DS,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-var"},
            "refresh": 2,
            # No allValue: "All" expands to the listed values, so the process panels show
            # tokenbooth replicas only, not every target Prometheus scrapes.
            "includeAll": True,
            "multi": True,
            "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "hide": 0,
        }

    def slo_var(name: str, label: str, options: Sequence[str], default: str) -> JSON:
        # Values are bucket boundaries spelt as the exporter prints `le` (Python float repr).
        return {
            "type": "custom",
            "name": name,
            "label": label,
            "query": ",".join(options),
            "options": [
                {"selected": value == default, "text": value, "value": value} for value in options
            ],
            "current": {"selected": True, "text": default, "value": default},
            "includeAll": False,
            "multi": False,
            "hide": 0,
        }

    ttft_bounds = [repr(b) for b in names.TIME_TO_FIRST_TOKEN_BUCKETS if 0.1 <= b <= 2.5]
    tpot_bounds = [repr(b) for b in names.TIME_PER_OUTPUT_TOKEN_BUCKETS if 0.025 <= b <= 0.5]
    model_selector = f'{names.LABEL_MODEL}=~"$model"'
    return {
        "list": [
            {
                "type": "datasource",
                "name": "datasource",
                "label": "Prometheus",
                "query": "prometheus",
                "current": {"selected": True, "text": "Prometheus", "value": PROMETHEUS_UID},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "refresh": 1,
                "regex": "",
            },
            query_var(
                "model",
                "Model",
                f"label_values({names.TOKENBOOTH_MODEL_INFO}, {names.LABEL_MODEL})",
            ),
            # allValue ".*": "All" must also match series without the label (compose, a
            # Prometheus without the relabelling), where the listed values would match none.
            query_var(
                names.LABEL_REVISION,
                "Revision",
                f"label_values({names.TOKENBOOTH_MODEL_INFO}{{{model_selector}}}, "
                f"{names.LABEL_REVISION})",
                all_value=".*",
            ),
            query_var(
                "instance",
                "Replica",
                f"label_values({names.TOKENBOOTH_MODEL_INFO}"
                f"{{{model_selector}, {_REVISION_MATCHER}}}, instance)",
            ),
            # Defaults are the service's default SLOs (TOKENBOOTH_TTFT_SLO_MS=500,
            # TOKENBOOTH_TPOT_SLO_MS=100), which it adds as exact bucket boundaries.
            slo_var("ttft_slo", "TTFT SLO (s)", ttft_bounds, "0.5"),
            slo_var("tpot_slo", "TPOT SLO (s)", tpot_bounds, "0.1"),
        ]
    }


def build_dashboard() -> JSON:
    """Build the tokenbooth service dashboard as a Grafana dashboard JSON model.

    Returns:
        The dashboard (``schemaVersion`` 39), ready for file provisioning or the import API.
    """
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "tokenbooth inference service: latency (TTFT, TPOT, ITL), throughput, "
        "outcomes, queueing, batching, GPU, connections, event loop and process. Generated by "
        "dashboards/generate.py from telemetry/names.py; do not edit by hand.",
        "editable": False,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": _layout(),
        "refresh": "10s",
        "schemaVersion": 39,
        "tags": ["tokenbooth", "llm", "inference"],
        "templating": _templating(),
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "tokenbooth service",
        "uid": DASHBOARD_UID,
        "version": 1,
        "weekStart": "",
    }


def render(dashboard: JSON) -> str:
    """Serialise a dashboard exactly as it is committed (stable key order, trailing newline)."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboard JSON, or with ``--check`` report whether the committed one is stale.

    Returns:
        0 on success; 1 when ``--check`` finds the file missing or different.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=DASHBOARD_PATH, help="JSON file to write")
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the file is out of date"
    )
    args = parser.parse_args(argv)
    text = render(build_dashboard())
    output: Path = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.is_file() else None
        if current != text:
            print(f"{output} is out of date: run python dashboards/generate.py", file=sys.stderr)
            return 1
        return 0
    output.write_text(text, encoding="utf-8")
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
