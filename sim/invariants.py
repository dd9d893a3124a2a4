"""The five invariants of DESIGN.md, checked against the simulated PSP and ledger at the end of every run.

1. No double capture: each order (what one customer meant to pay once) is captured at most once, net of
   refunds; an authorization is captured at most once, and never both captured and released.
2. Every ledger transaction balances.
3. Each wallet equals its merchant's ledger accounts, and lives in the host its merchant's slot names.
4. What the PSP holds and what the ledger says it holds agree for every charge, refunds included; and so do
   their holds: each authorization open at the PSP is the charge's hold in ``authorized_hold`` (so their sum
   is the ``psp_authorized`` balance), a captured one's amount is its capture posting's, and a charge past
   its authorization holds nothing.
5. After the quiet phase, with the PSP reachable again, no charge or refund is left unfinished, but for
   authorizations resting in ``requires_capture``, and none of those past its expiry.

Plus the nightly reconciliation's own promise: it names every difference between the PSP's report and the
ledger, drift included, and nothing else; and the PaymentIntents' own: each intent says what its charge says.
"""

from __future__ import annotations

from collections import Counter, defaultdict
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
    "ledger_balanced",
    "wallets_match_ledger",
    "psp_matches_ledger",
    "no_pending_after_recovery",
    "reconciliation_exact",
    "intents_follow_charges",
)


@dataclass(frozen=True)
class Violation:
    invariant: str
    charge: str | None
    detail: str


def check(
    service: SimService,
    refunds: SimRefunds,
    real: dict[str, tuple[int, int]],
    drift: dict[str, int],
    found: dict[str, int],
) -> list[Violation]:
    """Every violation, in a stable order: invariant by invariant, then by charge id. ``real`` is
    ``differences(…)``, computed once by the caller."""
    psp, ledger = service.psp, service.db.ledger
    violations: list[Violation] = []

    kept = Counter(capture.order_id for capture in psp.captures if not capture.refunded)
    twice = {order_id for order_id, n in kept.items() if n > 1}
    kept_by_order: dict[int, list[str]] = defaultdict(list)
    for capture in psp.captures:
        if capture.order_id in twice and not capture.refunded:
            kept_by_order[capture.order_id].append(capture.payment_id)
    for order_id, payments in sorted(kept_by_order.items()):
        detail = f"order {order_id} captured {len(payments)} times: {', '.join(payments)}"
        violations.append(Violation("no_double_capture", payments[-1], detail))

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

    for payment_id, (at_psp, in_ledger) in real.items():
        detail = f"the PSP holds {at_psp} of it, the ledger {in_ledger}"
        violations.append(Violation("psp_matches_ledger", payment_id, detail))
    if psp.authorizations or any(effect.hold for _, effect in ledger.transactions.values()):
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

    expected = {kind: n for kind, n in {**drift, "real_differences": len(real)}.items() if n}
    if found != expected:
        violations.append(Violation("reconciliation_exact", None, f"found {found}, expected {expected}"))
    for payment_id, charge in sorted(service.payments.items()):
        if charge.intent is not None and charge.intent is not intent_machine.expected(charge.state):
            detail = f"intent {charge.intent.value} while its charge is {charge.state.value}"
            violations.append(Violation("intents_follow_charges", payment_id, detail))
    return violations


def _holds(service: SimService) -> list[Violation]:
    """The authorizations' side of invariants 1 and 4: the PSP's authorizations against the ledger's holds."""
    psp, ledger = service.psp, service.db.ledger
    violations: list[Violation] = []
    hold: dict[str, int] = defaultdict(int)
    authorized = 0
    moved: dict[str, set[str]] = defaultdict(set)
    effects = [(kind, ref, effect) for (kind, ref), (_m, effect) in ledger.transactions.items()]
    effects += [(kind, ref, effect) for kind, ref, _m, effect in ledger.repeated]
    for kind, ref, effect in effects:
        if kind in (AUTHORIZATION, AUTHORIZATION_RELEASE) or effect.hold:
            hold[ref] += effect.hold
            authorized += effect.authorized
            if kind != AUTHORIZATION:
                moved[ref].add(kind)
    for payment_id, kinds in sorted(moved.items()):
        if len(kinds) > 1:
            detail = f"its authorization both captured and released ({', '.join(sorted(kinds))})"
            violations.append(Violation("no_double_capture", payment_id, detail))
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
    for payment_id in differing(open_at_psp, {p: n for p, n in hold.items() if n}):
        detail = (
            f"the PSP holds an authorization of {open_at_psp.get(payment_id, 0)} for it, "
            f"authorized_hold {hold.get(payment_id, 0)}"
        )
        violations.append(Violation("psp_matches_ledger", payment_id, detail))
    if sum(open_at_psp.values()) != authorized:
        detail = f"authorizations open at the PSP {sum(open_at_psp.values())}, psp_authorized {authorized}"
        violations.append(Violation("psp_matches_ledger", None, detail))
    for payment_id, charge in sorted(service.payments.items()):
        expected = charge.amount if charge.state in HOLDING else 0
        if charge.manual and hold.get(payment_id, 0) != expected:
            detail = f"{charge.state.value} with a hold of {hold.get(payment_id, 0)}, expected {expected}"
            violations.append(Violation("psp_matches_ledger", payment_id, detail))
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


def ledger_net(service: SimService, refunds: SimRefunds) -> dict[str, int]:
    """What the ledger says the PSP holds of each charge, where not zero: the PSP receivable's movements."""

    def charge_of(kind: str, ref: str) -> str:
        if kind in (CAPTURE, AUTHORIZATION, AUTHORIZATION_RELEASE):
            return ref
        if ref.startswith("compensation-"):
            return ref.removeprefix("compensation-")
        refund = refunds.refunds.get(ref)
        return refunds.discarded[ref] if refund is None else refund.charge.id

    held: dict[str, int] = defaultdict(int)
    ledger = service.db.ledger
    for (kind, ref), (_merchant, effect) in ledger.transactions.items():
        held[ref if kind == "capture" else charge_of(kind, ref)] += effect.receivable
    for kind, ref, _merchant, effect in ledger.repeated:
        held[charge_of(kind, ref)] += effect.receivable
    return {payment_id: n for payment_id, n in held.items() if n}


def differences(at_psp: dict[str, int], in_ledger: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Payments whose money at the PSP (``psp_net``) differs from what the ledger says the PSP holds
    (``ledger_net``): ``charge id -> (at the PSP, in the ledger)``."""
    return {p: (at_psp.get(p, 0), in_ledger.get(p, 0)) for p in differing(at_psp, in_ledger)}


def differing(a: dict[str, int], b: dict[str, int]) -> list[str]:
    """The keys whose amounts differ (no zero amounts on either side), in order."""
    return sorted({key for key, _ in a.items() ^ b.items()})
