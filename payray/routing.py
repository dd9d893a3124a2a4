"""Which PSP a new payment goes to, and whether a failed attempt may go on to the next one.

Failover is where money is most easily taken twice. An attempt whose outcome is *unknown* (a timeout, a 5xx,
a lost reply) may have captured: it is resolved at its own PSP (same idempotency key, or a search), never
answered by charging somewhere else. Only a *definite* failure cascades:
- nothing was sent (the connection was refused before the request left);
- the PSP refused the request itself (a 4xx such as a currency it does not take), so nothing was authorized;
- a decline that another acquirer may approve (the issuer was unreachable, or the first PSP's processing
  failed), as Hyperswitch's status mapping marks them.

A hard decline (``insufficient_funds``, ``fraudulent``, a lost card, …) is the cardholder's bank saying no:
asking another PSP would ask the same bank, so it does not cascade.

Each PSP has a circuit breaker fed by definite failures and slow answers: new payments skip a PSP whose
breaker is open, one probe goes through once the open period has passed, and its success closes it again.
Everything here is pure: time comes in as ``now`` (seconds, monotonic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

#: The PSPs payray has adapters for, by the names merchants' routing uses.
PSPS = ("stripe", "braintree")

#: How an attempt at one PSP ended, as far as routing cares.
AttemptEnd = Literal["captured", "authorized", "declined", "unknown", "not_sent", "refused"]

#: Declines another acquirer may approve: the issuer or the processing path failed, not the cardholder.
RETRYABLE_ELSEWHERE = frozenset(
    {
        "processing_error",
        "issuer_not_available",
        "try_again_later",
        "reenter_transaction",
        "approve_with_id",
        "currency_not_supported",
        "service_not_allowed",
        "transaction_not_allowed",
    }
)


class RoutingError(ValueError):
    """A merchant's PSP list that cannot be used, with the reason in words."""


def checked_priorities(psps: Sequence[str]) -> tuple[str, ...]:
    """A merchant's PSPs in the order to try them: one or more known names, each once."""
    if isinstance(psps, str) or not psps:
        raise RoutingError("a routing lists one or more PSPs, in the order to try them")
    unknown = [p for p in psps if p not in PSPS]
    if unknown:
        raise RoutingError(f"unknown PSP {unknown[0]!r}: payray routes to {', '.join(PSPS)}")
    if len(set(psps)) != len(psps):
        raise RoutingError("each PSP appears once in a routing")
    return tuple(psps)


#: What an attempt's PSP answer says of the PSP's health: it answered, whether yes or no.
HEALTHY_ENDS = frozenset({"captured", "authorized", "declined"})


def attempt_end(status: str, refusal: str | None) -> AttemptEnd:
    """How an attempt ended, from the port's outcome (``PspChargeResult.status``) and its ``refusal``: a
    request that never left, or one the PSP refused as such, is a definite failure whatever the status."""
    return _ENDS.get(refusal or "") or _ENDS.get(status) or "unknown"


_ENDS: dict[str, AttemptEnd] = {
    "captured": "captured",
    "authorized": "authorized",
    "declined": "declined",
    "not_sent": "not_sent",
    "refused": "refused",
}


def may_cascade(end: AttemptEnd, decline_code: str | None = None, *, first_call: bool = True) -> bool:
    """Whether a payment may try the next PSP after an attempt that ended so: only after a definite failure
    that another PSP could turn into a success (the module's docstring says why). A refused connection is
    definite only on the attempt's ``first_call``: a retry may follow a call that reached the PSP and
    captured, while a refusal or a decline is the PSP's own word, replayed under the attempt's key."""
    if end == "not_sent":
        return first_call
    if end == "refused":
        return True
    if end == "declined":
        return decline_code in RETRYABLE_ELSEWHERE
    return False  # captured, authorized, or unknown: resolved where it happened


@dataclass
class Breaker:
    """One PSP's circuit breaker.

    Closed, it lets everything through and counts bad answers in a row (definite failures, unknown outcomes
    and slow answers); at ``threshold`` it opens for ``open_s``. Then one probe is let through (half open): a
    success closes it, a failure opens it again. An unknown outcome counts against the PSP's health even
    though it never cascades: a PSP that times out is one new payments should not wait on.
    """

    threshold: int = 5
    open_s: float = 5.0
    slow_s: float = 2.0
    state: Literal["closed", "open", "half_open"] = "closed"
    bad_in_a_row: int = 0
    opened_at: float = 0.0
    #: when the probe in flight was let through (None: none); a probe never answered frees its slot after
    #: ``open_s``, so a lost one cannot keep the PSP out for good
    probe_since: float | None = None

    def allows(self, now: float) -> bool:
        """Whether a new payment may go to this PSP now; when half open, this takes the one probe's slot."""
        if self.state == "open" and now - self.opened_at >= self.open_s:
            self.state, self.probe_since = "half_open", None
        if self.state == "closed":
            return True
        if self.state == "half_open" and (self.probe_since is None or now - self.probe_since >= self.open_s):
            self.probe_since = now
            return True
        return False

    def record(self, now: float, *, ok: bool, seconds: float) -> None:
        """An attempt's answer: ``ok`` for a success or a decline (the PSP worked; ``healthy`` says which
        ends are), not for a definite failure or an unknown outcome; ``seconds`` it took."""
        bad = not ok or seconds >= self.slow_s
        if self.state == "half_open":
            if bad:
                self._open(now)
            else:
                self.state, self.bad_in_a_row, self.probe_since = "closed", 0, None
            return
        self.bad_in_a_row = self.bad_in_a_row + 1 if bad else 0
        if self.state == "closed" and self.bad_in_a_row >= self.threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state, self.opened_at, self.probe_since, self.bad_in_a_row = "open", now, None, 0


@dataclass
class Router:
    """The breakers of every PSP, and the order a new payment tries a merchant's PSPs in."""

    breakers: dict[str, Breaker] = field(default_factory=lambda: {p: Breaker() for p in PSPS})

    def next_psp(self, priorities: Sequence[str], tried: Sequence[str], now: float) -> str | None:
        """The PSP a payment's next attempt goes to: the first of the merchant's not tried yet whose breaker
        lets it through, asked one at a time so only the chosen one spends a probe. A first attempt with
        every breaker open goes to the first PSP anyway: refusing every payment would turn a PSP's outage
        into payray's. None: nothing left to try."""
        left = [p for p in priorities if p not in tried]
        chosen = next((p for p in left if self.breakers[p].allows(now)), None)
        if chosen is None and not tried and left:
            return left[0]
        return chosen

    def health(self) -> Mapping[str, str]:
        return {psp: breaker.state for psp, breaker in self.breakers.items()}
