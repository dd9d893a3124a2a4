"""Our fee on a charge, and what a refund gives back of it: pure rules, no IO.

A charge's fee is taken once, at capture. A refund returns the customer's money and, with it, its share of
that fee, so the merchant is never charged a fee on money it did not keep. Shares are cumulative, so any
sequence of partial refunds gives back exactly the capture fee once the whole charge is refunded.
"""

from __future__ import annotations

from dataclasses import dataclass

from payray.money import Money


def fee_for(amount: Money, fee_bps: int) -> Money:
    """Our fee on ``amount`` at ``fee_bps`` basis points, rounded half up, never more than the amount."""
    if fee_bps < 0:
        raise ValueError(f"fee_bps must be non-negative, got {fee_bps}")
    if amount.amount < 0:
        raise ValueError(f"cannot take a fee on a negative amount ({amount.amount})")
    fee = amount.fraction_bps(fee_bps)
    return fee if fee <= amount else amount


def refund_fee_share(fee: Money, charged: int, refunded_before: int, refunding: int) -> Money:
    """The part of a charge's ``fee`` that a refund of ``refunding`` returns, after ``refunded_before``.

    Shares are taken cumulatively (floor of ``fee * refunded / charged`` after minus before), so any sequence
    of partial refunds returns exactly ``fee`` once the whole charge is refunded, never a cent more.
    """
    if not (refunded_before >= 0 and refunding > 0 and refunded_before + refunding <= charged):
        raise ValueError(f"cannot refund {refunding} after {refunded_before} of a charge of {charged}")
    after = fee.amount * (refunded_before + refunding) // charged
    before = fee.amount * refunded_before // charged
    return Money(after - before, fee.currency)


class RefundRefused(ValueError):
    """The charge cannot be refunded as asked."""


class NothingLeftToRefund(RefundRefused):
    """The charge is refunded in full already."""


class RefundTooLarge(RefundRefused):
    """More was asked than is left to refund on the charge."""

    def __init__(self, requested: int, refundable: int) -> None:
        super().__init__(f"cannot refund {requested}: {refundable} is left to refund")
        self.requested = requested
        self.refundable = refundable


@dataclass(frozen=True, slots=True)
class RefundTerms:
    """What a refund returns: ``amount`` to the customer, of which ``fee_returned`` is our fee given back
    (so the merchant's balance pays ``amount - fee_returned``)."""

    amount: Money
    fee_returned: Money


def refund_terms(
    charged: Money, capture_fee: Money, refunded_before: int, requested: int | None, *, capped: bool = False
) -> RefundTerms:
    """The terms of refunding ``requested`` of a charge of ``charged``, whose capture took ``capture_fee``,
    after ``refunded_before`` was refunded (or reserved for refunds under way). ``requested`` ``None`` refunds
    what is left. A ``capped`` refund is one already made elsewhere (by the PSP): it counts up to what is
    left instead of being refused for asking more.

    Raises ``NothingLeftToRefund`` when nothing is left, ``RefundTooLarge`` when more is asked than is left
    (unless ``capped``), ``RefundRefused`` for an amount that is not positive.
    """
    refundable = charged.amount - refunded_before
    if refundable <= 0:
        raise NothingLeftToRefund(f"all {charged.amount} of the charge is refunded already")
    amount = refundable if requested is None else requested
    if amount <= 0:
        raise RefundRefused(f"a refund must be of a positive amount, got {amount}")
    if amount > refundable:
        if not capped:
            raise RefundTooLarge(amount, refundable)
        amount = refundable
    share = refund_fee_share(capture_fee, charged.amount, refunded_before, amount)
    return RefundTerms(Money(amount, charged.currency), share)
