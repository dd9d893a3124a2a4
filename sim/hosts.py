"""Wallet hosts, simulated: a fixed pool of actors, each holding its slots' wallets and writing its postings.

A merchant's postings go to ``payray.slots.SlotMap(hosts, slots).host_of(merchant)``, as production routes
them. Each replica (and the background workers) keeps one call in flight per host; what its requests post
meanwhile rides its next call (``payray.batching``). A host does one call's CPU at a time (``call_s``, and
``posting_s`` for each posting it carries), checks debits against its wallets (loaded from the ledger on
first use, LRU passivated by ``payray.passivation``), and group-commits: what arrives within
``group_commit_s`` of a batch's first posting, or while a batch commits, goes to Postgres in one
transaction. A capture's posting commits with the transitions it completes (``payray.charge.booking``),
guarded by the state they start from.

A host that dies comes back ``restart_s`` later, empty; Ray retries the calls it had in flight on the new
copy, so callers wait instead of failing, and a batch that was committing when it died may have committed
already. For ``duplicate_s`` the old copy may go on writing beside the new one. Postgres arbitrates both:
postings are idempotent on (kind, reference), debits carry ``require_funds``, transitions are guarded.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import simpy

from ledger.postings import Posting
from payray.charge import Transition
from payray.passivation import WalletCache
from payray.slots import SlotMap
from sim.config import SimConfig
from sim.world import Booked, SimDatabase, booked

if TYPE_CHECKING:
    from sim.service import SimCharge

#: what a host answers for one posting
POSTED, REFUSED, INSUFFICIENT, UNAVAILABLE = "posted", "refused", "insufficient", "unavailable"

#: the driver's hook that persists a committed chain of transitions on a charge
Persist = Callable[["SimCharge", tuple[Transition, ...], str], Any]


@dataclass(slots=True, eq=False)
class HostPosting:
    """One posting a driver asks a host to write, and what came of it. ``need`` is what a debit takes from
    the merchant (checked by the wallet, then by ``require_funds``); a capture carries its charge and the
    chain (``booking``) that commits with it when the charge is still where the chain starts."""

    kind: str
    ref: str
    merchant: str
    effect: Booked
    need: int = 0
    charge: SimCharge | None = None
    chain: tuple[Transition, ...] = ()
    who: str = ""
    #: the ledger refuses this posting (a constraint, a bug): ``Service.ledger_failure_rate``
    refused: bool = False
    result: str = ""
    #: the chain committed with the posting
    completed: bool = False


def host_posting(posting: Posting, need: int = 0) -> HostPosting:
    """What a host writes of a ledger posting; ``need``: the funds a debit requires."""
    assert posting.merchant_id is not None
    return HostPosting(posting.kind, posting.external_ref, posting.merchant_id, booked(posting), need)


class HostCall(simpy.Event):
    """One actor call: the postings it carries; an event its callers wait for, which fires once the host
    answered."""

    def __init__(self, env: simpy.Environment, postings: list[HostPosting]) -> None:
        super().__init__(env)
        self.postings = postings


class Wallet:
    """One merchant's wallet inside a host: its balance as the ledger last returned it, what debits in flight
    reserve of it, and how many of its postings are in flight (busy: never passivated)."""

    __slots__ = ("balance", "debits", "pending", "reserved")

    def __init__(self, balance: int) -> None:
        self.balance = balance
        self.reserved = 0
        self.pending = 0
        self.debits: set[str] = set()


def _busy(wallet: Wallet) -> bool:
    return wallet.pending > 0 or wallet.reserved > 0


#: a call's postings as one host took them: (posting, its wallet, whether it reserved funds)
Taken = list[tuple[HostPosting, Wallet, bool]]


class Batch:
    """One group commit: the calls it answers (with their postings as the host took them), until when it
    takes more, and when its transaction ends."""

    __slots__ = ("calls", "closes_at", "ends_at")

    def __init__(self, call: HostCall, taken: Taken, closes_at: float, ends_at: float) -> None:
        self.calls = [(call, taken)]
        self.closes_at, self.ends_at = closes_at, ends_at


class Host:
    """One incarnation of a wallet host. ``live`` while Ray routes calls to it and hears its answers; after
    it dies it either stops (``dead``) or, as a duplicate copy, goes on writing unheard.

    Its CPU is a clock rather than a process: a call is taken when the calls before it are done and its own
    CPU time has passed, and it joins the batch open at that time, or the next. So a call costs the host
    no event of its own; a batch costs one, when its transaction ends. The wallet checks are made in the
    order the calls arrive, which is the order the host takes them in."""

    def __init__(self, hosts: Hosts, index: int) -> None:
        self.hosts, self.index, self.env = hosts, index, hosts.env
        c = hosts.c
        self.call_s, self.posting_s = c.call_s, c.posting_s
        self.window_s, self.commit_s = c.group_commit_s, hosts.commit_s
        self.wallets: WalletCache[Wallet] = WalletCache(c.wallet_cache, c.wallet_idle_s, _busy)
        self.cpu_free_at = 0.0
        #: the batches to commit, in order (the first may be committing), and the calls with nothing to write,
        #: answered when their CPU turn ends: together, the calls Ray retries if this copy dies
        self.batches: deque[Batch] = deque()
        self.bare: dict[HostCall, None] = {}
        self.live = True
        self.dead = False

    def in_flight(self) -> list[HostCall]:
        """The calls received and not answered yet."""
        return [*(call for batch in self.batches for call, _ in batch.calls), *self.bare]

    def receive(self, call: HostCall) -> None:
        now = self.env.now
        cpu_s = self.call_s + self.posting_s * len(call.postings)
        taken_at = self.cpu_free_at = max(now, self.cpu_free_at) + cpu_s
        taken = self._take(call)
        if not taken:  # nothing to write: answered once its CPU turn is over
            self.bare[call] = None
            self.env.timeout(taken_at - now).callbacks.append(lambda _: self._answer_bare(call))
            return
        batches = self.batches
        if batches:
            last = batches[-1]
            if taken_at < last.closes_at:
                last.calls.append((call, taken))
                return
            if taken_at < last.ends_at:  # taken while the last batch commits: the next one, right after it
                self._schedule(Batch(call, taken, last.ends_at, last.ends_at + self.commit_s), now)
                return
        closes_at = taken_at + self.window_s
        self._schedule(Batch(call, taken, closes_at, closes_at + self.commit_s), now)

    def _schedule(self, batch: Batch, now: float) -> None:
        self.batches.append(batch)
        self.env.timeout(batch.ends_at - now).callbacks.append(self._committed)

    def _take(self, call: HostCall) -> Taken:
        """A call's postings as the host takes them: debits checked against the wallet (and their funds
        reserved), each wallet loaded from the ledger on first use; what is left to write."""
        hosts, live, now = self.hosts, self.live, self.env.now
        hosts.calls += 1
        ledger, wallets = hosts.ledger, self.wallets
        taken: Taken = []
        for posting in call.postings:
            merchant = posting.merchant
            wallet = wallets.get(merchant, now)
            if wallet is None:  # one indexed read of the ledger
                wallet = Wallet(ledger.balances.get(merchant, 0))
                wallets.put(merchant, wallet, now)
                hosts.loads += 1
            if live:
                posting.result, posting.completed = "", False
            need = posting.need
            if need and posting.ref not in wallet.debits:
                if (posting.kind, posting.ref) in ledger.transactions:
                    # a replayed debit is answered with its posting, whatever the balance now
                    wallet.balance = ledger.balances.get(merchant, 0)
                    if live:
                        posting.result = POSTED
                    continue
                if wallet.balance - wallet.reserved < need:
                    if live:
                        posting.result = INSUFFICIENT
                    continue
                wallet.reserved += need
                wallet.debits.add(posting.ref)
                wallet.pending += 1
                taken.append((posting, wallet, True))
            else:
                wallet.pending += 1
                taken.append((posting, wallet, False))
        return taken

    def _committed(self, _event: simpy.Event) -> None:
        if self.dead:
            return
        batch = self.batches.popleft()
        self._write(batch)
        if self.live:
            for call, _ in batch.calls:
                call.succeed()

    def _write(self, batch: Batch) -> None:
        """One transaction: every posting (a savepoint each, so a refused one sinks only itself), each
        capture's chain where the charge is still where it starts; then the wallets take the ledger's
        balances and let their reservations go. The whole transaction fails while the database restarts."""
        hosts, live = self.hosts, self.live
        ledger, persist = hosts.ledger, hosts.persist
        transactions, balances = ledger.transactions, ledger.balances
        failed = hosts.db.restarting()
        hosts.batches += 1
        for _call, taken in batch.calls:
            for posting, wallet, reserved in taken:
                merchant = posting.merchant
                if failed:
                    result = UNAVAILABLE
                elif (
                    reserved
                    and (posting.kind, posting.ref) not in transactions
                    and balances.get(merchant, 0) < posting.need
                ):
                    result = INSUFFICIENT  # require_funds: the ledger refuses an overdraft
                elif posting.refused:
                    result = REFUSED
                else:
                    result = POSTED
                    ledger.book(posting.kind, posting.ref, merchant, posting.effect)
                    hosts.postings += 1
                    charge = posting.charge
                    if charge is not None and charge.state is posting.chain[0].source:
                        persist(charge, posting.chain, posting.who)
                        if live:
                            posting.completed = True
                if live:
                    posting.result = result
                if reserved:
                    wallet.reserved -= posting.need
                    wallet.debits.discard(posting.ref)
                wallet.pending -= 1
                wallet.balance = balances.get(merchant, 0)

    def _answer_bare(self, call: HostCall) -> None:
        if self.live and call in self.bare:
            del self.bare[call]
            call.succeed()

    def die(self, rng: random.Random, duplicate_s: float) -> None:
        """Stop answering. Without a duplicate copy, a batch caught committing may have committed at
        Postgres (the reply is what was lost), and nothing else happens here any more."""
        self.live = False
        if duplicate_s > 0:
            self.env.timeout(duplicate_s).callbacks.append(self._stop)
            return
        committing = self.batches[0] if self.batches else None
        if committing is not None and self.env.now >= committing.closes_at and rng.random() < 0.5:
            self._write(committing)
            self.hosts.committed_at_death += 1
        self.dead = True

    def _stop(self, _event: simpy.Event) -> None:
        self.dead = True


class Outbox:
    """One caller's calls to one host: one in flight; what is posted meanwhile travels in the next call."""

    __slots__ = ("alive", "env", "hosts", "in_flight", "index", "next")

    def __init__(self, hosts: Hosts, index: int) -> None:
        self.hosts, self.index, self.env = hosts, index, hosts.env
        self.in_flight: HostCall | None = None
        self.next: HostCall | None = None
        #: False once the replica it belongs to died: what it had not sent dies with it
        self.alive = True

    def send(self, postings: list[HostPosting]) -> simpy.Event:
        """The event that fires once the host has answered for ``postings`` (each carries its result)."""
        if self.in_flight is None:
            self.in_flight = call = HostCall(self.env, postings)
            call.callbacks.append(self._answered)
            host = self.hosts.current[self.index]
            if host is None:
                self.hosts.parked[self.index].append(call)
            else:
                host.receive(call)
            return call
        if self.next is None:
            self.next = HostCall(self.env, postings)
        else:
            self.next.postings.extend(postings)
        return self.next

    def _answered(self, _event: simpy.Event) -> None:
        self.in_flight, call, self.next = None, self.next, None
        if call is not None and self.alive:
            self.in_flight = call
            call.callbacks.append(self._answered)
            self.hosts.deliver(self.index, call)


class Hosts:
    """The pool: which host owns a merchant, each host's current copy, and the calls waiting for a restart."""

    def __init__(
        self,
        env: simpy.Environment,
        rng: random.Random,
        config: SimConfig,
        db: SimDatabase,
        persist: Persist,
    ) -> None:
        self.env, self.rng, self.c = env, rng, config.hosts
        self.db, self.ledger, self.persist = db, db.ledger, persist
        self.commit_s = config.database.commit_s
        self.slots = SlotMap(self.c.hosts, self.c.slots)
        self._owner: dict[str, int] = {}
        self.calls = self.batches = self.postings = self.loads = self.committed_at_death = 0
        self.faults: Counter[str] = Counter()
        self.current: list[Host | None] = [Host(self, index) for index in range(self.c.hosts)]
        #: per host, the calls Ray holds while it restarts
        self.parked: list[list[HostCall]] = [[] for _ in range(self.c.hosts)]

    def index_of(self, merchant: str) -> int:
        owner = self._owner.get(merchant)
        if owner is None:
            owner = self._owner[merchant] = self.slots.host_of(merchant)
        return owner

    def outboxes(self) -> list[Outbox]:
        return [Outbox(self, index) for index in range(self.c.hosts)]

    def deliver(self, index: int, call: HostCall) -> None:
        host = self.current[index]
        if host is None:
            self.parked[index].append(call)
        else:
            host.receive(call)

    def crash(self) -> None:
        """The live host with the most calls in flight dies; Ray starts a new copy ``restart_s`` later and
        retries on it every call the old one had not answered."""
        live = [host for host in self.current if host is not None]
        if not live:
            return
        dead = max(live, key=lambda host: len(host.in_flight()))
        self.current[dead.index] = None
        self.faults["crashes"] += 1
        retried = dead.in_flight()
        self.faults["calls_retried"] += len(retried)
        self.parked[dead.index].extend(retried)
        dead.die(self.rng, self.c.duplicate_s)
        self.env.timeout(self.c.restart_s).callbacks.append(lambda _: self._restart(dead.index))

    def _restart(self, index: int) -> None:
        host = self.current[index] = Host(self, index)
        calls, self.parked[index] = self.parked[index], []
        for call in calls:
            host.receive(call)

    def live(self) -> list[Host]:
        return [host for host in self.current if host is not None]

    def sweep(self) -> None:
        """Passivate the idle wallets of every live host."""
        for host in self.live():
            host.wallets.sweep(self.env.now)

    def summary(self) -> dict[str, int]:
        passivated = sum(host.wallets.passivated for host in self.live())
        return dict(
            sorted(
                {
                    "calls": self.calls,
                    "batches": self.batches,
                    "postings": self.postings,
                    "wallet_loads": self.loads,
                    "passivated_live": passivated,
                    "committed_at_death": self.committed_at_death,
                    **self.faults,
                }.items()
            )
        )
