"""The payment API: FastAPI routes inside a Ray Serve deployment.

``__init__`` only records configuration; clients (Postgres pool, Redis, PSP, actor handles) are built on the
first request inside the replica's event loop, so importing this module or constructing the deployment
does no IO.
"""

import asyncio
import datetime
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from psycopg import AsyncConnection
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledger import store as ledger_store
from ledger.reconcile import KINDS
from payray.errors import (
    ClientError,
    DependencyFailure,
    InvalidRequest,
    NotFound,
    PayrayError,
)
from payray.figures import ReplicaTotals
from payray.pages import Page, parse_page
from payray.routing import RoutingError, checked_priorities
from payray.settings import Settings
from serve_app.edge import dashboard
from serve_app.edge.auth import Authenticator
from serve_app.edge.bodies import parse_body, read_body
from serve_app.edge.conventions import StripeHeaders
from serve_app.edge.failures import ContainFailures
from serve_app.edge.metrics import ApiMetrics, ObserveRequests, install
from serve_app.edge.rate_limits import RateLimits, client_address
from serve_app.edge.responses import error_response, json_response
from serve_app.edge.urls import RefuseControlCharactersInUrls
from serve_app.flows.customers import customer_object
from serve_app.flows.dispute import dispute_object
from serve_app.flows.idempotent import Answer, check_idempotency_key
from serve_app.flows.invariants import check_invariants
from serve_app.flows.payout import payout_object
from serve_app.flows.reconciliation import discrepancy_object, run_object
from serve_app.flows.update import update_charge, update_refund
from serve_app.flows.webhook_endpoints import webhook_endpoint_object
from serve_app.parts import Parts
from serve_app.stores import attempts as attempts_db
from serve_app.stores import charges as db
from serve_app.stores import customers as customers_db
from serve_app.stores import events as events_db
from serve_app.stores import intents as intents_db
from serve_app.stores import merchants as merchants_db
from serve_app.stores import reconciliation as reconciliation_db
from serve_app.stores import refunds as refunds_db
from serve_app.stores import routing as routing_db
from serve_app.stores import webhook_endpoints as endpoints_db
from serve_app.stores.disputes import list_disputes, load_dispute
from serve_app.stores.payouts import list_payouts, load_payout
from serve_app.wire import objects as o
from serve_app.wire.merchant_events import event_object, event_query
from serve_app.wire.openapi import (
    ADMIN_KEY,
    CHARGE_OUTCOMES,
    INTENT_OUTCOMES,
    STRIPE_SIGNATURE,
    complete_schema,
    list_operation,
    operation,
    query,
)
from serve_app.wire.render import (
    charge_object,
    dumps,
    error_object,
    intent_object,
    list_object,
    refund_object,
)
from serve_app.wire.schemas import (
    BraintreeNotificationForm,
    ChargeCapture,
    ChargeCreate,
    ChargeUpdate,
    CustomerCreate,
    CustomerUpdate,
    DiscrepancyResolve,
    IntentCancel,
    IntentCapture,
    IntentConfirm,
    IntentCreate,
    IntentUpdate,
    MerchantCreate,
    PayoutCreate,
    PspRoutingSet,
    ReconciliationRunCreate,
    RecoverySweep,
    RefundCreate,
    RefundUpdate,
    WebhookEndpointCreate,
    WebhookEndpointUpdate,
    WebhookResend,
)
from serve_app.workers.monitor import ops_monitor, publish_replica_totals
from serve_app.workers.reconciliation import reconciliation_scheduler
from serve_app.workers.recovery import recovery_sweeper

api = FastAPI(
    title="payray",
    version="1",
    description="Idempotent payments in front of a PSP, with a double-entry ledger.",
)

# Outermost last: a URL with a control character never reaches a route; an unplanned error is contained;
# every answer, those two included, carries Request-Id and Stripe-Version, and is counted.
api.add_middleware(RefuseControlCharactersInUrls)
api.add_middleware(ContainFailures)
api.add_middleware(StripeHeaders)
api.add_middleware(ObserveRequests)
complete_schema(api)
log = logging.getLogger("payray.api")

#: ``load(conn, object_id, merchant_id)``: one of the merchant's objects, or None.
Loader = Callable[[AsyncConnection[Any], str, str], Awaitable[Any]]
#: ``find(conn, object_id)``: an object the caller may see, or None (missing, or not the caller's).
Finder = Callable[[AsyncConnection[Any], str], Awaitable[Any]]
#: ``page(conn, page)``: up to ``page.limit + 1`` of the objects the caller may see, newest first.
Pager = Callable[[AsyncConnection[Any], Page], Awaitable[list[Any]]]
#: ``page(conn, merchant_id, page)``: as a ``Pager``, of one merchant's objects.
MerchantPager = Callable[[AsyncConnection[Any], str, Page], Awaitable[list[Any]]]
#: ``check(conn, filters)``: validates a list's own filters before the page is read.
Check = Callable[[AsyncConnection[Any], dict[str, str]], Awaitable[None]]
Render = Callable[[Any], dict[str, Any]]


@api.exception_handler(PayrayError)
async def _payray_error(request: Request, exc: PayrayError) -> Response:
    return error_response(request, exc)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    param = str(first.get("loc", ["", ""])[-1]) or None
    return error_response(request, InvalidRequest(f"{param}: {first.get('msg', 'invalid')}", param=param))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 404:
        return error_response(
            request, NotFound(f"Unrecognized request URL ({request.method} {request.url.path}).")
        )
    error = ClientError(str(exc.detail))
    error.status = exc.status_code
    return error_response(request, error)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class PaymentApi:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ready = asyncio.Lock()
        self._built = False
        self.metrics = ApiMetrics()
        install(self.metrics)

    async def _build(self) -> None:
        if self._built:
            return
        async with self._ready:
            if self._built:
                return
            s = self._settings
            self.parts = await Parts.open(
                s,
                min_connections=2,
                max_connections=s.db_pool_size,
                on_transition=lambda t: self.metrics.transitions.labels(t.event.value, t.target.value).inc(),
                on_psp_call=self.metrics.observe_psp_call,
            )
            self.parts.build_api()
            self.limits = RateLimits.from_settings(self.parts.redis, s, self.metrics.registry)
            self.auth = Authenticator(s.admin_key, self._merchant_for_key, limits=self.limits)
            # The schedules run wherever the API does, also when deployed with serve_config.yaml alone.
            await recovery_sweeper(s)
            await reconciliation_scheduler(s)
            await ops_monitor(s)
            self._publishing = asyncio.get_running_loop().create_task(
                publish_replica_totals(self.parts.redis, self._totals)
            )
            self._built = True

    async def __del__(self) -> None:
        """Serve calls this when it stops the replica: the pool, Redis and the PSP's session close."""
        if self._built:
            self._publishing.cancel()
            await self.parts.aclose()

    def _totals(self) -> ReplicaTotals:
        """What this replica has counted, named by its Serve replica tag and its node."""
        try:
            replica = serve.get_replica_context().replica_tag
        except Exception:  # outside Serve (a test constructing the class): the process names it
            replica = f"process-{os.getpid()}"
        return self.metrics.totals(replica, ray.get_runtime_context().get_node_id(), time.time())

    async def _merchant_for_key(self, key: str) -> str | None:
        async with self.parts.pool.connection() as conn:
            return await merchants_db.merchant_for_key(conn, key)

    async def _merchant(self, request: Request) -> str:
        await self._build()
        return await self.auth.merchant(request.headers.get("authorization"), client_address(request))

    async def _admin(self, request: Request) -> None:
        await self._build()
        await self.auth.admin(request.headers.get("authorization"), client_address(request))

    async def _operator(self, request: Request) -> None:
        """The admin: by the ops page's session cookie, or by the key as ``_admin`` takes it."""
        await self._build()
        session = request.cookies.get(dashboard.COOKIE)
        if not dashboard.session_valid(session, self._settings.admin_key, time.time()):
            await self._admin(request)

    # -- the shapes every resource shares -------------------------------------------------------------------

    async def _money_post(
        self,
        request: Request,
        model: type[Any],
        create: Callable[[Parts], Callable[[str, str, Any], Awaitable[Answer]]],
    ) -> Response:
        """A POST that moves money: authenticated, keyed, validated, run behind the idempotency layers.

        ``create`` picks the service's create method from the parts, which authentication has built.
        """
        merchant_id = await self._merchant(request)
        key = check_idempotency_key(request.headers.get("idempotency-key"))
        body = parse_body(model, await read_body(request), request.headers.get("content-type"))
        answer = await create(self.parts)(merchant_id, key, body)
        headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
        if answer.replayed:
            self.metrics.replays.inc()
            await self.limits.give_back_key(merchant_id)
        return json_response(answer.status, answer.body, headers)

    async def _retrieve(
        self, request: Request, kind: str, object_id: str, load: Loader, render: Render
    ) -> Response:
        """One of the merchant's objects; another merchant's answers 404 like a missing one."""
        merchant_id = await self._merchant(request)

        async def find(conn: AsyncConnection[Any], object_id: str) -> Any:
            return await load(conn, object_id, merchant_id)

        return await self._one(kind, object_id, find, render)

    async def _list(
        self,
        request: Request,
        kind: str,
        url: str,
        load: Loader,
        page: MerchantPager,
        render: Render,
    ) -> Response:
        """A page of the merchant's objects, newest first, beside a cursor (one of them)."""
        merchant_id = await self._merchant(request)

        async def find(conn: AsyncConnection[Any], object_id: str) -> Any:
            return await load(conn, object_id, merchant_id)

        async def merchants_page(conn: AsyncConnection[Any], spec: Page) -> list[Any]:
            return await page(conn, merchant_id, spec)

        return await self._page(request, kind, url, find, merchants_page, render)

    async def _one(self, kind: str, object_id: str, find: Finder, render: Render) -> Response:
        """The object, rendered; one the caller may not see answers 404 like a missing one."""
        async with self.parts.pool.connection() as conn:
            found = await find(conn, object_id)
        if found is None:
            raise NotFound(f"No such {kind}: '{object_id}'", param="id")
        return json_response(200, dumps(render(found)))

    async def _page(
        self,
        request: Request,
        kind: str,
        url: str,
        find: Finder,
        page: Pager,
        render: Render,
        check: Check | None = None,
        *,
        own: frozenset[str] = frozenset(),
        stripes: bool = True,
    ) -> Response:
        """A page of the objects the caller may see, newest first, beside a cursor (one of them).

        ``own`` names the route's own filters, which ``check`` validates first, on the same connection;
        ``stripes``: the route takes ``ending_before`` and ``created`` too. Anything else is refused.
        """
        spec, filters = parse_page(request.query_params.multi_items(), own, stripes=stripes)
        async with self.parts.pool.connection() as conn:
            if check is not None:
                await check(conn, filters)
            cursor = spec.cursor
            if cursor is not None and await find(conn, cursor[1]) is None:
                raise NotFound(f"No such {kind}: '{cursor[1]}'", param=cursor[0])
            found, has_more = spec.trim(await page(conn, spec))
        return json_response(200, dumps(list_object(url, [render(item) for item in found], has_more)))

    # -- charges, refunds, balance, payouts, disputes -------------------------------------------------------

    @api.post("/v1/charges", **operation(o.Charge, body=ChargeCreate, money=True, extra=CHARGE_OUTCOMES))
    async def create_charge(self, request: Request) -> Response:
        return await self._money_post(request, ChargeCreate, lambda p: p.charges.create)

    @api.get("/v1/charges/{charge_id}", **operation(o.Charge))
    async def get_charge(self, charge_id: str, request: Request) -> Response:
        return await self._retrieve(request, "charge", charge_id, db.load_charge, charge_object)

    @api.get(
        "/v1/charges",
        **list_operation(o.ChargeList, query("customer", "Only the charges of this customer (cus_…)")),
    )
    async def list_charges(self, request: Request) -> Response:
        """A customer the merchant does not have filters every charge out, as Stripe's list does: no 404."""
        merchant_id = await self._merchant(request)

        async def find(conn: AsyncConnection[Any], charge_id: str) -> Any:
            return await db.load_charge(conn, charge_id, merchant_id)

        async def page(conn: AsyncConnection[Any], spec: Page) -> list[Any]:
            customer = request.query_params.get("customer")
            return await db.list_charges(conn, merchant_id, spec, customer=customer)

        url, own = "/v1/charges", frozenset({"customer"})
        return await self._page(request, "charge", url, find, page, charge_object, own=own)

    @api.post("/v1/charges/{charge_id}", **operation(o.Charge, body=ChargeUpdate))
    async def update_charge(self, charge_id: str, request: Request) -> Response:
        """Description and metadata (``metadata[k]=`` removes a key); no money moves."""
        merchant_id = await self._merchant(request)
        body = parse_body(ChargeUpdate, await read_body(request), request.headers.get("content-type"))
        updated = await update_charge(self.parts.pool, merchant_id, charge_id, body)
        return json_response(200, dumps(charge_object(updated)))

    @api.post("/v1/charges/{charge_id}/capture", **operation(o.Charge, body=ChargeCapture, money=True))
    async def capture_charge(self, charge_id: str, request: Request) -> Response:
        """Capture an authorization (``capture=false``) in full, or ``amount`` of it, releasing the rest."""
        return await self._money_post(
            request,
            ChargeCapture,
            lambda p: lambda merchant, key, body: p.charges.capture(merchant, charge_id, key, body.amount),
        )

    # -- payment intents -------------------------------------------------------------------------------------

    @api.post(
        "/v1/payment_intents",
        **operation(o.PaymentIntent, body=IntentCreate, money=True, extra=INTENT_OUTCOMES),
    )
    async def create_payment_intent(self, request: Request) -> Response:
        """A PaymentIntent; ``confirm=true`` also confirms it (its charge made and driven) in this request."""
        return await self._money_post(request, IntentCreate, lambda p: p.intents.create)

    @api.get("/v1/payment_intents/{intent_id}", **operation(o.PaymentIntent))
    async def get_payment_intent(self, intent_id: str, request: Request) -> Response:
        return await self._retrieve(
            request, "payment_intent", intent_id, intents_db.load_intent, intent_object
        )

    @api.get(
        "/v1/payment_intents",
        **list_operation(o.PaymentIntentList, query("customer", "Only the intents of this customer (cus_…)")),
    )
    async def list_payment_intents(self, request: Request) -> Response:
        merchant_id = await self._merchant(request)

        async def find(conn: AsyncConnection[Any], intent_id: str) -> Any:
            return await intents_db.load_intent(conn, intent_id, merchant_id)

        async def page(conn: AsyncConnection[Any], spec: Page) -> list[Any]:
            customer = request.query_params.get("customer")
            return await intents_db.list_intents(conn, merchant_id, spec, customer=customer)

        url, own = "/v1/payment_intents", frozenset({"customer"})
        return await self._page(request, "payment_intent", url, find, page, intent_object, own=own)

    @api.post("/v1/payment_intents/{intent_id}", **operation(o.PaymentIntent, body=IntentUpdate))
    async def update_payment_intent(self, intent_id: str, request: Request) -> Response:
        """What it charges before its confirmation; its description and metadata at any time."""
        merchant_id = await self._merchant(request)
        body = parse_body(IntentUpdate, await read_body(request), request.headers.get("content-type"))
        return json_response(200, dumps(await self.parts.intents.update(merchant_id, intent_id, body)))

    @api.post(
        "/v1/payment_intents/{intent_id}/confirm",
        **operation(o.PaymentIntent, body=IntentConfirm, money=True, extra=INTENT_OUTCOMES),
    )
    async def confirm_payment_intent(self, intent_id: str, request: Request) -> Response:
        return await self._money_post(
            request,
            IntentConfirm,
            lambda p: lambda merchant, key, body: p.intents.confirm(merchant, intent_id, key, body),
        )

    @api.post(
        "/v1/payment_intents/{intent_id}/capture",
        **operation(o.PaymentIntent, body=IntentCapture, money=True, extra=INTENT_OUTCOMES),
    )
    async def capture_payment_intent(self, intent_id: str, request: Request) -> Response:
        """Capture ``amount_to_capture`` (all by default) of an authorized intent; the rest is released."""
        return await self._money_post(
            request,
            IntentCapture,
            lambda p: lambda merchant, key, body: p.intents.capture(merchant, intent_id, key, body),
        )

    @api.post(
        "/v1/payment_intents/{intent_id}/cancel",
        **operation(o.PaymentIntent, body=IntentCancel, money=True, extra=INTENT_OUTCOMES),
    )
    async def cancel_payment_intent(self, intent_id: str, request: Request) -> Response:
        """Cancel it; an authorized intent's hold is released at the PSP and in the ledger."""
        return await self._money_post(
            request,
            IntentCancel,
            lambda p: lambda merchant, key, body: p.intents.cancel(merchant, intent_id, key, body),
        )

    @api.post("/v1/refunds", **operation(o.Refund, body=RefundCreate, money=True))
    async def create_refund(self, request: Request) -> Response:
        return await self._money_post(request, RefundCreate, lambda p: p.refunds.create)

    @api.get("/v1/refunds/{refund_id}", **operation(o.Refund))
    async def get_refund(self, refund_id: str, request: Request) -> Response:
        return await self._retrieve(request, "refund", refund_id, refunds_db.load_refund, refund_object)

    @api.post("/v1/refunds/{refund_id}", **operation(o.Refund, body=RefundUpdate))
    async def update_refund(self, refund_id: str, request: Request) -> Response:
        """Metadata (``metadata[k]=`` removes a key); no money moves."""
        merchant_id = await self._merchant(request)
        body = parse_body(RefundUpdate, await read_body(request), request.headers.get("content-type"))
        updated = await update_refund(self.parts.pool, merchant_id, refund_id, body)
        return json_response(200, dumps(refund_object(updated)))

    @api.get(
        "/v1/refunds",
        **list_operation(o.RefundList, query("charge", "Only the refunds of this charge (ch_…)")),
    )
    async def list_refunds(self, request: Request) -> Response:
        merchant_id = await self._merchant(request)

        async def find(conn: AsyncConnection[Any], refund_id: str) -> Any:
            return await refunds_db.load_refund(conn, refund_id, merchant_id)

        async def charge_known(conn: AsyncConnection[Any], filters: dict[str, str]) -> None:
            charge = filters.get("charge")  # a charge the merchant does not have is a 404, not an empty list
            if charge is not None and await db.load_charge(conn, charge, merchant_id) is None:
                raise NotFound(f"No such charge: '{charge}'", param="charge")

        async def page(conn: AsyncConnection[Any], spec: Page) -> list[Any]:
            charge = request.query_params.get("charge")
            return await refunds_db.list_refunds(conn, merchant_id, charge, spec)

        url, own = "/v1/refunds", frozenset({"charge"})
        return await self._page(request, "refund", url, find, page, refund_object, charge_known, own=own)

    @api.get("/v1/balance", **operation(o.Balance))
    async def balance(self, request: Request) -> Response:
        merchant_id = await self._merchant(request)
        balances = await self.parts.wallets.balances(merchant_id)
        available = [{"amount": amount, "currency": cur} for cur, amount in sorted(balances.items())]
        pending = [{"amount": 0, "currency": cur} for cur in sorted(balances)]
        body = {"object": "balance", "livemode": False, "available": available, "pending": pending}
        return json_response(200, dumps(body))

    @api.post("/v1/payouts", **operation(o.Payout, body=PayoutCreate, money=True))
    async def create_payout(self, request: Request) -> Response:
        return await self._money_post(request, PayoutCreate, lambda p: p.payouts.create)

    @api.get("/v1/payouts/{payout_id}", **operation(o.Payout))
    async def get_payout(self, payout_id: str, request: Request) -> Response:
        return await self._retrieve(request, "payout", payout_id, load_payout, payout_object)

    @api.get("/v1/payouts", **list_operation(o.PayoutList))
    async def list_payouts(self, request: Request) -> Response:
        return await self._list(request, "payout", "/v1/payouts", load_payout, list_payouts, payout_object)

    @api.get("/v1/disputes/{dispute_id}", **operation(o.Dispute))
    async def get_dispute(self, dispute_id: str, request: Request) -> Response:
        return await self._retrieve(request, "dispute", dispute_id, load_dispute, dispute_object)

    @api.get("/v1/disputes", **list_operation(o.DisputeList))
    async def list_disputes(self, request: Request) -> Response:
        return await self._list(
            request, "dispute", "/v1/disputes", load_dispute, list_disputes, dispute_object
        )

    @api.get("/v1/events/{event_id}", **operation(o.Event))
    async def get_event(self, event_id: str, request: Request) -> Response:
        return await self._retrieve(request, "event", event_id, events_db.load_event, event_object)

    @api.get(
        "/v1/events",
        **list_operation(
            o.EventList,
            query("type", "Only events of this type; * matches any part (charge.*)"),
            query("types[]", "Only events of any of these types (at most 20); not with type"),
        ),
    )
    async def list_events(self, request: Request) -> Response:
        """The merchant's events of the last 30 days, newest first, paged both ways as every list is (its
        ``types[0]``, ``types[1]``, … are more names than ``_page`` takes)."""
        merchant_id = await self._merchant(request)
        spec, only = event_query(request.query_params.multi_items())
        async with self.parts.pool.connection() as conn:
            cursor = spec.cursor
            if cursor is not None and await events_db.load_event(conn, cursor[1], merchant_id) is None:
                raise NotFound(f"No such event: '{cursor[1]}'", param=cursor[0])
            found, has_more = spec.trim(await events_db.list_events(conn, merchant_id, only, spec))
        rendered = [event_object(event) for event in found]
        return json_response(200, dumps(list_object("/v1/events", rendered, has_more)))

    # -- customers -------------------------------------------------------------------------------------------

    @api.post("/v1/customers", **operation(o.Customer, body=CustomerCreate, money=True))
    async def create_customer(self, request: Request) -> Response:
        return await self._money_post(request, CustomerCreate, lambda p: p.customers.create)

    @api.get("/v1/customers/{customer_id}", **operation(o.Customer))
    async def get_customer(self, customer_id: str, request: Request) -> Response:
        return await self._retrieve(
            request, "customer", customer_id, customers_db.load_customer, customer_object
        )

    @api.post("/v1/customers/{customer_id}", **operation(o.Customer, body=CustomerUpdate))
    async def update_customer(self, customer_id: str, request: Request) -> Response:
        """Only the fields sent change; no Idempotency-Key needed (the same update twice is one update)."""
        merchant_id = await self._merchant(request)
        body = parse_body(CustomerUpdate, await read_body(request), request.headers.get("content-type"))
        return json_response(200, dumps(await self.parts.customers.update(merchant_id, customer_id, body)))

    @api.delete("/v1/customers/{customer_id}", **operation(o.DeletedCustomer))
    async def delete_customer(self, customer_id: str, request: Request) -> Response:
        merchant_id = await self._merchant(request)
        return json_response(200, dumps(await self.parts.customers.delete(merchant_id, customer_id)))

    @api.get(
        "/v1/customers",
        **list_operation(o.CustomerList, query("email", "Only the customers with this email (exact match)")),
    )
    async def list_customers(self, request: Request) -> Response:
        merchant_id = await self._merchant(request)

        async def find(conn: AsyncConnection[Any], customer_id: str) -> Any:
            return await customers_db.load_customer(conn, customer_id, merchant_id)

        async def email_sane(conn: AsyncConnection[Any], filters: dict[str, str]) -> None:
            email = filters.get("email")
            if email is not None and not 1 <= len(email) <= 512:
                raise InvalidRequest("email must be 1 to 512 characters", param="email")

        async def page(conn: AsyncConnection[Any], spec: Page) -> list[Any]:
            email = request.query_params.get("email")
            return await customers_db.list_customers(conn, merchant_id, email, spec)

        url, own = "/v1/customers", frozenset({"email"})
        return await self._page(request, "customer", url, find, page, customer_object, email_sane, own=own)

    # -- webhook endpoints: where the merchant's events are POSTed, signed -----------------------------------

    @api.post("/v1/webhook_endpoints", **operation(o.WebhookEndpoint, body=WebhookEndpointCreate))
    async def create_webhook_endpoint(self, request: Request) -> Response:
        """The answer holds the endpoint's signing secret (``whsec_…``): the only time it is shown."""
        merchant_id = await self._merchant(request)
        content_type = request.headers.get("content-type")
        body = parse_body(WebhookEndpointCreate, await read_body(request), content_type)
        return json_response(200, dumps(await self.parts.webhook_endpoints.create(merchant_id, body)))

    @api.get("/v1/webhook_endpoints/{endpoint_id}", **operation(o.WebhookEndpoint))
    async def get_webhook_endpoint(self, endpoint_id: str, request: Request) -> Response:
        load, render = endpoints_db.load_endpoint, webhook_endpoint_object
        return await self._retrieve(request, "webhook endpoint", endpoint_id, load, render)

    @api.post(
        "/v1/webhook_endpoints/{endpoint_id}", **operation(o.WebhookEndpoint, body=WebhookEndpointUpdate)
    )
    async def update_webhook_endpoint(self, endpoint_id: str, request: Request) -> Response:
        merchant_id = await self._merchant(request)
        content_type = request.headers.get("content-type")
        body = parse_body(WebhookEndpointUpdate, await read_body(request), content_type)
        updated = await self.parts.webhook_endpoints.update(merchant_id, endpoint_id, body)
        return json_response(200, dumps(updated))

    @api.delete("/v1/webhook_endpoints/{endpoint_id}", **operation(o.DeletedWebhookEndpoint))
    async def delete_webhook_endpoint(self, endpoint_id: str, request: Request) -> Response:
        merchant_id = await self._merchant(request)
        return json_response(200, dumps(await self.parts.webhook_endpoints.delete(merchant_id, endpoint_id)))

    @api.get("/v1/webhook_endpoints", **list_operation(o.WebhookEndpointList))
    async def list_webhook_endpoints(self, request: Request) -> Response:
        return await self._list(
            request, "webhook endpoint", "/v1/webhook_endpoints", endpoints_db.load_endpoint,
            endpoints_db.list_endpoints, webhook_endpoint_object,
        )  # fmt: skip

    @api.post(
        "/v1/admin/events/{event_id}/resend", **operation(o.WebhookResend, auth=ADMIN_KEY, body=WebhookResend)
    )
    async def resend_event(self, event_id: str, request: Request) -> Response:
        """Deliver an event again to its merchant's webhook endpoints, or to one (``{"endpoint": …}``)."""
        await self._admin(request)
        body = parse_body(WebhookResend, await read_body(request), request.headers.get("content-type"))
        return json_response(200, dumps(await self.parts.webhook_endpoints.resend(event_id, body.endpoint)))

    @api.post(
        "/v1/webhooks/psp",
        **operation(o.WebhookReceipt, auth=None, body=o.Report, parameters=[STRIPE_SIGNATURE]),
    )
    async def psp_webhook(self, request: Request) -> Response:
        """Authenticated by its signature, not a key: the PSP calls it."""
        await self._build()
        answer = await self.parts.webhooks.receive(
            await read_body(request), request.headers.get("stripe-signature")
        )
        return json_response(200, dumps(answer))

    @api.post(
        "/v1/webhooks/braintree",
        **operation(o.WebhookReceipt, auth=None, body=BraintreeNotificationForm),
    )
    async def braintree_webhook(self, request: Request) -> Response:
        """Braintree's notifications, authenticated by their ``bt_signature``."""
        await self._build()
        content_type = request.headers.get("content-type")
        form = parse_body(BraintreeNotificationForm, await read_body(request), content_type)
        answer = await self.parts.braintree_webhooks.receive(form.bt_signature, form.bt_payload)
        return json_response(200, dumps(answer))

    # -- admin -----------------------------------------------------------------------------------------------

    @api.post("/v1/merchants", **operation(o.Merchant, auth=ADMIN_KEY, body=MerchantCreate))
    async def create_merchant(self, request: Request) -> Response:
        await self._admin(request)
        body = parse_body(MerchantCreate, await read_body(request), request.headers.get("content-type"))
        async with self.parts.pool.connection() as conn:
            merchant = await merchants_db.create_merchant(conn, body.name)
        return json_response(200, dumps(merchant))

    @api.get("/v1/admin/merchants/{merchant_id}/routing", **operation(o.PspRouting, auth=ADMIN_KEY))
    async def get_psp_routing(self, merchant_id: str, request: Request) -> Response:
        """The PSPs a merchant's new payments try, in order (Stripe alone until set)."""
        await self._admin(request)
        async with self.parts.pool.connection() as conn:
            return json_response(200, dumps(await routing_db.routing_of(conn, merchant_id)))

    @api.post(
        "/v1/admin/merchants/{merchant_id}/routing",
        **operation(o.PspRouting, auth=ADMIN_KEY, body=PspRoutingSet),
    )
    async def set_psp_routing(self, merchant_id: str, request: Request) -> Response:
        """Replace a merchant's PSP list; an unknown or repeated PSP is a 400 and changes nothing."""
        await self._admin(request)
        body = parse_body(PspRoutingSet, await read_body(request), request.headers.get("content-type"))
        try:
            psps = checked_priorities(body.psps)
        except RoutingError as exc:
            raise InvalidRequest(str(exc), param="psps") from None
        missing = [p for p in psps if p not in self.parts.psps.adapters]
        if missing:
            raise InvalidRequest(f"{missing[0]} is not set up on this service", param="psps")
        async with self.parts.pool.connection() as conn:
            routing = await routing_db.set_routing(conn, merchant_id, psps)
        self.parts.psps.forget()
        return json_response(200, dumps(routing))

    @api.get("/v1/admin/psps", **operation(o.PspHealthList, auth=ADMIN_KEY))
    async def psp_health(self, request: Request) -> Response:
        """The PSPs this service reaches and the circuit breaker of each, as the replica answering sees it."""
        await self._admin(request)
        return json_response(200, dumps({"object": "list", "data": self.parts.psps.breakers()}))

    @api.get("/v1/admin/payments/{payment_id}/attempts", **operation(o.PaymentAttemptList, auth=ADMIN_KEY))
    async def payment_attempts(self, payment_id: str, request: Request) -> Response:
        """The PSPs a payment tried, each with its key and that PSP's reference, the current one last."""
        await self._admin(request)
        async with self.parts.pool.connection() as conn:
            return json_response(200, dumps(await attempts_db.attempts_of(conn, payment_id)))

    @api.get("/v1/admin/ledger/trial_balance", **operation(o.Report, auth=ADMIN_KEY))
    async def trial_balance(self, request: Request) -> Response:
        await self._admin(request)
        totals = await asyncio.to_thread(self._trial_balance)
        return json_response(200, dumps({"object": "trial_balance", "currencies": totals}))

    def _trial_balance(self) -> dict[str, Any]:
        assert self._settings.database_url
        with psycopg.connect(self._settings.database_url, autocommit=True) as conn:
            return dict(ledger_store.trial_balance(conn))

    @api.get("/v1/admin/invariants", **operation(o.Report, auth=ADMIN_KEY))
    async def invariants(self, request: Request) -> Response:
        await self._admin(request)
        assert self._settings.database_url
        report = await check_invariants(
            self._settings.database_url, self.parts.psps.adapters, self.parts.wallets
        )
        return json_response(200, dumps(report))

    @api.post("/v1/admin/recovery/sweep", **operation(o.Report, auth=ADMIN_KEY, body=RecoverySweep))
    async def recovery_sweep(self, request: Request) -> Response:
        """Run the recovery sweeper's pass now; ``{"grace_s": n}`` narrows "stuck" to n seconds untouched."""
        await self._admin(request)
        body = parse_body(RecoverySweep, await read_body(request), request.headers.get("content-type"))
        sweeper = await recovery_sweeper(self._settings)
        return json_response(200, dumps(await sweeper.sweep.remote(body.grace_s)))

    # -- reconciliation (admin) ------------------------------------------------------------------------------

    @api.post("/v1/reconciliation/runs", **operation(o.Report, auth=ADMIN_KEY, body=ReconciliationRunCreate))
    async def create_reconciliation_run(self, request: Request) -> Response:
        """Reconcile a day now (the nightly scheduler runs it): re-running a day is safe."""
        await self._admin(request)
        body = parse_body(
            ReconciliationRunCreate, await read_body(request), request.headers.get("content-type")
        )
        scheduler = await reconciliation_scheduler(self._settings)
        return json_response(200, dumps(await scheduler.run.remote(body.date)))

    @api.get("/v1/reconciliation/runs/{run_id}", **operation(o.Report, auth=ADMIN_KEY))
    async def get_reconciliation_run(self, run_id: str, request: Request) -> Response:
        await self._admin(request)
        return await self._one("reconciliation run", run_id, reconciliation_db.load_run, run_object)

    @api.get("/v1/reconciliation/runs", **list_operation(o.ReportList, auth=ADMIN_KEY, stripes=False))
    async def list_reconciliation_runs(self, request: Request) -> Response:
        await self._admin(request)
        url, load = "/v1/reconciliation/runs", reconciliation_db.load_run

        async def page(conn: AsyncConnection[Any], spec: Page) -> list[Any]:
            return await reconciliation_db.list_runs(conn, spec.limit + 1, spec.starting_after)

        return await self._page(request, "reconciliation run", url, load, page, run_object, stripes=False)

    @api.get("/v1/reconciliation/discrepancies/{discrepancy_id}", **operation(o.Report, auth=ADMIN_KEY))
    async def get_discrepancy(self, discrepancy_id: str, request: Request) -> Response:
        await self._admin(request)
        load = reconciliation_db.load_discrepancy
        return await self._one("discrepancy", discrepancy_id, load, discrepancy_object)

    @api.get(
        "/v1/reconciliation/discrepancies",
        **list_operation(
            o.ReportList,
            query("status", "open or resolved", enum=["open", "resolved"]),
            query("run", "Only this reconciliation run's (recon_…)"),
            auth=ADMIN_KEY,
            stripes=False,
        ),
    )
    async def list_discrepancies(self, request: Request) -> Response:
        """``?status=open|resolved``, ``?run=recon_…``, newest first."""
        await self._admin(request)
        status, run_id = request.query_params.get("status"), request.query_params.get("run")

        async def filters_known(conn: AsyncConnection[Any], filters: dict[str, str]) -> None:
            if status is not None and status not in ("open", "resolved"):
                raise InvalidRequest("status must be open or resolved", param="status")
            if run_id is not None and await reconciliation_db.load_run(conn, run_id) is None:
                raise NotFound(f"No such reconciliation run: '{run_id}'", param="run")

        async def page(conn: AsyncConnection[Any], spec: Page) -> list[Any]:
            return await reconciliation_db.list_discrepancies(
                conn, status, run_id, spec.limit + 1, spec.starting_after
            )

        url, load = "/v1/reconciliation/discrepancies", reconciliation_db.load_discrepancy
        return await self._page(
            request, "discrepancy", url, load, page, discrepancy_object, filters_known,
            own=frozenset({"status", "run"}), stripes=False,
        )  # fmt: skip

    @api.post(
        "/v1/reconciliation/discrepancies/{discrepancy_id}/resolve",
        **operation(o.Report, auth=ADMIN_KEY, body=DiscrepancyResolve),
    )
    async def resolve_discrepancy(self, discrepancy_id: str, request: Request) -> Response:
        await self._admin(request)
        body = parse_body(DiscrepancyResolve, await read_body(request), request.headers.get("content-type"))
        async with self.parts.pool.connection() as conn:
            resolved = await reconciliation_db.resolve(conn, discrepancy_id, body.resolution, body.note)
        return json_response(200, dumps(discrepancy_object(resolved)))

    # -- operations ------------------------------------------------------------------------------------------

    @api.get("/healthz", **operation(o.Report, auth=None))
    async def healthz(self) -> Response:
        await self._build()
        checks: dict[str, bool] = {}
        try:
            async with self.parts.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            checks["postgres"] = True
        except Exception:
            checks["postgres"] = False
        checks["redis"] = await self.parts.fast_keys.ping()
        try:
            checks["ray"] = await asyncio.wait_for(self.parts.wallets.ready(), timeout=5)
        except Exception:
            checks["ray"] = False
        checks["psp"] = await self.parts.psp.ping()
        ok = all(checks.values())
        if not ok:
            failing = ", ".join(name for name, good in checks.items() if not good)
            body = error_object(DependencyFailure(f"dependencies down: {failing}"))
            body["checks"] = checks
            return json_response(503, dumps(body))
        return json_response(200, dumps({"status": "ok", "checks": checks}))

    # -- the ops page ----------------------------------------------------------------------------------------

    @api.get("/dashboard", include_in_schema=False)
    async def dashboard_page(self, request: Request) -> Response:
        """The page with a session; the login form without one."""
        session = request.cookies.get(dashboard.COOKIE)
        if dashboard.session_valid(session, self._settings.admin_key, time.time()):
            return dashboard.page("index.html")
        return dashboard.page("login.html")

    @api.post("/dashboard/login", include_in_schema=False)
    async def dashboard_login(self, request: Request) -> Response:
        """The admin key from the form opens a session; a wrong one counts against the address."""
        await self._build()
        try:
            key = dashboard.login_key(await read_body(request), request.headers.get("content-type"))
            await self.auth.admin(f"Bearer {key}", client_address(request))
        except PayrayError as exc:
            return dashboard.page("login.html", exc.status, exc.message)
        assert self._settings.admin_key
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        return dashboard.logged_in(self._settings.admin_key, secure)

    @api.post("/dashboard/logout", include_in_schema=False)
    async def dashboard_logout(self) -> Response:
        return dashboard.logged_out()

    @api.get("/dashboard/{asset}", include_in_schema=False)
    async def dashboard_asset(self, asset: str) -> Response:
        found = dashboard.asset(asset)
        if found is None:
            raise NotFound(f"Unrecognized request URL (GET /dashboard/{asset}).")
        return found

    @api.get(
        "/v1/admin/dashboard",
        **operation(
            o.Report, auth=ADMIN_KEY, parameters=[query("since", "Only the figures after this unix time")]
        ),
    )
    async def dashboard_figures(self, request: Request) -> Response:
        """The ops page's figures, one per second for the last minutes (``payray/figures.py``)."""
        await self._operator(request)
        since = dashboard.since_param(request.query_params.get("since"))
        monitor = await ops_monitor(self._settings)
        frames = await monitor.frames.remote(since)
        return json_response(200, dumps({"object": "ops_figures", "now": time.time(), "frames": frames}))

    @api.get("/metrics", **operation(None, auth=None))
    async def metrics_endpoint(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        await self._build()
        await self._observe_reconciliation()
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _observe_reconciliation(self) -> None:
        """The review queue read at scrape time, so every replica reports the same figures."""
        try:
            async with self.parts.pool.connection(timeout=2) as conn:
                open_by_kind = await reconciliation_db.open_counts(conn)
                latest = await reconciliation_db.latest_reconciled_day(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout):
            log.warning("reconciliation metrics skipped: the database did not answer")
            return
        for kind in KINDS:
            self.metrics.reconciliation_diffs.labels(kind).set(open_by_kind.get(kind, 0))
        if latest is not None:
            midnight = datetime.datetime.combine(latest, datetime.time(), tzinfo=datetime.UTC)
            self.metrics.reconciliation_last_run.set(midnight.timestamp())


def build_app(settings: Settings) -> Any:
    """The Serve application, ready for ``serve.run``; ``serve_config.yaml`` points at ``app_from_env``."""
    deployment: Any = PaymentApi
    per_node = settings.api_replicas_per_node
    spread = {"max_replicas_per_node": per_node} if per_node else {}
    return deployment.options(num_replicas=settings.api_replicas, **spread).bind(settings)


def app_from_env(args: dict[str, str] | None = None) -> Any:
    """Application builder for ``serve deploy serve_config.yaml``: configuration from the environment."""
    settings = Settings.from_env()
    if not settings.psp_api_key:
        raise ValueError("STRIPE_API_KEY must be set when deploying with serve_config.yaml")
    return build_app(settings)
