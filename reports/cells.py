"""How numbers are written in report tables: significant digits, percentages, intervals.

A missing or non-finite value is always an en dash, never a made-up zero.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ci", "num", "pct"]


def num(value: Any, digits: int = 3, unit: str = "") -> str:
    """``value`` to ``digits`` significant digits with ``unit``; ``–`` when not a number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return f"{v:.{digits}g}{unit}"


def pct(value: Any, signed: bool = False) -> str:
    """``value`` as a percentage with one decimal (with its sign when ``signed``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return f"{v:+.1%}" if signed else f"{v:.1%}"


def ci(row: pd.Series, col: str, lo: str, hi: str, n: str) -> str:
    """``row[col]`` with its interval ``[row[lo], row[hi]]`` and sample count ``row[n]``."""
    v = num(row.get(col))
    if v == "–":
        return v
    lo_s, hi_s = num(row.get(lo)), num(row.get(hi))
    count = row.get(n)
    count_s = f" n={int(count)}" if count is not None and np.isfinite(float(count)) else ""
    return f"{v} [{lo_s}, {hi_s}]{count_s}" if lo_s != "–" else f"{v}{count_s}"
