"""PSP webhook events, validated before any use: a signed event is the PSP's word, but its fields still reach
SQL and logs, so a wrong type or a control character is a 400 that names the field, never a 500.

Only the fields the webhook flow reads are checked; the rest of Stripe's objects pass through untouched.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from payray.errors import InvalidRequest
from payray.money import CURRENCY_EXPONENTS
from payray.text import describe, forbidden_character


def _identifier(value: str) -> str:
    bad = forbidden_character(value, free_text=False)
    if bad is not None:
        raise ValueError(f"holds the control character {describe(bad)}")
    return value


def _free_text(value: str) -> str:
    bad = forbidden_character(value, free_text=True)
    if bad is not None:
        raise ValueError(f"holds the control character {describe(bad)}")
    return value


def _currency(value: str) -> str:
    if value not in CURRENCY_EXPONENTS:
        raise ValueError(f"unsupported currency {value!r}")
    return value


Id = Annotated[StrictStr, Field(min_length=1, max_length=255), AfterValidator(_identifier)]
Text = Annotated[StrictStr, Field(max_length=5000), AfterValidator(_free_text)]
Count = Annotated[StrictInt, Field(ge=0)]


class _PspObject(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ChargeObject(_PspObject):
    """The PSP's charge in ``charge.succeeded``, ``charge.failed`` and ``charge.refunded``."""

    id: Id
    payment_intent: Id | None = None
    metadata: dict[Id, Text] = Field(default_factory=dict)
    amount_refunded: Count = 0
    failure_code: Id | None = None
    failure_message: Text | None = None


class DisputeObject(_PspObject):
    """The PSP's dispute in ``charge.dispute.created`` and ``charge.dispute.closed``."""

    id: Id
    payment_intent: Id | None = None
    metadata: dict[Id, Text] = Field(default_factory=dict)
    amount: Annotated[StrictInt, Field(ge=1)]
    currency: Annotated[StrictStr, AfterValidator(_currency)]
    reason: Id | None = None
    status: Id


class _AnyObject(_PspObject):
    """An event the flow does not act on: only its id is recorded."""

    id: Id | None = None


_OBJECTS: dict[str, type[_PspObject]] = {
    "charge.succeeded": ChargeObject,
    "charge.failed": ChargeObject,
    "charge.refunded": ChargeObject,
    "charge.dispute.created": DisputeObject,
    "charge.dispute.closed": DisputeObject,
}


class _Data(BaseModel):
    object: dict[str, Any]


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Id
    type: Id
    data: _Data


def parse_event(raw: Any) -> dict[str, Any]:
    """The event with its object checked for its type (values the flow reads are of the right type and hold
    no control character); raises ``InvalidRequest`` naming the first offending field."""
    envelope = _validated(_Envelope, raw, "")
    model = _OBJECTS.get(envelope.type, _AnyObject)
    checked = _validated(model, envelope.data.object, "data[object]")
    obj = {**envelope.data.object, **checked.model_dump(exclude_unset=False)}
    return {**raw, "id": envelope.id, "type": envelope.type, "data": {**raw["data"], "object": obj}}


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], raw: Any, prefix: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ())]
        param = prefix + "".join(f"[{p}]" for p in loc) if prefix else _bracketed(loc)
        message = f"The event's {param or 'body'} is invalid: {first['msg']}"
        raise InvalidRequest(message, param=param) from None


def _bracketed(loc: list[str]) -> str:
    return loc[0] + "".join(f"[{p}]" for p in loc[1:]) if loc else ""
