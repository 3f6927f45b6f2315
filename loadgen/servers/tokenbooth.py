"""tokenbooth itself: its metric names are the canonical ones (:mod:`telemetry.names`)."""

from __future__ import annotations

from typing import Final

from loadgen.servers.adapter import Adapter
from telemetry import names

__all__ = ["TOKENBOOTH"]

TOKENBOOTH: Final = Adapter(
    kind="tokenbooth",
    metric_prefixes=("tokenbooth_",),
    owned_by=("tokenbooth",),
    # Ready only once the model is loaded and warm and the replica is not draining.
    ready_paths=("/health/ready",),
    version_label=(names.TOKENBOOTH_BUILD_INFO, names.LABEL_VERSION),
    # The OTel GenAI histograms and tokenbooth's own series, all named as the view names them.
    canonical_prefixes=("tokenbooth_", "gen_ai_"),
)
"""tokenbooth (``service/``): canonical names, no mapping."""
