"""The service, simulated: the idempotency layers, and a SimPy driver of ``payray.charge``'s state machine.

The driver does what ``serve_app/flows/charge.py`` does, against simulated components: each transition comes
from ``payray.charge.step`` and is persisted (a database commit) before its commands run; the commands call
the simulated PSP and the merchant's wallet host; recovery looks a charge up at the PSP rather than
capturing again. A capture is booked as ``payray.charge.booking`` says: its posting and the transitions it
completes commit in one transaction of the host, so a successful charge costs its insert and a share of one
batch commit. So what the simulator finds about the machine is true of the production machine.
"""

from __future__ import annotations

import contextlib
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
from sim.config import AUTHORIZATION_S, SimConfig
from sim.connections import REPLICA_DIED, Connections
from sim.hosts import REFUSED, UNAVAILABLE, HostPosting, Hosts, host_posting
from sim.world import (
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
        psp: SimPsp,
        db: SimDatabase,
        fast_keys: FastKeys,
        connections: Connections,
    ) -> None:
        self.env, self.rng, self.config = env, rng, config
        self.psp, self.db, self.fast_keys, self.connections = psp, db, fast_keys, connections
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
            charge = yield from self._idempotent(order_id, merchant, amount, key, manual)
            if charge.busy:
                return "in_flight"
            if charge.state not in TERMINAL_STATES:
                with driving(charge):
                    yield from self._drive(charge, "api")
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
    ) -> Generator[Any, Any, SimCharge]:
        mode = self.config.design.idempotency
        scoped = (order_id % self.config.load.merchants, key)
        if mode != "off":
            known = self.fast_keys.keys.get(scoped)
            if known is not None:
                return self.payments[known]
        # Redis does not know the key: one transaction inserts it with the charge, already submitted (as
        # ``serve_app/flows/charge.py`` does), or finds it there
        submit = self._chain(None, S.CREATED, E.SUBMIT)
        yield self.db.commit()
        if mode == "full" and scoped in self.db.keys:
            return self.payments[self.db.keys[scoped]]
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
        self.payments[charge.id] = charge
        self.by_order[order_id] = charge
        self.unfinished[charge.id] = charge
        if mode != "off":
            self.db.keys[scoped] = charge.id
            self.fast_keys.keys[scoped] = charge.id
        self._persisted(charge, submit, "api")
        return charge

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
        self, charge: SimCharge, who: str, event: ChargeEvent | None = None
    ) -> Generator[Any, Any, None]:
        """``ChargeFlow``: from ``event``, or else from the persisted state as ``resume`` does, persist each
        transition (one commit) and then run its command, whose outcome is the next event; until a command
        has nothing more to say. A capture is booked instead: its posting and ``booking(state)`` in one
        transaction of the merchant's host (``ChargeFlow._book``). One loop rather than a call per
        transition, so a resumed SimPy event passes through the same few generator frames (client, request,
        this loop, the PSP call) however many transitions came before.

        Each commit is guarded by the state the driver last saw, as ``APPLY_TRANSITIONS`` is: a booking sent
        by an earlier request that was cut may commit meanwhile, and then the answer is the state it left."""
        commands: tuple[Command, ...] = ()
        seen = charge.state
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
            if not commands:
                return
            command = commands[0]  # the machine asks for one command at a time
            if command is Command.CALL_PSP:
                outcome, _calls = yield from self.psp.capture(
                    charge.id, charge.order_id, charge.amount, psp_idempotency_key(charge.id), charge.manual
                )
                crash = config.service.crash_after_capture_rate
                if self.faults_on and outcome == "captured" and self.rng.random() < crash:
                    raise Crash("the replica died after the PSP captured")
                event = PSP_EVENTS[outcome]
            elif (
                command is Command.POST_LEDGER
                or command is Command.POST_HOLD
                or command is Command.POST_RELEASE
            ):
                event = None  # resuming from captured, authorized or released: booked as above
            elif command is Command.CAPTURE_AT_PSP:
                answer = yield from self.psp.capture_authorized(
                    charge.id, charge.captured, psp_capture_key(charge.id)
                )
                if answer == "unknown":
                    return  # stay capture_pending; the client or recovery captures again, same key
                crash = config.service.crash_after_capture_rate
                if self.faults_on and answer == "captured" and self.rng.random() < crash:
                    raise Crash("the replica died after the PSP captured the authorization")
                event = PSP_EVENTS[answer]
            elif command is Command.CANCEL_AT_PSP:
                answer = yield from self.psp.cancel_authorization(charge.id, psp_cancel_key(charge.id))
                if answer == "unknown":
                    return  # stay cancel_pending; recovery cancels again, same key
                event = PSP_EVENTS[answer]
            elif command in AUTOMATIC:
                event = AUTOMATIC[command]
            elif command is Command.REFUND_AT_PSP:
                # a design that takes "failed" to mean "nothing moved" skips the refund
                refunded = not config.design.compensation or (yield from self.psp.refund(charge.id))
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
        found = yield from self.psp.lookup(charge.id)
        for event in after_lookup(charge.state, None if found == "not_found" else found):
            yield from self._drive(charge, "janitor", event)

    def waits_for_psp(self, payment_id: str) -> bool:
        """Whether a ``charge.*`` event about this charge would be news: it is ours, and still waiting."""
        charge = self.payments.get(payment_id)
        return charge is not None and charge.state in AWAITING_PSP

    def webhook(self, payment_id: str, outcome: str) -> Generator[Any, Any, bool]:
        """A ``charge.succeeded`` or ``charge.failed`` event: applied to a charge still waiting to hear from
        the PSP. False (a 409) while its own request is live, so the PSP delivers it again."""
        if not self.waits_for_psp(payment_id):
            return True  # not ours, or already known: acknowledged, nothing to do
        charge = self.payments[payment_id]
        if charge.busy:
            return False
        try:
            with driving(charge):
                yield from self._drive(charge, "webhook", PSP_EVENTS[outcome])
        except (Unavailable, Crash):
            return False
        return True
