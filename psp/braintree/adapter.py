"""The PSP port over Braintree's official ``braintree`` SDK (Braintree, or the emulator by base URL).

The SDK is synchronous (requests) and retries nothing, so every call runs in a worker thread and whatever does
not come back as an answer (a timeout, a dropped connection, a 5xx, a 429) is ``unknown``. Recovery resolves
it at Braintree: the same ``api_request_key`` (payray's attempt id) replays the first answer, and a search by
``order_id`` (payray's payment id) finds the sale. Mapping Braintree's answers to the port's outcomes is pure
(``mapping.py``), reaching Braintree with verified TLS is ``transport.py``, the day's report ``report.py``;
this class only does the calls.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, TypeVar

import braintree
from braintree.exceptions import (
    NotFoundError,
)

from psp.braintree.mapping import (
    CANNOT_REFUND_UNLESS_SETTLED,
    CAPTURED_STATUSES,
    DEFAULT_FEE_BPS,
    DEFAULT_FIXED_FEE,
    DEFAULT_MERCHANT_ACCOUNTS,
    RELEASED_STATUSES,
    SEARCH_BATCH,
    SETTLED_AT_MARGIN,
    VOIDABLE_STATUSES,
    BraintreeNotification,
    InvalidWebhook,
    Refusal,
    amount_of,
    capture_of,
    check_key_misuse,
    currency_of,
    decimal_amount,
    never_sent,
    newest_first,
    notification_of,
    raise_if_ours,
    refund_of,
    refusal_of,
    refused_sale,
    result_from_transaction,
    unknown_detail,
    void_refund_of,
    voided_after_capture,
)
from psp.braintree.report import BraintreeSettlementReport
from psp.braintree.transport import VerifyingHttp, environment_of, environment_ssl_context
from psp.port import (
    PspCapture,
    PspChargeResult,
    PspConfigurationError,
    PspError,
    PspRefund,
    PspRefundResult,
)

T = TypeVar("T")
log = logging.getLogger(__name__)


class BraintreePsp:
    """``PaymentServiceProvider`` over Braintree's transactions.

    ``api_request_key`` is payray's attempt id (the idempotency key) and ``order_id`` its payment id; a
    refund's ``order_id`` is payray's refund id. Metadata, description and customer have no place in a
    Braintree sale without control-panel setup (custom fields, vault customers) and are not sent.
    """

    def __init__(
        self,
        merchant_id: str,
        public_key: str,
        private_key: str,
        environment: str,
        timeout_s: float = 10.0,
        ca_bundle: str | None = None,
        merchant_accounts: Mapping[str, str | None] | None = None,
        fee_bps: int = DEFAULT_FEE_BPS,
        fixed_fee: int = DEFAULT_FIXED_FEE,
    ) -> None:
        env = environment_of(environment)
        strategy = functools.partial(VerifyingHttp, ssl_context=environment_ssl_context(env, ca_bundle))
        self._config = braintree.Configuration(
            env,
            merchant_id,
            public_key,
            private_key,
            timeout=timeout_s,
            wrap_http_exceptions=True,
            http_strategy=strategy,
        )
        self._gateway: Any = braintree.BraintreeGateway(self._config)
        self._accounts = {k.lower(): v for k, v in (merchant_accounts or DEFAULT_MERCHANT_ACCOUNTS).items()}
        self._fee_bps = fee_bps
        self._fixed_fee = fixed_fee

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

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
        cur = currency.lower()
        if cur not in self._accounts:
            return PspChargeResult(
                "declined",
                amount=amount,
                currency=cur,
                failure_code="currency_not_supported",
                failure_message=f"No Braintree merchant account settles {cur.upper()}.",
                refusal="not_sent",
            )
        params: dict[str, Any] = {
            "amount": decimal_amount(amount, cur),
            "payment_method_nonce": payment_method,
            "order_id": payment_id,
            "options": {"submit_for_settlement": capture_method == "automatic"},
            "api_request_key": idempotency_key,
        }
        if (account := self._accounts[cur]) is not None:
            params["merchant_account_id"] = account
        try:
            result = await self._call(self._gateway.transaction.sale, params)
        except Exception as exc:
            # whatever broke after the request left, the sale may exist: recovery must look it up
            raise_if_ours(exc, "capture")
            log.warning("PSP capture outcome unknown for payment %s: %r", payment_id, exc)
            refusal: Literal["not_sent"] | None = "not_sent" if never_sent(exc) else None
            return PspChargeResult("unknown", detail=unknown_detail(exc, "capture"), refusal=refusal)
        if result.is_success or result.transaction is not None:
            return result_from_transaction(result.transaction)
        return refused_sale(refusal_of(result), amount, cur)

    async def capture_authorized(
        self, *, payment_id: str, psp_reference: str, amount: int, idempotency_key: str
    ) -> PspChargeResult:
        try:
            found = await self._call(self._gateway.transaction.find, psp_reference)
            params = {"api_request_key": idempotency_key}
            amount_text = decimal_amount(amount, currency_of(found) or "usd")
            submit = self._gateway.transaction.submit_for_settlement
            result = await self._call(submit, psp_reference, amount_text, params)
        except Exception as exc:
            return self._authorization_unknown(exc, "capture of authorization", payment_id)
        if result.is_success:
            return result_from_transaction(result.transaction)
        refusal = refusal_of(result)
        if (misuse := check_key_misuse(refusal, "capture of authorization")) is not None:
            return misuse
        # not capturable (any more): the transaction says whether it was captured before or let go
        return await self._settled_authorization(payment_id, psp_reference, refusal)

    async def cancel_authorization(
        self, *, payment_id: str, psp_reference: str, idempotency_key: str, reason: str | None = None
    ) -> PspChargeResult:
        """Voids only an authorization: Braintree would also void a submitted sale, undoing a capture that
        payray may have booked, so a sale already captured is answered ``captured`` and left alone."""
        try:
            found = await self._call(self._gateway.transaction.find, psp_reference)
            if getattr(found, "status", None) != "authorized":
                return self._released_or_captured(found, psp_reference, None)
            result = await self._call(
                self._gateway.transaction.void, psp_reference, {"api_request_key": idempotency_key}
            )
        except Exception as exc:
            return self._authorization_unknown(exc, "cancel of authorization", payment_id)
        if result.is_success:
            return PspChargeResult(
                "canceled", psp_reference=psp_reference, currency=currency_of(result.transaction)
            )
        refusal = refusal_of(result)
        if (misuse := check_key_misuse(refusal, "cancel of authorization")) is not None:
            return misuse
        return await self._settled_authorization(payment_id, psp_reference, refusal)

    async def _settled_authorization(
        self, payment_id: str, psp_reference: str, refused: Refusal
    ) -> PspChargeResult:
        """What became of an authorization Braintree refused to capture or void: asked again by its id."""
        try:
            txn = await self._call(self._gateway.transaction.find, psp_reference)
        except Exception as exc:
            return self._authorization_unknown(exc, "find of authorization", payment_id)
        return self._released_or_captured(txn, psp_reference, refused)

    @staticmethod
    def _released_or_captured(txn: Any, psp_reference: str, refused: Refusal | None) -> PspChargeResult:
        status = getattr(txn, "status", None)
        if status in RELEASED_STATUSES:
            return PspChargeResult("canceled", psp_reference=psp_reference, currency=currency_of(txn))
        if status in CAPTURED_STATUSES:
            return result_from_transaction(txn)
        why = f"refused ({refused.describe()}) " if refused else ""
        return PspChargeResult("unknown", psp_reference=psp_reference, detail=f"{why}while {status}"[:300])

    @staticmethod
    def _authorization_unknown(exc: Exception, what: str, payment_id: str) -> PspChargeResult:
        raise_if_ours(exc, what)
        log.warning("PSP %s outcome unknown for payment %s: %r", what, payment_id, exc)
        return PspChargeResult("unknown", detail=unknown_detail(exc, what))

    async def lookup(self, *, payment_id: str) -> PspChargeResult | None:
        """Search by ``order_id``; several sales for one payment (a declined attempt, then another) → the
        captured one wins, then one whose outcome is unknown, then the newest."""
        search = braintree.TransactionSearch
        try:
            sales = await self._collect(
                search.order_id == payment_id, search.type == braintree.Transaction.Type.Sale
            )
        except Exception as exc:
            raise_if_ours(exc, "lookup")
            return PspChargeResult("unknown", detail=unknown_detail(exc, "lookup"))
        # the order id is matched exactly here too: a search backend may be looser than ``is``
        sales = [t for t in sales if getattr(t, "order_id", None) == payment_id]
        if not sales:
            return None
        results = [result_from_transaction(t) for t in newest_first(sales)]
        for wanted in ("captured", "unknown"):
            for result in results:
                if result.status == wanted:
                    return result
        return results[0]

    async def refund(
        self,
        *,
        payment_id: str,
        psp_reference: str,
        amount: int,
        idempotency_key: str,
        refund_id: str | None = None,
    ) -> PspRefundResult:
        """A credit against a settled sale. An unsettled sale cannot be refunded (91506): a full refund
        voids it instead (the money never moved); a partial one fails."""
        try:
            sale = await self._call(self._gateway.transaction.find, psp_reference)
            cur = currency_of(sale) or "usd"
            params: dict[str, Any] = {
                "amount": decimal_amount(amount, cur),
                "api_request_key": idempotency_key,
            }
            if refund_id is not None:
                params["order_id"] = refund_id
            result = await self._call(self._gateway.transaction.refund, psp_reference, params)
            if result.is_success:
                return PspRefundResult("refunded", refund_reference=result.transaction.id)
            refusal = refusal_of(result)
            if (misuse := check_key_misuse(refusal, "refund")) is not None:
                return PspRefundResult("unknown", detail=misuse.detail)
            if refusal.code == CANNOT_REFUND_UNLESS_SETTLED:
                return await self._refund_by_void(sale, amount, idempotency_key, refusal)
            return PspRefundResult("failed", detail=refusal.describe())
        except NotFoundError:
            return PspRefundResult("failed", detail=f"refund: no transaction {psp_reference} at the PSP")
        except PspConfigurationError:
            raise
        except Exception as exc:
            raise_if_ours(exc, "refund")
            log.warning("PSP refund outcome unknown for payment %s: %r", payment_id, exc)
            return PspRefundResult("unknown", detail=unknown_detail(exc, "refund"))

    async def _refund_by_void(
        self, sale: Any, amount: int, idempotency_key: str, refused: Refusal
    ) -> PspRefundResult:
        """The full amount of an unsettled sale comes back by voiding it; the void's key is derived from the
        refund's so that a retried refund replays it (a key names one request, and the refund took it)."""
        current = await self._call(self._gateway.transaction.find, sale.id)
        if voided_after_capture(current) and amount_of(current) == amount:
            return PspRefundResult("refunded", refund_reference=str(current.id))
        if getattr(current, "status", None) not in VOIDABLE_STATUSES:
            return PspRefundResult("failed", detail=f"{refused.describe()} (status {current.status})"[:300])
        if amount_of(current) != amount:
            return PspRefundResult(
                "failed", detail=f"{refused.describe()}: a partial refund must wait for settlement"[:300]
            )
        result = await self._call(
            self._gateway.transaction.void, current.id, {"api_request_key": f"{idempotency_key}-void"}
        )
        if result.is_success:
            return PspRefundResult("refunded", refund_reference=str(result.transaction.id))
        refusal = refusal_of(result)
        if (misuse := check_key_misuse(refusal, "refund by void")) is not None:
            return PspRefundResult("unknown", detail=misuse.detail)
        return PspRefundResult("failed", detail=f"void instead of refund: {refusal.describe()}"[:300])

    async def list_captures(self) -> AsyncIterator[PspCapture]:
        """Captured sales, and sales voided after capture (their refund by void is in ``list_refunds``)."""
        search = braintree.TransactionSearch
        statuses = sorted(CAPTURED_STATUSES | {"voided"})
        criteria = (search.type == braintree.Transaction.Type.Sale, search.status.in_list(statuses))
        async for txn in self._search(*criteria):
            if txn.status in CAPTURED_STATUSES or voided_after_capture(txn):
                yield capture_of(txn)

    async def list_refunds(self) -> AsyncIterator[PspRefund]:
        search = braintree.TransactionSearch
        credits = self._search(search.type == braintree.Transaction.Type.Credit)
        async for refund in self._refunds_of(credits):
            yield refund
        voided = self._search(
            search.type == braintree.Transaction.Type.Sale,
            search.status == braintree.Transaction.Status.Voided,
        )
        async for txn in voided:
            if voided_after_capture(txn):
                yield void_refund_of(txn)

    async def refunds_for(self, *, psp_reference: str) -> list[PspRefund]:
        sale = await self._call(self._gateway.transaction.find, psp_reference)
        if voided_after_capture(sale):
            return [void_refund_of(sale)]
        refund_ids = list(getattr(sale, "refund_ids", None) or [])
        if not refund_ids:
            return []
        credits = await self._collect(braintree.TransactionSearch.ids.in_list(refund_ids))
        parent_order = getattr(sale, "order_id", None)
        # the sale lists its refunds in the order they were made
        order = {refund_id: i for i, refund_id in enumerate(refund_ids)}
        newest_first = sorted(credits, key=lambda c: order.get(c.id, -1), reverse=True)
        return [refund_of(c, parent_order) for c in newest_first]

    async def _refunds_of(self, credits: AsyncIterator[Any]) -> AsyncIterator[PspRefund]:
        """Credits as refunds, a batch at a time: each batch's sales are fetched for their order ids."""
        batch: list[Any] = []
        async for credit in credits:
            batch.append(credit)
            if len(batch) == SEARCH_BATCH:
                for refund in await self._with_parents(batch):
                    yield refund
                batch = []
        for refund in await self._with_parents(batch):
            yield refund

    async def _with_parents(self, credits: list[Any]) -> list[PspRefund]:
        parents = await self._by_id({c.refunded_transaction_id for c in credits if c.refunded_transaction_id})
        return [
            refund_of(c, getattr(parents.get(c.refunded_transaction_id), "order_id", None)) for c in credits
        ]

    async def _by_id(self, ids: Iterable[str]) -> dict[str, Any]:
        wanted = sorted(ids)
        if not wanted:
            return {}
        found = await self._collect(braintree.TransactionSearch.ids.in_list(wanted))
        return {t.id: t for t in found}

    async def _search(self, *criteria: Any) -> AsyncIterator[Any]:
        """Matching transactions in Braintree's order (newest first), fetched a batch per worker call."""
        collection = await self._call(self._gateway.transaction.search, list(criteria))
        items: Iterator[Any] = iter(collection.items)
        while True:
            batch = await self._call(lambda: list(itertools.islice(items, SEARCH_BATCH)))
            if not batch:
                return
            for txn in batch:
                yield txn

    async def _collect(self, *criteria: Any) -> list[Any]:
        return [txn async for txn in self._search(*criteria)]

    def takes(self, currency: str) -> bool:
        """Braintree charges a currency only through a merchant account that settles it."""
        return currency.lower() in self._accounts

    async def ping(self) -> bool:
        """An authenticated find of a transaction that does not exist: a 404 is Braintree answering."""
        try:
            await self._call(self._gateway.transaction.find, "payrayping")
        except NotFoundError:
            return True
        except Exception:
            return False
        return True

    def parse_webhook(self, signature: str, payload: str) -> BraintreeNotification:
        """A webhook Braintree signed with this merchant's keys, as the SDK verifies it; raises
        ``InvalidWebhook`` for one it did not sign (or that is not a notification at all)."""
        try:
            notification = self._gateway.webhook_notification.parse(signature, payload)
        except Exception as exc:  # untrusted input: whatever the SDK cannot verify and read is refused
            raise InvalidWebhook(
                f"not a notification this merchant's keys signed: {type(exc).__name__}"
            ) from exc
        return notification_of(notification)

    async def aclose(self) -> None:
        await self._call(self._config.close)

    def settlement_report(self, day: date, columns: Sequence[str]) -> BraintreeSettlementReport:
        return BraintreeSettlementReport(self, day, columns)

    # -- the settlement report's reads ------

    async def settled_in_batch(self, day: date) -> tuple[list[Any], dict[str, Any], list[dict[str, str]]]:
        """The transactions of ``day``'s settlement batches, the sales their credits refund, and the batch
        summary's records (what Braintree says those batches hold)."""
        summary = await self._call(self._gateway.settlement_batch_summary.generate, day.isoformat())
        if not summary.is_success:
            raise PspError(f"settlement batch summary for {day}: {refusal_of(summary).describe()}")
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        search = braintree.TransactionSearch
        found = await self._collect(
            search.settled_at.between(
                start - SETTLED_AT_MARGIN, start + timedelta(days=1) + SETTLED_AT_MARGIN
            )
        )
        batch_prefix = f"{day.isoformat()}_"
        settled = [
            t for t in found if str(getattr(t, "settlement_batch_id", None) or "").startswith(batch_prefix)
        ]
        parents = await self._by_id(
            {t.refunded_transaction_id for t in settled if getattr(t, "refunded_transaction_id", None)}
        )
        records = list(summary.settlement_batch_summary.records)
        return settled, parents, records

    def fee(self, txn: Any) -> int:
        if getattr(txn, "type", None) != "sale":
            return 0
        amount = amount_of(txn) or 0
        return min(amount, (amount * self._fee_bps + 5_000) // 10_000 + self._fixed_fee)
