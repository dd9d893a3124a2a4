"""Which entries each business event makes: the ledger's rules as pure data, no IO.

A ``Posting`` is one balanced ledger transaction waiting to be written: a kind (``capture``, ``refund``,
…), an external reference unique within that kind (the payment, refund or payout id, which makes reposting
a no-op), and its entries. It refuses to exist unbalanced, so a bug in a builder fails here, in the caller's
process, before it reaches the database (which refuses it again: see ``ledger/migrations/0002_ledger.sql``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from payray.fees import fee_for as fee_for  # the fee rules live in the core; callers may import them here
from payray.fees import refund_fee_share as refund_fee_share
from payray.money import CurrencyMismatch, Money

Direction = Literal["debit", "credit"]
Scope = Literal["house", "merchant"]

#: The chart of accounts: name → (normal side, scope). Mirrors the ``account_types`` table.
CHART: dict[str, tuple[Direction, Scope]] = {
    "psp_receivable": ("debit", "house"),
    "bank_cash": ("debit", "house"),
    "psp_fees": ("debit", "house"),
    "platform_fees": ("credit", "house"),
    "payouts_in_transit": ("credit", "house"),
    "merchant_payable": ("credit", "merchant"),
    "dispute_hold": ("credit", "merchant"),
    "psp_authorized": ("debit", "house"),
    "authorized_hold": ("credit", "merchant"),
}

CAPTURE = "capture"
REFUND = "refund"
REFUND_REVERSAL = "refund_reversal"
PAYOUT = "payout"
SETTLEMENT = "settlement"
DISPUTE_HOLD = "dispute_hold"
DISPUTE_RELEASE = "dispute_release"
DISPUTE_LOSS = "dispute_loss"
AUTHORIZATION = "authorization"
AUTHORIZATION_RELEASE = "authorization_release"


class InvalidPosting(ValueError):
    """A posting whose entries cannot form a valid double-entry transaction."""


@dataclass(frozen=True, slots=True)
class AccountRef:
    """An account by name, currency and owner (``None`` for the platform's own house accounts)."""

    name: str
    currency: str
    merchant_id: str | None = None

    def __post_init__(self) -> None:
        if self.name not in CHART:
            raise InvalidPosting(f"unknown account {self.name!r}; expected one of {sorted(CHART)}")
        scope = CHART[self.name][1]
        if scope == "house" and self.merchant_id is not None:
            raise InvalidPosting(f"house account {self.name} cannot belong to merchant {self.merchant_id}")
        if scope == "merchant" and not self.merchant_id:
            raise InvalidPosting(f"merchant account {self.name} needs a merchant id")


@dataclass(frozen=True, slots=True)
class Entry:
    account: AccountRef
    direction: Direction
    amount: Money

    def __post_init__(self) -> None:
        if self.direction not in ("debit", "credit"):
            raise InvalidPosting(f"direction must be 'debit' or 'credit', got {self.direction!r}")
        if not isinstance(self.amount, Money):
            raise TypeError(f"entry amount must be Money, got {type(self.amount).__name__}")
        if self.amount.currency != self.account.currency:
            raise CurrencyMismatch(
                f"{self.amount.currency} entry on {self.account.currency} account {self.account.name}"
            )
        if not self.amount.is_positive():
            raise InvalidPosting(f"entry amounts must be positive, got {self.amount.amount}")

    def reversed(self) -> Entry:
        """The same amount on the same account, on the other side."""
        return Entry(self.account, "credit" if self.direction == "debit" else "debit", self.amount)


@dataclass(frozen=True, slots=True)
class Statement:
    """SQL that a posting completes: run in the posting's own database transaction, and only if the posting
    is written (a charge's booked transitions and stored answer), so both commit or neither does. It returns a
    row when it took effect and none when it did not (for example its guard found the row moved on)."""

    sql: str
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Posting:
    """One ledger transaction: at least two entries, debits equal credits in every currency.

    ``require_funds`` asks the database to refuse the posting (``balance_insufficient``) if it would leave a
    ``merchant_payable`` balance it debits below zero: the durable backstop behind the wallet's own check.
    ``completes`` is what else its transaction writes, if it is written (see ``Statement``).
    """

    kind: str
    external_ref: str
    merchant_id: str | None
    entries: tuple[Entry, ...]
    description: str = ""
    posting_date: date | None = None
    require_funds: bool = False
    completes: Statement | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not self.kind or not self.external_ref:
            raise InvalidPosting("a posting needs a kind and an external reference")
        if not isinstance(self.entries, tuple):
            object.__setattr__(self, "entries", tuple(self.entries))
        if len(self.entries) < 2:
            raise InvalidPosting(f"{self.kind} {self.external_ref}: at least two entries are required")
        net: dict[str, int] = defaultdict(int)
        for entry in self.entries:
            owner = entry.account.merchant_id
            if owner is not None and owner != self.merchant_id:
                raise InvalidPosting(
                    f"{self.kind} {self.external_ref} for merchant {self.merchant_id} "
                    f"touches an account of merchant {owner}"
                )
            sign = 1 if entry.direction == "debit" else -1
            net[entry.amount.currency] += sign * entry.amount.amount
        unbalanced = {currency: n for currency, n in net.items() if n != 0}
        if unbalanced:
            raise InvalidPosting(
                f"{self.kind} {self.external_ref} does not balance (debits - credits: {unbalanced})"
            )

    @property
    def currencies(self) -> frozenset[str]:
        return frozenset(entry.amount.currency for entry in self.entries)


def debit(account: AccountRef, amount: Money) -> Entry:
    return Entry(account, "debit", amount)


def credit(account: AccountRef, amount: Money) -> Entry:
    return Entry(account, "credit", amount)


def _lines(*entries: Entry | None) -> tuple[Entry, ...]:
    return tuple(e for e in entries if e is not None)


def _line(account: AccountRef, direction: Direction, amount: Money) -> Entry | None:
    """An entry, or nothing for a zero amount (a zero line is noise, and the database refuses it)."""
    return Entry(account, direction, amount) if amount.amount != 0 else None


def _check_amount_and_fee(amount: Money, fee: Money, what: str) -> None:
    if amount.currency != fee.currency:
        raise CurrencyMismatch(f"{what} in {amount.currency} with a fee in {fee.currency}")
    if not amount.is_positive():
        raise ValueError(f"{what} amount must be positive, got {amount.amount}")
    if fee.amount < 0 or fee > amount:
        raise ValueError(f"{what} fee must be between 0 and the amount ({amount.amount}), got {fee.amount}")


@dataclass(frozen=True, slots=True)
class Transfer:
    """A business event that moves one amount from one account to another: debit ``source``, credit
    ``target``. The accounts are named from the chart; a merchant-scoped one is the posting merchant's.
    Called with the event's id, the merchant and the amount, it builds the event's posting."""

    kind: str
    source: str
    target: str
    what: str  # the amount, as its errors name it
    description: str  # with ``{ref}`` for the external reference
    require_funds: bool = False

    def __call__(
        self, ref: str, merchant_id: str, amount: Money, *, posting_date: date | None = None
    ) -> Posting:
        if not amount.is_positive():
            raise ValueError(f"{self.what} amount must be positive, got {amount.amount}")
        return Posting(
            kind=self.kind,
            external_ref=ref,
            merchant_id=merchant_id,
            entries=(
                debit(_account(self.source, amount.currency, merchant_id), amount),
                credit(_account(self.target, amount.currency, merchant_id), amount),
            ),
            description=self.description.format(ref=ref),
            posting_date=posting_date,
            require_funds=self.require_funds,
        )


def _account(name: str, currency: str, merchant_id: str) -> AccountRef:
    """The account ``name`` in ``currency``: the merchant's own if the chart scopes it to merchants."""
    return AccountRef(name, currency, merchant_id if CHART[name][1] == "merchant" else None)


#: Funds leave the merchant's available balance on their way to its bank.
payout_posting = Transfer(
    PAYOUT, "merchant_payable", "payouts_in_transit", "payout", "payout {ref}", require_funds=True
)
#: A dispute opened: the disputed amount moves from the merchant's balance to a hold.
dispute_hold_posting = Transfer(
    DISPUTE_HOLD, "merchant_payable", "dispute_hold", "disputed", "hold for dispute {ref}"
)
#: A dispute won: the hold returns to the merchant's balance.
dispute_release_posting = Transfer(
    DISPUTE_RELEASE, "dispute_hold", "merchant_payable", "released", "release of dispute {ref}"
)
#: A dispute lost: the PSP claws the held funds back.
dispute_loss_posting = Transfer(
    DISPUTE_LOSS, "dispute_hold", "psp_receivable", "lost", "loss of dispute {ref}"
)


#: Authorized at the PSP, not captured: a hold, outside the merchant's available balance.
hold_posting = Transfer(
    AUTHORIZATION, "psp_authorized", "authorized_hold", "authorized", "authorization of {ref}"
)
#: An authorization the PSP let go (canceled, or expired) without a capture: its hold is released.
release_posting = Transfer(
    AUTHORIZATION_RELEASE, "authorized_hold", "psp_authorized", "released", "release of authorization {ref}"
)


def capture_posting(
    payment_id: str,
    merchant_id: str,
    amount: Money,
    fee: Money,
    *,
    posting_date: date | None = None,
    authorized: Money | None = None,
) -> Posting:
    """Captured at the PSP: the PSP owes us ``amount``; the merchant is owed it less our fee.

    A capture of an authorization (``authorized``: the amount its hold booked) releases the whole hold in
    the same transaction: the captured part becomes the merchant's, the rest is let go."""
    _check_amount_and_fee(amount, fee, "capture")
    currency = amount.currency
    if authorized is not None and (authorized.currency != currency or authorized < amount):
        raise InvalidPosting(f"capture of {payment_id}: {amount} is more than the {authorized} authorized")
    return Posting(
        kind=CAPTURE,
        external_ref=payment_id,
        merchant_id=merchant_id,
        entries=_lines(
            _line(AccountRef("psp_receivable", currency), "debit", amount),
            _line(AccountRef("merchant_payable", currency, merchant_id), "credit", amount - fee),
            _line(AccountRef("platform_fees", currency), "credit", fee),
            *(
                ()
                if authorized is None
                else (
                    debit(AccountRef("authorized_hold", currency, merchant_id), authorized),
                    credit(AccountRef("psp_authorized", currency), authorized),
                )
            ),
        ),
        description=f"capture of {payment_id}",
        posting_date=posting_date,
    )


def refund_posting(
    refund_id: str, merchant_id: str, amount: Money, fee_returned: Money, *, posting_date: date | None = None
) -> Posting:
    """The reverse of a capture for ``amount``; ``fee_returned`` is the part of our fee we give back."""
    _check_amount_and_fee(amount, fee_returned, "refund")
    currency = amount.currency
    return Posting(
        kind=REFUND,
        external_ref=refund_id,
        merchant_id=merchant_id,
        entries=_lines(
            _line(AccountRef("merchant_payable", currency, merchant_id), "debit", amount - fee_returned),
            _line(AccountRef("platform_fees", currency), "debit", fee_returned),
            _line(AccountRef("psp_receivable", currency), "credit", amount),
        ),
        description=f"refund {refund_id}",
        posting_date=posting_date,
    )


def refund_reversal_posting(
    refund_id: str, merchant_id: str, amount: Money, fee_returned: Money, *, posting_date: date | None = None
) -> Posting:
    """A refund the PSP refused after we booked it: exactly the reverse of its ``refund_posting``."""
    booked = refund_posting(refund_id, merchant_id, amount, fee_returned, posting_date=posting_date)
    return Posting(
        kind=REFUND_REVERSAL,
        external_ref=refund_id,
        merchant_id=merchant_id,
        entries=tuple(entry.reversed() for entry in booked.entries),
        description=f"reversal of refund {refund_id}",
        posting_date=posting_date,
    )


def settlement_posting(
    settlement_ref: str, gross: Money, fee: Money | None = None, *, posting_date: date | None = None
) -> Posting:
    """The PSP settled ``gross`` of what it owed us into our bank, keeping ``fee`` (reconciliation's matches).

    Either may be negative: a day whose refunds exceed its charges takes cash back out of the bank, and a
    returned fee is income. The bank moves by the net; the receivable by the gross.
    """
    fee = Money.zero(gross.currency) if fee is None else fee
    net = gross - fee
    if gross.amount == 0 and fee.amount == 0:
        raise ValueError("a settlement needs a non-zero gross or fee")
    currency = gross.currency

    def signed(account: str, amount: Money, normal: Direction) -> Entry | None:
        if amount.amount < 0:
            flipped: Direction = "credit" if normal == "debit" else "debit"
            return _line(AccountRef(account, currency), flipped, -amount)
        return _line(AccountRef(account, currency), normal, amount)

    return Posting(
        kind=SETTLEMENT,
        external_ref=settlement_ref,
        merchant_id=None,
        entries=_lines(
            signed("bank_cash", net, "debit"),
            signed("psp_fees", fee, "debit"),
            signed("psp_receivable", gross, "credit"),
        ),
        description=f"settlement {settlement_ref}",
        posting_date=posting_date,
    )
