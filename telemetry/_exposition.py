"""Fast text exposition, byte-identical to prometheus_client's for legacy-named families.

prometheus_client 0.26 re-escapes every sample name character by character and re-formats
every label set on every scrape, which costs ~4.5 ms per OpenMetrics render of a busy service
registry, most of the 5 ms scrape budget. Label sets here are few and stable (bounded labels by
design), so their formatted text is cached. Any family this module does not reproduce exactly
(non-legacy names, native histograms, exemplars where the format forbids them) is rendered by
prometheus_client itself, so the output never depends on which path ran. The unit tests compare
both paths byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

__all__ = ["render_openmetrics", "render_prometheus"]

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_CACHE_MAX: Final = 4096

# prometheus_client's own float formatting (Go-compatible "+Inf", "1.0", "1e+06"), typed here.
_go_float: Callable[[float], str] = floatToGoString

_legacy_metric_names: set[str] = set()
_legacy_label_keys: set[tuple[str, ...]] = set()
_label_text: dict[tuple[tuple[str, str], ...], str] = {}

_PROMETHEUS_TYPES: Final = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}
_PROMETHEUS_SUFFIX: Final = {"counter": "_total", "info": "_info"}
# Samples prometheus_client moves out of the family into trailing gauges in the 0.0.4 format.
_PROMETHEUS_SPLIT_SUFFIXES: Final = ("_created", "_gsum", "_gcount")


class _Single:
    # Lets prometheus_client render one family through its registry-shaped interface.
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return (self._metric,)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _is_legacy_metric_name(name: str) -> bool:
    if name in _legacy_metric_names:
        return True
    if _METRIC_NAME.fullmatch(name) is None:
        return False
    _legacy_metric_names.add(name)
    return True


def _labels_text(labels: dict[str, str]) -> str:
    key = tuple(labels.items())
    text = _label_text.get(key)
    if text is None:
        text = _format_labels(labels)
        if len(_label_text) >= _LABEL_CACHE_MAX:
            # Bounded labels make this rare; clearing keeps a misbehaving collector from
            # growing the cache without limit.
            _label_text.clear()
        _label_text[key] = text
    return text


def _format_labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _has_legacy_label_keys(labels: dict[str, str]) -> bool:
    keys = tuple(labels)
    if keys in _legacy_label_keys:
        return True
    if not all(_LABEL_NAME.fullmatch(k) and not k.startswith("__") for k in keys):
        return False
    _legacy_label_keys.add(keys)
    return True


def _exemplar_allowed(metric: Metric, sample: Sample) -> bool:
    if metric.type == "counter":
        return sample.name.endswith("_total")
    if metric.type == "histogram":
        return sample.name.endswith("_bucket") or sample.name == metric.name
    if metric.type == "gaugehistogram":
        return sample.name.endswith("_bucket")
    return False


def _fast_path_ok(metric: Metric, *, exemplars: bool) -> bool:
    if not _is_legacy_metric_name(metric.name):
        return False
    for sample in metric.samples:
        if sample.native_histogram is not None or sample.value is None:
            return False
        if not _is_legacy_metric_name(sample.name) or not _has_legacy_label_keys(sample.labels):
            return False
        exemplar = sample.exemplar if exemplars else None
        if exemplar is not None and not (
            _exemplar_allowed(metric, sample) and _has_legacy_label_keys(exemplar.labels)
        ):
            return False
    return True


def _exemplar_text(exemplar: Exemplar) -> str:
    text = f" # {_format_labels(exemplar.labels) or '{}'} {_go_float(exemplar.value)}"
    if exemplar.timestamp is not None:
        text += f" {exemplar.timestamp}"
    return text


def _openmetrics_family(metric: Metric, out: list[str]) -> None:
    name = metric.name
    out.append(f"# HELP {name} {_escape(metric.documentation)}\n# TYPE {name} {metric.type}\n")
    if metric.unit:
        out.append(f"# UNIT {name} {metric.unit}\n")
    for sample in metric.samples:
        line = f"{sample.name}{_labels_text(sample.labels)} {_go_float(sample.value)}"
        if sample.timestamp is not None:
            line += f" {sample.timestamp}"
        if sample.exemplar is not None:
            line += _exemplar_text(sample.exemplar)
        out.append(line + "\n")


def _prometheus_line(sample: Sample) -> str:
    line = f"{sample.name}{_labels_text(sample.labels)} {_go_float(sample.value)}"
    if sample.timestamp is not None:
        line += f" {int(float(sample.timestamp) * 1000):d}"
    return line + "\n"


def _prometheus_help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


def _prometheus_family(metric: Metric, out: list[str]) -> None:
    name = metric.name + _PROMETHEUS_SUFFIX.get(metric.type, "")
    doc = _prometheus_help(metric.documentation)
    out.append(
        f"# HELP {name} {doc}\n# TYPE {name} {_PROMETHEUS_TYPES.get(metric.type, metric.type)}\n"
    )
    split: dict[str, list[str]] = {}
    for sample in metric.samples:
        for suffix in _PROMETHEUS_SPLIT_SUFFIXES:
            if sample.name == metric.name + suffix:
                split.setdefault(suffix, []).append(_prometheus_line(sample))
                break
        else:
            out.append(_prometheus_line(sample))
    for suffix, lines in sorted(split.items()):
        out.append(f"# HELP {metric.name}{suffix} {doc}\n# TYPE {metric.name}{suffix} gauge\n")
        out.extend(lines)


def _render(
    registry: Collector,
    family: Callable[[Metric, list[str]], None],
    fallback: Callable[[Metric], str],
    *,
    exemplars: bool,
) -> list[str]:
    out: list[str] = []
    for metric in registry.collect():
        if _fast_path_ok(metric, exemplars=exemplars):
            family(metric, out)
        else:
            out.append(fallback(metric))
    return out


def _openmetrics_fallback(metric: Metric) -> str:
    text: str = openmetrics.generate_latest(_Single(metric)).decode()  # type: ignore[no-untyped-call]
    return text.removesuffix("# EOF\n")


def _prometheus_fallback(metric: Metric) -> str:
    return generate_latest(_Single(metric)).decode()


def render_openmetrics(registry: Collector) -> bytes:
    """Render ``registry`` as OpenMetrics 1.0 text, exemplars included."""
    out = _render(registry, _openmetrics_family, _openmetrics_fallback, exemplars=True)
    out.append("# EOF\n")
    return "".join(out).encode("utf-8")


def render_prometheus(registry: Collector) -> bytes:
    """Render ``registry`` as Prometheus text 0.0.4 (exemplars are not part of that format)."""
    return "".join(
        _render(registry, _prometheus_family, _prometheus_fallback, exemplars=False)
    ).encode("utf-8")
