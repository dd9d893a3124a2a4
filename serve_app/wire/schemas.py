"""Request bodies, validated strictly: a wrong type is an error, never a coercion."""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from payray.money import CURRENCY_EXPONENTS, MAX_CHARGE_AMOUNT

_CARD_NUMBER = re.compile(r"^[\d \-]{12,23}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_]{3,255}$")

Amount = Annotated[StrictInt, Field(ge=1, le=MAX_CHARGE_AMOUNT)]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _currency(value: str) -> str:
    if value not in CURRENCY_EXPONENTS:
        raise ValueError(
            f"unsupported currency {value!r}; supported: {', '.join(sorted(CURRENCY_EXPONENTS))}"
        )
    return value


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 50:
        raise ValueError("at most 50 metadata keys")
    for k, v in value.items():
        if not 1 <= len(k) <= 40:
            raise ValueError("metadata keys are 1 to 40 characters")
        if len(v) > 500:
            raise ValueError("metadata values are at most 500 characters")
    return value


class ChargeCreate(StrictBody):
    amount: Amount
    currency: StrictStr
    payment_method: StrictStr
    description: Annotated[StrictStr, Field(max_length=1000)] | None = None
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    customer: Annotated[StrictStr, Field(min_length=1, max_length=255)] | None = None

    _check_currency = field_validator("currency")(_currency)
    _check_metadata = field_validator("metadata")(_metadata)

    @field_validator("payment_method")
    @classmethod
    def _no_card_data(cls, value: str) -> str:
        if _CARD_NUMBER.match(value) and sum(c.isdigit() for c in value) >= 12:
            raise ValueError("raw card numbers are never accepted; pass a PSP payment method token")
        if not _TOKEN.match(value):
            raise ValueError("payment_method must be a PSP token such as pm_card_visa")
        return value


class RefundCreate(StrictBody):
    charge: Annotated[StrictStr, Field(pattern=r"^ch_[A-Za-z0-9]{1,64}$")]
    amount: Amount | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    _check_metadata = field_validator("metadata")(_metadata)


class PayoutCreate(StrictBody):
    amount: Amount
    currency: StrictStr

    _check_currency = field_validator("currency")(_currency)


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


def validation_param(errors: list[dict[str, Any]]) -> str | None:
    """The dotted name of the first offending field, as Stripe's ``param``."""
    if not errors:
        return None
    loc = [str(part) for part in errors[0].get("loc", ()) if part != "__root__"]
    return "[".join(loc[:1]) + "".join(f"[{p}]" for p in loc[1:]) if loc else None
