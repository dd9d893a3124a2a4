"""The invariants of DESIGN.md, checked live against Postgres, the wallet actors and every PSP.

A payment may have tried more than one PSP, so the PSPs' captures and refunds are read together: a payment
captured at two PSPs is a double capture as surely as one captured twice at one, until the late success is
found (``serve_app/flows/late_success.py``). A found one is booked under its own id, so it counts as that id's
capture, and it must have been given back.

Used by ``GET /v1/admin/invariants`` and so by ``payray verify``, the load tests and every integration test.
The ledger's own checks (``ledger.invariants``) are synchronous SQL; they run on a worker thread.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any

import psycopg

from ledger import invariants as ledger_invariants
from payray import intent
from psp.port import PaymentServiceProvider, PspRefund
from serve_app.wallets import WalletDirectory

LEDGER_CAPTURES = "SELECT external_ref FROM ledger_transactions WHERE kind = 'capture'"
UNFINISHED_PAYMENTS = """
SELECT id FROM payments WHERE state NOT IN ('succeeded', 'declined', 'failed', 'requires_capture', 'canceled')
"""
#: Refunds of payray's refund objects the ledger holds as debited and not given back (a charge's
#: compensation, booked as a refund of the whole charge under its own reference, is not one of them).
LEDGER_REFUNDS = """
SELECT external_ref FROM ledger_transactions WHERE kind = 'refund' AND external_ref LIKE 're\\_%'
EXCEPT
SELECT external_ref FROM ledger_transactions WHERE kind = 'refund_reversal'
"""
UNFINISHED_REFUNDS = "SELECT id FROM refunds WHERE state NOT IN ('succeeded', 'failed')"
#: Refunds by the PSP's id: those made at the PSP without us (learned from its webhooks), and those a PSP
#: cannot label with our id (Braintree's refund of an unsettled sale is its void, known by the sale's id).
REFUNDS_BY_PSP_REFERENCE = "SELECT psp_reference, id FROM refunds WHERE psp_reference IS NOT NULL"
#: Differences a reconciliation run has named, still open or closed by a person (not those that went away):
#: by the PSP's reference, and by the ledger transaction's own reference (our payment or refund id).
NAMED_BY_RECONCILIATION = """
SELECT d.reference, t.external_ref
  FROM recon_discrepancies d
  LEFT JOIN ledger_transactions t ON t.id = d.ledger_transaction_id
 WHERE d.status = 'open' OR d.resolution NOT IN ('matched_late', 'not_found_on_rerun')
"""


#: Captures at a PSP a payment had left, by the PSP's reference: their own id, and whether they were given
#: back.
LATE_SUCCESSES = "SELECT psp_reference, id, state FROM late_successes"


#: Each confirmed intent beside the state of its latest charge, which the intent follows.
INTENTS_AND_CHARGES = """
SELECT i.id, i.state, p.state FROM payment_intents i JOIN payments p ON p.id = i.charge_id
"""


def _ledger_facts(database_url: str) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return {
            "unbalanced": ledger_invariants.unbalanced_transactions(conn),
            "unbalanced_currencies": ledger_invariants.ledger_totals_balanced(conn),
            "balance_rows_off": ledger_invariants.balances_match_entries(conn),
            "captures": {row[0] for row in conn.execute(LEDGER_CAPTURES).fetchall()},
            "unfinished": {row[0] for row in conn.execute(UNFINISHED_PAYMENTS).fetchall()},
            "refunds": {row[0] for row in conn.execute(LEDGER_REFUNDS).fetchall()},
            "unfinished_refunds": {row[0] for row in conn.execute(UNFINISHED_REFUNDS).fetchall()},
            "learned_refunds": dict(conn.execute(REFUNDS_BY_PSP_REFERENCE).fetchall()),
            "named": {ref for row in conn.execute(NAMED_BY_RECONCILIATION).fetchall() for ref in row if ref},
            "intents": conn.execute(INTENTS_AND_CHARGES).fetchall(),
            "late": {row[0]: (row[1], row[2]) for row in conn.execute(LATE_SUCCESSES).fetchall()},
        }


def _wallet_mismatches(database_url: str, balances: dict[str, dict[str, int]]) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return ledger_invariants.wallet_mismatches(conn, balances)


async def _at_psps(
    psps: Mapping[str, PaymentServiceProvider],
) -> tuple[list[tuple[str, str]], list[PspRefund]]:
    """Every PSP's captures of payray's payments (payment id, the PSP's reference) and its live refunds."""
    captures: list[tuple[str, str]] = []
    refunds: list[PspRefund] = []
    for psp in psps.values():
        captures += [(c.payment_id, c.psp_reference) async for c in psp.list_captures() if c.payment_id]
        refunds += [r async for r in psp.list_refunds() if r.status in ("succeeded", "pending")]
    return captures, refunds


async def check_invariants(
    database_url: str, psps: Mapping[str, PaymentServiceProvider], wallets: WalletDirectory
) -> dict[str, Any]:
    captures, at_psp = await _at_psps(psps)
    facts = await asyncio.to_thread(_ledger_facts, database_url)
    late: dict[str, tuple[str, str]] = facts["late"]
    captures = [(late[ref][0] if ref in late else payment_id, ref) for payment_id, ref in captures]
    psp_captures = Counter(payment_id for payment_id, _ in captures)
    not_given_back = sorted(late_id for late_id, state in late.values() if state != "reversed")
    learned: dict[str, str] = facts["learned_refunds"]
    # ours by the id they carry, or by the PSP's id for those learned from a webhook; others are not payray's
    psp_refunds = {
        r.refund_id or learned[r.psp_reference] for r in at_psp if r.refund_id or r.psp_reference in learned
    }
    wallet_balances = await wallets.held_balances()
    wallet_mismatches = await asyncio.to_thread(_wallet_mismatches, database_url, wallet_balances)

    ledger_captures: set[str] = facts["captures"]
    unfinished: set[str] = facts["unfinished"]
    double_captures = sorted(pid for pid, n in psp_captures.items() if n > 1)
    captured_not_booked = sorted(p for p in psp_captures if p not in ledger_captures and p not in unfinished)
    booked_not_captured = sorted(p for p in ledger_captures if p not in psp_captures)
    # A refund in flight may be debited and not yet refunded (or the other way round for a moment).
    in_flight: set[str] = facts["unfinished_refunds"]
    refunded_not_booked = sorted(psp_refunds - facts["refunds"] - in_flight)
    booked_not_refunded = sorted(facts["refunds"] - psp_refunds - in_flight)
    # Invariant 4 allows a difference that a reconciliation discrepancy names: known by our id or the PSP's.
    psp_ids: dict[str, set[str]] = {}
    for payment_id, psp_reference in captures:
        psp_ids.setdefault(payment_id, set()).add(psp_reference)
    for r in at_psp:
        ours = r.refund_id or learned.get(r.psp_reference)
        if ours:
            psp_ids.setdefault(ours, set()).add(r.psp_reference)
    named: set[str] = facts["named"]

    def unexplained(ids: list[str]) -> list[str]:
        return [i for i in ids if i not in named and not psp_ids.get(i, set()) & named]

    every = captured_not_booked + booked_not_captured + refunded_not_booked + booked_not_refunded
    captured_not_booked, booked_not_captured, refunded_not_booked, booked_not_refunded = (
        unexplained(captured_not_booked),
        unexplained(booked_not_captured),
        unexplained(refunded_not_booked),
        unexplained(booked_not_refunded),
    )
    psp_differences = captured_not_booked + booked_not_captured + refunded_not_booked + booked_not_refunded
    astray = sorted(i for i, state, charge in facts["intents"] if state != intent.expected(charge))
    sections: dict[str, dict[str, Any]] = {
        "no_double_capture": {
            "ok": not double_captures,
            "violations": len(double_captures),
            "examples": double_captures[:10],
        },
        "ledger_balanced": {
            "ok": facts["unbalanced"] == 0
            and facts["unbalanced_currencies"] == 0
            and facts["balance_rows_off"] == 0,
            "unbalanced_transactions": facts["unbalanced"],
            "unbalanced_currencies": facts["unbalanced_currencies"],
            "balance_rows_off": facts["balance_rows_off"],
        },
        "wallets_match_ledger": {
            "ok": wallet_mismatches == 0,
            "violations": wallet_mismatches,
            "wallets_checked": len(wallet_balances),
        },
        "psp_matches_ledger": {
            "ok": not psp_differences,
            "captured_not_booked": len(captured_not_booked),
            "booked_not_captured": len(booked_not_captured),
            "refunded_not_booked": len(refunded_not_booked),
            "booked_not_refunded": len(booked_not_refunded),
            "examples": psp_differences[:10],
            "named_by_reconciliation": len(every) - len(psp_differences),
            "unfinished_payments": len(unfinished),
            "unfinished_refunds": len(in_flight),
        },
        "late_successes_given_back": {
            "ok": not not_given_back,
            "found": len(late),
            "not_given_back": len(not_given_back),
            "examples": not_given_back[:10],
        },
        "intents_follow_charges": {
            "ok": not astray,
            "violations": len(astray),
            "intents_checked": len(facts["intents"]),
            "examples": astray[:10],
        },
    }
    return {"object": "invariants", **sections, "ok": all(s["ok"] for s in sections.values())}
