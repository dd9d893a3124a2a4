"""What a charge or refund does to the balance: fees, net and when the money becomes available."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

FEE_BPS = 290
FIXED_FEE: dict[str, int] = {"usd": 30, "cad": 30, "aud": 30, "nzd": 30, "chf": 30, "eur": 25, "gbp": 20}
ZERO_DECIMAL = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)
ZERO_DECIMAL_FIXED_FEE: dict[str, int] = {"jpy": 40, "krw": 400}
SETTLEMENT_DAYS = 2


def processing_fee(amount: int, currency: str) -> int:
    """2.9 % + a fixed fee in the currency's minor units, rounded half up, never more than the amount."""
    cur = currency.lower()
    fixed = ZERO_DECIMAL_FIXED_FEE.get(cur, 0) if cur in ZERO_DECIMAL else FIXED_FEE.get(cur, 30)
    fee = (amount * FEE_BPS + 5_000) // 10_000 + fixed
    return min(fee, amount)


def available_on(created: int) -> int:
    """Midnight UTC, ``SETTLEMENT_DAYS`` days after the day of ``created``."""
    day = datetime.fromtimestamp(created, UTC).date() + timedelta(days=SETTLEMENT_DAYS)
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
