"""Braintree's decimal amount strings ("10.00") to integer minor units and back; never a float."""

from __future__ import annotations

import re
from typing import Any

from psp.emulator.braintree.errors import Code, FieldError

CURRENCY = "USD"
MAX_MINOR = 9_999_999_999
_AMOUNT = re.compile(r"^(-?)(\d{1,12})(?:\.(\d{1,2}))?$")


def parse(raw: Any, path: tuple[str, ...] = ("transaction",)) -> int:
    """Minor units of a USD amount, or the field error Braintree gives for it."""
    if raw is None or raw == "":
        raise AmountError(FieldError(Code.AmountIsRequired, "amount", path))
    match = _AMOUNT.match(str(raw).strip())
    if match is None:
        raise AmountError(FieldError(Code.AmountIsInvalid, "amount", path))
    sign, whole, cents = match.groups()
    value = int(whole) * 100 + int((cents or "0").ljust(2, "0"))
    if sign:
        raise AmountError(FieldError(Code.AmountCannotBeNegative, "amount", path))
    if value == 0:
        raise AmountError(FieldError(Code.AmountMustBeGreaterThanZero, "amount", path))
    if value > MAX_MINOR:
        raise AmountError(FieldError(Code.AmountIsTooLarge, "amount", path))
    return value


def text(minor: int) -> str:
    """``1050`` → ``"10.50"``."""
    whole, cents = divmod(abs(minor), 100)
    return f"{'-' if minor < 0 else ''}{whole}.{cents:02d}"


class AmountError(ValueError):
    def __init__(self, error: FieldError) -> None:
        super().__init__(error.code.message)
        self.error = error
