"""The five invariants of DESIGN.md, checked against the simulated PSP and ledger at the end of every run.

1. No double capture: each order (what one customer meant to pay once) is captured at most once, net of
   refunds.
2. Every ledger transaction balances.
3. Each wallet equals its merchant's ledger accounts.
4. What the PSP holds and what the ledger says it holds agree for every payment, refunds included.
5. After the quiet phase, with the PSP reachable again, no payment or refund is left unfinished.

Plus the nightly reconciliation's own promise: it names every difference between the PSP's report and the
ledger, drift included, and nothing else.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sim.refunds import SimRefunds
from sim.service import SimService
from sim.world import SimPsp

INVARIANTS = (
    "no_double_capture",
    "ledger_balanced",
    "wallets_match_ledger",
    "psp_matches_ledger",
    "no_pending_after_recovery",
    "reconciliation_exact",
)


@dataclass(frozen=True)
class Violation:
    invariant: str
    payment: str | None
    detail: str


def check(
    service: SimService,
    refunds: SimRefunds,
    real: dict[str, tuple[int, int]],
    drift: dict[str, int],
    found: dict[str, int],
) -> list[Violation]:
    """Every violation, in a stable order: invariant by invariant, then by payment id. ``real`` is
    ``differences(service)``, computed once by the caller."""
    psp, ledger = service.psp, service.db.ledger
    violations: list[Violation] = []

    kept_by_order: dict[int, list[str]] = defaultdict(list)
    for capture in psp.captures:
        if not capture.refunded:
            kept_by_order[capture.order_id].append(capture.payment_id)
    for order_id, payments in sorted(kept_by_order.items()):
        if len(payments) > 1:
            detail = f"order {order_id} captured {len(payments)} times: {', '.join(payments)}"
            violations.append(Violation("no_double_capture", payments[-1], detail))

    for (kind, ref), posting in ledger.transactions.items():  # the simulated ledger books one currency
        net = sum(e.amount.amount if e.direction == "debit" else -e.amount.amount for e in posting.entries)
        if net:
            violations.append(Violation("ledger_balanced", ref, f"{kind} {ref} is off by {net}"))

    booked: dict[str, int] = defaultdict(int)
    for posting in ledger.transactions.values():
        for entry in posting.entries:
            if entry.account.name == "merchant_payable" and entry.account.merchant_id:
                sign = 1 if entry.direction == "credit" else -1
                booked[entry.account.merchant_id] += sign * entry.amount.amount
    for merchant in sorted(set(booked) | set(ledger.wallets)):
        if booked[merchant] != ledger.wallets.get(merchant, 0):
            detail = (
                f"wallet {merchant} holds {ledger.wallets.get(merchant, 0)}, its ledger {booked[merchant]}"
            )
            violations.append(Violation("wallets_match_ledger", None, detail))

    for payment_id, (at_psp, in_ledger) in real.items():
        detail = f"the PSP holds {at_psp} of it, the ledger {in_ledger}"
        violations.append(Violation("psp_matches_ledger", payment_id, detail))

    for payment_id, payment in sorted(service.unfinished.items()):
        detail = f"still {payment.state.value} after recovery with the PSP reachable"
        violations.append(Violation("no_pending_after_recovery", payment_id, detail))
    for refund_id, refund in sorted(refunds.unfinished.items()):
        detail = f"refund {refund_id} still {refund.state.value} after recovery with the PSP reachable"
        violations.append(Violation("no_pending_after_recovery", refund.payment.id, detail))

    expected = {kind: n for kind, n in {**drift, "real_differences": len(real)}.items() if n}
    if found != expected:
        violations.append(Violation("reconciliation_exact", None, f"found {found}, expected {expected}"))
    return violations


def psp_net(psp: SimPsp) -> dict[str, int]:
    """What the PSP holds of each payment: its captures not refunded in full, less its partial refunds."""
    held: dict[str, int] = defaultdict(int)
    for capture in psp.captures:
        if not capture.refunded:
            held[capture.payment_id] += capture.amount
    for payment_id, amount in psp.refunded.items():
        held[payment_id] -= amount
    return held


def ledger_net(service: SimService, refunds: SimRefunds) -> dict[str, int]:
    """What the ledger says the PSP holds of each payment: the PSP receivable's movements, by payment."""
    held: dict[str, int] = defaultdict(int)
    for (kind, ref), posting in service.db.ledger.transactions.items():
        if kind == "capture":
            payment_id = ref
        elif ref.startswith("compensation-"):
            payment_id = ref.removeprefix("compensation-")
        else:
            payment_id = refunds.refunds[ref].payment.id
        for entry in posting.entries:
            if entry.account.name == "psp_receivable":
                held[payment_id] += (
                    entry.amount.amount if entry.direction == "debit" else -entry.amount.amount
                )
    return held


def differences(service: SimService, refunds: SimRefunds) -> dict[str, tuple[int, int]]:
    """Payments whose money at the PSP differs from what the ledger says the PSP holds:
    ``payment id -> (at the PSP, in the ledger)``."""
    at_psp, in_ledger = psp_net(service.psp), ledger_net(service, refunds)
    return {
        p: (at_psp.get(p, 0), in_ledger.get(p, 0))
        for p in sorted(set(at_psp) | set(in_ledger))
        if at_psp.get(p, 0) != in_ledger.get(p, 0)
    }
