"""What an adapter is: how to recognise a server kind, reach it, and read its ``/metrics``.

An :class:`Adapter` is data, not code: the metric prefixes, ``owned_by`` values and headers that
give a kind away, its readiness paths, where it states its version, and :class:`Rule`\\ s from its
Prometheus samples to the canonical samples of the server view (:mod:`loadgen.servers.canonical`).
One function, :meth:`Adapter.canonical`, applies the rules to any kind's samples, so every kind is
mapped the same way and a new kind is a new table. Nothing here talks to a server.

Sample names are as ``prometheus_client``'s parser reads them: a counter's samples always end in
``_total`` (TGI's ``tgi_request_success`` reads as ``tgi_request_success_total``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from loadgen.servers.canonical import PROCESS_SAMPLES, SERVER_VIEW_NAMES
from loadgen.servers.kinds import ServerKind

__all__ = [
    "DEFAULT_READY_PATHS",
    "Adapter",
    "JsonVersion",
    "Ratio",
    "RawSample",
    "Rule",
    "Sample",
    "Sum",
    "has_server_view",
]

DEFAULT_READY_PATHS: Final[tuple[str, ...]] = ("/health/ready", "/health", "/v1/models")
"""Readiness paths of a server of unknown kind, tried in order (tokenbooth's, the common one,
then the one every OpenAI-compatible server has)."""

_HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")

RawSample = tuple[str, Mapping[str, str], float]
"""One sample as parsed: name, labels (``le`` included), value."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample of the server view.

    Attributes:
        name: The canonical sample name, or the server's own for a sample no rule maps.
        labels: Labels after the adapter's renames (``le`` untouched).
        value: The value read.
        source: The server's own sample name (``a/b`` for a ratio of two samples).
    """

    name: str
    labels: Mapping[str, str]
    value: float
    source: str


@dataclass(frozen=True, slots=True)
class Rule:
    """One canonical series and the server's names for it; the first name present wins.

    Several names cover renames across versions (vLLM exports ``time_per_output_token_seconds``
    and its replacement ``inter_token_latency_seconds`` side by side for a while: taking both
    would count every gap twice).

    Attributes:
        canonical: Canonical histogram (``histogram``) or sample name.
        sources: The server's names, preferred first.
        histogram: Map ``_bucket``, ``_sum`` and ``_count`` of a histogram together.
    """

    canonical: str
    sources: tuple[str, ...]
    histogram: bool = False

    def sample_names(self, source: str) -> dict[str, str]:
        """Server sample name -> canonical sample name, for one of :attr:`sources`."""
        if not self.histogram:
            return {source: self.canonical}
        return {source + s: self.canonical + s for s in _HISTOGRAM_SUFFIXES}


@dataclass(frozen=True, slots=True)
class Ratio:
    """A canonical gauge the server exports as two: ``numerator / denominator``.

    A zero or absent denominator leaves the ratio absent, never infinite or zero.
    """

    canonical: str
    numerator: str
    denominator: str


@dataclass(frozen=True, slots=True)
class Sum:
    """A canonical counter the server splits in parts: the sum of those present, per label set.

    llama.cpp counts prompt tokens it computed and prompt tokens it reused from its cache apart;
    the prompt tokens of the requests are both.
    """

    canonical: str
    parts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JsonVersion:
    """A JSON endpoint whose top-level ``key`` holds the server's version."""

    path: str
    key: str


@dataclass(frozen=True, slots=True)
class Adapter:
    """One server kind: how to recognise it, where it is ready, what its metrics mean.

    Attributes:
        kind: The kind (:data:`loadgen.servers.kinds.SERVER_KINDS`).
        metric_prefixes: Prefixes of its own sample names (``vllm:``); any such sample in
            ``/metrics`` identifies the kind. Unmapped samples with these prefixes are kept
            under their own names, so nothing the server said is lost.
        owned_by: ``owned_by`` values of its ``/v1/models`` entries that identify it.
        headers: ``(header, value)`` pairs only it sends; ``""`` matches any value.
        ready_paths: Readiness paths when the kind is known, tried in order.
        versions: JSON endpoints stating its version, tried in order.
        version_label: ``(sample name, label)`` of a metric whose label holds the version.
        rules: Server samples -> canonical samples.
        ratios: Canonical gauges the server exports as two samples.
        sums: Canonical counters the server exports in parts.
        relabel: ``(server label, canonical label)`` renames, such as vLLM's ``model_name``.
        canonical_prefixes: Prefixes of samples it already names canonically (tokenbooth's own
            metrics are the canonical ones).
    """

    kind: ServerKind
    metric_prefixes: tuple[str, ...] = ()
    owned_by: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    ready_paths: tuple[str, ...] = DEFAULT_READY_PATHS
    versions: tuple[JsonVersion, ...] = ()
    version_label: tuple[str, str] | None = None
    rules: tuple[Rule, ...] = ()
    ratios: tuple[Ratio, ...] = ()
    sums: tuple[Sum, ...] = ()
    relabel: tuple[tuple[str, str], ...] = ()
    canonical_prefixes: tuple[str, ...] = ()

    @property
    def has_metrics(self) -> bool:
        """Whether the kind exports anything the server view reads."""
        return bool(self.rules or self.ratios or self.sums or self.canonical_prefixes)

    def recognises_metrics(self, sample_names: Iterable[str]) -> bool:
        """Whether any of these sample names is one of this kind's own."""
        return bool(self.metric_prefixes) and any(
            n.startswith(self.metric_prefixes) for n in sample_names
        )

    def recognises_owner(self, owned_by: str) -> bool:
        """Whether a ``/v1/models`` ``owned_by`` value is this kind's."""
        return owned_by.lower() in self.owned_by

    def recognised_header(self, headers: Mapping[str, str]) -> str | None:
        """The first of this kind's own headers among ``headers``, as ``name: value``, if any.

        Header names compare case-insensitively, values as given (``Server: llama.cpp``).
        """
        present = {k.lower(): v for k, v in headers.items()}
        for name, value in self.headers:
            seen = present.get(name)
            if seen is not None and (not value or seen == value):
                return f"{name}: {seen}"
        return None

    def version_from_samples(self, samples: Iterable[RawSample]) -> str:
        """The version a metric label states (:attr:`version_label`), ``""`` without one."""
        if self.version_label is None:
            return ""
        name, label = self.version_label
        return next((str(lb[label]) for n, lb, _ in samples if n == name and label in lb), "")

    def canonical(self, samples: Iterable[RawSample]) -> list[Sample]:
        """This kind's samples as the server view's: mapped, renamed, filtered.

        Kept: samples a rule maps (under the canonical name), samples already canonical,
        the kind's own unmapped samples (under their own names) and the process samples.
        Everything else (Python GC, HTTP middleware, other exporters) is dropped, and so is
        every ``_created`` sample (a timestamp, not a measurement).

        Args:
            samples: The parsed ``/metrics`` of one server.

        Returns:
            The kept samples, with their source names.
        """
        raw = [s for s in samples if not s[0].endswith("_created")]
        present = {name for name, _, _ in raw}
        mapping: dict[str, str] = {}
        for rule in self.rules:
            for source in rule.sources:
                names = rule.sample_names(source)
                if present.intersection(names):
                    mapping.update(names)
                    break
        keep = self.canonical_prefixes + self.metric_prefixes
        out = []
        for name, labels, value in raw:
            if name in mapping:
                out.append(Sample(mapping[name], self._relabelled(labels), value, name))
            elif (keep and name.startswith(keep)) or name in PROCESS_SAMPLES:
                out.append(Sample(name, self._relabelled(labels), value, name))
        out += self._ratios(raw) + self._sums(raw)
        return out

    def _relabelled(self, labels: Mapping[str, str]) -> dict[str, str]:
        renames = dict(self.relabel)
        return {renames.get(k, k): v for k, v in labels.items()}

    def _sums(self, raw: list[RawSample]) -> list[Sample]:
        out = []
        for total in self.sums:
            by_labels: dict[tuple[tuple[str, str], ...], float] = {}
            for name, labels, value in raw:
                if name in total.parts:
                    key = tuple(sorted(labels.items()))
                    by_labels[key] = by_labels.get(key, 0.0) + value
            source = "+".join(p for p in total.parts if any(n == p for n, _, _ in raw))
            for key, value in by_labels.items():
                out.append(Sample(total.canonical, self._relabelled(dict(key)), value, source))
        return out

    def _ratios(self, raw: list[RawSample]) -> list[Sample]:
        out = []
        for ratio in self.ratios:
            nums = [(lb, v) for n, lb, v in raw if n == ratio.numerator]
            dens = {tuple(sorted(lb.items())): v for n, lb, v in raw if n == ratio.denominator}
            for labels, num in nums:
                # One unlabelled denominator (a server-wide capacity) serves every numerator.
                den = dens.get(tuple(sorted(labels.items())))
                if den is None and len(dens) == 1:
                    den = next(iter(dens.values()))
                if den is None or not den > 0 or not math.isfinite(num):
                    continue
                source = f"{ratio.numerator}/{ratio.denominator}"
                out.append(Sample(ratio.canonical, self._relabelled(labels), num / den, source))
        return out


def has_server_view(samples: Iterable[Sample]) -> bool:
    """Whether canonical samples hold any figure of the server view (not only process ones)."""
    for s in samples:
        family = next(
            (s.name.removesuffix(x) for x in _HISTOGRAM_SUFFIXES if s.name.endswith(x)), s.name
        )
        if s.name in SERVER_VIEW_NAMES or family in SERVER_VIEW_NAMES:
            return True
    return False
