"""Request bodies, validated strictly: a wrong type is an error, never a coercion."""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from payray.cards import contains_card_number
from payray.errors import InvalidRequest
from payray.metadata import MAX_KEY_LENGTH, MAX_KEYS, MAX_VALUE_LENGTH
from payray.money import CURRENCY_EXPONENTS, MAX_CHARGE_AMOUNT
from payray.webhooks import EVENT_TYPES, UnknownEventType, enabled_events, url_problem

_TOKEN = re.compile(r"^[A-Za-z0-9_]{3,255}$")
#: What Stripe takes as a charge's ``source``: a token, a source, or a card saved on a customer, by id.
_SOURCE_TOKEN = re.compile(r"^(tok|src|card)_[A-Za-z0-9_]{1,250}$")
RAW_CARD_DATA_REFUSED = (
    "raw card numbers are not accepted; send a token from your PSP instead: a payment method (pm_…) "
    "or a card token (tok_…)"
)

Amount = Annotated[StrictInt, Field(ge=1, le=MAX_CHARGE_AMOUNT)]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _currency(value: str) -> str:
    """A supported ISO 4217 code in any case (``USD``, ``usd``), kept lowercase as Stripe answers it."""
    value = value.lower()
    if value not in CURRENCY_EXPONENTS:
        raise ValueError(
            f"unsupported currency {value!r}; supported: {', '.join(sorted(CURRENCY_EXPONENTS))}"
        )
    return value


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} metadata keys")
    for k, v in value.items():
        if not 1 <= len(k) <= MAX_KEY_LENGTH:
            raise ValueError(f"metadata keys are 1 to {MAX_KEY_LENGTH} characters")
        if len(v) > MAX_VALUE_LENGTH:
            raise ValueError(f"metadata values are at most {MAX_VALUE_LENGTH} characters")
    return value


def _metadata_update(value: Any) -> dict[str, str] | str | None:
    """A dict of strings is checked as a create's metadata is; ``""`` (empty them all) and ``None`` pass."""
    if value is None or value == "":
        return value
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("metadata must be key-value pairs of strings, or empty to remove every key")
    return _metadata(value)


def form_bool(value: Any) -> Any:
    """A boolean as JSON sends it, or as a form does (``true``/``false``); anything else is left for the
    strict check to refuse."""
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


def payment_method_of_source(source: str) -> str:
    """A charge's ``source`` as the payment method the PSP's PaymentIntents take: a test token names its
    card (``tok_visa`` is ``pm_card_visa``); a source or a saved card goes by its own id."""
    return f"pm_card_{source.removeprefix('tok_')}" if source.startswith("tok_") else source


class ChargeCreate(StrictBody):
    amount: Amount
    currency: StrictStr
    payment_method: StrictStr
    description: Annotated[StrictStr, Field(max_length=1000)] | None = None
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    customer: Annotated[StrictStr, Field(min_length=1, max_length=255)] | None = None
    #: ``false`` authorizes only: the charge waits for ``POST /v1/charges/{id}/capture``, or expires
    capture: StrictBool = True

    _check_currency = field_validator("currency")(_currency)
    _check_metadata = field_validator("metadata")(_metadata)
    _check_capture = field_validator("capture", mode="before")(form_bool)

    @model_validator(mode="before")
    @classmethod
    def _no_card_data(cls, data: Any) -> Any:
        """Card data never gets past the edge (PCI scope): refused before anything is stored or forwarded.
        A token in ``source`` (Stripe's older parameter) is taken as the payment method."""
        refuse_raw_card_data(data)
        if isinstance(data, dict) and "source" in data:
            if "payment_method" in data:
                message = "Pass either source or payment_method, not both."
                raise InvalidRequest(message, code="parameter_invalid", param="source")
            source = data["source"]  # a token id: refuse_raw_card_data let nothing else through
            data = {k: v for k, v in data.items() if k != "source"}
            data["payment_method"] = payment_method_of_source(source) if isinstance(source, str) else source
        return data

    @field_validator("payment_method")
    @classmethod
    def _a_token(cls, value: str) -> str:
        if not _TOKEN.match(value):
            raise ValueError("payment_method must be a PSP token such as pm_card_visa")
        return value


class ChargeCapture(StrictBody):
    #: of the authorized amount; the rest is released. All of it when absent.
    amount: Amount | None = None


def refuse_raw_card_data(data: Any) -> None:
    """``card[…]``, ``payment_method_data[card]``, a ``source`` that is not a token id, or a payment method
    holding a Luhn-valid 13-19 digit run (``pm_4000056655665556``) is card data: a 400 naming the parameter.
    Raised as ``InvalidRequest`` (not ``ValueError``), so pydantic passes it on without quoting the input."""
    if not isinstance(data, dict):
        return
    method_data = data.get("payment_method_data")
    source = data.get("source")
    method = data.get("payment_method")
    if "card" in data:
        param = "card"
    elif isinstance(method_data, dict) and "card" in method_data:
        param = "payment_method_data[card]"
    elif source is not None and not (isinstance(source, str) and _SOURCE_TOKEN.match(source)):
        param = "source"
    elif isinstance(method, str) and contains_card_number(method):
        param = "payment_method"
    else:
        return
    raise InvalidRequest(RAW_CARD_DATA_REFUSED, code="parameter_invalid", param=param)


class RefundCreate(StrictBody):
    charge: Annotated[StrictStr, Field(pattern=r"^ch_[A-Za-z0-9]{1,64}$")]
    amount: Amount | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    _check_metadata = field_validator("metadata")(_metadata)


#: ``metadata[k]=v`` sets a key, ``metadata[k]=`` removes it, ``metadata=`` removes them all. Checked by
#: hand (``_metadata_update``), so an error names ``metadata`` rather than a member of a union.
MetadataUpdate = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "object",
                    "propertyNames": {"minLength": 1, "maxLength": MAX_KEY_LENGTH},
                    "additionalProperties": {"type": "string", "maxLength": MAX_VALUE_LENGTH},
                    "maxProperties": MAX_KEYS,
                },
                {"type": "string", "enum": [""]},
            ],
            "description": "keys to set; an empty value removes its key, an empty metadata removes all",
        }
    ),
]


class ChargeUpdate(StrictBody):
    """What a charge's update may change: nothing that moves money."""

    description: Annotated[StrictStr, Field(max_length=1000)] | None = None
    metadata: MetadataUpdate = None

    _check_metadata = field_validator("metadata", mode="before")(_metadata_update)


class RefundUpdate(StrictBody):
    metadata: MetadataUpdate = None

    _check_metadata = field_validator("metadata", mode="before")(_metadata_update)


class PayoutCreate(StrictBody):
    amount: Amount
    currency: StrictStr

    _check_currency = field_validator("currency")(_currency)


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _email(value: str | None) -> str | None:
    """Stripe's ``email_invalid``; raised as ``InvalidRequest`` so the address is not quoted back."""
    if value is not None and not _EMAIL.match(value):
        message = "Invalid email address: it must look like name@example.com"
        raise InvalidRequest(message, code="email_invalid", param="email")
    return value


def _blank_is_none(data: Any) -> Any:
    """Stripe's way to clear a field: an empty string (``email=``, ``metadata=``) stands for null."""
    if isinstance(data, dict):
        return {k: None if v == "" else v for k, v in data.items()}
    return data


class CustomerFields(StrictBody):
    """What ``POST /v1/customers`` and its update take; every field is optional, ``""`` or null clears it."""

    email: Annotated[StrictStr, Field(max_length=512)] | None = None
    name: Annotated[StrictStr, Field(max_length=256)] | None = None
    description: Annotated[StrictStr, Field(max_length=350)] | None = None
    phone: Annotated[StrictStr, Field(max_length=20)] | None = None
    metadata: dict[StrictStr, StrictStr] | None = None

    _check_email = field_validator("email")(_email)

    @model_validator(mode="before")
    @classmethod
    def _blanks_clear(cls, data: Any) -> Any:
        return _blank_is_none(data)

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else _metadata(value)


class CustomerCreate(CustomerFields):
    pass


class CustomerUpdate(CustomerFields):
    """Only the fields sent change; ``metadata[k]=`` removes the key ``k``, ``metadata=`` all of them."""


class BraintreeNotificationForm(StrictBody):
    """Braintree's webhook: a form of the signature and the base64 XML notification it signs."""

    bt_signature: Annotated[StrictStr, Field(min_length=1, max_length=10_000)]
    bt_payload: Annotated[StrictStr, Field(min_length=1, max_length=1_000_000)]


class RecoverySweep(StrictBody):
    grace_s: Annotated[float, Field(ge=0, le=86_400)] | None = None


class ReconciliationRunCreate(StrictBody):
    date: Annotated[StrictStr, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]

    @field_validator("date")
    @classmethod
    def _a_past_or_current_utc_day(cls, value: str) -> str:
        try:
            day = datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a calendar date (YYYY-MM-DD)") from None
        if day > datetime.datetime.now(datetime.UTC).date():
            raise ValueError(f"{value} has not begun yet (UTC); reconcile a past day or today")
        return value


class DiscrepancyResolve(StrictBody):
    resolution: Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
    note: Annotated[StrictStr, Field(min_length=1, max_length=2000)]


class MerchantCreate(StrictBody):
    name: Annotated[StrictStr, Field(min_length=1, max_length=200)]


class PspRoutingSet(StrictBody):
    """A merchant's PSPs, in the order its new payments try them (``payray.routing.checked_priorities``)."""

    psps: Annotated[list[Annotated[StrictStr, Field(max_length=40)]], Field(min_length=1, max_length=8)]


def validation_param(errors: list[dict[str, Any]]) -> str | None:
    """The dotted name of the first offending field, as Stripe's ``param``."""
    if not errors:
        return None
    loc = [str(part) for part in errors[0].get("loc", ()) if part != "__root__"]
    return "[".join(loc[:1]) + "".join(f"[{p}]" for p in loc[1:]) if loc else None


def _webhook_url(value: str | None) -> str | None:
    if value is not None and (problem := url_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _webhook_events(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("enabled_events needs at least one event type, or * for all")
    try:
        return enabled_events(value)
    except UnknownEventType as exc:
        raise ValueError(str(exc)) from None


def _form_booleans(data: Any, names: tuple[str, ...]) -> Any:
    """A form sends ``disabled=true``: the words ``true`` and ``false`` stand for the booleans."""
    if isinstance(data, dict):
        words = {"true": True, "false": False}
        return {
            k: words[v] if k in names and isinstance(v, str) and v in words else v for k, v in data.items()
        }
    return data


class WebhookEndpointCreate(StrictBody):
    url: Annotated[StrictStr, Field(max_length=2048)]
    enabled_events: Annotated[list[StrictStr], Field(max_length=len(EVENT_TYPES) + 1)]
    description: Annotated[StrictStr, Field(max_length=5000)] | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    api_version: Annotated[StrictStr, Field(pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")] | None = None

    _check_url = field_validator("url")(_webhook_url)
    _check_events = field_validator("enabled_events")(_webhook_events)

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else _metadata(value)


class WebhookEndpointUpdate(StrictBody):
    """Only the fields sent change; ``description=`` clears it, ``metadata[k]=`` removes the key ``k``,
    ``metadata=`` all of them; ``disabled`` turns the endpoint off and on."""

    url: Annotated[StrictStr, Field(max_length=2048)] | None = None
    enabled_events: Annotated[list[StrictStr], Field(max_length=len(EVENT_TYPES) + 1)] | None = None
    description: Annotated[StrictStr, Field(max_length=5000)] | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    disabled: bool | None = None

    _check_url = field_validator("url")(_webhook_url)
    _check_events = field_validator("enabled_events")(_webhook_events)

    @model_validator(mode="before")
    @classmethod
    def _form_words(cls, data: Any) -> Any:
        return _form_booleans(_blank_is_none(data), ("disabled",))

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else _metadata(value)


class WebhookResend(StrictBody):
    """``POST /v1/admin/events/{id}/resend``: to one endpoint of the event's merchant, else to each enabled
    endpoint that takes the event's type."""

    endpoint: Annotated[StrictStr, Field(pattern=r"^we_[A-Za-z0-9]{1,64}$")] | None = None


def _payment_method(value: str | None) -> str | None:
    if value is not None and not _TOKEN.match(value):
        raise ValueError("payment_method must be a PSP token such as pm_card_visa")
    return value


def _card_only(value: list[str] | None) -> list[str] | None:
    if value is not None and value != ["card"]:
        raise ValueError("the only payment method type is card")
    return value


_CustomerId = Annotated[StrictStr, Field(min_length=1, max_length=255)]
_Description = Annotated[StrictStr, Field(max_length=1000)]
CaptureMethod = Literal["automatic", "manual"]


class _CardFree(StrictBody):
    """A body that may name a payment method: card data in it is refused before anything else is read."""

    @model_validator(mode="before")
    @classmethod
    def _no_card_data(cls, data: Any) -> Any:
        refuse_raw_card_data(data)
        return data


class IntentCreate(_CardFree):
    """``POST /v1/payment_intents``: ``confirm=true`` confirms it in the same request (a payment method
    needed)."""

    amount: Amount
    currency: StrictStr
    capture_method: CaptureMethod = "automatic"
    payment_method: StrictStr | None = None
    customer: _CustomerId | None = None
    description: _Description | None = None
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    confirm: StrictBool = False
    payment_method_types: list[StrictStr] | None = None

    _check_currency = field_validator("currency")(_currency)
    _check_metadata = field_validator("metadata")(_metadata)
    _check_confirm = field_validator("confirm", mode="before")(form_bool)
    _check_payment_method = field_validator("payment_method")(_payment_method)
    _check_types = field_validator("payment_method_types")(_card_only)

    @model_validator(mode="after")
    def _confirmable(self) -> IntentCreate:
        if self.confirm and self.payment_method is None:
            message = "You cannot confirm this PaymentIntent because it's missing a payment method."
            raise InvalidRequest(message, code="payment_intent_unexpected_state", param="payment_method")
        return self


class IntentUpdate(_CardFree):
    """Only the fields sent change; amount, currency, capture method, payment method and customer only
    before the intent is confirmed."""

    amount: Amount | None = None
    currency: StrictStr | None = None
    capture_method: CaptureMethod | None = None
    payment_method: StrictStr | None = None
    customer: _CustomerId | None = None
    description: _Description | None = None
    metadata: MetadataUpdate = None
    payment_method_types: list[StrictStr] | None = None

    _check_currency = field_validator("currency")(lambda v: None if v is None else _currency(v))
    _check_metadata = field_validator("metadata", mode="before")(_metadata_update)
    _check_payment_method = field_validator("payment_method")(_payment_method)
    _check_types = field_validator("payment_method_types")(_card_only)


class IntentConfirm(_CardFree):
    payment_method: StrictStr | None = None

    _check_payment_method = field_validator("payment_method")(_payment_method)


class IntentCapture(StrictBody):
    #: of the authorized amount; the rest is released. All of it when absent.
    amount_to_capture: Amount | None = None


class IntentCancel(StrictBody):
    cancellation_reason: Literal["duplicate", "fraudulent", "requested_by_customer", "abandoned"] | None = (
        None
    )
