"""The service, simulated: the idempotency layers, and a SimPy driver of ``payray.charge``'s state machine.

The driver does what ``serve_app/flows/charge.py`` does, against simulated components: each transition comes
from ``payray.charge.step`` and is persisted (a database commit) before its commands run; the commands call
the simulated PSP and the merchant's wallet host; recovery looks a charge up at the PSP rather than
capturing again. A capture is booked as ``payray.charge.booking`` says: its posting and the transitions it
completes commit in one transaction of the host, so a successful charge costs its insert and a share of one
batch commit. So what the simulator finds about the machine is true of the production machine.

Each payment goes to a PSP chosen by ``payray.routing.Router`` (its breakers fed every attempt's end, on
SimPy's clock), as ``serve_app/flows/psp_routes.py`` routes it. An attempt has its own idempotency key at its
own PSP (``attempt_key``); only a definite failure of an attempt this request started fails over to the
merchant's next PSP (``may_cascade``, then ``psp_failed_over``): an unknown is resolved where it happened. An
attempt the payment left is watched for a late success, which is refunded at that PSP and booked both ways.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import simpy

from ledger.postings import AUTHORIZATION, AUTHORIZATION_RELEASE, CAPTURE
from payray import charge, intent
from payray.charge import (
    AUTOMATIC,
    AWAITING_PSP,
    BOOKABLE,
    PSP_EVENTS,
    RESTING_STATES,
    TERMINAL_STATES,
    ChargeEvent,
    ChargeState,
    Command,
    Transition,
    after_lookup,
    attempt_key,
    booking,
    booking_refused,
    hold_booking,
    psp_cancel_key,
    psp_capture_key,
    psp_idempotency_key,
    release_booking,
    resume,
)
from payray.errors import IllegalTransition
from payray.intent import IntentState
from payray.routing import HEALTHY_ENDS, AttemptEnd, Breaker, Router, may_cascade
from sim.config import AUTHORIZATION_S, SimConfig
from sim.connections import REPLICA_DIED, Connections
from sim.hosts import REFUSED, UNAVAILABLE, HostPosting, Hosts, host_posting
from sim.world import (
    DEFINITE,
    FastKeys,
    Pool,
    SimDatabase,
    SimPsp,
    Unavailable,
    capture_booked,
    compensation_of,
    hold_booked,
    release_booked,
)

Answer = Literal["succeeded", "declined", "failed", "pending", "in_flight", "error", "authorized"]
#: the answers to a merchant's capture or cancel of an authorization
SettleAnswer = Literal["succeeded", "canceled", "failed", "refused", "pending", "in_flight", "error"]
E, S = ChargeEvent, ChargeState
#: the transitions one event persists in one transaction
Chain = tuple[Transition, ...]


class Replica:
    """One API replica: an asyncio event loop, so one request's CPU work at a time (``work_s``, in line),
    while any number of its requests wait on I/O; and its calls to the wallet hosts, one in flight to each."""

    def __init__(self, env: simpy.Environment, work_s: float, hosts: Hosts) -> None:
        self.cpu = Pool(env, 1, work_s)
        #: the clients whose requests it serves, in arrival order
        self.serving: dict[simpy.Process, None] = {}
        self.outboxes = hosts.outboxes()
        self.up = True


class Crash(Exception):
    """One request died between the PSP's capture and the ledger, where a crash hurts most (a replica dying
    with everything it serves is ``SimService.crash_a_replica``)."""


class MachineRefused(Exception):
    """The driver asked ``payray.charge`` for a transition it does not have: a bug in the driver or the
    machine, never a simulated fault."""


@dataclass(slots=True)
class SimCharge:
    id: str
    order_id: int
    merchant: str
    key: str
    amount: int
    state: ChargeState = S.CREATED
    touched: float = 0.0
    busy: bool = False
    #: ``capture_method=manual``: authorized only, its hold (``amount``) captured or released later
    manual: bool = False
    #: what its capture takes: ``amount``, or for an authorization the merchant's ``amount_to_capture``
    captured: int = 0
    #: when its hold was booked (the authorization's age, for the expiry)
    authorized_at: float = 0.0
    #: the PaymentIntent that made it, if one did (every manual order: ``capture_method=manual`` is an
    #: intent's): confirmed with the charge's insert, then following it in each of its commits
    intent: IntentState | None = None
    #: (time, who, transition): the charge's whole story, printed for the first violation
    history: list[tuple[float, str, Transition]] = field(default_factory=list)
    #: the PSP of its latest attempt (where it captures, refunds, cancels), and every PSP it tried, in order
    psp: str = "stripe"
    tried: tuple[str, ...] = ()
    #: (PSP, how it ended) for each capture the service made: the story of its routing
    ends: tuple[tuple[str, str], ...] = ()


def attempt_id(charge: SimCharge) -> str:
    """The id of the charge's current attempt, which is its idempotency key at that PSP (the first keeps
    ``psp_idempotency_key``), and the ledger's reference for a late success there."""
    return psp_idempotency_key(charge.id) if len(charge.tried) < 2 else attempt_key(charge.id, charge.psp)


@dataclass(slots=True)
class LeftAttempt:
    """An attempt a payment left after a definite failure at its PSP: watched until that PSP says it moved
    nothing, or its late capture is given back (refunded there, booked as a capture and its reversal)."""

    id: str
    charge: SimCharge
    psp: str
    touched: float
    state: Literal["watching", "found", "refunded", "clear", "reversed"] = "watching"
    busy: bool = False
    #: who found its late capture: a ``charge.succeeded`` webhook, or the janitor's lookup
    found_by: str = ""


class Driven(Protocol):
    busy: bool


@contextlib.contextmanager
def driving(item: Driven) -> Iterator[None]:
    """Mark a charge or refund as driven for the block: one driver at a time, as the real flows' row guards
    and in-flight keys make it."""
    item.busy = True
    try:
        yield
    finally:
        item.busy = False


#: the command that resumes a capture to book (``payray.charge.booking``), a hold (``hold_booking``), a
#: release (``release_booking``)
BOOK = (Command.POST_LEDGER,)
HOLD = (Command.POST_HOLD,)
RELEASE = (Command.POST_RELEASE,)
#: a definite failure with no PSP left to try stands as the PSP's status says: a connection never made is
#: unknown until recovery looks it up there, a refusal is a decline
STANDS = {"not_sent": "unknown", "refused": "declined"}
#: where a hold, or a release, may still be booked
HOLDABLE = AWAITING_PSP | {S.AUTHORIZED}
RELEASABLE = frozenset({S.CAPTURE_PENDING, S.CANCEL_PENDING, S.RELEASED})
ANSWERS: dict[ChargeState, Answer] = {
    S.SUCCEEDED: "succeeded",
    S.DECLINED: "declined",
    S.FAILED: "failed",
    S.REQUIRES_CAPTURE: "authorized",
}
SETTLED: dict[ChargeState, SettleAnswer] = {
    S.SUCCEEDED: "succeeded",
    S.CANCELED: "canceled",
    S.FAILED: "failed",
}


class SimService:
    def __init__(
        self,
        env: simpy.Environment,
        rng: random.Random,
        config: SimConfig,
        psps: dict[str, SimPsp],
        db: SimDatabase,
        fast_keys: FastKeys,
        connections: Connections,
    ) -> None:
        self.env, self.rng, self.config = env, rng, config
        self.psps, self.db, self.fast_keys, self.connections = psps, db, fast_keys, connections
        r = config.routing
        breaker = functools.partial(Breaker, r.breaker_threshold, r.breaker_open_s, r.breaker_slow_s)
        self.router = Router({name: breaker() for name in psps})
        #: each breaker's state changes: (time, PSP, new state)
        self.breaker_log: list[tuple[float, str, str]] = []
        self._breakers = dict(self.router.health())
        #: attempts by PSP and end; cascades by the end they followed; when each attempt at a PSP other than
        #: the first began, by how it got there ("cascade", or "direct" past an open breaker)
        self.ends: Counter[tuple[str, str]] = Counter()
        #: one shared tuple per PSP and per (PSP, end): most charges make one attempt, and keep only these
        self._alone = {name: (name,) for name in psps}
        self._one_end: dict[tuple[str, str], tuple[tuple[str, str]]] = {}
        self.cascades: Counter[str] = Counter()
        self.routed: dict[tuple[str, str], list[float]] = {}
        #: attempts payments left, by attempt id and by (PSP, charge id); those not settled yet
        self.left: dict[str, LeftAttempt] = {}
        self.left_at: dict[tuple[str, str], LeftAttempt] = {}
        self.left_open: dict[str, LeftAttempt] = {}
        self.hosts = Hosts(env, rng, config, db, self._persisted)
        #: the recovery janitor's and the webhook handler's calls to the hosts
        self.background = self.hosts.outboxes()
        self.replicas = [
            Replica(env, config.service.work_s, self.hosts) for _ in range(config.service.replicas)
        ]
        #: the replica serving each client's open request
        self.replica_of: dict[simpy.Process, Replica] = {}
        #: replicas that died, the requests they cut, and requests refused while none was up
        self.replica_faults: Counter[str] = Counter()
        self.payments: dict[str, SimCharge] = {}
        self.unfinished: dict[str, SimCharge] = {}
        #: authorizations resting in ``requires_capture``: not unfinished work, but the expiry's to watch
        self.resting: dict[str, SimCharge] = {}
        #: set by an idle recovery janitor, which waits on it until something is unfinished again
        self.idle: simpy.Event | None = None
        #: authorizations canceled by the janitor for their age
        self.expired = 0
        self.faults_on = True
        self.transitions = 0
        self.created = 0
        #: each order's latest charge (a swap may make several)
        self.by_order: dict[int, SimCharge] = {}
        self._chains: dict[tuple[ChargeState, ChargeEvent], Chain] = {}
        self._bookings: dict[tuple[Any, ChargeState], Chain] = {}

    # -- the API -----------------------------------------------------------------------------------------

    def serve(self, handler: Generator[Any, Any, str]) -> Generator[Any, Any, str]:
        """One HTTP request: routed to a replica, its CPU work done there in line, then its handler (a charge
        or a refund). A replica that dies cuts it wherever it is."""
        replica = self.route()
        if replica is None:
            self.replica_faults["refused_none_up"] += 1
            return "error"  # no replica up: the proxy answers 503
        client = self.env.active_process
        assert client is not None
        replica.serving[client] = None
        self.replica_of[client] = replica
        try:
            yield replica.cpu.hold()
            return (yield from handler)
        finally:
            replica.serving.pop(client, None)
            del self.replica_of[client]

    def request(
        self, order_id: int, merchant: str, amount: int, key: str, manual: bool = False
    ) -> Generator[Any, Any, Answer]:
        """``POST /v1/charges`` with an Idempotency-Key: replayed, refused in flight, or a new charge.
        ``manual``: ``capture=false`` (a PaymentIntent's ``capture_method=manual``), authorized only."""
        try:
            charge, new = yield from self._idempotent(order_id, merchant, amount, key, manual)
            if charge.busy:
                return "in_flight"
            if charge.state not in TERMINAL_STATES:
                with driving(charge):
                    yield from self._drive(charge, "api", fresh=new)
        except (Unavailable, Crash):
            return "error"
        return ANSWERS.get(charge.state, "pending")

    def route(self) -> Replica | None:
        """The live replica serving the fewest requests (Serve's router prefers the one with the fewest
        ongoing), or None when every replica is down."""
        live = [r for r in self.replicas if r.up]
        return min(live, key=lambda r: len(r.serving)) if live else None

    def crash_a_replica(self) -> None:
        """The busiest live replica dies: every request it serves is cut where it is (its clients see a 502);
        Serve starts a new one ``replica_restart_s`` later."""
        live = [r for r in self.replicas if r.up]
        if not live:
            return
        replica = max(live, key=lambda r: len(r.serving))
        replica.up = False
        for outbox in replica.outboxes:
            outbox.alive = False
        self.replica_faults["crashes"] += 1
        self.replica_faults["requests_cut"] += len(replica.serving)
        for client in list(replica.serving):
            self.connections.cut(client, REPLICA_DIED)
        restart = self.env.timeout(self.config.service.replica_restart_s)
        restart.callbacks.append(lambda _: self._restart(replica))

    def _restart(self, dead: Replica) -> None:
        self.replicas[self.replicas.index(dead)] = Replica(self.env, self.config.service.work_s, self.hosts)

    def capture(self, charge: SimCharge, amount: int) -> Generator[Any, Any, SettleAnswer]:
        """``POST /v1/payment_intents/{id}/capture`` with ``amount_to_capture``: the capture of an
        authorization (in full or in part), or a retry's answer. The amount is the one persisted with
        ``capture``."""
        try:
            if charge.busy:
                return "in_flight"
            if charge.state is S.REQUIRES_CAPTURE:
                charge.captured = amount  # persisted with the transition (its commit, or nothing)
                with driving(charge):
                    yield from self._drive(charge, "api", E.CAPTURE)
            elif charge.state is S.CAPTURE_PENDING:  # an earlier attempt was cut: go on with its capture
                with driving(charge):
                    yield from self._drive(charge, "api")
            elif charge.state not in SETTLED:
                return "refused"  # canceling, or canceled: the intent cannot be captured
        except (Unavailable, Crash):
            return "error"
        return SETTLED.get(charge.state, "pending")

    def cancel(self, charge: SimCharge, who: str = "api") -> Generator[Any, Any, SettleAnswer]:
        """``POST /v1/payment_intents/{id}/cancel``, or the janitor's for an authorization 7 days old: its
        release at the PSP and in the ledger."""
        try:
            if charge.busy:
                return "in_flight"
            if charge.state is S.REQUIRES_CAPTURE:
                with driving(charge):
                    yield from self._drive(charge, who, E.CANCEL)
            elif charge.state in (S.CANCEL_PENDING, S.RELEASED):
                with driving(charge):
                    yield from self._drive(charge, who)
            elif charge.state is not S.CANCELED:
                return "refused"  # captured, or capturing: too late to cancel
        except (Unavailable, Crash):
            return "error"
        return "canceled" if charge.state is S.CANCELED else "pending"

    def expire(self, charge: SimCharge) -> Generator[Any, Any, None]:
        """The janitor's cancel of an authorization older than ``AUTHORIZATION_DAYS``."""
        if charge.busy or charge.state is not S.REQUIRES_CAPTURE:
            return
        assert self.env.now - charge.authorized_at >= AUTHORIZATION_S
        self.expired += 1
        yield from self.cancel(charge, "expiry")

    def _idempotent(
        self, order_id: int, merchant: str, amount: int, key: str, manual: bool = False
    ) -> Generator[Any, Any, tuple[SimCharge, bool]]:
        """The key's charge, and whether this request made it (its first attempt routed in the insert)."""
        mode = self.config.design.idempotency
        scoped = (order_id % self.config.load.merchants, key)
        if mode != "off":
            known = self.fast_keys.keys.get(scoped)
            if known is not None:
                return self.payments[known], False
        # Redis does not know the key: one transaction inserts it with the charge, already submitted (as
        # ``serve_app/flows/charge.py`` does), or finds it there
        submit = self._chain(None, S.CREATED, E.SUBMIT)
        yield self.db.commit()
        if mode == "full" and scoped in self.db.keys:
            return self.payments[self.db.keys[scoped]], False
        self.created += 1
        charge = SimCharge(
            f"py_{self.created:08d}",
            order_id,
            merchant,
            key,
            amount,
            manual=manual,
            captured=amount,
            intent=IntentState.PROCESSING if manual else None,
        )
        self._route(charge)
        self.payments[charge.id] = charge
        self.by_order[order_id] = charge
        self.unfinished[charge.id] = charge
        if mode != "off":
            self.db.keys[scoped] = charge.id
            self.fast_keys.keys[scoped] = charge.id
        self._persisted(charge, submit, "api")
        return charge, True

    # -- the driver ----------------------------------------------------------------------------------------

    def _chain(self, payment_id: str | None, state: ChargeState, event: ChargeEvent) -> Chain:
        """``payray.charge.chain``: the transitions one event persists in one transaction, its own and the
        automatic ones after it (``ChargeFlow._persist`` stores the answer in the same statement)."""
        known = self._chains.get((state, event))
        if known is not None:
            return known
        try:
            chain = charge.chain(state, event)
        except IllegalTransition as exc:
            raise MachineRefused(f"charge {payment_id or '(new)'}: {exc}") from exc
        self._chains[(state, event)] = chain  # the machine is pure: one lookup per run and transition
        return chain

    def _booking(self, payment_id: str, state: ChargeState, rule: Any = booking) -> Chain:
        """``payray.charge.booking(state)``: the transitions that commit with a capture's posting; or those
        of another such rule (``hold_booking``, ``release_booking``)."""
        known = self._bookings.get((rule, state))
        if known is None:
            try:
                known = self._bookings[(rule, state)] = rule(state)
            except IllegalTransition as exc:
                raise MachineRefused(f"charge {payment_id}: {exc}") from exc
        return known

    def _persisted(self, charge: SimCharge, chain: Chain, who: str) -> tuple[Command, ...]:
        """Apply a committed chain to the charge; the commands its last transition asks for."""
        now = self.env.now
        for transition in chain:
            charge.history.append((now, who, transition))
            charge.state = transition.target
        charge.touched = now
        self.transitions += len(chain)
        if charge.intent is not None:  # in the same commit, as ``serve_app.stores.intents.FOLLOW`` writes it
            followed = intent.follow(charge.intent, charge.state)
            charge.intent = followed.target if followed is not None else charge.intent
        if charge.state in TERMINAL_STATES:
            self.unfinished.pop(charge.id, None)
        if charge.manual:
            self._rests(charge, chain[0].source)
        return transition.commands

    def _rests(self, charge: SimCharge, source: ChargeState) -> None:
        """An authorization answered and held rests (the merchant's move, or the expiry's), out of the
        recovery's way; captured or canceled, it is unfinished work again until it ends."""
        if charge.state in RESTING_STATES:
            self.unfinished.pop(charge.id, None)
            self.resting[charge.id] = charge
            charge.authorized_at = self.env.now
        if source in RESTING_STATES:
            del self.resting[charge.id]
            if charge.state not in TERMINAL_STATES:
                self.unfinished[charge.id] = charge
                self.wake()

    def wake(self) -> None:
        """Something is unfinished: an idle recovery janitor sweeps again."""
        if self.idle is not None:
            self.idle.succeed()
            self.idle = None

    def post(self, postings: list[HostPosting]) -> simpy.Event:
        """One call to the merchant's wallet host (all ``postings`` are one merchant's), riding this caller's
        next call to that host: the event to wait for, after which each posting carries the host's answer
        (``answered`` raises if the host's transaction failed)."""
        replica = self.replica_of.get(self.env.active_process)  # type: ignore[arg-type]
        outboxes = self.background if replica is None else replica.outboxes
        return outboxes[self.hosts.index_of(postings[0].merchant)].send(postings)

    @staticmethod
    def answered(postings: list[HostPosting]) -> None:
        for posting in postings:
            if posting.result is UNAVAILABLE:
                raise Unavailable("the wallet host's transaction failed")

    def _drive(
        self, charge: SimCharge, who: str, event: ChargeEvent | None = None, fresh: bool = False
    ) -> Generator[Any, Any, None]:
        """``ChargeFlow``: from ``event``, or else from the persisted state as ``resume`` does, persist each
        transition (one commit) and then run its command, whose outcome is the next event; until a command
        has nothing more to say. A capture is booked instead: its posting and ``booking(state)`` in one
        transaction of the merchant's host (``ChargeFlow._book``). One loop rather than a call per
        transition, so a resumed SimPy event passes through the same few generator frames (client, request,
        this loop, the PSP call) however many transitions came before.

        Each commit is guarded by the state the driver last saw, as ``APPLY_TRANSITIONS`` is: a booking sent
        by an earlier request that was cut may commit meanwhile, and then the answer is the state it left.

        ``fresh``: this driver made the charge's attempt, so no earlier call of it can have reached the PSP
        and a definite failure is one (``_attempt``)."""
        commands: tuple[Command, ...] = ()
        seen = charge.state
        left_behind = False  # a refusal that stands: the attempt is watched once its decline is persisted
        if event is None:
            resumption = resume(seen)
            event, commands = resumption.event, resumption.commands
        config, db = self.config, self.db
        chain: Chain = ()
        while True:
            if event is E.PSP_CAPTURED or commands == BOOK:
                if seen not in BOOKABLE:
                    return  # a booking sent by an earlier, cut request committed first
                refused = self.faults_on and self.rng.random() < config.service.ledger_failure_rate
                capture = HostPosting(
                    CAPTURE,
                    charge.id,
                    charge.merchant,
                    capture_booked(charge.captured, charge.amount if charge.manual else 0),
                    0,
                    charge,
                    self._booking(charge.id, seen),
                    who,
                    refused,
                )
                yield self.post([capture])
                if capture.result is UNAVAILABLE:
                    raise Unavailable("the wallet host's transaction failed")
                if capture.completed:
                    return
                if capture.result is REFUSED:  # the capture and the ledger's refusal, persisted together
                    chain = booking_refused(seen)
                elif charge.state is S.CAPTURED:  # posted; whoever moved it on left it to be booked
                    seen, chain = S.CAPTURED, self._booking(charge.id, S.CAPTURED)
                else:
                    return  # posted, and the charge moved on: the answer is its state
            elif event is E.PSP_AUTHORIZED or event is E.PSP_CANCELED or commands in (HOLD, RELEASE):
                # an authorization's hold, or its release, with the transitions it completes
                # (``hold_booking``, ``release_booking``) in one transaction of the host, as a capture
                holding = event is E.PSP_AUTHORIZED or commands == HOLD
                if seen not in (HOLDABLE if holding else RELEASABLE):
                    return  # booked meanwhile by an earlier, cut request, or a webhook
                posting = HostPosting(
                    AUTHORIZATION if holding else AUTHORIZATION_RELEASE,
                    charge.id,
                    charge.merchant,
                    hold_booked(charge.amount) if holding else release_booked(charge.amount),
                    0,
                    charge,
                    self._booking(charge.id, seen, hold_booking if holding else release_booking),
                    who,
                )
                yield self.post([posting])
                if posting.result is UNAVAILABLE:
                    raise Unavailable("the wallet host's transaction failed")
                return  # booked (or booked before, and the charge moved on): the answer is its state
            elif event is not None:
                chain = self._chain(charge.id, seen, event)
            if chain:
                yield db.commit()  # persisted before its commands run
                if charge.state is not seen:
                    return
                commands = self._persisted(charge, chain, who)
                seen, event, chain = charge.state, None, ()
                if left_behind:
                    self._leave(charge)
                    left_behind = False
            if not commands:
                return
            command = commands[0]  # the machine asks for one command at a time
            if command is Command.CALL_PSP:
                outcome = yield from self._attempt(charge, who, fresh)
                fresh = False
                if outcome is None:
                    return  # moved on meanwhile: the answer is its state
                crash = config.service.crash_after_capture_rate
                if self.faults_on and outcome == "captured" and self.rng.random() < crash:
                    raise Crash("the replica died after the PSP captured")
                event = PSP_EVENTS[STANDS.get(outcome, outcome)]
                left_behind = outcome == "refused"
            elif (
                command is Command.POST_LEDGER
                or command is Command.POST_HOLD
                or command is Command.POST_RELEASE
            ):
                event = None  # resuming from captured, authorized or released: booked as above
            elif command is Command.CAPTURE_AT_PSP:
                answer = yield from self.psps[charge.psp].capture_authorized(
                    charge.id, charge.captured, psp_capture_key(charge.id)
                )
                if answer == "unknown":
                    return  # stay capture_pending; the client or recovery captures again, same key
                crash = config.service.crash_after_capture_rate
                if self.faults_on and answer == "captured" and self.rng.random() < crash:
                    raise Crash("the replica died after the PSP captured the authorization")
                event = PSP_EVENTS[answer]
            elif command is Command.CANCEL_AT_PSP:
                answer = yield from self.psps[charge.psp].cancel_authorization(
                    charge.id, psp_cancel_key(charge.id)
                )
                if answer == "unknown":
                    return  # stay cancel_pending; recovery cancels again, same key
                event = PSP_EVENTS[answer]
            elif command in AUTOMATIC:
                event = AUTOMATIC[command]
            elif command is Command.REFUND_AT_PSP:
                # a design that takes "failed" to mean "nothing moved" skips the refund
                psp = self.psps[charge.psp]
                refunded = not config.design.compensation or (yield from psp.refund(charge.id))
                if not refunded:
                    return  # stay refund_pending; recovery refunds again with the same key
                event = E.PSP_REFUNDED
            elif command is Command.POST_COMPENSATION:
                if config.design.compensation:  # the capture and its reversal: the PSP moved money twice
                    reversal = compensation_of(charge.id, charge.merchant, charge.captured)
                    held = charge.amount if charge.manual else 0  # an authorization's hold goes with it
                    capture = HostPosting(
                        CAPTURE, charge.id, charge.merchant, capture_booked(charge.captured, held)
                    )
                    postings = [capture, host_posting(reversal)]
                    yield self.post(postings)
                    self.answered(postings)
                event = E.COMPENSATION_POSTED
            else:
                return  # RESPOND_DECLINED, RESPOND_PENDING, RESPOND_FAILED: the answer is the state

    # -- routing -------------------------------------------------------------------------------------------

    def _route(self, charge: SimCharge) -> None:
        """A new payment's first PSP (``PspRoutes.first``), persisted with its insert."""
        now = self.env.now
        first = self.router.next_psp(self.config.routing.priorities, (), now)
        assert first is not None  # a first attempt always has somewhere to go
        charge.psp, charge.tried = first, self._alone[first]
        if first != self.config.routing.priorities[0]:
            self.routed.setdefault((first, "direct"), []).append(now)
        self._note_breaker(first)

    def _attempt(self, charge: SimCharge, who: str, fresh: bool) -> Generator[Any, Any, AttemptEnd | None]:
        """``call_psp``: the capture at the charge's PSP under its attempt's key, its end fed to that PSP's
        breaker. A definite failure of a ``fresh`` attempt (one no earlier request may have sent) fails over
        to the merchant's next PSP, ``psp_failed_over`` persisted with the left attempt before the next is
        sent; resumed, it is an unknown, as that request's call may have reached the PSP. The last end (a
        definite failure there: no PSP left to try); None if the charge moved on meanwhile."""
        while True:
            psp, started = charge.psp, self.env.now
            outcome, _calls = yield from self.psps[psp].capture(
                charge.id, charge.order_id, charge.amount, attempt_id(charge), charge.manual
            )
            self._feed(psp, outcome, self.env.now - started)
            trusted = fresh or self.config.design.resumed_failures_cascade
            end: AttemptEnd = outcome if trusted or outcome not in DEFINITE else "unknown"
            one = self._one_end.get((psp, end))
            if one is None:
                one = self._one_end[(psp, end)] = ((psp, end),)
            charge.ends += one  # the first end is the shared tuple itself
            declined = self.psps[psp].declined.get(charge.id) if end == "declined" else None
            after = self._next_psp(charge) if may_cascade(end, declined) else None
            if after is None:
                return end
            seen = charge.state
            chain = self._chain(charge.id, seen, E.PSP_FAILED_OVER)
            yield self.db.commit()
            if charge.state is not seen or charge.psp != psp:
                return None
            self._leave(charge)
            charge.psp, charge.tried = after, (*charge.tried, after)
            self._persisted(charge, chain, who)
            self.cascades[end] += 1
            self.routed.setdefault((after, "cascade"), []).append(self.env.now)

    def _next_psp(self, charge: SimCharge) -> str | None:
        """``PspRoutes.after``: on down the merchant's list past the current PSP, never back up it, skipping
        PSPs whose breaker is open."""
        order = self.config.routing.priorities
        after = self.router.next_psp(order, order[: order.index(charge.psp) + 1], self.env.now)
        if after is not None:
            self._note_breaker(after)
        return after

    def _feed(self, psp: str, end: str, seconds: float) -> None:
        """An attempt's end to its PSP's breaker, as ``PspRoutes.record`` does: good when the PSP answered
        (``HEALTHY_ENDS``) in time; a definite failure or an unknown is bad."""
        self.ends[(psp, end)] += 1
        self.router.breakers[psp].record(self.env.now, ok=end in HEALTHY_ENDS, seconds=seconds)
        self._note_breaker(psp)

    def _note_breaker(self, psp: str) -> None:
        state = self.router.breakers[psp].state
        if state != self._breakers[psp]:
            self._breakers[psp] = state
            self.breaker_log.append((self.env.now, psp, state))

    def _leave(self, charge: SimCharge) -> None:
        """Watch the attempt the charge leaves behind, failed over or declined after a refusal (persisted with
        the commit that leaves it): nothing else will ask its PSP about it again."""
        if not self.config.design.watch_left_attempts:
            return
        left = LeftAttempt(attempt_id(charge), charge, charge.psp, self.env.now)
        self.left[left.id] = self.left_open[left.id] = self.left_at[(left.psp, charge.id)] = left
        self.wake()

    def settle_left(self, left: LeftAttempt, found: str | None = None) -> Generator[Any, Any, bool]:
        """The janitor's (or a ``charge.succeeded`` webhook's, ``found="captured"``) look at an attempt a
        payment left: asked at its PSP, and a late capture found there refunded and booked both ways. False
        (a 409 to a webhook) while another is at it or a dependency failed: the next sweep goes on."""
        if left.state in ("clear", "reversed"):
            return True
        if left.busy:
            return False
        try:
            with driving(left):
                yield from self._settle_left(left, found)
        except (Unavailable, Crash):
            return False
        finally:
            left.touched = self.env.now
        return left.state in ("clear", "reversed")

    def _settle_left(self, left: LeftAttempt, found: str | None) -> Generator[Any, Any, None]:
        """Each step persisted before the next, as a compensation's: a capture found at the left PSP, then
        refunded there, then its capture and reversal posted together under the attempt's key, so a retry
        resumes where the last one stopped and the merchant's balance never shows the capture alone."""
        psp, charge = self.psps[left.psp], left.charge
        if left.state == "watching":
            known = found is not None
            if found is None:
                found = yield from psp.lookup(charge.id)
            if found == "unknown":
                return  # the PSP did not answer: the next sweep asks again
            yield self.db.commit()
            left.state = "found" if found == "captured" else "clear"
            left.found_by = "webhook" if known else "janitor"
        if left.state == "found":
            if not (yield from psp.refund(charge.id)):
                return
            yield self.db.commit()
            left.state = "refunded"
        if left.state == "refunded":
            reversal = compensation_of(left.id, charge.merchant, charge.amount)
            postings = [HostPosting(CAPTURE, left.id, charge.merchant, capture_booked(charge.amount))]
            postings.append(host_posting(reversal))
            yield self.post(postings)
            self.answered(postings)
            left.state = "reversed"
        self.left_open.pop(left.id, None)

    # -- recovery and webhooks ----------------------------------------------------------------------------

    def recover(self, charge: SimCharge) -> Generator[Any, Any, None]:
        """``ChargeFlow.recover``: never capture again; ask the PSP what happened, then go on from there."""
        if charge.busy or charge.state in TERMINAL_STATES:
            return
        with driving(charge), contextlib.suppress(Unavailable, Crash):  # the next sweep tries again
            yield from self._recover(charge)

    def _recover(self, charge: SimCharge) -> Generator[Any, Any, None]:
        if charge.state not in AWAITING_PSP:
            yield from self._drive(charge, "janitor")
            return
        found = yield from self.psps[charge.psp].lookup(charge.id)
        if found == "not_found" and (yield from self._fail_over_not_found(charge)):
            yield from self._drive(charge, "janitor", fresh=True)
            return
        for event in after_lookup(charge.state, None if found == "not_found" else found):
            yield from self._drive(charge, "janitor", event)

    def _fail_over_not_found(self, charge: SimCharge) -> Generator[Any, Any, bool]:
        """``ChargeFlow.recover``: the charge's PSP never took it, so it goes on to the merchant's next PSP
        (the attempt it leaves persisted and watched) rather than failing; False when there is none."""
        after = self._next_psp(charge)
        if after is None:
            return False
        psp, seen = charge.psp, charge.state
        chain = self._chain(charge.id, seen, E.PSP_FAILED_OVER)
        yield self.db.commit()
        if charge.state is not seen or charge.psp != psp:
            return False
        self._leave(charge)
        charge.psp, charge.tried = after, (*charge.tried, after)
        self._persisted(charge, chain, "janitor")
        self.cascades["not_found"] += 1
        self.routed.setdefault((after, "cascade"), []).append(self.env.now)
        return True

    def waits_for_psp(self, payment_id: str, psp: str = "stripe") -> bool:
        """Whether a ``charge.*`` event from ``psp`` about this charge would be news: it is ours, and still
        waiting for that PSP; or that PSP has an attempt the charge left, still watched."""
        charge = self.payments.get(payment_id)
        if charge is None:
            return False
        if charge.psp == psp and charge.state in AWAITING_PSP:
            return True
        left = self.left_at.get((psp, payment_id)) if self.left_at else None
        return left is not None and left.state == "watching"

    def webhook(self, payment_id: str, outcome: str, psp: str = "stripe") -> Generator[Any, Any, bool]:
        """A ``charge.succeeded`` or ``charge.failed`` event from ``psp``: applied to a charge still waiting
        to hear from that PSP, or news of a late success at an attempt the charge left. False (a 409) while
        its own request is live, so the PSP delivers it again."""
        if not self.waits_for_psp(payment_id, psp):
            return True  # not ours, or already known: acknowledged, nothing to do
        charge = self.payments[payment_id]
        if charge.psp != psp or charge.state not in AWAITING_PSP:
            if outcome != "captured":
                return True  # a left attempt that did not capture: the watch's lookup says so too
            return (yield from self.settle_left(self.left_at[(psp, payment_id)], "captured"))
        if charge.busy:
            return False
        try:
            with driving(charge):
                yield from self._drive(charge, "webhook", PSP_EVENTS[outcome])
        except (Unavailable, Crash):
            return False
        return True
