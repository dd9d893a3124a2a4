"""``payray demo`` against the session's stack: the four operations shown and checked, and its exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ops.stack import StackInfo

pytestmark = pytest.mark.integration


def _demo(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``payray demo`` with nothing from this environment that names a stack, admin key or PSP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYRAY_", "STRIPE_", "RAY_ADDRESS"))}
    env.update(PAYRAY_HOME=str(home), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "demo", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def test_payray_demo_walks_the_four_operations(
    stack: StackInfo, psp_control: httpx.Client, tmp_path: Path
) -> None:
    assert stack.psp_api_base
    done = _demo(
        "--url",
        stack.base_url,
        "--admin-key",
        stack.admin_key,
        "--psp-url",
        stack.psp_api_base,
        home=tmp_path,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    # 1: a merchant, created with the admin key (shown redacted, never in full)
    assert "POST " + stack.base_url + "/v1/merchants" in out and stack.admin_key not in out
    # 2 and 3: the charge, then its replay with the same key, captured once at the PSP
    charge = re.search(r"Charge (ch_\w+) succeeded", out)
    assert charge, out
    assert out.count(f"POST {stack.base_url}/v1/charges") == 2 and "Idempotent-Replayed: true" in out
    assert "byte for byte" in out
    stats = psp_control.get("/_emulator/stats", params={"payray_payment_id": charge[1]}).json()
    assert stats["captures_by_payray_payment_id"] == {charge[1]: 1}
    # 4: a refund made at the PSP, learned by payray from the webhook
    assert f"{stack.psp_api_base}/v1/refunds" in out
    assert re.search(r"Refund re_\w+ \(1000 usd\) learned from the PSP's\s+charge.refunded webhook", out), out
    assert '"amount_refunded": 1000' in out
    # 5: today's reconciliation matched them; then the invariants hold
    assert re.search(r"Run recon_\w+ of \d{4}-\d{2}-\d{2}", out), out
    assert "matched, no open discrepancy names them" in out
    assert '"ok": true' in out
    assert "every step behaved as described" in out


def test_payray_demo_names_the_step_that_failed(stack: StackInfo, tmp_path: Path) -> None:
    assert stack.psp_api_base
    done = _demo(
        "--url",
        stack.base_url,
        "--admin-key",
        "sk_admin_wrong",
        "--psp-url",
        stack.psp_api_base,
        home=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "step 1 (a merchant) failed: POST /v1/merchants answered 401" in done.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--url", "localhost:8000"], "--url must be an http(s) URL"),
        (["--url", "http://127.0.0.1:9"], "--url needs --admin-key"),
        (["--url", "http://127.0.0.1:9", "--admin-key", "sk_admin_x"], "--url needs --psp-url"),
        (["--psp-url", "http://127.0.0.1:9"], "--psp-url names the PSP of a running stack"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    done = _demo(*args, home=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1 and says in done.stderr, done.stderr
