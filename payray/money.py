"""Money as integer minor units with a currency; never a float.

Every amount in payray is a count of the currency's minor unit (cents for ``usd``, yen for ``jpy``, fils
for ``kwd``). ``Money`` refuses arithmetic across currencies, so a mixed-currency sum is an error at the
point it happens rather than a silent imbalance in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

#: Supported ISO 4217 currencies and the number of decimal places of their minor unit.
CURRENCY_EXPONENTS: dict[str, int] = {
    "usd": 2,
    "eur": 2,
    "gbp": 2,
    "chf": 2,
    "cad": 2,
    "aud": 2,
    "jpy": 0,
    "kwd": 3,
}

MAX_CHARGE_AMOUNT = 99_999_999


class CurrencyMismatch(ValueError):
    """Two amounts of different currencies met in one operation."""


class UnknownCurrency(ValueError):
    """A currency code outside the supported set."""


def check_currency(code: str) -> str:
    if code not in CURRENCY_EXPONENTS:
        raise UnknownCurrency(f"unsupported currency {code!r}; expected one of {sorted(CURRENCY_EXPONENTS)}")
    return code


@dataclass(frozen=True, slots=True, order=False)
class Money:
    """An amount in minor units of one currency. Negative values are allowed (balances, reversals)."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.amount) is not int:
            raise TypeError(f"Money amount must be an int of minor units, got {type(self.amount).__name__}")
        check_currency(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency} cannot be combined")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def is_positive(self) -> bool:
        return self.amount > 0

    def fraction_bps(self, basis_points: int) -> Money:
        """``amount * basis_points / 10_000`` rounded half away from zero, in integer arithmetic."""
        numerator = abs(self.amount) * basis_points
        quotient, remainder = divmod(numerator, 10_000)
        if remainder * 2 >= 10_000:
            quotient += 1
        return Money(quotient if self.amount >= 0 else -quotient, self.currency)

    def allocate(self, ratios: list[int]) -> list[Money]:
        """Split into parts proportional to ``ratios`` whose sum is exactly this amount (no cent lost)."""
        if not ratios or any(r < 0 for r in ratios) or sum(ratios) == 0:
            raise ValueError("ratios must be non-negative and not all zero")
        total = sum(ratios)
        parts = [self.amount * r // total for r in ratios]
        # Hand the leftover units, one each, to the parts with a share, in order.
        sharing = [i for i, r in enumerate(ratios) if r > 0]
        for i in range(self.amount - sum(parts)):
            parts[sharing[i % len(sharing)]] += 1
        return [Money(p, self.currency) for p in parts]

    def to_decimal(self) -> Decimal:
        """For display only: ``Money(1050, 'usd')`` is ``Decimal('10.50')``."""
        exponent = CURRENCY_EXPONENTS[self.currency]
        return Decimal(self.amount).scaleb(-exponent)

    def __str__(self) -> str:
        return f"{self.to_decimal()} {self.currency.upper()}"
