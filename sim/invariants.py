"""The five invariants of DESIGN.md, checked against the simulated PSP and ledger at the end of every run.

1. no double capture: each order (what one customer meant to pay once) is captured at most once, net of
   refunds; 2. every ledger transaction balances; 3. each wallet equals its merchant's ledger accounts;
4. what the PSP holds and what the ledger says agree for every payment; 5. after the quiet phase, with the
PSP reachable again, no payment is left unfinished. Plus the nightly reconciliation's own promise: it names
every difference between the PSP's report and the ledger, drift included, and nothing else.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sim.service import SimService

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
    service: SimService, real: dict[str, tuple[int, int]], drift: dict[str, int], found: dict[str, int]
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

    expected = {kind: n for kind, n in {**drift, "real_differences": len(real)}.items() if n}
    if found != expected:
        violations.append(Violation("reconciliation_exact", None, f"found {found}, expected {expected}"))
    return violations


def differences(service: SimService) -> dict[str, tuple[int, int]]:
    """Payments whose money at the PSP (captures not refunded) differs from the ledger's (capture less its
    compensation): ``payment id -> (at the PSP, in the ledger)``."""
    at_psp: dict[str, int] = defaultdict(int)
    for capture in service.psp.captures:
        if not capture.refunded:
            at_psp[capture.payment_id] += capture.amount
    in_ledger: dict[str, int] = defaultdict(int)
    for (kind, ref), posting in service.db.ledger.transactions.items():
        amount = sum(e.amount.amount for e in posting.entries if e.account.name == "psp_receivable")
        if kind == "capture":
            in_ledger[ref] += amount
        elif ref.startswith("compensation-"):
            in_ledger[ref.removeprefix("compensation-")] -= amount
    return {
        p: (at_psp[p], in_ledger[p])
        for p in sorted(set(at_psp) | set(in_ledger))
        if at_psp[p] != in_ledger[p]
    }
