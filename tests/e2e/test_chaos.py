"""``payray chaos`` as its users run it: two Ray nodes under Locust load, every fault of the catalogue on
its schedule, then the janitor, the invariants and the day's reconciliation. The run must find no violation,
and every fault must have recovered before the next one. It runs with TLS everywhere (the API's front, the
PSP over HTTPS, Ray over mutual TLS), so the faults also strike the encrypted paths; the plain ones are what
every other test drives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.chaos.plan import FAULTS


@pytest.mark.timeout(900)
def test_every_fault_under_load_on_two_nodes_recovers_and_keeps_every_invariant(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYRAY_", "STRIPE_", "RAY_ADDRESS"))}
    out, page = tmp_path / "chaos.json", tmp_path / "chaos.html"
    command = [sys.executable, "-m", "ops.cli", "chaos", "--nodes", "2", "--seed", "7", "--tls"]
    done = subprocess.run(
        [*command, "--json", str(out), "--html", str(page)],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    tail = (done.stdout + done.stderr)[-6000:]
    result = json.loads(out.read_text())
    assert result["violations"] == [], tail
    unrecovered = [f for f in result["faults"] if not f["recovered"]]
    assert unrecovered == [], tail
    assert done.returncode == 0, tail
    assert result["options"]["tls"] is True
    assert sorted(f["fault"] for f in result["faults"]) == sorted(FAULTS)
    assert all(section["ok"] for section in result["invariants"].values() if isinstance(section, dict))
    assert result["reconciliation"]["status"] == "succeeded"
    assert result["load"]["captures_seen_succeeded"] > 500, "the load charged and each was checked"
    assert result["load"]["refunds_seen_succeeded"] > 0
    assert "<svg" in page.read_text() and "node-lost" in page.read_text()
