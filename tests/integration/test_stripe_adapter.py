"""StripePsp (the real stripe SDK, async) against the PSP emulator: the port's three outcomes under faults."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from psp.emulator.server import EmulatorProcess
from psp.port import PspChargeResult, PspConfigurationError
from psp.stripe_adapter import StripePsp

pytestmark = pytest.mark.integration

T = TypeVar("T")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("psp-adapter")) as process:
        yield process


@pytest.fixture
def base(emulator: EmulatorProcess) -> Iterator[str]:
    assert emulator.url is not None
    yield emulator.url
    httpx.delete(f"{emulator.url}/_emulator/faults")


def set_faults(base: str, faults: dict[str, Any]) -> None:
    assert httpx.post(f"{base}/_emulator/faults", json=faults).status_code == 200


def stats(base: str, payment_id: str, key: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{base}/_emulator/stats", params={"payray_payment_id": payment_id, "idempotency_key": key}
    ).json()
    return body


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def capture(
    psp: StripePsp, payment_id: str, pm: str = "pm_card_visa", key: str | None = None, **extra: Any
) -> PspChargeResult:
    try:
        return await psp.capture(
            payment_id=payment_id,
            amount=1250,
            currency="USD",
            payment_method=pm,
            idempotency_key=key or f"payray:{payment_id}",
            metadata={"merchant_id": "m1"},
            **extra,
        )
    finally:
        await psp.aclose()


def test_capture_succeeds_and_lookup_finds_it(base: str) -> None:
    payment_id = uuid.uuid4().hex
    result = run(capture(StripePsp("sk_test_adapter", base), payment_id, description="order 7"))
    assert result.status == "captured"
    assert result.psp_reference is not None and result.psp_reference.startswith("pi_")
    assert result.charge_id is not None and result.charge_id.startswith("ch_")
    assert (result.amount, result.currency) == (1250, "usd")

    async def lookups() -> tuple[PspChargeResult | None, PspChargeResult | None]:
        psp = StripePsp("sk_test_adapter", base)
        try:
            return await psp.lookup(payment_id=payment_id), await psp.lookup(payment_id="never-seen")
        finally:
            await psp.aclose()

    found, missing = run(lookups())
    assert found == result
    assert missing is None


@pytest.mark.parametrize(
    ("pm", "failure_code"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ("pm_card_chargeDeclinedLostCard", "lost_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error"),
    ],
)
def test_declines_map_to_failure_codes(base: str, pm: str, failure_code: str) -> None:
    payment_id = uuid.uuid4().hex
    result = run(capture(StripePsp("sk_test_adapter", base), payment_id, pm))
    assert result.status == "declined" and result.failure_code == failure_code
    assert result.failure_message and result.psp_reference and result.charge_id

    async def look() -> PspChargeResult | None:
        psp = StripePsp("sk_test_adapter", base)
        try:
            return await psp.lookup(payment_id=payment_id)
        finally:
            await psp.aclose()

    found = run(look())
    assert found is not None and found.status == "declined" and found.failure_code == failure_code
    assert found.psp_reference == result.psp_reference


def test_unknown_payment_method_is_declined_not_raised(base: str) -> None:
    result = run(capture(StripePsp("sk_test_adapter", base), uuid.uuid4().hex, "pm_does_not_exist"))
    assert result.status == "declined" and result.failure_code == "resource_missing"


def test_timeout_after_capture_is_unknown_and_a_retry_captures_once(base: str) -> None:
    set_faults(
        base, {"timeout_after_capture_rate": 1.0, "hold_ms": 3000, "only_paths": ["/v1/payment_intents"]}
    )
    payment_id = uuid.uuid4().hex
    key = f"payray:{payment_id}"
    started = time.monotonic()
    unknown = run(
        capture(StripePsp("sk_test_adapter", base, timeout_s=0.4, max_network_retries=1), payment_id)
    )
    assert unknown.status == "unknown" and unknown.detail and "APIConnectionError" in unknown.detail
    assert time.monotonic() - started < 5
    httpx.delete(f"{base}/_emulator/faults")
    retried = run(capture(StripePsp("sk_test_adapter", base), payment_id))
    assert retried.status == "captured" and retried.psp_reference is not None
    counts = stats(base, payment_id, key)
    assert counts["captures_by_payray_payment_id"] == {payment_id: 1}
    assert counts["captures_by_idempotency_key"] == {key: 1}

    async def look() -> PspChargeResult | None:
        psp = StripePsp("sk_test_adapter", base)
        try:
            return await psp.lookup(payment_id=payment_id)
        finally:
            await psp.aclose()

    assert run(look()) == retried


def test_outage_is_unknown_and_nothing_was_charged(base: str) -> None:
    now = time.time()
    set_faults(base, {"outages": [{"start": now - 1, "end": now + 60}]})
    payment_id = uuid.uuid4().hex

    async def during_outage() -> tuple[PspChargeResult, PspChargeResult | None]:
        psp = StripePsp("sk_test_adapter", base, timeout_s=2, max_network_retries=1)
        try:
            result = await psp.capture(
                payment_id=payment_id,
                amount=100,
                currency="usd",
                payment_method="pm_card_visa",
                idempotency_key=f"payray:{payment_id}",
                metadata={},
            )
            return result, await psp.lookup(payment_id=payment_id)
        finally:
            await psp.aclose()

    result, looked = run(during_outage())
    assert result.status == "unknown" and result.detail and "503" in result.detail
    assert looked is not None and looked.status == "unknown"
    httpx.delete(f"{base}/_emulator/faults")

    async def after() -> PspChargeResult | None:
        psp = StripePsp("sk_test_adapter", base)
        try:
            return await psp.lookup(payment_id=payment_id)
        finally:
            await psp.aclose()

    assert run(after()) is None


def test_truncated_reply_is_unknown(base: str) -> None:
    set_faults(base, {"truncated_json_rate": 1.0, "only_paths": ["/v1/payment_intents"]})
    payment_id = uuid.uuid4().hex
    result = run(capture(StripePsp("sk_test_adapter", base), payment_id))
    assert result.status == "unknown"
    httpx.delete(f"{base}/_emulator/faults")
    assert run(capture(StripePsp("sk_test_adapter", base), payment_id)).status == "captured"
    assert stats(base, payment_id, f"payray:{payment_id}")["captures_by_payray_payment_id"] == {payment_id: 1}


def test_rate_limited_is_unknown(base: str) -> None:
    set_faults(base, {"error_rate": 1.0, "error_status": 429})
    result = run(capture(StripePsp("sk_test_adapter", base, max_network_retries=0), uuid.uuid4().hex))
    assert result.status == "unknown" and result.detail and "RateLimitError" in result.detail


def test_bad_api_key_is_a_configuration_error(base: str) -> None:
    with pytest.raises(PspConfigurationError):
        run(capture(StripePsp("sk_live_wrong", base), uuid.uuid4().hex))


def test_reused_key_with_other_parameters_is_a_configuration_error(base: str) -> None:
    payment_id = uuid.uuid4().hex
    assert run(capture(StripePsp("sk_test_adapter", base), payment_id)).status == "captured"
    with pytest.raises(PspConfigurationError):
        run(capture(StripePsp("sk_test_adapter", base), payment_id, customer=None, description="changed"))
