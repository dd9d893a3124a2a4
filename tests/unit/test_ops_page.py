"""The ops page's edge without a server: its session cookie, its login form, and what a replica counts."""

from __future__ import annotations

import re

import pytest

from payray.errors import InvalidRequest
from payray.figures import LATENCY_BOUNDS
from serve_app.edge import dashboard
from serve_app.edge.metrics import ApiMetrics, route_group

ADMIN = "sk_admin_0123456789"


def test_a_session_is_valid_until_it_expires_and_only_under_its_key() -> None:
    value = dashboard.session_value(ADMIN, now=1000.0)
    assert ADMIN not in value
    assert dashboard.session_valid(value, ADMIN, now=1000.0 + dashboard.SESSION_S - 1)
    assert not dashboard.session_valid(value, ADMIN, now=1000.0 + dashboard.SESSION_S + 1)
    assert not dashboard.session_valid(value, "sk_admin_rotated", now=1000.0)
    assert not dashboard.session_valid(value, None, now=1000.0)


@pytest.mark.parametrize(
    "forged",
    ["", "garbage", "99999999999.", "99999999999.00", f"99999999999.{'0' * 64}", "-1.abc", "1e99.abc"],
)
def test_a_forged_session_is_refused(forged: str) -> None:
    assert not dashboard.session_valid(forged, ADMIN, now=0.0)


def test_a_session_for_a_later_expiry_cannot_be_made_from_an_earlier_one() -> None:
    expires, _, signature = dashboard.session_value(ADMIN, now=0.0).partition(".")
    assert not dashboard.session_valid(f"{int(expires) + 3600}.{signature}", ADMIN, now=0.0)


def test_the_login_form_gives_its_key() -> None:
    form = "application/x-www-form-urlencoded"
    assert dashboard.login_key(b"key=sk_admin_x%2By", form) == "sk_admin_x+y"
    assert dashboard.login_key(b"key=+sk_admin_x+", f"{form}; charset=utf-8") == "sk_admin_x"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"key=sk", "application/json"),
        (b"key=sk", None),
        (b"", "application/x-www-form-urlencoded"),
        (b"key=", "application/x-www-form-urlencoded"),
        (b"key=a&key=b", "application/x-www-form-urlencoded"),
        (b"key=" + b"x" * 5000, "application/x-www-form-urlencoded"),
        (b"key=\xff\xfe", "application/x-www-form-urlencoded"),
        (b"&".join(b"f%d=1" % i for i in range(20)), "application/x-www-form-urlencoded"),
    ],
)
def test_anything_but_one_key_in_a_form_is_refused(body: bytes, content_type: str | None) -> None:
    with pytest.raises(InvalidRequest):
        dashboard.login_key(body, content_type)


@pytest.mark.parametrize("since", ["", "x", "nan", "inf", "-1", "1e400"])
def test_a_since_that_is_not_a_time_is_refused(since: str) -> None:
    with pytest.raises(InvalidRequest):
        dashboard.since_param(since)


def test_only_the_pages_files_are_served_and_the_page_loads_nothing_from_outside() -> None:
    assert dashboard.asset("page.js") is not None and dashboard.asset("page.css") is not None
    for name in ("index.html", "../app.py", "login.html", "page.js.map"):
        assert dashboard.asset(name) is None
    for name in ("index.html", "login.html", "page.js", "page.css"):
        text = (dashboard.ASSETS / name).read_text()
        assert not re.search(r"(src|href|url)\s*[=(]\s*[\"']?(https?:)?//", text), name


def test_a_login_page_escapes_its_message() -> None:
    body = bytes(dashboard.page("login.html", 400, '<script>alert("x")</script>').body)
    assert b"<script>alert" not in body and b"&lt;script&gt;" in body


def test_routes_fall_into_the_pages_groups() -> None:
    assert route_group("POST /v1/charges") == "charges"
    assert route_group("POST /v1/webhooks/psp") == "webhooks"
    assert route_group("GET /v1/admin/dashboard") == "ops" and route_group("GET /metrics") == "ops"
    assert route_group("GET /v1/charges/{charge_id}") == "api" and route_group("unrouted") == "api"


def test_a_replicas_totals_come_from_its_prometheus_metrics() -> None:
    metrics = ApiMetrics()
    metrics.observe_request("POST /v1/charges", 200, 0.02)
    metrics.observe_request("POST /v1/charges", 402, 0.03)
    metrics.observe_request("POST /v1/charges", 503, 0.5)
    metrics.observe_request("GET /metrics", 200, 0.001)
    metrics.observe_request("GET /v1/balance", 200, 0.004)
    metrics.observe_psp_call(0.04, 200)
    metrics.observe_psp_call(10.0, None)
    totals = metrics.totals("r1", "node", 5.0)
    charges = totals.groups["charges"]
    assert (charges.count, charges.errors, charges.rejected) == (3, 1, 1)
    assert charges.buckets[LATENCY_BOUNDS.index(0.025)] == 1 and charges.buckets[-1] == 3
    assert totals.groups["api"].count == 1  # the scrape is not client traffic
    assert (totals.psp.count, totals.psp.errors) == (2, 1)
