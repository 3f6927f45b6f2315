"""The fit's working columns: per-point inputs the capacity model adds beside the statistics.

They start with ``_`` so the report's summary CSV leaves them out; :mod:`reports.capacity.fit_run`
fills them from the run's raw rows and server deltas, the fit reads them.
"""

from __future__ import annotations

import math
from typing import Final

import pandas as pd

__all__ = ["FitCol", "cell"]


class FitCol:
    """Columns of the fit's point frame (never written to a run directory)."""

    COMPLETION_TOKENS: Final = "_completion_tokens"  # array: each successful request's output
    PROMPT_TOKENS: Final = "_prompt_tokens"  # array: the same requests' prompts (may be empty)
    PROCESS_CPU_S: Final = "_process_cpu_s"  # process CPU seconds, summed over replicas
    BATCH_BUSY_S: Final = "_batch_busy_s"  # batch prefill + decode seconds, over replicas
    CATCH_COUNTS: Final = "_catch_counts"  # (caught, chances) of the batch-catching race


def cell(row: pd.Series, col: str, default: float = math.nan) -> float:
    """A finite number from a point row; ``default`` when missing, not a number or not finite.

    Args:
        row: A point row.
        col: Its column.
        default: The value to use instead.

    Returns:
        The number.
    """
    try:
        v = float(row.get(col, default))
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default
