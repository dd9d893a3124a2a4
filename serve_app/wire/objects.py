"""The API's response objects as schemas, for ``/openapi.json`` only: ``render.py`` builds the bytes.

They mirror ``render.py`` and the flows' ``*_object`` functions field for field; the OpenAPI fuzz test
checks every response against them, so a field added to one and not the other fails the suite.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Status = Literal["succeeded", "pending", "failed"]


class ApiObject(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Charge(ApiObject):
    id: str
    object: Literal["charge"]
    amount: int
    amount_captured: int
    amount_refunded: int
    captured: bool
    created: int
    currency: str
    customer: str | None
    description: str | None
    failure_code: str | None
    failure_message: str | None
    livemode: bool
    merchant: str
    metadata: dict[str, str]
    paid: bool
    payment_intent: str | None
    payment_method: str
    psp_reference: str | None
    refunded: bool
    status: Status


class Refund(ApiObject):
    id: str
    object: Literal["refund"]
    amount: int
    charge: str
    created: int
    currency: str
    failure_reason: str | None
    metadata: dict[str, str]
    psp_reference: str | None
    reason: str | None
    status: Status


class Payout(ApiObject):
    id: str
    object: Literal["payout"]
    amount: int
    created: int
    currency: str
    merchant: str
    status: str


class Dispute(ApiObject):
    id: str
    object: Literal["dispute"]
    amount: int
    charge: str
    created: int
    currency: str
    psp_reference: str
    reason: str | None
    status: Literal["needs_response", "won", "lost"]


class PaymentMethodRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["payment_method"]


class PaymentError(BaseModel):
    """An intent's ``last_payment_error``: the decline of its latest charge."""

    model_config = ConfigDict(extra="allow")
    type: str
    code: str
    decline_code: str
    doc_url: str
    message: str
    charge: str
    payment_method: PaymentMethodRef


class PaymentIntent(ApiObject):
    id: str
    object: Literal["payment_intent"]
    amount: int
    amount_capturable: int
    amount_received: int
    canceled_at: int | None
    cancellation_reason: str | None
    capture_method: Literal["automatic", "manual"]
    confirmation_method: Literal["automatic"]
    created: int
    currency: str
    customer: str | None
    description: str | None
    last_payment_error: PaymentError | None
    latest_charge: str | None
    livemode: bool
    metadata: dict[str, str]
    payment_method: str | None
    payment_method_types: list[Literal["card"]]
    status: Literal[
        "requires_payment_method",
        "requires_confirmation",
        "processing",
        "requires_capture",
        "succeeded",
        "canceled",
    ]


class ListEnvelope(ApiObject):
    object: Literal["list"]
    url: str
    has_more: bool


class ChargeList(ListEnvelope):
    data: list[Charge]


class PaymentIntentList(ListEnvelope):
    data: list[PaymentIntent]


class RefundList(ListEnvelope):
    data: list[Refund]


class PayoutList(ListEnvelope):
    data: list[Payout]


class DisputeList(ListEnvelope):
    data: list[Dispute]


class EventData(ApiObject):
    object: dict[str, Any]
    #: Only on ``*.updated`` events: the changed attributes at their prior values (metadata key by key).
    previous_attributes: dict[str, Any] | None = None


class EventRequest(ApiObject):
    id: str | None
    idempotency_key: str | None


class Event(ApiObject):
    id: str
    object: Literal["event"]
    api_version: str
    created: int
    data: EventData
    livemode: bool
    pending_webhooks: int
    request: EventRequest
    type: str


class EventList(ListEnvelope):
    data: list[Event]


class Customer(ApiObject):
    id: str
    object: Literal["customer"]
    created: int
    description: str | None
    email: str | None
    livemode: bool
    metadata: dict[str, str]
    name: str | None
    phone: str | None


class DeletedCustomer(ApiObject):
    id: str
    object: Literal["customer"]
    deleted: Literal[True]


class CustomerList(ListEnvelope):
    data: list[Customer]


class WebhookEndpoint(ApiObject):
    id: str
    object: Literal["webhook_endpoint"]
    api_version: str | None
    application: None
    created: int
    description: str | None
    enabled_events: list[str]
    livemode: bool
    metadata: dict[str, str]
    #: ``whsec_…``, in the create's answer only
    secret: str | None = None
    status: Literal["enabled", "disabled"]
    url: str


class DeletedWebhookEndpoint(ApiObject):
    id: str
    object: Literal["webhook_endpoint"]
    deleted: Literal[True]


class WebhookEndpointList(ListEnvelope):
    data: list[WebhookEndpoint]


class WebhookResend(ApiObject):
    object: Literal["webhook_resend"]
    event: str
    endpoints: list[str]


class AmountInCurrency(ApiObject):
    amount: int
    currency: str


class Balance(ApiObject):
    object: Literal["balance"]
    livemode: bool
    available: list[AmountInCurrency]
    pending: list[AmountInCurrency]


class Merchant(ApiObject):
    id: str
    object: Literal["merchant"]
    name: str
    api_key: str
    created: int


class PspRouting(ApiObject):
    object: Literal["psp_routing"]
    merchant: str
    psps: list[str]
    #: None until the merchant's routing is first set (Stripe alone until then)
    updated: int | None


class PspHealth(ApiObject):
    object: Literal["psp_health"]
    psp: str
    #: this replica's circuit breaker: ``closed`` (new payments go there), ``open`` or ``half_open``
    breaker: str
    #: bad answers in a row while closed
    bad_in_a_row: int
    #: seconds until an open breaker lets a probe through (0 when not open)
    reopens_in_s: float


class PspHealthList(ApiObject):
    object: Literal["list"]
    data: list[PspHealth]


class PaymentAttempt(ApiObject):
    object: Literal["payment_attempt"]
    psp: str
    #: the key the attempt was sent to its PSP under (its id)
    idempotency_key: str
    psp_reference: str | None
    #: whether the payment is at this attempt's PSP now; an earlier one ended as ``ended`` says
    current: bool
    ended: str | None
    failure_code: str | None


class PaymentAttemptList(ApiObject):
    object: Literal["list"]
    data: list[PaymentAttempt]


class WebhookReceipt(ApiObject):
    received: bool
    id: str
    effect: str


class Report(BaseModel):
    """An operator's report (runs, discrepancies, invariants, health): an object whose fields may grow."""

    model_config = ConfigDict(extra="allow")


class ReportList(ListEnvelope):
    data: list[dict[str, Any]]


class ErrorDetail(BaseModel):
    """Stripe's error object: ``type`` says whose fault it is, ``param`` names the offending parameter."""

    model_config = ConfigDict(extra="allow")

    #: ``invalid_request_error``, ``authentication_error``, ``card_error``, ``idempotency_error``, …
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    decline_code: str | None = None
    charge: str | None = None
    #: Stripe's page for ``code``: ``https://stripe.com/docs/error-codes/<code, hyphenated>``.
    doc_url: str | None = None


class Error(BaseModel):
    model_config = ConfigDict(extra="allow")

    error: ErrorDetail
