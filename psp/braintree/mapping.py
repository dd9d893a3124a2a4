"""Braintree's answers as the PSP port's outcomes: statuses, declines, refusals, amounts, captures and
refunds. Pure: nothing here calls Braintree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import requests
import urllib3
from braintree.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConfigurationError,
    GatewayTimeoutError,
    RequestTimeoutError,
    ServerError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UpgradeRequiredError,
)

from psp.port import (
    PspCapture,
    PspChargeResult,
    PspConfigurationError,
    PspError,
    PspRefund,
)

#: Braintree ties a currency to a merchant account: currency → merchant account id (None: the merchant's
#: default account). The emulator, like a default US sandbox, settles in USD only.
DEFAULT_MERCHANT_ACCOUNTS: Mapping[str, str | None] = {"usd": None}
#: Braintree's standard card pricing; its API reports no fee per transaction, so the report computes it.
DEFAULT_FEE_BPS = 259
DEFAULT_FIXED_FEE = 49
SEARCH_BATCH = 50
#: The day's batch settles at its cut-off, which can fall on the next calendar day: the report searches
#: around the day and keeps the transactions whose batch is the day's.
SETTLED_AT_MARGIN = timedelta(days=1)
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof"}
)
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})

CAPTURED_STATUSES = frozenset({"submitted_for_settlement", "settling", "settlement_pending", "settled"})
RELEASED_STATUSES = frozenset({"voided", "authorization_expired"})
DECLINED_STATUSES = frozenset({"processor_declined", "gateway_rejected", "failed", "settlement_declined"})
#: Statuses from which Braintree voids instead of refunding (the money has not moved yet).
VOIDABLE_STATUSES = frozenset({"authorized", "submitted_for_settlement", "settlement_pending"})

KEY_REUSED = "915232"  # api_request_key reused with another request: our bug
KEY_IN_FLIGHT = "915233"  # the first request with this key has not finished: ask again later
CANNOT_REFUND_UNLESS_SETTLED = "91506"

#: Braintree's processor response codes as the decline codes payray already speaks (Stripe's); a generic
#: decline is ``card_declined``, as ``StripePsp`` reports Stripe's ``generic_decline``.
PROCESSOR_DECLINES: Mapping[str, str] = {
    "2000": "do_not_honor",
    "2001": "insufficient_funds",
    "2002": "card_velocity_exceeded",
    "2003": "card_velocity_exceeded",
    "2004": "expired_card",
    "2005": "incorrect_number",
    "2006": "invalid_expiry_year",
    "2007": "invalid_account",
    "2010": "incorrect_cvc",
    "2012": "lost_card",
    "2013": "stolen_card",
    "2014": "fraudulent",
    "2015": "transaction_not_allowed",
    "2019": "transaction_not_allowed",
    "2038": "card_declined",
    "2044": "call_issuer",
    "2046": "card_declined",
    "2047": "pickup_card",
    "2057": "restricted_card",
    "2059": "incorrect_zip",
    "3000": "processing_error",
}
GATEWAY_REJECTIONS: Mapping[str, str] = {
    "avs": "incorrect_zip",
    "avs_and_cvv": "incorrect_cvc",
    "cvv": "incorrect_cvc",
    "duplicate": "duplicate_transaction",
    "fraud": "fraudulent",
    "risk_threshold": "fraudulent",
    "three_d_secure": "authentication_required",
    "token_issuance": "processing_error",
}
HTTP_STATUS_OF = {
    ServerError: 500,
    ServiceUnavailableError: 503,
    GatewayTimeoutError: 504,
    TooManyRequestsError: 429,
    RequestTimeoutError: 408,
}


# -- amounts ------


def exponent(currency: str) -> int:
    cur = currency.lower()
    return 0 if cur in ZERO_DECIMAL else 3 if cur in THREE_DECIMAL else 2


def decimal_amount(amount: int, currency: str) -> str:
    """Minor units as Braintree's decimal string in major units (``1050`` usd → ``"10.50"``)."""
    digits = exponent(currency)
    if digits == 0:
        return str(amount)
    whole, fraction = divmod(abs(amount), 10**digits)
    return f"{'-' if amount < 0 else ''}{whole}.{fraction:0{digits}d}"


def minor_amount(value: Any, currency: str) -> int:
    """Braintree's amount (a ``Decimal`` from the SDK, or its text) in minor units."""
    return int(Decimal(str(value)).scaleb(exponent(currency)).to_integral_value())


# -- Braintree's answers as the port's outcomes (pure) ------


def currency_of(txn: Any) -> str | None:
    code = getattr(txn, "currency_iso_code", None)
    return str(code).lower() if code else None


def amount_of(txn: Any) -> int | None:
    raw = getattr(txn, "amount", None)
    return None if raw is None else minor_amount(raw, currency_of(txn) or "usd")


def decline_code(txn: Any) -> str:
    """The Stripe-style reason of a declined, rejected or failed sale."""
    status = getattr(txn, "status", None)
    if status == "gateway_rejected":
        reason = str(getattr(txn, "gateway_rejection_reason", None) or "")
        return GATEWAY_REJECTIONS.get(reason, "gateway_rejected")
    if status == "settlement_declined":
        return "settlement_declined"
    code = str(getattr(txn, "processor_response_code", None) or "")
    return PROCESSOR_DECLINES.get(code, "processing_error" if status == "failed" else "card_declined")


def result_from_transaction(txn: Any) -> PspChargeResult:
    """Map a sale to the port's outcome (after a sale, a capture, and by ``lookup``)."""
    status = getattr(txn, "status", None)
    common: dict[str, Any] = {
        "psp_reference": getattr(txn, "id", None),
        "charge_id": getattr(txn, "id", None),
        "amount": amount_of(txn),
        "currency": currency_of(txn),
    }
    if status in CAPTURED_STATUSES:
        return PspChargeResult("captured", **common)
    if status == "authorized":
        return PspChargeResult("authorized", **common)
    if status in DECLINED_STATUSES:
        text = getattr(txn, "processor_response_text", None)
        rejection = getattr(txn, "gateway_rejection_reason", None)
        message = f"Gateway Rejected: {rejection}" if status == "gateway_rejected" else text
        return PspChargeResult(
            "declined",
            failure_code=decline_code(txn),
            failure_message=message or f"Transaction status is {status}",
            detail=f"braintree {status} {getattr(txn, 'processor_response_code', None) or ''}".strip(),
            **common,
        )
    if status in RELEASED_STATUSES:
        code = "canceled" if status == "voided" else "authorization_expired"
        return PspChargeResult(
            "declined", failure_code=code, failure_message=f"Transaction status is {status}", **common
        )
    return PspChargeResult("unknown", detail=f"Transaction status is {status}", **common)


@dataclass(frozen=True)
class Refusal:
    """A 422 without a transaction: Braintree's validation errors, first one first."""

    codes: tuple[str, ...]
    message: str

    @property
    def code(self) -> str | None:
        return self.codes[0] if self.codes else None

    def describe(self) -> str:
        return f"braintree {','.join(self.codes) or 'error'}: {self.message}"[:300]


def refusal_of(result: Any) -> Refusal:
    errors = getattr(getattr(result, "errors", None), "deep_errors", None) or []
    codes = tuple(str(error.code) for error in errors)
    return Refusal(codes, str(getattr(result, "message", "") or "").splitlines()[0] if codes else "")


def check_key_misuse(refusal: Refusal, what: str) -> PspChargeResult | None:
    """``api_request_key`` errors: reused with another request is our bug (raised); in flight is
    ``unknown`` (the first request's answer is coming, and asking again later replays it)."""
    if KEY_REUSED in refusal.codes:
        raise PspConfigurationError(f"{what}: api_request_key reused with another request ({KEY_REUSED})")
    if KEY_IN_FLIGHT in refusal.codes:
        return PspChargeResult("unknown", detail=f"{what}: api_request_key in flight ({KEY_IN_FLIGHT})")
    return None


def refused_sale(refusal: Refusal, amount: int, currency: str) -> PspChargeResult:
    """A sale Braintree refused to attempt (an unknown nonce, a bad amount): nothing was charged."""
    if (misuse := check_key_misuse(refusal, "capture")) is not None:
        return misuse
    return PspChargeResult(
        "declined",
        amount=amount,
        currency=currency.lower(),
        failure_code="invalid_request",
        failure_message=refusal.message or "The request was refused.",
        detail=refusal.describe(),
        refusal="refused",
    )


def raise_if_ours(exc: BaseException, what: str) -> None:
    """Credentials, permissions and configuration are our side's fault: retrying will not help."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        raise PspConfigurationError(
            f"{what}: the PSP refused our credentials ({type(exc).__name__})"
        ) from exc
    if isinstance(exc, (ConfigurationError, UpgradeRequiredError)):
        raise PspConfigurationError(f"{what}: {type(exc).__name__}: {exc}") from exc


def never_sent(exc: BaseException) -> bool:
    """Whether a request failed before anything was sent: its connection (or its TLS handshake) failed, so
    Braintree cannot have seen it. The SDK wraps requests' error, which wraps urllib3's."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (urllib3.exceptions.ConnectTimeoutError, requests.exceptions.SSLError)):
            return True  # NewConnectionError (refused, unresolvable) is a ConnectTimeoutError
        reason = getattr(current.args[0], "reason", None) if current.args else None
        if isinstance(reason, (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.SSLError)):
            return True
        current = current.__cause__ or current.__context__
    return False


def unknown_detail(exc: BaseException, what: str) -> str:
    """Names the cause: the HTTP status of a 5xx or 429, or the network error under a wrapped one."""
    detail = f"{what}: {type(exc).__name__}"
    status = next((s for cls, s in HTTP_STATUS_OF.items() if isinstance(exc, cls)), None)
    if status is not None:
        detail += f" (HTTP {status})"
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        detail += f" ({type(cause).__name__})"
        text = str(cause).strip()
        if text:
            detail += f": {text.splitlines()[0]}"
    return detail[:300]


def status_history(txn: Any) -> list[Any]:
    return list(getattr(txn, "status_history", None) or [])


def voided_after_capture(txn: Any) -> bool:
    """A sale voided after it was submitted for settlement: a full refund done by void (money never moved)."""
    if getattr(txn, "status", None) != "voided":
        return False
    return any(getattr(h, "status", None) == "submitted_for_settlement" for h in status_history(txn))


def refund_status(txn: Any) -> str:
    """A credit's status in the port's refund words (``succeeded``, ``pending``, ``failed``)."""
    status = getattr(txn, "status", None)
    if status == "settled":
        return "succeeded"
    if status in CAPTURED_STATUSES:
        return "pending"
    return "failed" if status in DECLINED_STATUSES | RELEASED_STATUSES else str(status)


def capture_of(txn: Any) -> PspCapture:
    return PspCapture(
        payment_id=getattr(txn, "order_id", None),
        psp_reference=str(txn.id),
        amount=amount_of(txn) or 0,
        currency=currency_of(txn) or "",
    )


def refund_of(credit: Any, parent_order_id: str | None) -> PspRefund:
    """A credit as a refund; its ``order_id`` is our refund id when it is not the sale's (Braintree copies
    the sale's order id to a refund that names none)."""
    own = getattr(credit, "order_id", None)
    return PspRefund(
        refund_id=own if own and own != parent_order_id else None,
        psp_reference=str(credit.id),
        amount=amount_of(credit) or 0,
        status=refund_status(credit),
    )


def void_refund_of(sale: Any) -> PspRefund:
    """A sale voided after capture, as the full refund it stands for (referenced by the sale's id)."""
    return PspRefund(
        refund_id=None, psp_reference=str(sale.id), amount=amount_of(sale) or 0, status="succeeded"
    )


# -- webhooks (pure) ------


class InvalidWebhook(PspError):
    """A webhook Braintree did not sign with our keys, or that is no notification."""


@dataclass(frozen=True)
class BraintreeNotification:
    """What payray reads of a verified notification: its kind and the sale or dispute it is about."""

    kind: str
    timestamp: datetime | None
    transaction_id: str | None
    order_id: str | None  # payray's payment id, on a sale payray made
    status: str | None
    amount: int | None
    currency: str | None
    dispute_id: str | None = None
    dispute_reason: str | None = None


def notification_of(notification: Any) -> BraintreeNotification:
    """The notification's subject: a transaction, or a dispute and the transaction it disputes."""
    kind = str(getattr(notification, "kind", "") or "")
    stamp = getattr(notification, "timestamp", None)
    dispute = getattr(notification, "dispute", None)
    if dispute is not None:
        sale = getattr(dispute, "transaction", None)
        currency = str(getattr(dispute, "currency_iso_code", "") or "usd").lower()
        raw = getattr(dispute, "amount_disputed", None) or getattr(dispute, "amount", None)
        return BraintreeNotification(
            kind,
            stamp,
            getattr(sale, "id", None),
            getattr(sale, "order_id", None),
            getattr(dispute, "status", None),
            None if raw is None else minor_amount(raw, currency),
            currency,
            dispute_id=getattr(dispute, "id", None),
            dispute_reason=getattr(dispute, "reason", None),
        )
    txn = getattr(notification, "transaction", None)
    return BraintreeNotification(
        kind,
        stamp,
        getattr(txn, "id", None),
        getattr(txn, "order_id", None),
        getattr(txn, "status", None),
        amount_of(txn) if txn is not None else None,
        currency_of(txn) if txn is not None else None,
    )


# -- the environment and its TLS ------


def newest_first(txns: Iterable[Any]) -> list[Any]:
    return sorted(txns, key=lambda t: (getattr(t, "created_at", None) or datetime.min, t.id), reverse=True)


def utc_text(moment: datetime) -> str:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def entered_at(txn: Any, status: str) -> datetime | None:
    """When ``txn`` last entered ``status``, from its status history."""
    moments = [h.timestamp for h in status_history(txn) if getattr(h, "status", None) == status]
    return moments[-1] if moments else None
