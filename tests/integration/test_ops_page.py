"""The ops page (``GET /dashboard``): signed in with the admin key through its form, never by URL; its figures
admin-only; and in a real browser (Debian's Chromium, driven by Playwright) under Locust load, live."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from ops.stack import StackInfo
from tests.integration.polling import until
from tests.integration.stack_fixtures import Merchant

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def anonymous(stack: StackInfo) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/dashboard/login", content=f"key={key}", headers=FORM)


def test_without_a_session_the_page_is_the_sign_in_form(anonymous: httpx.Client) -> None:
    page = anonymous.get("/dashboard")
    assert page.status_code == 200 and 'action="/dashboard/login"' in page.text
    assert 'id="diagram"' not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_the_figures_need_the_admin_key_or_its_session(
    anonymous: httpx.Client, merchant: Merchant, stack: StackInfo
) -> None:
    assert anonymous.get("/v1/admin/dashboard").status_code == 401
    assert merchant.client.get("/v1/admin/dashboard").status_code == 401
    anonymous.cookies.set("payray_ops", f"{int(time.time()) + 3600}.{'0' * 64}")
    assert anonymous.get("/v1/admin/dashboard").status_code == 401
    admin = {"Authorization": f"Bearer {stack.admin_key}"}
    figures = anonymous.get("/v1/admin/dashboard", headers=admin)
    assert figures.status_code == 200 and figures.json()["object"] == "ops_figures", figures.text


def test_a_wrong_key_opens_no_session(anonymous: httpx.Client, merchant: Merchant) -> None:
    for key in ("sk_admin_wrong", merchant.api_key):
        refused = sign_in(anonymous, key)
        assert refused.status_code == 401 and "set-cookie" not in refused.headers
        assert 'action="/dashboard/login"' in refused.text and "admin key" in refused.text
    assert not anonymous.cookies
    assert anonymous.get("/v1/admin/dashboard").status_code == 401


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ('{"key": "x"}', {"Content-Type": "application/json"}),
        ("", FORM),
        ("key=a&key=b", FORM),
        ("other=1", FORM),
    ],
)
def test_a_form_that_is_not_one_key_is_refused(
    anonymous: httpx.Client, body: str, headers: dict[str, str]
) -> None:
    refused = anonymous.post("/dashboard/login", content=body, headers=headers)
    assert refused.status_code == 400 and "set-cookie" not in refused.headers


def test_the_admin_key_opens_a_session_that_signs_out(anonymous: httpx.Client, stack: StackInfo) -> None:
    opened = sign_in(anonymous, stack.admin_key)
    assert opened.status_code == 303 and opened.headers["location"] == "/dashboard"
    cookie = opened.headers["set-cookie"]
    assert re.search(r"HttpOnly", cookie, re.I) and re.search(r"SameSite=strict", cookie, re.I)
    assert stack.admin_key not in cookie
    page = anonymous.get("/dashboard")
    assert 'id="diagram"' in page.text and 'src="/dashboard/page.js"' in page.text
    assert anonymous.get("/v1/admin/dashboard").status_code == 200
    assert anonymous.post("/dashboard/logout").status_code == 303
    assert anonymous.get("/v1/admin/dashboard").status_code == 401


@pytest.mark.parametrize("path", ["/dashboard/index.html", "/dashboard/..%2Fapp.py", "/dashboard/x.js.map"])
def test_only_the_pages_own_files_are_served(anonymous: httpx.Client, path: str) -> None:
    assert anonymous.get(path).status_code in (400, 404)
    assert anonymous.get("/dashboard/page.js").headers["content-type"].startswith("text/javascript")


def test_a_since_that_is_not_a_time_is_refused(admin: httpx.Client) -> None:
    refused = admin.get("/v1/admin/dashboard", params={"since": "yesterday"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "since"


def test_the_figures_follow_the_charges(admin: httpx.Client, merchant: Merchant) -> None:
    """Charges show up in the next frames: requests, PSP calls and postings, each per second."""
    started = time.time()
    for _ in range(10):
        assert merchant.charge().status_code == 200

    def counted() -> dict[str, float] | None:
        frames = admin.get("/v1/admin/dashboard", params={"since": started}).json()["frames"]
        charges = sum(f["charges"]["per_s"] for f in frames)
        postings = sum(f["ledger"]["postings_per_s"] for f in frames)
        psp = sum(f["psp"]["per_s"] for f in frames)
        seen = {"charges": charges, "postings": postings, "psp": psp}
        return seen if all(seen.values()) else None

    seen = until(counted, timeout_s=30)
    assert all(v > 0 for v in seen.values()), seen
    latest = admin.get("/v1/admin/dashboard").json()["frames"][-1]
    assert latest["status"]["api"]["status"] == "ok" and latest["database"]["up"], latest["status"]


def _load(stack: StackInfo, seconds: int) -> subprocess.Popen[str]:
    assert stack.psp_api_base
    return subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "loadtest", "--url", stack.base_url, "--admin-key", stack.admin_key,
         "--psp-url", stack.psp_api_base, "--users", "4", "--spawn-rate", "4", "--run-time", f"{seconds}s",
         "--merchants", "2"],
        env={**os.environ, "PAYRAY_LOAD_CLIENT_TIMEOUT": "60"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_the_page_shows_live_figures_in_a_browser_under_load(stack: StackInfo, tmp_path: Path) -> None:
    assert CHROMIUM is not None, "bin/test installs Debian's chromium; install it to run this test"
    from playwright.sync_api import sync_playwright

    load = _load(stack, seconds=30)
    outside: list[str] = []
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("request", lambda r: urlsplit(r.url).hostname == "127.0.0.1" or outside.append(r.url))
            page.goto(f"{stack.base_url}/dashboard")
            page.fill("#key", stack.admin_key)
            page.click("button[type=submit]")
            page.wait_for_selector("#diagram")
            assert stack.admin_key not in page.url

            def charges_flowing() -> str | None:
                text = page.text_content("#api-charges") or ""
                return text if re.search(r"charges [1-9]", text) else None

            until(charges_flowing, timeout_s=60)
            readings = []
            for _ in range(4):
                page.wait_for_timeout(1500)
                readings.append((
                    page.get_attribute("body", "data-at"),
                    page.text_content("#clients-requests"),
                    page.text_content("#ledger-postings"),
                ))  # fmt: skip
            assert len({at for at, _, _ in readings}) == len(readings), readings  # a new frame every time
            assert len({(r, p) for _, r, p in readings}) > 1, readings  # and the figures move
            assert page.get_attribute("#box-api", "class") == "box ok"
            assert page.get_attribute("#box-postgres", "class") == "box ok"
            assert page.locator("#chart-throughput polyline").count() >= 3
            shot = tmp_path / "ops-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
            if os.environ.get("PAYRAY_OPS_SCREENSHOT"):
                shutil.copy(shot, os.environ["PAYRAY_OPS_SCREENSHOT"])
            browser.close()
    finally:
        output, _ = load.communicate(timeout=120)
    assert load.returncode == 0, output[-3000:]
    assert not outside, outside
