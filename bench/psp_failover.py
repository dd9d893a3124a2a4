"""Two PSPs under load: Braintree's charge path against Stripe's, and a full Stripe outage with failover.

Part 1, the stack on the embedded defaults (the emulator serves both PSPs, HAProxy ingress when available):
- the same closed-loop charges to merchants routed ``["stripe"]`` and to merchants routed ``["braintree"]``,
  alternating Stripe, Braintree, Braintree, Stripe so drift touches both alike; Braintree against Stripe;
- merchants routed ``["stripe", "braintree"]`` under a time-bounded closed loop while the emulator answers
  every Stripe request 503 for a window (its own outage, mode ``error``).

Part 2, a second stack whose Stripe is reached through a loopback TCP forwarder (bench/forwarder.py) and whose
Braintree is the emulator directly: the same load while the forwarder refuses every connection (nothing is
sent, so the charges caught fail over at once).

After each outage run the recovery sweep runs with no grace until the run's payments are all finished, and
the figures come from Postgres (final states, attempts, transitions) and ``GET /v1/admin/invariants``: the
charge success rate over the outage and the whole run (succeeded / created; a 202 counts as what it became),
the time from the outage's start to the breaker opening (estimated: the payray replica's fifth bad answer
from Stripe), to the first payment routed straight to Braintree and to the first success there, the
payments that reached Stripe during the outage, and double charges. Prints tables and writes JSON.

    .venv/bin/python -m bench.psp_failover [--concurrency 16] [--seconds 30] [--outage 10,20] [--requests 800]
        [--proxy default]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import psycopg
from rich.console import Console
from rich.table import Table

from bench.forwarder import Forwarder
from bench.loadgen import Request, Run, bench_settings, drive
from ops.loopback import free_port
from ops.stack import EMULATOR_API_KEY, HANDLED_EVENTS, Stack, StackInfo, haproxy_available
from payray.routing import Breaker
from psp.emulator.braintree import credentials
from psp.emulator.server import EmulatorProcess

#: Bad answers in a row that open a PSP's breaker (one API replica: one breaker per PSP).
THRESHOLD = Breaker().threshold
FINISHED = ("succeeded", "declined", "failed", "compensated", "requires_capture", "canceled")
CLIENT_TIMEOUT_S = 30.0
#: What a client retries with the same key: no answer, a request in flight, a 5xx.
RETRYABLE = (0, 409, 429, 500, 502, 503, 504)
TARGET_SUCCESS = 0.99
TARGET_FAILOVER_S = 2.0
CHARGE = b'{"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}'


@dataclass(frozen=True)
class Answer:
    """A charge as its client saw it: when first sent (unix seconds), how long until the final answer."""

    sent: float
    seconds: float
    status: int
    charge_id: str | None


class Admin:
    """The admin API of one stack."""

    def __init__(self, info: StackInfo) -> None:
        self.info = info
        headers = {"Authorization": f"Bearer {info.admin_key}"}
        self.http = httpx.Client(base_url=info.base_url, headers=headers, timeout=120)

    def merchants(self, count: int, psps: Sequence[str]) -> list[tuple[str, str]]:
        """``count`` new merchants (id, API key), each routed over ``psps`` in that order."""
        made = []
        for i in range(count):
            created = self.http.post("/v1/merchants", json={"name": f"bench-failover-{i}"})
            created.raise_for_status()
            merchant = created.json()
            routing = f"/v1/admin/merchants/{merchant['id']}/routing"
            routed = self.http.post(routing, json={"psps": list(psps)})
            routed.raise_for_status()
            made.append((str(merchant["id"]), str(merchant["api_key"])))
        return made

    def sweep_until_finished(self, merchant_ids: list[str], passes: int = 8) -> int:
        """Recovery with no grace until none of the merchants' payments is left unfinished; how many are."""
        left = _unfinished(self.info.database_url, merchant_ids)
        for _ in range(passes):
            if left == 0:
                break
            self.http.post("/v1/admin/recovery/sweep", json={"grace_s": 0}).raise_for_status()
            time.sleep(0.5)
            left = _unfinished(self.info.database_url, merchant_ids)
        return left

    def invariants(self) -> dict[str, Any]:
        answer = self.http.get("/v1/admin/invariants")
        answer.raise_for_status()
        return dict(answer.json())


def _unfinished(database_url: str, merchant_ids: list[str]) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM payments WHERE merchant_id = ANY(%s) AND NOT state = ANY(%s)",
            (merchant_ids, list(FINISHED)),
        ).fetchone()
    return int(row[0]) if row else 0


# Not bench.charge_path's helpers: that module imports Ray, and Ray imported before the stack starts would
# listen off loopback (ops/loopback.py).
def _charges(keys: list[str]) -> Callable[[int], Request]:
    """Charges with fresh keys, spread evenly over the merchants."""

    def make(i: int) -> Request:
        headers = {
            "Authorization": f"Bearer {keys[i % len(keys)]}",
            "Idempotency-Key": uuid.uuid4().hex,
            "Content-Type": "application/json",
        }
        return "POST", "/v1/charges", headers, CHARGE

    return make


def _merged(runs: list[Run]) -> dict[str, Any]:
    """Runs of one PSP as one: charges over seconds; latency quantiles and CPU share averaged."""
    requests, seconds = sum(r.requests for r in runs), sum(r.seconds for r in runs)
    return {
        "concurrency": runs[0].concurrency,
        "requests": requests,
        "seconds": round(seconds, 3),
        "per_second": round(requests / seconds, 1),
        "p50_ms": round(sum(r.p50_ms for r in runs) / len(runs), 1),
        "p99_ms": round(sum(r.p99_ms for r in runs) / len(runs), 1),
        "client_cpu_share": round(sum(r.client_cpu_share * r.seconds for r in runs) / seconds, 3),
    }


# -- part 1a: the charge path at each PSP --------------------------------------------------------------------


def charge_path(admin: Admin, requests: int, concurrency: int) -> dict[str, Any]:
    """The same charges to Stripe-routed and Braintree-routed merchants, alternating; Braintree / Stripe."""
    url = admin.info.base_url
    keys = {
        psp: [key for _, key in admin.merchants(4, [psp])] for psp in ("stripe", "braintree")
    }  # fmt: skip
    for psp_keys in keys.values():  # warm-up: connections, code paths, wallets
        drive(url, _charges(psp_keys), 200, concurrency)
    halves: dict[str, list[Run]] = {"stripe": [], "braintree": []}
    for psp in ("stripe", "braintree", "braintree", "stripe"):
        run = drive(url, _charges(keys[psp]), requests // 2, concurrency)
        assert set(run.statuses) == {200}, f"unexpected answers at {psp}: {run.statuses}"
        halves[psp].append(run)
    rows = {psp: _merged(runs) for psp, runs in halves.items()}
    stripe, braintree = rows["stripe"], rows["braintree"]
    return {
        "rows": rows,
        "braintree_vs_stripe": {
            "per_second": round(braintree["per_second"] / stripe["per_second"], 3),
            "p50": round(braintree["p50_ms"] / stripe["p50_ms"], 3),
            "p99": round(braintree["p99_ms"] / stripe["p99_ms"], 3),
        },
    }


# -- part 1b and 2: a Stripe outage under load ---------------------------------------------------------------


async def _charge(session: aiohttp.ClientSession, url: str, key: str) -> Answer:
    """One charge with a fresh idempotency key, retried with the same key while the outcome is unknown."""
    headers = {
        "Authorization": f"Bearer {key}",
        "Idempotency-Key": uuid.uuid4().hex,
        "Content-Type": "application/json",
    }
    sent = time.time()
    status, charge_id = 0, None
    for attempt in range(4):
        if attempt:
            await asyncio.sleep(0.2 * 2**attempt)
        try:
            async with session.post(f"{url}/v1/charges", data=CHARGE, headers=headers) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
            continue
        if status not in RETRYABLE:
            charge_id = _charge_id(body)
            break
    return Answer(sent, time.time() - sent, status, charge_id)


def _charge_id(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    found = payload.get("id") or (payload.get("error") or {}).get("charge")
    return str(found) if found else None


async def _timed_load(
    url: str,
    keys: list[str],
    concurrency: int,
    started: float,
    seconds: float,
    actions: Sequence[tuple[float, Callable[[], object]]] = (),
) -> list[Answer]:
    """``concurrency`` clients, each charging again as soon as it has its answer, from ``started`` for
    ``seconds`` (unix time); each action runs (in a thread) at its time."""
    answers: list[Answer] = []
    deadline = started + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(i: int) -> None:
            await asyncio.sleep(max(0.0, started - time.time()))
            n = i
            while time.time() < deadline:
                answers.append(await _charge(session, url, keys[n % len(keys)]))
                n += concurrency

        async def at(when: float, action: Callable[[], object]) -> None:
            await asyncio.sleep(max(0.0, when - time.time()))
            await asyncio.to_thread(action)

        await asyncio.gather(*(client(i) for i in range(concurrency)), *(at(w, a) for w, a in actions))
    return answers


@dataclass(frozen=True)
class Payment:
    id: str
    psp: str
    state: str
    created: float
    #: when its attempt at Stripe ended and how (None: it never went to Stripe)
    stripe_end: float | None
    stripe_ended: str | None
    failed_over: bool
    succeeded_at: float | None


#: How a payment's first answer at its current PSP ended, from the transition out of ``psp_pending``.
_FIRST_ANSWER = {"psp_unknown": "unknown", "psp_captured": "captured", "psp_declined": "declined"}


def _payments(database_url: str, merchant_ids: list[str], since: float) -> list[Payment]:
    """The merchants' payments created since ``since``, with their attempts and transitions read back."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, psp, state, extract(epoch FROM created_at)::float8 FROM payments"
            " WHERE merchant_id = ANY(%s) AND created_at >= to_timestamp(%s)",
            (merchant_ids, since),
        ).fetchall()
        ids = [row[0] for row in rows]
        attempts = conn.execute(
            "SELECT payment_id, psp, ended, extract(epoch FROM created_at)::float8 FROM payment_attempts"
            " WHERE payment_id = ANY(%s)",
            (ids,),
        ).fetchall()
        transitions = conn.execute(
            "SELECT payment_id, event, from_state, to_state, extract(epoch FROM at)::float8"
            " FROM payment_transitions WHERE payment_id = ANY(%s) ORDER BY id",
            (ids,),
        ).fetchall()
    ended = {(payment_id, psp): (kind, at) for payment_id, psp, kind, at in attempts}
    failed_over = {payment_id for payment_id, *_ in attempts}
    first_answer: dict[str, tuple[str, float]] = {}
    succeeded: dict[str, float] = {}
    for payment_id, event, source, target, at in transitions:
        if source == "psp_pending" and event in _FIRST_ANSWER:
            first_answer.setdefault(payment_id, (_FIRST_ANSWER[event], at))
        if target == "succeeded":
            succeeded.setdefault(payment_id, at)
    payments = []
    for payment_id, psp, state, created in rows:
        at_stripe = ended.get((payment_id, "stripe"))
        if at_stripe is None and psp == "stripe":
            at_stripe = first_answer.get(payment_id)
        elif at_stripe is not None and at_stripe[0] == "not_found":
            # Stripe's answer was unknown; recovery's search found nothing there later and sent it on
            at_stripe = first_answer.get(payment_id, at_stripe)
        payments.append(
            Payment(
                payment_id, psp, state, created,
                stripe_end=at_stripe[1] if at_stripe else None,
                stripe_ended=at_stripe[0] if at_stripe else None,
                failed_over=payment_id in failed_over,
                succeeded_at=succeeded.get(payment_id),
            )
        )  # fmt: skip
    return payments


def _rate(payments: list[Payment]) -> float | None:
    return round(sum(p.state == "succeeded" for p in payments) / len(payments), 5) if payments else None


def _after(start: float, times: list[float]) -> float | None:
    later = sorted(t for t in times if t >= start)
    return round(later[0] - start, 3) if later else None


def outage_figures(payments: list[Payment], start: float, end: float) -> dict[str, Any]:
    """What the outage did, from the payments as Postgres holds them once recovery has finished them."""
    during = [p for p in payments if start <= p.created < end]
    bad = ("unknown", "not_sent", "refused")
    stripe_during = [p for p in payments if p.stripe_end is not None and start <= p.stripe_end < end]
    bad_ends = sorted(p.stripe_end for p in stripe_during if p.stripe_ended in bad and p.stripe_end)
    breaker_open = bad_ends[THRESHOLD - 1] if len(bad_ends) >= THRESHOLD else None
    direct = [p.created for p in payments if p.psp == "braintree" and not p.failed_over]
    first_direct = _after(start, direct)
    braintree_successes = [p.succeeded_at for p in payments if p.psp == "braintree" and p.succeeded_at]
    stripe_good = [
        p.stripe_end for p in payments if p.stripe_end and p.stripe_ended in ("captured", "declined")
    ]
    failover_after_open = None
    if breaker_open is not None and first_direct is not None:
        failover_after_open = round(start + first_direct - breaker_open, 3)
    return {
        "charges": len(payments),
        "charges_during_outage": len(during),
        "success_rate_run": _rate(payments),
        "success_rate_outage": _rate(during),
        "final_states_run": dict(Counter(p.state for p in payments)),
        "final_states_outage": dict(Counter(p.state for p in during)),
        "at_braintree_run": sum(p.psp == "braintree" for p in payments),
        "failed_over": sum(p.failed_over for p in payments),
        "hit_stripe_during_outage": len(stripe_during),
        "stripe_ends_during_outage": dict(Counter(p.stripe_ended for p in stripe_during)),
        "stripe_unknown_then": dict(Counter(p.state for p in stripe_during if p.stripe_ended == "unknown")),
        "first_bad_stripe_answer_s": _after(start, bad_ends),
        "breaker_open_s": round(breaker_open - start, 3) if breaker_open is not None else None,
        "first_straight_to_braintree_s": first_direct,
        "failover_after_breaker_open_s": failover_after_open,
        "first_braintree_success_s": _after(start, braintree_successes),
        "first_stripe_success_after_outage_s": _after(end, stripe_good),
    }


def _client_view(answers: list[Answer], start: float, end: float) -> dict[str, Any]:
    def summary(chosen: list[Answer]) -> dict[str, Any]:
        seconds = sorted(a.seconds for a in chosen)
        q = statistics.quantiles(seconds, n=100) if len(seconds) > 1 else seconds * 99
        return {
            "answers": len(chosen),
            "statuses": dict(Counter(a.status for a in chosen)),
            "p50_ms": round(q[49] * 1000, 1) if q else None,
            "p99_ms": round(q[98] * 1000, 1) if q else None,
        }

    return {"run": summary(answers), "outage": summary([a for a in answers if start <= a.sent < end])}


def outage_run(
    admin: Admin,
    kind: str,
    concurrency: int,
    seconds: float,
    window: tuple[float, float],
    forwarder: Forwarder | None = None,
) -> dict[str, Any]:
    """A Stripe outage from ``window[0]`` to ``window[1]`` s into a ``seconds``-long closed loop over
    merchants routed Stripe then Braintree: the emulator's 503s (``error``) or connections refused
    (``refused``)."""
    info = admin.info
    merchants = admin.merchants(8, ["stripe", "braintree"])
    ids, keys = [m for m, _ in merchants], [k for _, k in merchants]
    drive(info.base_url, _charges(keys), 200, concurrency)  # warm-up: the merchants' wallets
    started = time.time() + 1.0
    start, end = started + window[0], started + window[1]
    actions: list[tuple[float, Callable[[], object]]] = []
    assert info.psp_api_base
    if kind == "error":
        outage = {"start": start, "end": end, "mode": "error"}
        faults = {"psp": "stripe", "outages": [outage]}
        httpx.post(f"{info.psp_api_base}/_emulator/faults", json=faults, timeout=30).raise_for_status()
    else:
        assert forwarder is not None
        actions = [(start, forwarder.refuse), (end, forwarder.accept)]
    answers = asyncio.run(_timed_load(info.base_url, keys, concurrency, started, seconds, actions))
    if forwarder is not None and forwarder.refused_at is not None:
        start = forwarder.refused_at  # when connects were refused, not when asked to
    httpx.delete(f"{info.psp_api_base}/_emulator/faults", timeout=30).raise_for_status()
    left = admin.sweep_until_finished(ids)
    invariants = admin.invariants()
    payments = _payments(info.database_url, ids, started)
    return {
        "kind": kind,
        "concurrency": concurrency,
        "seconds": seconds,
        "outage_s": [round(start - started, 3), round(end - started, 3)],
        "unfinished_after_sweeps": left,
        **outage_figures(payments, start, end),
        "client": _client_view(answers, start, end),
        "double_charges": invariants["no_double_capture"]["violations"],
        "invariants_ok": invariants["ok"],
        "invariants": invariants,
    }


# -- the stacks ----------------------------------------------------------------------------------------------


def _send_webhooks_to(psp_base: str, api_url: str, secret: str) -> None:
    """The emulator's Stripe events to the stack's endpoint, as the stack does for an emulator it starts."""
    endpoint = {"url": f"{api_url}/v1/webhooks/psp", "secret": secret, "enabled_events": list(HANDLED_EVENTS)}
    httpx.post(f"{psp_base}/_emulator/webhooks", json=endpoint, timeout=30).raise_for_status()


def stock_stack_runs(home: Path, args: argparse.Namespace, haproxy: bool) -> dict[str, Any]:
    """Part 1 on the stack as ``payray up`` runs it: the charge path at each PSP, then the 503 outage."""
    stack = Stack(bench_settings(home), port=free_port(), haproxy=haproxy)
    info = stack.start()
    admin = Admin(info)
    try:
        path = charge_path(admin, args.requests, args.concurrency)
        error = outage_run(admin, "error", args.concurrency, args.seconds, args.outage)
    finally:
        admin.http.close()
        stack.stop()
    return {"charge_path": path, "outage_error": error}


def forwarded_stack_run(home: Path, args: argparse.Namespace, haproxy: bool) -> dict[str, Any]:
    """Part 2: Stripe behind the forwarder, Braintree straight at the emulator; the forwarder refuses."""
    emulator = EmulatorProcess(home / "psp")
    emulator_base = emulator.start()
    forwarder = Forwarder(urlsplit(emulator_base).port or 0)
    secret = "whsec_" + secrets.token_urlsafe(24)
    stack: Stack | None = None
    try:
        settings = bench_settings(home).with_(
            psp_api_key=EMULATOR_API_KEY,
            psp_api_base=forwarder.start(),
            stripe_webhook_secrets=(secret,),
            braintree_merchant_id=credentials.DEFAULT_MERCHANT_ID,
            braintree_public_key=credentials.DEFAULT_PUBLIC_KEY,
            braintree_private_key=credentials.DEFAULT_PRIVATE_KEY,
            braintree_environment=emulator_base,
        )
        stack = Stack(settings, port=free_port(), haproxy=haproxy)
        info = stack.start()
        _send_webhooks_to(emulator_base, info.base_url, secret)
        # the emulator's control routes are reached directly, not through the forwarder
        info.psp_api_base = emulator_base
        admin = Admin(info)
        try:
            return outage_run(admin, "refused", args.concurrency, args.seconds, args.outage, forwarder)
        finally:
            admin.http.close()
    finally:
        if stack is not None:
            stack.stop()
        forwarder.stop()
        emulator.stop()


# -- report --------------------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def print_tables(results: dict[str, Any], console: Console) -> None:
    path = results["charge_path"]
    table = Table(title="Charge path at each PSP (closed loop, same run, alternating)")
    for column in ("PSP", "charges", "charges/s", "p50 ms", "p99 ms", "client CPU"):
        table.add_column(column)
    for psp, row in path["rows"].items():
        table.add_row(
            psp, str(row["requests"]), f"{row['per_second']:.0f}", f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}", f"{100 * row['client_cpu_share']:.0f} %",
        )  # fmt: skip
    ratio = path["braintree_vs_stripe"]
    table.add_row(
        "braintree / stripe", "", f"{ratio['per_second']:.2f}", f"{ratio['p50']:.2f}",
        f"{ratio['p99']:.2f}", "",
    )  # fmt: skip
    console.print(table)

    runs = [results["outage_refused"], results["outage_error"]]
    table = Table(title="A full Stripe outage under load, merchants routed stripe > braintree")
    for column in ("figure", "connections refused", "503 from Stripe"):
        table.add_column(column)
    lines: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("outage (s into the run)", lambda r: f"{r['outage_s'][0]:.1f} to {r['outage_s'][1]:.1f}"),
        ("charges: run / during the outage", lambda r: f"{r['charges']} / {r['charges_during_outage']}"),
        ("succeeded, whole run", lambda r: _pct(r["success_rate_run"])),
        ("succeeded, during the outage", lambda r: _pct(r["success_rate_outage"])),
        ("final states during the outage", lambda r: json.dumps(r["final_states_outage"])),
        ("payments that reached Stripe during the outage", lambda r: str(r["hit_stripe_during_outage"])),
        ("… how their Stripe attempt ended", lambda r: json.dumps(r["stripe_ends_during_outage"])),
        ("… those left unknown, finally", lambda r: json.dumps(r["stripe_unknown_then"])),
        ("payments that failed over (run)", lambda r: str(r["failed_over"])),
        ("first bad answer from Stripe", lambda r: _s(r["first_bad_stripe_answer_s"])),
        (f"breaker open (the {THRESHOLD}th bad answer)", lambda r: _s(r["breaker_open_s"])),
        ("first payment straight to Braintree", lambda r: _s(r["first_straight_to_braintree_s"])),
        ("… after the breaker opened", lambda r: _s(r["failover_after_breaker_open_s"])),
        ("first success at Braintree", lambda r: _s(r["first_braintree_success_s"])),
        ("first success at Stripe after the outage", lambda r: _s(r["first_stripe_success_after_outage_s"])),
        ("client answers during the outage", lambda r: json.dumps(r["client"]["outage"]["statuses"])),
        ("client p50 / p99 during the outage", lambda r: _latency(r["client"]["outage"])),
        ("client p50 / p99, whole run", lambda r: _latency(r["client"]["run"])),
        ("double charges (no_double_capture violations)", lambda r: str(r["double_charges"])),
        ("invariants", lambda r: "hold" if r["invariants_ok"] else "VIOLATED"),
        ("left unfinished after the sweeps", lambda r: str(r["unfinished_after_sweeps"])),
    ]
    for name, show in lines:
        table.add_row(name, *(show(run) for run in runs))
    console.print(table)

    table = Table(title="Against the targets")
    for column in ("target", "connections refused", "503 from Stripe"):
        table.add_column(column)
    for target in results["targets"]:
        table.add_row(target["target"], *target["measured"])
    console.print(table)


def _latency(summary: dict[str, Any]) -> str:
    if summary["p50_ms"] is None:
        return "—"
    return f"{summary['p50_ms']:.0f} / {summary['p99_ms']:.0f} ms"


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with what each outage run measured, and whether it was met."""

    def success(run: dict[str, Any]) -> str:
        rate = run["success_rate_outage"]
        return f"{_pct(rate)} ({'met' if rate is not None and rate >= TARGET_SUCCESS else 'not met'})"

    def failover(run: dict[str, Any]) -> str:
        seconds = run["failover_after_breaker_open_s"]
        met = seconds is not None and seconds <= TARGET_FAILOVER_S
        return f"{_s(seconds)} ({'met' if met else 'not met'})"

    def doubles(run: dict[str, Any]) -> str:
        return f"{run['double_charges']} ({'met' if run['double_charges'] == 0 else 'NOT MET'})"

    return [
        {"target": f"≥ {100 * TARGET_SUCCESS:.0f} % of charges succeed through the outage",
         "measured": [success(r) for r in runs]},
        {"target": f"failover within {TARGET_FAILOVER_S:.0f} s of the breaker opening",
         "measured": [failover(r) for r in runs]},
        {"target": "0 double charges", "measured": [doubles(r) for r in runs]},
    ]  # fmt: skip


def _window(text: str) -> tuple[float, float]:
    start, end = (float(part) for part in text.split(","))
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError("--outage takes START,END seconds into the run, START < END")
    return start, end


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16, help="clients in the closed loop (at most 32)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each outage run (at most 60)")
    parser.add_argument("--outage", type=_window, default=(10.0, 20.0), help="START,END s into the run")
    parser.add_argument("--requests", type=int, default=800, help="charges per PSP in the charge-path part")
    parser.add_argument(
        "--proxy",
        choices=("haproxy", "default"),
        default="haproxy",
        help="Serve ingress; HAProxy binds fixed stats ports, so two such stacks cannot share a machine",
    )
    parser.add_argument("--json", type=Path, default=Path("bench/out/psp_failover.json"))
    args = parser.parse_args()
    if not 1 <= args.concurrency <= 32 or not 5 <= args.seconds <= 60 or args.outage[1] > args.seconds:
        parser.error("--concurrency 1..32, --seconds 5..60, and the outage within the run")
    haproxy = args.proxy == "haproxy" and haproxy_available()
    home = Path(tempfile.mkdtemp(prefix="payray-bench-failover-"))

    results: dict[str, Any] = stock_stack_runs(home / "stock", args, haproxy)
    results["outage_refused"] = forwarded_stack_run(home / "forwarded", args, haproxy)
    results["targets"] = targets([results["outage_refused"], results["outage_error"]])
    results["ingress"] = "HAProxy" if haproxy else "Serve proxy"
    print_tables(results, Console(width=170))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
