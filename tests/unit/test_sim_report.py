"""The HTML report is one self-contained page, and it renders in headless Chromium (Debian's ``chromium``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "sim.html"
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "simulate", "all", "--charges", "300", "--report", str(path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return path


def test_the_report_is_self_contained(report: Path) -> None:
    page = report.read_text()
    assert page.count("<svg") == 8 and "no_double_capture" in page and "psp_matches_ledger" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the page must not load anything"


def test_the_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None, "bin/test installs Debian's chromium; install it to run this test"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,2400"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert "<title>payray simulate: 8 of 8 charts drawn</title>" in dom.stdout, (
        dom.stdout[:500] + dom.stderr[-500:]
    )
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120
    )
    assert shot.exists() and shot.stat().st_size > 50_000


@pytest.mark.parametrize(
    ("value", "label"), [(10411.2, "10k"), (155.813, "156"), (1.0763, "1.08"), (0.0, "0"), (0.5, "0.5")]
)
def test_an_axis_label_fits_beside_its_axis(value: float, label: str) -> None:
    from sim.report import short

    assert short(value) == label
