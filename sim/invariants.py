"""The five invariants of DESIGN.md, checked against the simulated PSP and ledger at the end of every run.

1. No double capture: each order (what one customer meant to pay once) is captured at most once, net of
   refunds, at every PSP together; an authorization is captured at most once, and never both captured and
   released. Across PSPs: one payment (one idempotency key) moves money at most once, so its net capture
   summed over the PSPs is at most its amount, and at most one PSP holds any of it.
2. Every ledger transaction balances.
3. Each wallet equals its merchant's ledger accounts, and lives in the host its merchant's slot names.
4. What each PSP holds and what the ledger says that PSP holds agree for every charge, refunds included (a
   late success given back counts at the PSP it landed at); and so do their holds: each authorization open
   at the PSP is the charge's hold in ``authorized_hold`` (so their sum
   is the ``psp_authorized`` balance), a captured one's amount is its capture posting's, and a charge past
   its authorization holds nothing.
5. After the quiet phase, with the PSP reachable again, no charge or refund is left unfinished, but for
   authorizations resting in ``requires_capture``, and none of those past its expiry.

Plus the nightly reconciliation's own promise: it names every difference between the PSP's report and the
ledger, drift included, and nothing else; and the PaymentIntents' own: each intent says what its charge says.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ledger.postings import AUTHORIZATION, AUTHORIZATION_RELEASE, CAPTURE
from payray import intent as intent_machine
from payray.charge import HOLDING
from sim.config import AUTHORIZATION_S
from sim.refunds import SimRefunds
from sim.service import SimService
from sim.world import SimPsp

INVARIANTS = (
    "no_double_capture",
    "one_capture_across_psps",
    "ledger_balanced",
    "wallets_match_ledger",
    "psp_matches_ledger",
    "no_pending_after_recovery",
    "reconciliation_exact",
    "intents_follow_charges",
)


#: PSP name -> charge id -> an amount (what the PSP holds of it, or what the ledger says that PSP holds)
Nets = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Violation:
    invariant: str
    charge: str | None
    detail: str


def check(
    service: SimService,
    refunds: SimRefunds,
    real: Mapping[str, dict[str, tuple[int, int]]],
    drift: dict[str, int],
    found: dict[str, int],
    at_psp: Nets,
) -> list[Violation]:
    """Every violation, in a stable order: invariant by invariant, then by charge id. ``real`` is each PSP's
    ``differences(…)`` and ``at_psp`` each PSP's ``psp_net``, computed once by the caller."""
    ledger = service.db.ledger
    violations: list[Violation] = _double_captures(service)
    violations += across_psps(at_psp, functools.partial(_amount_of, service))

    booked: dict[str, int] = defaultdict(int)
    for (kind, ref), (merchant, effect) in ledger.transactions.items():  # the simulation books one currency
        if effect.imbalance:
            violations.append(Violation("ledger_balanced", ref, f"{kind} {ref} is off by {effect.imbalance}"))
        booked[merchant] += effect.payable
    for _kind, _ref, merchant, effect in ledger.repeated:
        booked[merchant] += effect.payable
    for merchant in sorted(set(booked) | set(ledger.balances)):
        if booked[merchant] != ledger.balances.get(merchant, 0):
            held = ledger.balances.get(merchant, 0)
            detail = f"{merchant}'s balance row holds {held}, its entries {booked[merchant]}"
            violations.append(Violation("wallets_match_ledger", None, detail))
    hosts = service.hosts
    for host in hosts.live():
        for merchant, wallet in host.wallets.items():
            if wallet.balance != booked[merchant] or wallet.reserved or wallet.pending:
                detail = (
                    f"wallet {merchant} on host {host.index} holds {wallet.balance} ({wallet.reserved} "
                    f"reserved, {wallet.pending} in flight), its ledger {booked[merchant]}"
                )
                violations.append(Violation("wallets_match_ledger", None, detail))
            if hosts.index_of(merchant) != host.index:
                detail = (
                    f"wallet {merchant} lives on host {host.index}, its slot's is {hosts.index_of(merchant)}"
                )
                violations.append(Violation("wallets_match_ledger", None, detail))

    for name, differing_here in real.items():
        for payment_id, (held, in_ledger) in differing_here.items():
            detail = f"{name} holds {held} of it, the ledger {in_ledger}"
            violations.append(Violation("psp_matches_ledger", payment_id, detail))
    authorizing = any(psp.authorizations for psp in service.psps.values())
    if authorizing or any(effect.hold for _, effect in ledger.transactions.values()):
        violations += _holds(service)

    for payment_id, charge in sorted(service.unfinished.items()):
        detail = f"still {charge.state.value} after recovery with the PSP reachable"
        violations.append(Violation("no_pending_after_recovery", payment_id, detail))
    expiry = AUTHORIZATION_S + 2 * service.config.recovery.authorization_sweep_s
    for payment_id, charge in sorted(service.resting.items()):
        if service.env.now - charge.authorized_at > expiry:
            detail = (
                f"still {charge.state.value} {service.env.now - charge.authorized_at:.0f} s after its hold"
            )
            violations.append(Violation("no_pending_after_recovery", payment_id, detail))
    for refund_id, refund in sorted(refunds.unfinished.items()):
        detail = f"refund {refund_id} still {refund.state.value} after recovery with the PSP reachable"
        violations.append(Violation("no_pending_after_recovery", refund.charge.id, detail))
    for attempt, left in sorted(service.left_open.items()):
        detail = f"attempt {attempt} it left at {left.psp} still {left.state} after recovery"
        violations.append(Violation("no_pending_after_recovery", left.charge.id, detail))

    differences_found = sum(len(differing_here) for differing_here in real.values())
    expected = {kind: n for kind, n in {**drift, "real_differences": differences_found}.items() if n}
    if found != expected:
        violations.append(Violation("reconciliation_exact", None, f"found {found}, expected {expected}"))
    for payment_id, charge in sorted(service.payments.items()):
        if charge.intent is not None and charge.intent is not intent_machine.expected(charge.state):
            detail = f"intent {charge.intent.value} while its charge is {charge.state.value}"
            violations.append(Violation("intents_follow_charges", payment_id, detail))
    return violations


def _double_captures(service: SimService) -> list[Violation]:
    """Orders captured more than once, net of refunds, at every PSP together."""
    captures = [capture for psp in service.psps.values() for capture in psp.captures]
    kept = Counter(capture.order_id for capture in captures if not capture.refunded)
    twice = {order_id for order_id, n in kept.items() if n > 1}
    kept_by_order: dict[int, list[str]] = defaultdict(list)
    for capture in captures:
        if capture.order_id in twice and not capture.refunded:
            kept_by_order[capture.order_id].append(capture.payment_id)
    violations = []
    for order_id, payments in sorted(kept_by_order.items()):
        detail = f"order {order_id} captured {len(payments)} times: {', '.join(payments)}"
        violations.append(Violation("no_double_capture", payments[-1], detail))
    return violations


def across_psps(at_psp: Nets, amount_of: Callable[[str], int]) -> list[Violation]:
    """One payment moves money once, whichever PSPs its attempts went to: what the PSPs hold of it together
    (``psp_net`` each) is at most its amount, and at most one of them holds any of it. A payment whose attempt
    failed definitely at one PSP and succeeded at the next is what a late success there would break. Only
    payments held at several PSPs are gathered, so a million-charge run checks in place."""
    nets = list(at_psp.values())
    shared = set().union(*(a.keys() & b.keys() for i, a in enumerate(nets) for b in nets[i + 1 :]))
    suspects = {p for net in nets for p, n in net.items() if p not in shared and n > amount_of(p)}
    violations = []
    for payment_id in sorted(suspects | shared):
        held = {name: net[payment_id] for name, net in sorted(at_psp.items()) if payment_id in net}
        amount = amount_of(payment_id)
        if sum(n > 0 for n in held.values()) > 1 or sum(held.values()) > amount:
            at = ", ".join(f"{name} {n}" for name, n in held.items())
            detail = f"held at {at}, of a payment of {amount}"
            violations.append(Violation("one_capture_across_psps", payment_id, detail))
    return violations


def _holds(service: SimService) -> list[Violation]:
    """The authorizations' side of invariants 1 and 4: each PSP's authorizations against the ledger's holds
    of the charges routed there."""
    ledger = service.db.ledger
    violations: list[Violation] = []
    hold: dict[str, int] = defaultdict(int)
    authorized: dict[str, int] = defaultdict(int)
    moved: dict[str, set[str]] = defaultdict(set)
    effects = [(kind, ref, effect) for (kind, ref), (_m, effect) in ledger.transactions.items()]
    effects += [(kind, ref, effect) for kind, ref, _m, effect in ledger.repeated]
    for kind, ref, effect in effects:
        if kind in (AUTHORIZATION, AUTHORIZATION_RELEASE) or effect.hold:
            hold[ref] += effect.hold
            authorized[_psp_of(service, ref)] += effect.authorized
            if kind != AUTHORIZATION:
                moved[ref].add(kind)
    for payment_id, kinds in sorted(moved.items()):
        if len(kinds) > 1:
            detail = f"its authorization both captured and released ({', '.join(sorted(kinds))})"
            violations.append(Violation("no_double_capture", payment_id, detail))
    for name, psp in service.psps.items():
        here = {ref: n for ref, n in hold.items() if n and _psp_of(service, ref) == name}
        violations += _holds_at(service, psp, here, authorized[name])
    for payment_id, charge in sorted(service.payments.items()):
        expected = charge.amount if charge.state in HOLDING else 0
        if charge.manual and hold.get(payment_id, 0) != expected:
            detail = f"{charge.state.value} with a hold of {hold.get(payment_id, 0)}, expected {expected}"
            violations.append(Violation("psp_matches_ledger", payment_id, detail))
    return violations


def _amount_of(service: SimService, payment_id: str) -> int:
    """A charge's amount; nothing for a charge payray never made."""
    charge = service.payments.get(payment_id)
    return 0 if charge is None else charge.amount


def _psp_of(service: SimService, payment_id: str) -> str:
    """The PSP of a charge's winning attempt (where it was authorized, captured, refunded)."""
    charge = service.payments.get(payment_id)
    return charge.psp if charge is not None else service.config.routing.priorities[0]


def _holds_at(service: SimService, psp: SimPsp, hold: dict[str, int], authorized: int) -> list[Violation]:
    """One PSP's authorizations against the holds of the charges routed to it, and its ``psp_authorized``."""
    ledger = service.db.ledger
    violations: list[Violation] = []
    for payment_id, auths in sorted(psp.authorizations.items()):
        if sum(a.status == "captured" for a in auths) > 1:
            detail = f"{len(auths)} authorizations at the PSP, captured more than once"
            violations.append(Violation("no_double_capture", payment_id, detail))
        for auth in auths:
            posted = ledger.transactions.get((CAPTURE, payment_id))
            if auth.status == "captured" and (posted is None or posted[1].receivable != auth.captured):
                detail = (
                    f"captured {auth.captured} of its authorization at the PSP, its capture posting "
                    f"{0 if posted is None else posted[1].receivable}"
                )
                violations.append(Violation("psp_matches_ledger", payment_id, detail))
    open_at_psp = psp.open_authorizations()
    for payment_id in differing(open_at_psp, hold):
        detail = (
            f"{psp.name} holds an authorization of {open_at_psp.get(payment_id, 0)} for it, "
            f"authorized_hold {hold.get(payment_id, 0)}"
        )
        violations.append(Violation("psp_matches_ledger", payment_id, detail))
    if sum(open_at_psp.values()) != authorized:
        detail = f"authorizations open at {psp.name} {sum(open_at_psp.values())}, psp_authorized {authorized}"
        violations.append(Violation("psp_matches_ledger", None, detail))
    return violations


def psp_net(psp: SimPsp) -> dict[str, int]:
    """What the PSP holds of each charge, where not zero: its captures not refunded in full, less its partial
    refunds."""
    held: dict[str, int] = defaultdict(int)
    for capture in psp.captures:
        if not capture.refunded:
            held[capture.payment_id] += capture.amount
    for payment_id, amount in psp.refunded.items():
        held[payment_id] -= amount
    return {payment_id: n for payment_id, n in held.items() if n}


def ledger_nets(service: SimService, refunds: SimRefunds) -> Nets:
    """What the ledger says each PSP holds of each charge, where not zero: the PSP receivable's movements,
    each at the PSP of the attempt it books (a late success's capture and reversal at the PSP it landed
    at, the rest at the charge's winning attempt's)."""

    def owner(kind: str, ref: str) -> tuple[str, str]:
        if kind not in (CAPTURE, AUTHORIZATION, AUTHORIZATION_RELEASE):
            if ref.startswith("compensation-"):
                ref = ref.removeprefix("compensation-")
            else:
                refund = refunds.refunds.get(ref)
                charge_id = refunds.discarded[ref] if refund is None else refund.charge.id
                return _psp_of(service, charge_id), charge_id
        left = service.left.get(ref)
        if left is not None:
            return left.psp, left.charge.id
        return _psp_of(service, ref), ref

    held: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    ledger = service.db.ledger
    for (kind, ref), (_merchant, effect) in ledger.transactions.items():
        name, payment_id = owner(kind, ref)
        held[name][payment_id] += effect.receivable
    for kind, ref, _merchant, effect in ledger.repeated:
        name, payment_id = owner(kind, ref)
        held[name][payment_id] += effect.receivable
    return {name: {p: n for p, n in net.items() if n} for name, net in held.items()}


def differences(at_psp: dict[str, int], in_ledger: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Payments whose money at the PSP (``psp_net``) differs from what the ledger says the PSP holds
    (``ledger_net``): ``charge id -> (at the PSP, in the ledger)``."""
    return {p: (at_psp.get(p, 0), in_ledger.get(p, 0)) for p in differing(at_psp, in_ledger)}


def differing(a: dict[str, int], b: dict[str, int]) -> list[str]:
    """The keys whose amounts differ (no zero amounts on either side), in order."""
    return sorted({key for key, _ in a.items() ^ b.items()})
