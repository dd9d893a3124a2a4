"""What-ifs: the calibrated model with one thing changed, run beside its baseline, on the page and in JSON."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim.capacity import Burst, Machine, Outcome
from sim.whatif import Question, answer, standard, with_psp_wait

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: an API process that saturates before two cores do, and a PSP that answers in 10 ms
MACHINE = Machine(
    cores=2,
    processes={"api": 1, "psp": 4},
    path=(Burst("api", 0.002), Burst("psp", 0.001, wait_s=0.010), Burst("api", 0.002)),
)


@pytest.fixture(scope="module")
def answers() -> dict[str, Outcome]:
    found = answer(standard(MACHINE, 16, Question(load=4, replicas=2, cores=4, psp_ms=100)), charges=1500)
    return {a.whatif.name: a.outcome for a in found}


def test_each_whatif_changes_one_thing_of_the_baseline() -> None:
    whatifs = {w.name: w for w in standard(MACHINE, 16, Question(load=4, replicas=2, cores=4, psp_ms=100))}
    base = whatifs["baseline: 16 in flight"]
    assert whatifs["4x the load (64 in flight)"].machine == base.machine
    assert whatifs["2 API replicas"].machine.processes["api"] == 2
    assert whatifs["2 API replicas"].machine.cores == 2
    assert whatifs["2 API replicas on 4 cores"].machine.cores == 4
    slower = whatifs["a PSP 100 ms slower"].machine
    assert slower == with_psp_wait(base.machine, 0.1) and slower.path[1].wait_s == pytest.approx(0.11)


def test_the_answers_follow_the_bottleneck(answers: dict[str, Outcome]) -> None:
    base, more = answers["baseline: 16 in flight"], answers["4x the load (64 in flight)"]
    replicas, bigger = answers["2 API replicas"], answers["2 API replicas on 4 cores"]
    slower = answers["a PSP 100 ms slower"]
    # one API process is the limit: more load only queues, a second replica lifts it until the cores are full
    assert more.per_s == pytest.approx(base.per_s, rel=0.1) and more.p50_ms > 3 * base.p50_ms
    assert base.saturated_first == "api"
    assert replicas.per_s > 1.15 * base.per_s
    assert bigger.per_s > 1.5 * base.per_s
    # 16 in flight wait out a PSP 100 ms slower: Little's law caps them near 16 / 0.11 s
    assert slower.per_s < 16 / 0.110 and slower.p50_ms > 100


def _simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "simulate", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.unit.test_sim_calibration import as_measured

    folder = tmp_path_factory.mktemp("whatif")
    measured = folder / "levels.json"
    measured.write_text(json.dumps([as_measured(c, 0.6).to_json() for c in (1, 4, 16)]))
    page, body = folder / "whatif.html", folder / "whatif.json"
    done = _simulate("whatif", "--measured", str(measured), "--report", str(page), "--json", str(body))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "one change at a time" in done.stdout and "baseline: 16 in flight" in done.stdout
    return page, body


def test_the_whatifs_are_written_beside_the_calibration(report: tuple[Path, Path]) -> None:
    _, body = report
    result = json.loads(body.read_text())
    names = [w["name"] for w in result["whatif"]]
    assert names[0] == "baseline: 16 in flight" and "10x the load (160 in flight)" in names
    assert "a PSP 300 ms slower" in names and [level["clients"] for level in result["levels"]] == [4, 16]


def test_the_whatif_page_is_self_contained_and_renders_in_headless_chromium(
    report: tuple[Path, Path], tmp_path: Path
) -> None:
    page, _ = report
    text = page.read_text()
    assert text.count("<svg") == 8 and "2 API replicas on 4 cores" in text  # 5, and a CDF per level
    assert not re.search(r"(src|href)=\"(https?:)?//", text), "the page must not load anything"
    assert CHROMIUM is not None, "bin/test installs Debian's chromium; install it to run this test"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,1800"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert "<title>payray simulate whatif: 8 of 8 charts drawn</title>" in dom.stdout, dom.stderr[-500:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--load", "0"], "--load must be above 0"),
        (["--replicas", "0"], "--replicas must be 1 to 64"),
        (["--cores", "1000"], "--cores must be 1 to 256"),
        (["--psp-ms", "-1"], "--psp-ms must be 0 to 60,000"),
    ],
)
def test_a_whatif_out_of_range_is_refused_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    page = tmp_path / "whatif.html"
    done = _simulate("whatif", *args, "--report", str(page))
    assert done.returncode == 2 and message in done.stderr, done.stdout + done.stderr
    assert not page.exists()


def test_a_report_of_the_calibration_alone_is_refused(tmp_path: Path) -> None:
    done = _simulate("calibrate", "--report", str(tmp_path / "page.html"))
    assert done.returncode == 2 and "not calibrate" in done.stderr, done.stdout + done.stderr
