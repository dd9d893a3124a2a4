"""The PSP port implemented with the real ``stripe`` SDK's async client (Stripe, or the emulator by base URL).

The SDK already retries connection errors, 409 and 5xx with backoff, re-sending the same Idempotency-Key; this
adapter only turns what remains into one of the port's three outcomes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import aiohttp
import stripe

from psp.port import (
    PspCapture,
    PspChargeResult,
    PspConfigurationError,
    PspError,
    PspRefund,
    PspRefundResult,
)
from psp.tls_trust import outbound_ssl_context

log = logging.getLogger(__name__)

PAYMENT_ID_KEY = "payray_payment_id"
REFUND_ID_KEY = "payray_refund_id"
LIST_FALLBACK_LIMIT = 1_000
REPORT_TYPE = "balance_change_from_activity.itemized.3"
REPORT_WAIT_S = 600.0
DOWNLOAD_CHUNK = 1 << 20


def _failure_code(code: str | None, decline_code: str | None) -> str | None:
    """The issuer's reason when it says more than ``card_declined`` (``generic_decline`` does not)."""
    if code in (None, "card_declined") and decline_code and decline_code != "generic_decline":
        return decline_code
    return code or decline_code


def _get(obj: Any, name: str) -> Any:
    """Field access that works on StripeObjects, plain dicts and None alike."""
    if obj is None:
        return None
    try:
        return obj[name]
    except (KeyError, TypeError):
        return getattr(obj, name, None)


def _id_of(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    found = _get(value, "id")
    return found if isinstance(found, str) else None


def result_from_intent(intent: Any) -> PspChargeResult:
    """Map a PaymentIntent to the port's outcome (used after a create and by ``lookup``)."""
    status = _get(intent, "status")
    common: dict[str, Any] = {
        "psp_reference": _get(intent, "id"),
        "charge_id": _id_of(_get(intent, "latest_charge")),
        "currency": _get(intent, "currency"),
    }
    if status == "succeeded":
        return PspChargeResult("captured", amount=_get(intent, "amount_received"), **common)
    if status == "requires_capture":
        return PspChargeResult("authorized", amount=_get(intent, "amount_capturable"), **common)
    error = _get(intent, "last_payment_error")
    amount = _get(intent, "amount")
    if status == "requires_action":
        return PspChargeResult(
            "declined",
            amount=amount,
            failure_code="authentication_required",
            failure_message="The card requires authentication, which this integration does not support.",
            **common,
        )
    if status in ("requires_payment_method", "requires_confirmation", "canceled"):
        code = _failure_code(_get(error, "code"), _get(error, "decline_code"))
        return PspChargeResult(
            "declined",
            amount=amount,
            failure_code=code or ("canceled" if status == "canceled" else "payment_incomplete"),
            failure_message=_get(error, "message") or f"PaymentIntent status is {status}",
            **common,
        )
    return PspChargeResult("unknown", amount=amount, detail=f"PaymentIntent status is {status}", **common)


def _unknown(exc: stripe.StripeError, what: str) -> PspChargeResult:
    status = exc.http_status
    detail = f"{what}: {type(exc).__name__}" + (f" (HTTP {status})" if status else "")
    if exc.__cause__ is not None:  # what the connection failed on: a refusal, a timeout, a bad certificate
        detail += f" ({type(exc.__cause__).__name__})"
    if exc.user_message:
        detail += f": {exc.user_message.splitlines()[0][:200]}"
    return PspChargeResult("unknown", detail=detail)


@dataclass
class _Reach:
    """How far the requests of one PSP call got: ``refused`` failed to connect (nothing was sent), the
    ``connected`` ones may have reached the PSP."""

    refused: int = 0
    connected: int = 0


#: The call being made in this task (``StripePsp.capture`` sets it; the HTTP client counts into it).
_REACH: ContextVar[_Reach | None] = ContextVar("payray_stripe_reach", default=None)


#: Told of every HTTP request to the PSP: its seconds to the response's headers, and the response's status
#: (``None``: no answer).
ObserveCall = Callable[[float, int | None], None]


class VerifyingHttpClient(stripe.AIOHTTPClient):
    """The SDK's aiohttp client, verifying the PSP's certificate against ``ssl_context`` (the SDK's own
    session trusts only the CAs it ships, and takes no context of ours)."""

    def __init__(self, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ssl_context = ssl_context

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> tuple[Any, dict[str, Any]]:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        # per request: the SDK builds its session lazily, inside the event loop a connector needs
        kwargs["ssl"] = self._ssl_context
        return args, kwargs

    async def request_stream_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> Any:
        """Each request, counted in the call's ``_Reach``: one that failed to connect (refused, unresolvable,
        or its TLS handshake failed) sent nothing."""
        reach = _REACH.get()
        try:
            answer = await super().request_stream_async(method, url, headers, post_data=post_data)
        except stripe.APIConnectionError as exc:
            if reach is not None:
                if isinstance(exc.__cause__, aiohttp.ClientConnectorError):
                    reach.refused += 1
                else:
                    reach.connected += 1
            raise
        except BaseException:
            if reach is not None:
                reach.connected += 1
            raise
        if reach is not None:
            reach.connected += 1
        return answer


class ObservedHttpClient(VerifyingHttpClient):
    """The verifying client, telling ``observe`` of each request it sends (every retry is one)."""

    def __init__(self, observe: ObserveCall, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(ssl_context, **kwargs)
        self._observe = observe

    async def request_stream_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> Any:
        started = time.perf_counter()
        try:
            answer = await super().request_stream_async(method, url, headers, post_data=post_data)
        except BaseException:
            self._observe(time.perf_counter() - started, None)
            raise
        self._observe(time.perf_counter() - started, answer[1])
        return answer


class StripePsp:
    """``PaymentServiceProvider`` over Stripe's PaymentIntents API.

    The PSP's certificate is verified against the default CAs and those of ``ca_bundle`` (a PEM file). One
    that does not verify fails the connection before any request is sent and, as a refused connection, the
    outcome is ``unknown``: recovery asks again with the same idempotency key.
    """

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        timeout_s: float = 10.0,
        max_network_retries: int = 2,
        observe: ObserveCall | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        # aiohttp rather than httpx: charges ran 1.5x faster with it (bench/RESULTS.md).
        self._api_key = api_key
        self._ssl_context = outbound_ssl_context(ca_bundle)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http = (
            ObservedHttpClient(observe, self._ssl_context, timeout=timeout)
            if observe
            else VerifyingHttpClient(self._ssl_context, timeout=timeout)
        )
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=max_network_retries,
            http_client=self._http,
        )

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
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "confirm": True,
            "capture_method": capture_method,
            "metadata": {**metadata, PAYMENT_ID_KEY: payment_id},
        }
        if description is not None:
            params["description"] = description
        if customer is not None:
            params["customer"] = customer
        reached = _Reach()
        token = _REACH.set(reached)
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as exc:
            error = exc.error
            return PspChargeResult(
                "declined",
                psp_reference=_id_of(_get(error, "payment_intent")),
                charge_id=_id_of(_get(error, "charge")),
                amount=amount,
                currency=currency.lower(),
                failure_code=_failure_code(exc.code, _get(error, "decline_code")),
                failure_message=exc.user_message,
            )
        except stripe.InvalidRequestError as exc:
            return PspChargeResult(
                "declined",
                amount=amount,
                currency=currency.lower(),
                failure_code=exc.code or "invalid_request",
                failure_message=exc.user_message,
                refusal="refused",
            )
        except stripe.IdempotencyError as exc:
            raise PspConfigurationError(
                f"idempotency key reused with other parameters: {exc.user_message}"
            ) from exc
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise PspConfigurationError(f"the PSP refused our credentials: {exc.user_message}") from exc
        except stripe.StripeError as exc:
            log.warning("PSP capture outcome unknown for payment %s: %r", payment_id, exc)
            unknown = _unknown(exc, "capture")
            if isinstance(exc, stripe.APIConnectionError) and reached.connected == 0 and reached.refused:
                return dataclasses.replace(unknown, refusal="not_sent")  # no try got past connecting
            return unknown
        except Exception as exc:
            # Whatever broke after the request left, the charge may exist: recovery must look it up.
            log.exception("PSP capture failed unexpectedly for payment %s", payment_id)
            return PspChargeResult("unknown", detail=f"capture: {type(exc).__name__}: {exc}"[:300])
        finally:
            _REACH.reset(token)
        return result_from_intent(intent)

    async def capture_authorized(
        self, *, payment_id: str, psp_reference: str, amount: int, idempotency_key: str
    ) -> PspChargeResult:
        try:
            intent = await self._client.v1.payment_intents.capture_async(
                psp_reference,
                {"amount_to_capture": amount},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as exc:
            # Not capturable (any more): the intent says whether it was captured before or let go.
            return await self._settled_authorization(payment_id, psp_reference, exc)
        except stripe.StripeError as exc:
            return self._authorization_unknown(exc, "capture of authorization", payment_id)
        return result_from_intent(intent)

    async def cancel_authorization(
        self, *, payment_id: str, psp_reference: str, idempotency_key: str, reason: str | None = None
    ) -> PspChargeResult:
        params: dict[str, Any] = {"cancellation_reason": reason} if reason else {}
        try:
            intent = await self._client.v1.payment_intents.cancel_async(
                psp_reference,
                params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as exc:
            return await self._settled_authorization(payment_id, psp_reference, exc)
        except stripe.StripeError as exc:
            return self._authorization_unknown(exc, "cancel of authorization", payment_id)
        return PspChargeResult("canceled", psp_reference=psp_reference, currency=_get(intent, "currency"))

    async def _settled_authorization(
        self, payment_id: str, psp_reference: str, refused: stripe.InvalidRequestError
    ) -> PspChargeResult:
        """What became of an authorization the PSP refused to capture or cancel: asked again by its id."""
        try:
            intent = await self._client.v1.payment_intents.retrieve_async(psp_reference)
        except stripe.StripeError as exc:
            return self._authorization_unknown(exc, "retrieve of authorization", payment_id)
        status = _get(intent, "status")
        if status == "canceled":
            return PspChargeResult("canceled", psp_reference=psp_reference, currency=_get(intent, "currency"))
        if status == "succeeded":
            return result_from_intent(intent)
        detail = f"refused ({refused.code}) while {status}: {refused.user_message}"[:300]
        return PspChargeResult("unknown", psp_reference=psp_reference, detail=detail)

    @staticmethod
    def _authorization_unknown(exc: stripe.StripeError, what: str, payment_id: str) -> PspChargeResult:
        if isinstance(exc, (stripe.AuthenticationError, stripe.PermissionError)):
            raise PspConfigurationError(f"the PSP refused our credentials: {exc.user_message}") from exc
        if isinstance(exc, stripe.IdempotencyError):
            raise PspConfigurationError(f"{what}: key reused with other parameters") from exc
        log.warning("PSP %s outcome unknown for payment %s: %r", what, payment_id, exc)
        return _unknown(exc, what)

    async def lookup(self, *, payment_id: str) -> PspChargeResult | None:
        """Search by metadata; several intents for one payment (never expected) → the captured one wins."""
        escaped = payment_id.replace("\\", "\\\\").replace("'", "\\'")
        try:
            try:
                found = await self._client.v1.payment_intents.search_async(
                    {"query": f"metadata['{PAYMENT_ID_KEY}']:'{escaped}'", "limit": 100}
                )
                intents = list(found.data)
            except stripe.InvalidRequestError:
                intents = await self._scan_recent(payment_id)
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise PspConfigurationError(f"the PSP refused our credentials: {exc.user_message}") from exc
        except stripe.StripeError as exc:
            return _unknown(exc, "lookup")
        except Exception as exc:
            log.exception("PSP lookup failed unexpectedly for payment %s", payment_id)
            return PspChargeResult("unknown", detail=f"lookup: {type(exc).__name__}: {exc}"[:300])
        if not intents:
            return None
        results = [result_from_intent(i) for i in intents]
        for wanted in ("captured", "unknown"):
            for result in results:
                if result.status == wanted:
                    return result
        return results[0]

    async def _scan_recent(self, payment_id: str) -> list[Any]:
        """Where search is unavailable: the most recent intents, newest first, bounded."""
        matches: list[Any] = []
        seen = 0
        page = await self._client.v1.payment_intents.list_async({"limit": 100})
        while True:
            for intent in page.data:
                seen += 1
                if _get(_get(intent, "metadata"), PAYMENT_ID_KEY) == payment_id:
                    matches.append(intent)
            if not page.has_more or seen >= LIST_FALLBACK_LIMIT or not page.data:
                return matches
            page = await self._client.v1.payment_intents.list_async(
                {"limit": 100, "starting_after": page.data[-1].id}
            )

    async def refund(
        self,
        *,
        payment_id: str,
        psp_reference: str,
        amount: int,
        idempotency_key: str,
        refund_id: str | None = None,
    ) -> PspRefundResult:
        metadata = {PAYMENT_ID_KEY: payment_id, **({REFUND_ID_KEY: refund_id} if refund_id else {})}
        params = {"payment_intent": psp_reference, "amount": amount, "metadata": metadata}
        try:
            refund = await self._client.v1.refunds.create_async(
                params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        except (stripe.InvalidRequestError, stripe.CardError) as exc:
            return PspRefundResult("failed", detail=f"{exc.code}: {exc.user_message}"[:300])
        except stripe.IdempotencyError as exc:
            message = f"refund key reused with other parameters: {exc.user_message}"
            raise PspConfigurationError(message) from exc
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise PspConfigurationError(f"the PSP refused our credentials: {exc.user_message}") from exc
        except stripe.StripeError as exc:
            return PspRefundResult("unknown", detail=_unknown(exc, "refund").detail)
        except Exception as exc:
            log.exception("PSP refund failed unexpectedly for payment %s", payment_id)
            return PspRefundResult("unknown", detail=f"refund: {type(exc).__name__}: {exc}"[:300])
        if _get(refund, "status") in ("succeeded", "pending"):
            return PspRefundResult("refunded", refund_reference=_get(refund, "id"))
        status = _get(refund, "status")
        return PspRefundResult("failed", refund_reference=_get(refund, "id"), detail=f"status {status}")

    async def list_captures(self) -> AsyncIterator[PspCapture]:
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = await self._client.v1.payment_intents.list_async(params)  # type: ignore[arg-type]
            for intent in page.data:
                if _get(intent, "status") == "succeeded":
                    yield PspCapture(
                        payment_id=_get(_get(intent, "metadata"), PAYMENT_ID_KEY),
                        psp_reference=intent.id,
                        amount=int(_get(intent, "amount_received") or 0),
                        currency=str(_get(intent, "currency")),
                    )
            if not page.has_more or not page.data:
                return
            params = {"limit": 100, "starting_after": page.data[-1].id}

    async def list_refunds(self) -> AsyncIterator[PspRefund]:
        async for refund in self._refunds({"limit": 100}):
            yield refund

    async def refunds_for(self, *, psp_reference: str) -> list[PspRefund]:
        return [refund async for refund in self._refunds({"limit": 100, "payment_intent": psp_reference})]

    async def _refunds(self, params: dict[str, Any]) -> AsyncIterator[PspRefund]:
        while True:
            page = await self._client.v1.refunds.list_async(params)  # type: ignore[arg-type]
            for refund in page.data:
                refund_id = _get(_get(refund, "metadata"), REFUND_ID_KEY)
                yield PspRefund(
                    refund_id=str(refund_id) if refund_id else None,
                    psp_reference=refund.id,
                    amount=int(_get(refund, "amount") or 0),
                    status=str(_get(refund, "status")),
                )
            if not page.has_more or not page.data:
                return
            params = {**params, "starting_after": page.data[-1].id}

    def takes(self, currency: str) -> bool:
        """Stripe settles every currency payray supports into the account's balance."""
        return True

    async def ping(self) -> bool:
        try:
            await self._client.v1.payment_intents.list_async({"limit": 1})
        except Exception:
            return False
        return True

    async def aclose(self) -> None:
        await self._http.close_async()

    def settlement_report(self, day: date, columns: Sequence[str]) -> StripeSettlementReport:
        return StripeSettlementReport(self._client, self._api_key, day, columns, self._ssl_context)


class StripeSettlementReport:
    """A report run of Stripe's itemized balance-change report for one UTC day, streamed when it is ready.

    Stripe builds reports asynchronously: the run is created, polled until it succeeds, and its file is then
    downloaded (with the secret key) from the URL the run names, a megabyte at a time.
    """

    def __init__(
        self,
        client: stripe.StripeClient,
        api_key: str,
        day: date,
        columns: Sequence[str],
        ssl_context: ssl.SSLContext,
    ) -> None:
        self._client = client
        self._api_key = api_key
        self._ssl_context = ssl_context
        self._day = day
        self._columns = list(columns)
        self.reference: str | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        url = await self._ready_file_url()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        auth = {"Authorization": f"Bearer {self._api_key}"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=auth, ssl=self._ssl_context) as resp,
        ):
            if resp.status != 200:
                raise PspError(f"settlement report {self.reference}: download answered HTTP {resp.status}")
            async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK):
                yield chunk

    async def _ready_file_url(self) -> str:
        start = datetime(self._day.year, self._day.month, self._day.day, tzinfo=UTC)
        params: dict[str, Any] = {
            "report_type": REPORT_TYPE,
            "parameters": {
                "interval_start": int(start.timestamp()),
                "interval_end": int((start + timedelta(days=1)).timestamp()),
                "timezone": "UTC",
                "columns": self._columns,
            },
        }
        try:
            run = await self._client.v1.reporting.report_runs.create_async(params)  # type: ignore[arg-type]
            self.reference = run.id
            deadline, pause = time.monotonic() + REPORT_WAIT_S, 0.05
            while run.status == "pending":
                if time.monotonic() > deadline:
                    raise PspError(f"settlement report {run.id} still pending after {REPORT_WAIT_S:.0f} s")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                run = await self._client.v1.reporting.report_runs.retrieve_async(run.id)
        except stripe.StripeError as exc:
            raise PspError(f"settlement report for {self._day}: {exc.user_message or exc}") from exc
        if run.status != "succeeded" or run.result is None:
            raise PspError(f"settlement report {run.id} {run.status}: {_get(run, 'error')}")
        return str(run.result.url)
