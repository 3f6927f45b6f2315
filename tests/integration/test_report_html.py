"""The HTML report opened in headless Chromium: rendered figures, captions and recommendation.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); skipped only when no
Chromium binary exists at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reports.pipeline import ReportFiles, build_report
from tests.conftest import missing_tool
from tests.unit.reports import synth

pytestmark = pytest.mark.integration

WINDOW = (1400, 5000)
# Line colours of the three configurations (plots.config_colors, sorted labels).
CONFIG_RGB = {
    synth.FLOAT16_X1: (0x1F, 0x77, 0xB4),
    synth.INT8_X1: (0xD6, 0x27, 0x28),
    synth.INT8_X2: (0x2C, 0xA0, 0x2C),
}


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()


@pytest.fixture
def chromium() -> str:
    """The Chromium binary (skip locally, fail in CI when it is missing)."""
    if CHROMIUM is None:
        missing_tool("no Chromium binary on PATH (Debian: apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    run = synth.write_capacity_run(tmp_path_factory.mktemp("run") / "capacity")
    return build_report(run, output=tmp_path_factory.mktemp("report"))


def _chrome(tmp: Path, html: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
        html.resolve().as_uri(),
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def _bands(rows_with_colour: np.ndarray, gap: int = 40) -> int:
    """Count runs of rows holding plot colours, separated by more than ``gap`` empty rows."""
    idx = np.flatnonzero(rows_with_colour)
    if idx.size == 0:
        return 0
    return 1 + int((np.diff(idx) > gap).sum())


@pytest.mark.usefixtures("chromium")
def test_screenshot_shows_the_figures(report: ReportFiles, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    proc = _chrome(
        tmp_path, report.html, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}"
    )
    assert shot.exists(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape == (WINDOW[1], WINDOW[0], 3)
    assert img.std() > 20, "blank screenshot"
    coloured = np.zeros(img.shape[:2], dtype=bool)
    for config, rgb in CONFIG_RGB.items():
        near = np.abs(img - np.asarray(rgb)).sum(axis=2) < 25
        # Every configuration's curves were decoded and drawn, not just the page text.
        assert near.sum() > 500, f"no rendered curve of {config}"
        coloured |= near
    rows = coloured.sum(axis=1) >= 3
    assert rows[:400].sum() == 0, "plot colours above the first figure"
    assert _bands(rows) >= 3, "expected several separate figures in the first 5000 px"


@pytest.mark.usefixtures("chromium")
def test_rendered_dom_has_every_figure_and_the_recommendation(
    report: ReportFiles, tmp_path: Path
) -> None:
    proc = _chrome(tmp_path, report.html, "--dump-dom", "--virtual-time-budget=5000")
    dom = proc.stdout
    assert "<figure" in dom, proc.stderr[-2000:]
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', dom)
    assert len(images) == len(report.figures) == 10
    captions = re.findall(r"<figcaption><strong>([^<]+)\.</strong>", dom)
    assert captions == images
    for title in (
        "Latency vs requests/s",
        "Pareto frontier",
        "Replica scaling efficiency",
        "TTFT decomposition",
        "Quantization comparison",
        "Model vs held-out measurements",
    ):
        assert title in captions
    assert "Run 2 replicas of int8 b8 d5ms w1 t1 for 9 req/s" in dom
    # No quality.json in this run: the speed-quality section is the one sentence saying how.
    assert "Speed vs quality" in dom and "has no quality/quality.json" in dom
