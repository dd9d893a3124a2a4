"""The PSP port: what the payment service needs from a payment service provider, and nothing more.

The service only ever learns one of three outcomes. ``unknown`` is a first-class answer (timeouts, 5xx after
retries, lost replies) because treating it as either success or failure is how payments get lost or doubled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal, Protocol

#: ``authorized``: held, waiting for a capture (``capture_method=manual``); ``canceled``: an authorization
#: released without a capture.
PspStatus = Literal["captured", "declined", "unknown", "authorized", "canceled"]


class PspError(Exception):
    """Root of the errors a PSP adapter raises; PSP-side outcomes are results, never these."""


class PspConfigurationError(PspError):
    """Our side is misconfigured or buggy (bad API key, reused idempotency key): retrying will not help."""


@dataclass(frozen=True)
class PspChargeResult:
    status: PspStatus
    psp_reference: str | None = None
    charge_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    detail: str | None = None
    #: set when the PSP provably did not act on the request: ``not_sent``, it never left (the connection or
    #: its TLS failed first); ``refused``, the PSP refused the request itself (a 4xx that is no decline).
    #: Only these, and declines another acquirer may approve, let a payment try another PSP.
    refusal: Literal["not_sent", "refused"] | None = None


@dataclass(frozen=True)
class PspRefundResult:
    """``refunded``, ``failed`` (the PSP said no: nothing moved), or ``unknown`` (retry with the same key)."""

    status: Literal["refunded", "failed", "unknown"]
    refund_reference: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class PspCapture:
    """One captured charge at the PSP, as the invariant checks and reconciliation see it."""

    payment_id: str | None
    psp_reference: str
    amount: int
    currency: str


@dataclass(frozen=True)
class PspRefund:
    """A refund at the PSP; ``refund_id`` is ours when payray asked for it, None if made without us."""

    refund_id: str | None
    psp_reference: str
    amount: int
    status: str


class PaymentServiceProvider(Protocol):
    async def capture(
        self,
        *,
        payment_id: str,
        amount: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        metadata: dict[str, str],
        description: str | None = None,
        customer: str | None = None,
        capture_method: Literal["automatic", "manual"] = "automatic",
    ) -> PspChargeResult:
        """Charge and capture at once (``manual``: authorize only, answering ``authorized``); never raises for
        PSP-side outcomes (declines, timeouts, 5xx)."""
        ...

    async def capture_authorized(
        self, *, payment_id: str, psp_reference: str, amount: int, idempotency_key: str
    ) -> PspChargeResult:
        """Capture ``amount`` of an authorization, releasing the rest: ``captured`` (``amount`` is what the
        PSP captured), ``canceled`` (the authorization is gone: canceled or expired at the PSP) or
        ``unknown``."""
        ...

    async def cancel_authorization(
        self, *, payment_id: str, psp_reference: str, idempotency_key: str, reason: str | None = None
    ) -> PspChargeResult:
        """Release an authorization: ``canceled``, ``captured`` (too late: it was captured) or ``unknown``."""
        ...

    async def lookup(self, *, payment_id: str) -> PspChargeResult | None:
        """The PSP's charge for our payment (found by metadata ``payray_payment_id``); None if never seen."""
        ...

    async def aclose(self) -> None: ...

    async def refund(
        self,
        *,
        payment_id: str,
        psp_reference: str,
        amount: int,
        idempotency_key: str,
        refund_id: str | None = None,
    ) -> PspRefundResult:
        """Refund (part of) a captured charge; never raises for PSP-side outcomes. ``refund_id`` (our refund,
        if this is one) rides in the PSP refund's metadata."""
        ...

    def list_refunds(self) -> AsyncIterator[PspRefund]:
        """Every refund the PSP holds, ours or not, newest first, a page at a time."""
        ...

    async def refunds_for(self, *, psp_reference: str) -> list[PspRefund]:
        """Every refund of one charge (by its PaymentIntent), ours or not."""
        ...

    def list_captures(self) -> AsyncIterator[PspCapture]:
        """Every captured charge the PSP holds for us, newest first, a page at a time."""
        ...

    async def ping(self) -> bool:
        """Whether the PSP answers an authenticated request now."""
        ...

    def takes(self, currency: str) -> bool:
        """Whether this account can charge in ``currency`` at all (routing skips a PSP that cannot)."""
        ...

    def settlement_report(self, day: date, columns: Sequence[str]) -> SettlementReport:
        """The PSP's itemized balance-change report for one UTC day, with ``columns`` in that order."""
        ...


class SettlementReport(Protocol):
    """A report to stream: ``chunks()`` asks the PSP for it and yields its CSV bytes as they arrive."""

    @property
    def reference(self) -> str | None:
        """The PSP's id for the report, once asked for."""
        ...

    def chunks(self) -> AsyncIterator[bytes]: ...
