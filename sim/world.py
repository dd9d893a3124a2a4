"""The simulated components around the service: the PSP, the fast key store, the database and the ledger.

Each is a plain object over one SimPy environment and one seeded random source; they keep the facts the
invariants are checked against (what each PSP captured and refunded, what the ledger booked), and fail the
way the real ones do.
"""

from __future__ import annotations

import functools
import math
import random
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import simpy

from ledger.postings import Posting, capture_posting, fee_for, hold_posting, refund_posting, release_posting
from payray.money import Money
from sim.config import SimConfig

Outcome = Literal["captured", "declined", "unknown", "authorized", "not_sent", "refused"]
#: the answers to a capture that say for certain nothing was captured: ``payray.routing``'s definite failures
DEFINITE = frozenset({"not_sent", "refused"})
#: how long a refused connection takes to say so
CONNECT_S = 0.001
#: what the PSP answers about an authorization it is asked to capture or cancel
AuthOutcome = Literal["captured", "canceled", "unknown"]
FEE_BPS = 290


class Unavailable(Exception):
    """A dependency did not answer (an outage, a restart, a timeout)."""


def in_window(now: float, windows: tuple[tuple[float, float], ...]) -> bool:
    return bool(windows) and any(start <= now < end for start, end in windows)


@dataclass(slots=True)
class PspCapture:
    payment_id: str
    order_id: int
    amount: int
    at: float
    refunded: bool = False


@dataclass(slots=True)
class PspAuthorization:
    """An authorization at the PSP: its hold on the card, until captured (in full or in part, the rest
    released), canceled, or expired ``Psp.authorization_expiry_s`` after it was made."""

    payment_id: str
    order_id: int
    amount: int
    at: float
    status: Literal["authorized", "captured", "canceled", "expired"] = "authorized"
    captured: int = 0


class SimPsp:
    """One PSP: captures by idempotency key (when keys are honoured), declines, 5xx, lost replies, outages,
    refused connections and late successes. Charges are known by our charge id (its metadata): a payment
    makes at most one attempt at each PSP."""

    def __init__(
        self, env: simpy.Environment, rng: random.Random, config: SimConfig, name: str = "stripe"
    ) -> None:
        self.env, self.rng, self.c, self.name = env, rng, config.psp_of(name), name
        self.honour_keys = config.design.psp_idempotency_key
        self.by_key: dict[str, int] = {}
        self.captures: list[PspCapture] = []
        self.by_payment: dict[str, list[int]] = {}
        self.declined: dict[str, str] = {}
        #: partial refunds, by charge: what the PSP gave back of its captures
        self.refunded: dict[str, int] = {}
        self.refund_keys: set[str] = set()
        self.refused_keys: set[str] = set()
        #: refunds made at the PSP without payray: key -> (charge id, amount)
        self.external: dict[str, tuple[str, int]] = {}
        #: authorizations (``capture_method=manual``), by charge (several only when keys are not honoured),
        #: and the keys that authorized, captured or canceled them
        self.authorizations: dict[str, list[PspAuthorization]] = {}
        self.auth_keys: set[str] = set()
        self.cancel_keys: set[str] = set()
        #: captures answered with a refusal and made later, by key until made; and how many were made
        self.late_keys: set[str] = set()
        self.late = 0
        self.faults_on = True
        #: webhook hooks: called with (charge id, "captured" | "declined" | "authorized") or (refund key,
        #: "refunded")
        self.on_event: list[Any] = []

    def _latency(self) -> float:
        return min(
            math.exp(self.rng.gauss(0.0, self.c.latency_sigma)) * self.c.latency_s, self.c.call_timeout_s
        )

    def capture(
        self, payment_id: str, order_id: int, amount: int, key: str, manual: bool = False
    ) -> Generator[simpy.Event, Any, tuple[Outcome, int]]:
        """One capture as the SDK makes it, retrying under the same key; the outcome and the simulated calls.
        Each call acts at the PSP as it arrives and is answered a latency later, so a caller cancelled while
        it waits (its client hung up) leaves behind whatever the PSP did: a capture nobody heard of.
        ``manual`` (``capture_method=manual``): authorize only, answering ``authorized``."""
        calls, unsure = 0, False
        for _ in range(self.c.sdk_retries + 1):
            calls += 1
            outcome = self._capture_call(payment_id, order_id, amount, key, manual)
            yield self.env.timeout(CONNECT_S if outcome == "not_sent" else self._latency())
            unsure = unsure or outcome is None
            if outcome is not None and outcome != "not_sent":  # the SDK retries a refused connection
                return ("unknown" if unsure and outcome == "refused" else outcome), calls
        return ("unknown" if unsure else "not_sent"), calls

    def unreachable(self) -> bool:
        """Whether the PSP refuses connections now."""
        return self.faults_on and in_window(self.env.now, self.c.unreachable)

    def _capture_call(
        self, payment_id: str, order_id: int, amount: int, key: str, manual: bool = False
    ) -> Outcome | None:
        """What one call does at the PSP, and its answer: None when none comes back (an outage, a 5xx, or a
        reply lost after the PSP acted); ``not_sent`` when the connection was refused."""
        if self.c.unreachable and self.unreachable():
            return "not_sent"
        if self.faults_on and (
            in_window(self.env.now, self.c.outages) or self.rng.random() < self.c.error_rate
        ):
            return None
        if self.honour_keys and key in self.by_key:
            return "captured"
        if manual and self.honour_keys and key in self.auth_keys:
            return "authorized"  # the same key replays the same answer
        if self.honour_keys and payment_id in self.declined:
            return "declined"
        if self.honour_keys and key in self.late_keys:
            return "refused"  # the same key replays the same answer, until the late capture lands
        if not manual and self._late(payment_id, order_id, amount, key):
            return "refused"
        lost = self.faults_on and self.rng.random() < self.c.lost_reply_rate
        if self.rng.random() < self.c.decline_rate:
            self.declined[payment_id] = "card_declined"
            self._announce(payment_id, "declined")
            return None if lost else "declined"
        if manual:
            self.auth_keys.add(key)
            auth = PspAuthorization(payment_id, order_id, amount, self.env.now)
            self.authorizations.setdefault(payment_id, []).append(auth)
            self._announce(payment_id, "authorized")
            return None if lost else "authorized"
        self._record(payment_id, order_id, amount, key)
        return None if lost else "captured"

    def _late(self, payment_id: str, order_id: int, amount: int, key: str) -> bool:
        """Whether this capture is answered with a refusal and made anyway, a while later: a late success,
        which the service must not forget because the answer said nothing moved."""
        rate = self.c.late_success_rate
        if not (rate and self.faults_on and self.rng.random() < rate):
            return False
        self.late_keys.add(key)
        self.env.process(self._capture_late(payment_id, order_id, amount, key))
        return True

    def _capture_late(
        self, payment_id: str, order_id: int, amount: int, key: str
    ) -> Generator[simpy.Event, Any, None]:
        """The capture a refusal hid, up to ``late_success_s`` later, announced by webhook like any other."""
        yield self.env.timeout(self.rng.uniform(0.0, self.c.late_success_s))
        self.late_keys.discard(key)
        if self.honour_keys and key in self.by_key:
            return  # a later call under the same key captured already
        self.late += 1
        self._record(payment_id, order_id, amount, key, by_hand=False)

    def _fails(self) -> bool:
        """Whether a call fails before doing anything: an outage, a refused connection, or a 5xx."""
        return self.faults_on and (
            in_window(self.env.now, self.c.outages)
            or in_window(self.env.now, self.c.unreachable)
            or self.rng.random() < self.c.error_rate
        )

    def _status(self, auth: PspAuthorization) -> str:
        """An authorization's status now: one left uncaptured past its life has expired."""
        if auth.status == "authorized" and self.env.now >= auth.at + self.c.authorization_expiry_s:
            auth.status = "expired"
        return auth.status

    def _open(self, payment_id: str) -> PspAuthorization | None:
        """The charge's authorization still holding the card, if one is."""
        for auth in self.authorizations.get(payment_id, ()):
            if self._status(auth) == "authorized":
                return auth
        return None

    def _settled(self, payment_id: str) -> AuthOutcome:
        """What a charge whose authorization no longer holds became: captured, or let go."""
        captured = any(a.status == "captured" for a in self.authorizations.get(payment_id, ()))
        return "captured" if captured else "canceled"

    def open_authorizations(self) -> dict[str, int]:
        """What each charge's authorizations hold at the PSP now, where not zero."""
        held: dict[str, int] = {}
        for payment_id, auths in self.authorizations.items():
            amount = sum(a.amount for a in auths if self._status(a) == "authorized")
            if amount:
                held[payment_id] = amount
        return held

    def _calls(self, call: Any, *args: Any) -> Generator[simpy.Event, Any, AuthOutcome]:
        """A call on an authorization as the SDK makes it: retried under the same key, each acting as it
        arrives and answered a latency later; ``unknown`` when no answer came back."""
        for _ in range(self.c.sdk_retries + 1):
            outcome = call(*args)
            yield self.env.timeout(self._latency())
            if outcome is not None:
                return outcome
        return "unknown"

    def capture_authorized(
        self, payment_id: str, amount: int, key: str
    ) -> Generator[simpy.Event, Any, AuthOutcome]:
        """Capture ``amount`` of the charge's authorization, releasing the rest: ``captured``; ``canceled``
        when it is gone (canceled, or expired); ``unknown``."""
        return (yield from self._calls(self._capture_authorized_call, payment_id, amount, key))

    def _capture_authorized_call(self, payment_id: str, amount: int, key: str) -> AuthOutcome | None:
        if self._fails():
            return None
        if self.honour_keys and key in self.by_key:
            return "captured"
        auth = self._open(payment_id)
        if auth is None:
            return self._settled(payment_id)
        assert 0 < amount <= auth.amount, (payment_id, amount, auth.amount)
        auth.status, auth.captured = "captured", amount
        self._record(payment_id, auth.order_id, amount, key)
        if self.faults_on and self.rng.random() < self.c.lost_reply_rate:
            return None  # captured, but the reply never came back
        return "captured"

    def cancel_authorization(self, payment_id: str, key: str) -> Generator[simpy.Event, Any, AuthOutcome]:
        """Release the charge's authorization: ``canceled`` (also when it was gone already), ``captured``
        (too late), or ``unknown``."""
        return (yield from self._calls(self._cancel_call, payment_id, key))

    def _cancel_call(self, payment_id: str, key: str) -> AuthOutcome | None:
        if self._fails():
            return None
        if self.honour_keys and key in self.cancel_keys:
            return "canceled"
        auth = self._open(payment_id)
        if auth is None:
            return self._settled(payment_id)
        auth.status = "canceled"
        self.cancel_keys.add(key)
        if self.faults_on and self.rng.random() < self.c.lost_reply_rate:
            return None
        return "canceled"

    def _record(self, payment_id: str, order_id: int, amount: int, key: str, by_hand: bool = True) -> None:
        """A capture made; ``by_hand``: someone may refund it from the dashboard (not a late success's, which
        payray gives back itself)."""
        index = len(self.captures)
        self.captures.append(PspCapture(payment_id, order_id, amount, self.env.now))
        self.by_key[key] = index
        self.by_payment.setdefault(payment_id, []).append(index)
        self._announce(payment_id, "captured")
        if by_hand and self.rng.random() < self.c.external_refund_rate:
            self.env.process(self._refund_from_dashboard(payment_id, amount // 2 or amount))

    def _refund_from_dashboard(self, payment_id: str, amount: int) -> Generator[simpy.Event, Any, None]:
        """A refund made at the PSP without payray, a while after the capture; announced by webhook."""
        yield self.env.timeout(self.rng.expovariate(0.5))
        kept = sum(
            self.captures[i].amount for i in self.by_payment[payment_id] if not self.captures[i].refunded
        )
        if self.refunded.get(payment_id, 0) + amount > kept:
            return  # nothing left to refund
        key = f"dashboard-{payment_id}"
        self.refund_keys.add(key)
        self.refunded[payment_id] = self.refunded.get(payment_id, 0) + amount
        self.external[key] = (payment_id, amount)
        self._announce(key, "refunded")

    def _announce(self, payment_id: str, outcome: str) -> None:
        for listener in self.on_event:
            listener(payment_id, outcome)

    def refund_part(
        self, payment_id: str, amount: int, key: str
    ) -> Generator[simpy.Event, Any, Literal["refunded", "failed", "unknown"]]:
        """A refund of part of a charge's capture, as the SDK makes it (same key on each retry); never more
        than is left of the capture. Each call acts as it arrives, as ``capture``'s do."""
        for _ in range(self.c.sdk_retries + 1):
            outcome = self._refund_call(payment_id, amount, key)
            yield self.env.timeout(self._latency())
            if outcome is not None:
                return outcome
        return "unknown"

    def _refund_call(self, payment_id: str, amount: int, key: str) -> Literal["refunded", "failed"] | None:
        if self._fails():
            return None
        if self.honour_keys and key in self.refund_keys:
            return "refunded"
        if self.honour_keys and key in self.refused_keys:
            return "failed"  # the same key replays the same refusal, as Stripe's does
        kept = sum(
            self.captures[i].amount
            for i in self.by_payment.get(payment_id, ())
            if not self.captures[i].refunded
        )
        if self.rng.random() < self.c.refund_refusal_rate or self.refunded.get(payment_id, 0) + amount > kept:
            self.refused_keys.add(key)
            return "failed"
        self.refund_keys.add(key)
        self.refunded[payment_id] = self.refunded.get(payment_id, 0) + amount
        self._announce(key, "refunded")  # charge.refunded, naming our refund by its key's metadata
        if self.faults_on and self.rng.random() < self.c.lost_reply_rate:
            return None  # refunded, but the reply never came back
        return "refunded"

    def lookup(
        self, payment_id: str
    ) -> Generator[simpy.Event, Any, Outcome | Literal["not_found", "canceled"]]:
        """The janitor's search by our charge id (Stripe's search by metadata)."""
        yield self.env.timeout(self._latency())
        if self.faults_on and (in_window(self.env.now, self.c.outages) or self.unreachable()):
            return "unknown"
        if payment_id in self.by_payment:
            return "captured"
        if payment_id in self.authorizations:
            return "authorized" if self._open(payment_id) is not None else self._settled(payment_id)
        if payment_id in self.declined:
            return "declined"
        return "not_found"

    def refund(self, payment_id: str) -> Generator[simpy.Event, Any, bool]:
        """Refund every capture of the charge (a compensation, or a late success given back); False when the
        PSP did not answer."""
        answered = not self._fails()
        if answered:
            for index in self.by_payment.get(payment_id, []):
                self.captures[index].refunded = True
        yield self.env.timeout(self._latency())
        return answered


class FastKeys:
    """The Redis in front of the durable keys: fast, and it can lose everything at once."""

    def __init__(self) -> None:
        self.keys: dict[tuple[int, str], str] = {}

    def lose_everything(self) -> None:
        self.keys.clear()


class Booked(NamedTuple):
    """What the invariants read of one ledger transaction, taken from the ledger's own posting builders:
    debits less credits (zero when it balances), and what it moves on the PSP receivable (debit-positive)
    and on the merchant's payable (credit-positive). A few integers instead of the whole ``Posting``: a
    million-charge run keeps over a million of them."""

    imbalance: int
    receivable: int
    payable: int
    #: what it moves on the house's ``psp_authorized`` (debit-positive) and on the merchant's
    #: ``authorized_hold`` (credit-positive): an authorization's hold, outside the available balance
    authorized: int = 0
    hold: int = 0


def booked(posting: Posting) -> Booked:
    imbalance = receivable = payable = authorized = hold = 0
    for entry in posting.entries:
        signed = entry.amount.amount if entry.direction == "debit" else -entry.amount.amount
        imbalance += signed
        name = entry.account.name
        if name == "psp_receivable":
            receivable += signed
        elif name == "merchant_payable":
            payable -= signed
        elif name == "psp_authorized":
            authorized += signed
        elif name == "authorized_hold":
            hold -= signed
    return Booked(imbalance, receivable, payable, authorized, hold)


@dataclass
class LedgerBook:
    """The ledger's transactions by (kind, reference), each with its merchant, and each merchant's balance
    (``account_balances``, kept in the same transaction). Wallets live in the hosts and take their balance
    from here."""

    transactions: dict[tuple[str, str], tuple[str, Booked]] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    #: False for a broken ledger that writes a posting again under its used (kind, reference)
    idempotent: bool = True
    #: what such a ledger wrote again: (kind, reference, merchant, effect)
    repeated: list[tuple[str, str, str, Booked]] = field(default_factory=list)

    def post(self, posting: Posting) -> bool:
        assert posting.merchant_id is not None
        return self.book(posting.kind, posting.external_ref, posting.merchant_id, booked(posting))

    def book(self, kind: str, ref: str, merchant: str, effect: Booked) -> bool:
        """Idempotent on (kind, reference), as the real ledger; False when it was already posted."""
        key = (kind, ref)
        if key in self.transactions:
            if self.idempotent:
                return False
            self.repeated.append((kind, ref, merchant, effect))
        else:
            self.transactions[key] = (merchant, effect)
        self.balances[merchant] = self.balances.get(merchant, 0) + effect.payable
        return True


class Pool:
    """``capacity`` places, each held ``hold_s`` at a time, first come first served: a connection pool and its
    commit, or a replica's event loop and a request's CPU work. ``hold()`` is one event to wait for, which
    fires when the hold ends; the place then passes straight to the next in line. Cheap on purpose: a million
    charges make millions of holds."""

    def __init__(self, env: simpy.Environment, capacity: int, hold_s: float) -> None:
        self.env, self.free, self.hold_s = env, capacity, hold_s
        self.waiting: deque[simpy.Event] = deque()

    def hold(self) -> simpy.Event:
        if self.free:
            self.free -= 1
            done = self.env.timeout(self.hold_s)
            done.callbacks.append(self._release)
            return done
        turn = self.env.event()
        self.waiting.append(turn)
        return turn

    def _release(self, _event: simpy.Event) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.callbacks:
                continue  # cancelled while in line: its caller no longer waits
            done = self.env.timeout(self.hold_s)
            done.callbacks.append(self._release)
            done.callbacks.append(functools.partial(_hand_over, waiter))
            return
        self.free += 1


def _hand_over(turn: simpy.Event, _hold: simpy.Event) -> None:
    turn.succeed()


class SimDatabase:
    """Durable idempotency records, payments and the ledger, behind a connection pool; it can restart."""

    def __init__(self, env: simpy.Environment, config: SimConfig) -> None:
        self.env, self.c = env, config.database
        self.pool = Pool(env, config.database.pool, config.database.commit_s)
        self.keys: dict[tuple[int, str], str] = {}
        self.ledger = LedgerBook(idempotent=config.design.idempotent_postings)
        self.faults_on = True
        #: transactions through the pool (the wallet hosts count their own)
        self.commits = 0

    def restarting(self) -> bool:
        return bool(self.c.restarts) and self.faults_on and in_window(self.env.now, self.c.restarts)

    def commit(self) -> simpy.Event:
        """One transaction (a connection from the pool, then the commit), as one event to wait for; raises
        ``Unavailable`` while the database restarts."""
        if self.c.restarts and self.faults_on and in_window(self.env.now, self.c.restarts):
            raise Unavailable("database restarting")
        self.commits += 1
        return self.pool.hold()


@functools.cache
def capture_booked(amount: int, authorized: int = 0) -> Booked:
    """What a capture of ``amount`` books (of an authorization of ``authorized``, whose hold it releases):
    the same for every charge of those amounts (the builder is pure), so built once per amount."""
    return booked(capture_of("py_any", "acct_any", amount, authorized))


@functools.cache
def hold_booked(amount: int) -> Booked:
    """What an authorization's hold of ``amount`` books."""
    return booked(hold_posting("py_any", "acct_any", Money(amount, "usd")))


@functools.cache
def release_booked(amount: int) -> Booked:
    """What releasing an authorization's hold of ``amount`` books."""
    return booked(release_posting("py_any", "acct_any", Money(amount, "usd")))


def capture_of(payment_id: str, merchant: str, amount: int, authorized: int = 0) -> Posting:
    money = Money(amount, "usd")
    held = Money(authorized, "usd") if authorized else None
    return capture_posting(payment_id, merchant, money, fee_for(money, FEE_BPS), authorized=held)


def compensation_of(payment_id: str, merchant: str, amount: int) -> Posting:
    money = Money(amount, "usd")
    return refund_posting(f"compensation-{payment_id}", merchant, money, fee_for(money, FEE_BPS))
