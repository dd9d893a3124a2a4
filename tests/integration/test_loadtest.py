"""``payray loadtest``: Locust, headless, against the running stack, then the invariants."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ops.stack import StackInfo

pytestmark = pytest.mark.integration


def _loadtest(stack: StackInfo, *args: str) -> subprocess.CompletedProcess[str]:
    assert stack.psp_api_base
    target = ["--url", stack.base_url, "--admin-key", stack.admin_key, "--psp-url", stack.psp_api_base]
    # A busy test machine may be slow; a request counts as failed only if it truly fails.
    env = {**os.environ, "PAYRAY_LOAD_CLIENT_TIMEOUT": "60"}
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "loadtest", *target, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _charge_rows(csv_prefix: Path) -> dict[str, dict[str, str]]:
    with open(f"{csv_prefix}_stats.csv", newline="") as stats:
        return {row["Name"]: row for row in csv.DictReader(stats)}


def test_a_steady_run_charges_refunds_replays_and_ends_with_the_invariants_verified(
    stack: StackInfo, tmp_path: Path
) -> None:
    prefix, html = tmp_path / "steady", tmp_path / "steady.html"
    done = _loadtest(
        stack, "--users", "4", "--spawn-rate", "4", "--run-time", "10s", "--merchants", "2",
        "--refund-share", "0.5", "--csv", str(prefix), "--html", str(html),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "invariants hold" in done.stdout
    rows = _charge_rows(prefix)
    charges = rows["POST /v1/charges"]
    assert int(charges["Request Count"]) > 0 and int(charges["Failure Count"]) == 0
    assert int(rows["GET /v1/balance"]["Request Count"]) > 0
    refunds = rows["POST /v1/refunds"]
    assert int(refunds["Request Count"]) > 0 and int(refunds["Failure Count"]) == 0
    assert "<html" in html.read_text().lower()


def test_a_spike_with_lost_psp_answers_never_captures_twice(stack: StackInfo, tmp_path: Path) -> None:
    prefix = tmp_path / "spike"
    done = _loadtest(
        stack, "--users", "8", "--spawn-rate", "2", "--run-time", "12s", "--shape", "spike",
        "--psp-faults", "timeouts", "--csv", str(prefix),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '"no_double_capture": {\n    "ok": true' in done.stdout
    assert int(_charge_rows(prefix)["POST /v1/charges"]["Request Count"]) > 0


@pytest.mark.parametrize(
    "args",
    [
        ("--url", "http://10.1.2.3:8000"),
        ("--run-time", "2h"),
        ("--users", "0"),
        ("--users", "5000"),
        ("--merchants", "0"),
        ("--shape", "sawtooth"),
        ("--psp-faults", "meteor"),
        ("--refund-share", "1.5"),
    ],
)
def test_bad_arguments_exit_2_before_anything_runs(
    stack: StackInfo, api_database_url: str, args: tuple[str, ...]
) -> None:
    with psycopg.connect(api_database_url) as conn:
        before = conn.execute("SELECT count(*) FROM merchants").fetchone()
        done = _loadtest(stack, *args)
        after = conn.execute("SELECT count(*) FROM merchants").fetchone()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error" in done.stderr and before == after


def test_locust_itself_refuses_a_remote_host(stack: StackInfo) -> None:
    locustfile = Path(__file__).parents[2] / "loadtest" / "locustfile.py"
    done = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
            "--host", "http://10.1.2.3:8000", "--users", "1", "--run-time", "5s", "--admin-key", "sk_x",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "loopback" in done.stderr
