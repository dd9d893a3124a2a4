"""Hostile input against the running stack: every probe gets a Stripe-shaped 4xx and leaves nothing behind.

Control characters: ids and parameter names (path ids, query values, metadata keys) never contain one; free
text (description, metadata values, notes) may hold tab, line feed and carriage return, and nothing else below
U+0020, nor DEL, C1 controls or lone surrogates. Bodies have bounded size, nesting and parameter count.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
import ray
import redis
from psycopg import sql

from ops.stack import StackInfo
from payray.cards import luhn_valid
from tests.integration.psp_queries import payment_intents
from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]

FORM = "application/x-www-form-urlencoded"
VALID = {"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}
TABLES = ("payments", "refunds", "payouts", "idempotency_keys", "ledger_transactions")


def footprint(stack: StackInfo, psp: httpx.Client, merchant_id: str) -> dict[str, int]:
    """What a request may leave behind: rows of the merchant's, its Redis keys, its PSP payment intents."""
    counts: dict[str, int] = {}
    with psycopg.connect(stack.database_url) as conn:
        for table in TABLES:
            row = conn.execute(
                f"SELECT count(*) FROM {table} WHERE merchant_id = %s", (merchant_id,)
            ).fetchone()
            assert row is not None
            counts[table] = row[0]
    client = redis.Redis.from_url(stack.redis_url)
    try:
        counts["redis keys"] = sum(1 for _ in client.scan_iter(f"idem:{merchant_id}:*"))
    finally:
        client.close()
    counts["psp intents"] = len(payment_intents(psp, payray_merchant_id=merchant_id))
    return counts


def assert_refused(response: httpx.Response, param: str | None, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error", error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error.get("param") == param, error
    return dict(error)


@pytest.fixture
def paid(merchant: Merchant) -> Iterator[tuple[Merchant, str]]:
    """A merchant with one succeeded charge (so refund probes reach past "no such charge")."""
    charge = merchant.charge()
    assert charge.status_code == 200, charge.text
    yield merchant, charge.json()["id"]


# -- control characters in bodies ---------------------------------------------------------------------------

BODY_PROBES: list[tuple[str, str, dict[str, Any], str]] = [
    ("nul in description", "/v1/charges", {**VALID, "description": "a\x00b"}, "description"),
    ("escape in description", "/v1/charges", {**VALID, "description": "a\x1b[31mb"}, "description"),
    ("del in description", "/v1/charges", {**VALID, "description": "a\x7f"}, "description"),
    ("c1 control in description", "/v1/charges", {**VALID, "description": "a\x85"}, "description"),
    ("lone surrogate in description", "/v1/charges", {**VALID, "description": "a\ud800"}, "description"),
    ("nul in a metadata value", "/v1/charges", {**VALID, "metadata": {"k": "v\x00"}}, "metadata[k]"),
    ("nul in a metadata key", "/v1/charges", {**VALID, "metadata": {"k\x00": "v"}}, "metadata"),
    ("newline in a metadata key", "/v1/charges", {**VALID, "metadata": {"k\n": "v"}}, "metadata"),
    ("nul in customer", "/v1/charges", {**VALID, "customer": "cus_\x00"}, "customer"),
    (
        "nul in payment_method",
        "/v1/charges",
        {**VALID, "payment_method": "pm_card_visa\x00"},
        "payment_method",
    ),
    ("nul in a refund's metadata value", "/v1/refunds", {"metadata": {"k": "\x00"}}, "metadata[k]"),
    ("nul in a refund's metadata key", "/v1/refunds", {"metadata": {"\x00": "v"}}, "metadata"),
    ("nul in a refund's charge", "/v1/refunds", {"charge": "ch_\x00"}, "charge"),
]


@pytest.mark.parametrize("encoding", ["json", "form"])
@pytest.mark.parametrize(("case", "path", "body", "param"), BODY_PROBES, ids=[p[0] for p in BODY_PROBES])
def test_control_characters_in_a_body_are_refused(
    stack: StackInfo,
    paid: tuple[Merchant, str],
    psp_control: httpx.Client,
    encoding: str,
    case: str,
    path: str,
    body: dict[str, Any],
    param: str,
) -> None:
    merchant, charge_id = paid
    if path == "/v1/refunds":
        body = {"charge": charge_id, **body}
    if encoding == "form" and "surrogate" in case:
        pytest.skip("a form cannot carry a lone surrogate: it is not UTF-8")
    before = footprint(stack, psp_control, merchant.id)
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    if encoding == "json":
        content = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    else:
        content = urlencode(flatten(body)).encode()
        headers["Content-Type"] = FORM
    assert_refused(merchant.client.post(path, content=content, headers=headers), param)
    assert footprint(stack, psp_control, merchant.id) == before


def flatten(body: dict[str, Any]) -> list[tuple[str, str]]:
    """Stripe's bracket notation, one level deep (what the probes need)."""
    pairs: list[tuple[str, str]] = []
    for key, value in body.items():
        if isinstance(value, dict):
            pairs.extend((f"{key}[{k}]", str(v)) for k, v in value.items())
        else:
            pairs.append((key, str(value)))
    return pairs


def test_tab_and_newline_are_allowed_in_free_text(merchant: Merchant) -> None:
    text = "line one\r\n\tline two"
    response = merchant.charge(description=text, metadata={"note": text})
    assert response.status_code == 200, response.text
    assert response.json()["description"] == text and response.json()["metadata"] == {"note": text}


# -- control characters in the URL --------------------------------------------------------------------------

KINDS = ("charges", "refunds", "payouts", "disputes")
URL_PROBES: list[tuple[str, str]] = [
    *[(f"/v1/{kind}/x%00y", "id") for kind in KINDS],
    *[(f"/v1/{kind}?starting_after=x%00y", "starting_after") for kind in KINDS],
    ("/v1/refunds?charge=ch_%00", "charge"),
    ("/v1/charges/ch_%01", "id"),
    ("/v1/charges?starting_after=ch_%1b", "starting_after"),
    ("/v1/charges?limit=1%00", "limit"),
]


@pytest.mark.parametrize(("url", "param"), URL_PROBES)
def test_control_characters_in_the_url_are_refused(
    stack: StackInfo, merchant: Merchant, psp_control: httpx.Client, url: str, param: str
) -> None:
    before = footprint(stack, psp_control, merchant.id)
    assert_refused(merchant.client.get(url), param)
    assert footprint(stack, psp_control, merchant.id) == before


def test_control_characters_in_admin_urls_are_refused(admin: httpx.Client) -> None:
    for url, param in [
        ("/v1/reconciliation/runs/recon_%00", "id"),
        ("/v1/reconciliation/discrepancies?run=recon_%00", "run"),
        ("/v1/reconciliation/discrepancies?status=open%00", "status"),
    ]:
        assert_refused(admin.get(url), param)


# -- nesting, parameter count, size -------------------------------------------------------------------------


def test_form_keys_nested_1500_deep_are_refused(
    stack: StackInfo, merchant: Merchant, psp_control: httpx.Client
) -> None:
    before = footprint(stack, psp_control, merchant.id)
    key = "metadata" + "[a]" * 1500
    content = f"amount=100&currency=usd&payment_method=pm_card_visa&{key}=1".encode()
    response = merchant.client.post(
        "/v1/charges", content=content, headers={"Idempotency-Key": "deep", "Content-Type": FORM}
    )
    assert_refused(response, "metadata")
    assert footprint(stack, psp_control, merchant.id) == before


def test_json_nested_30000_deep_is_refused(
    stack: StackInfo, merchant: Merchant, psp_control: httpx.Client
) -> None:
    before = footprint(stack, psp_control, merchant.id)
    content = b'{"metadata": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    response = merchant.client.post(
        "/v1/charges",
        content=content,
        headers={"Idempotency-Key": "deep", "Content-Type": "application/json"},
    )
    assert_refused(response, None)
    assert footprint(stack, psp_control, merchant.id) == before


def test_too_many_parameters_are_refused(
    stack: StackInfo, merchant: Merchant, psp_control: httpx.Client
) -> None:
    before = footprint(stack, psp_control, merchant.id)
    pairs = "&".join(f"x{i}=1" for i in range(2000))
    content = f"amount=100&currency=usd&payment_method=pm_card_visa&{pairs}".encode()
    response = merchant.client.post(
        "/v1/charges", content=content, headers={"Idempotency-Key": "many", "Content-Type": FORM}
    )
    assert_refused(response, None)
    assert footprint(stack, psp_control, merchant.id) == before


def five_megabytes() -> Iterator[bytes]:
    chunk = b"x" * 65_536
    for _ in range(80):
        yield chunk


@pytest.mark.parametrize("path", ["/v1/webhooks/psp", "/v1/charges"])
def test_a_chunked_5_mb_body_is_refused_with_413(stack: StackInfo, merchant: Merchant, path: str) -> None:
    """No Content-Length: the edge stops reading at the cap instead of buffering (and HMAC'ing) it all."""
    headers = {
        "Idempotency-Key": "big",
        "Content-Type": "application/json",
        "Stripe-Signature": "t=1,v1=00",
        "Authorization": f"Bearer {merchant.api_key}",
    }
    response = httpx.post(f"{stack.base_url}{path}", content=five_megabytes(), headers=headers, timeout=60)
    assert "content-length" not in response.request.headers
    assert_refused(response, None, status=413)


def test_a_declared_length_over_the_cap_is_refused_before_reading(stack: StackInfo) -> None:
    headers = {"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"}
    response = httpx.post(
        f"{stack.base_url}/v1/webhooks/psp",
        content=b"{" + b" " * (1 << 20) + b"}",
        headers=headers,
        timeout=60,
    )
    assert_refused(response, None, status=413)


# -- raw card data ------------------------------------------------------------------------------------------


def fresh_pan() -> str:
    """A Luhn-valid 16-digit number no other test sends, so finding it anywhere means this test leaked it."""
    payload = "4" + str(uuid.uuid4().int % 10**14).zfill(14)
    for digit in "0123456789":
        if luhn_valid(payload + digit):
            return payload + digit
    raise AssertionError("unreachable")


def places_holding(text: str, stack: StackInfo, home: Path) -> list[str]:
    """Every place the number could have landed: any row of the stack's database, the PSP emulator's journal
    and files, and the Ray session's logs (the API replicas' among them)."""
    found: list[str] = []
    with psycopg.connect(stack.database_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT count(*) FROM {} t WHERE t::text LIKE %s").format(sql.Identifier(table))
            row = conn.execute(query, (f"%{text}%",)).fetchone()
            if row and row[0]:
                found.append(f"table {table}")
    node = ray._private.worker.global_worker.node
    assert node is not None
    logs = Path(node.get_logs_dir_path())
    for root in (home, logs):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and text.encode() in path.read_bytes():
                found.append(str(path))
    return found


@pytest.fixture(scope="module")
def stack_home(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stack's ``PAYRAY_HOME`` (the emulator's journal lives under ``psp/``)."""
    base = tmp_path_factory.getbasetemp()
    homes = [p for p in base.glob("payray-home*") if not p.is_symlink() and (p / "psp").is_dir()]
    assert len(homes) == 1, homes
    return homes[0]


CARD_PROBES: list[tuple[str, str, str]] = [
    ("card[number] in a form", "form", "card"),
    ("card object in JSON", "json", "card"),
    ("source as a PAN", "source", "source"),
    ("PAN inside a payment method", "pm", "payment_method"),
    ("grouped PAN as a payment method", "grouped", "payment_method"),
]


@pytest.mark.parametrize(("case", "shape", "param"), CARD_PROBES, ids=[p[0] for p in CARD_PROBES])
def test_raw_card_data_is_refused_and_kept_nowhere(
    stack: StackInfo,
    stack_home: Path,
    merchant: Merchant,
    psp_control: httpx.Client,
    case: str,
    shape: str,
    param: str,
) -> None:
    pan = fresh_pan()
    before = footprint(stack, psp_control, merchant.id)
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    form = "amount=1000&currency=usd"
    if shape == "form":
        response = merchant.client.post(
            "/v1/charges",
            content=f"{form}&card[number]={pan}&card[exp_month]=12&card[exp_year]=2030&card[cvc]=123",
            headers={**headers, "Content-Type": FORM},
        )
    elif shape == "json":
        card = {"number": pan, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
        response = merchant.client.post("/v1/charges", json={"amount": 1000, "currency": "usd", "card": card},
                                        headers=headers)  # fmt: skip
    elif shape == "source":
        response = merchant.client.post(
            "/v1/charges", content=f"{form}&source={pan}", headers={**headers, "Content-Type": FORM}
        )
    elif shape == "pm":
        response = merchant.charge(payment_method=f"pm_{pan}")
    else:
        response = merchant.charge(payment_method=f"{pan[:4]} {pan[4:8]} {pan[8:12]} {pan[12:]}")
    error = assert_refused(response, param)
    assert "raw card numbers are not accepted" in error["message"]
    assert "pm_" in error["message"] and "tok_" in error["message"]
    assert pan not in response.text
    assert footprint(stack, psp_control, merchant.id) == before
    assert places_holding(pan, stack, stack_home) == []


def test_the_search_for_card_numbers_finds_what_is_there(
    stack: StackInfo, stack_home: Path, merchant: Merchant
) -> None:
    """The check above is only worth something if it finds a number that was stored: metadata is kept."""
    marker = fresh_pan()
    assert merchant.charge(metadata={"note": f"x{marker}x"}).status_code == 200
    assert any(place.startswith("table ") for place in places_holding(marker, stack, stack_home))
