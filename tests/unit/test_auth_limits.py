"""Authentication applies the rate limits: each merchant request spends its key's token, an unknown key is
looked up only while the address has failures to spare, and every failure is counted against it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from starlette.requests import Request

from payray.errors import AuthenticationFailed, RateLimited
from serve_app.edge.auth import Authenticator
from serve_app.edge.rate_limits import client_address

T = TypeVar("T")


class RecordingLimits:
    """Counts what authentication asked for; refuses an address once its ``failures_allowed`` are spent."""

    def __init__(self, failures_allowed: int = 100) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failures_allowed = failures_allowed
        self.failures: dict[str, int] = {}

    def _locked(self, address: str) -> bool:
        return self.failures.get(address, 0) >= self.failures_allowed

    async def spend_key(self, merchant_id: str) -> None:
        self.calls.append(("spend_key", merchant_id))

    async def check_address(self, address: str) -> None:
        self.calls.append(("check_address", address))
        if self._locked(address):
            raise RateLimited("locked out", retry_after_s=5)

    async def failed_authentication(self, address: str) -> None:
        self.calls.append(("failed_authentication", address))
        if self._locked(address):
            raise RateLimited("locked out", retry_after_s=5)
        self.failures[address] = self.failures.get(address, 0) + 1


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


def authenticator(limits: RecordingLimits) -> tuple[Authenticator, list[str]]:
    lookups: list[str] = []

    async def lookup(key: str) -> str | None:
        lookups.append(key)
        return "acct_good" if key == "sk_good" else None

    return Authenticator("sk_admin_x", lookup, limits=limits), lookups


def test_a_known_key_spends_its_token_without_asking_about_the_address() -> None:
    limits = RecordingLimits()
    auth, lookups = authenticator(limits)
    assert run(lambda: auth.merchant("Bearer sk_good", "192.0.2.1")) == "acct_good"
    assert run(lambda: auth.merchant("Bearer sk_good", "192.0.2.1")) == "acct_good"
    assert lookups == ["sk_good"]
    assert limits.calls == [
        ("check_address", "192.0.2.1"),
        ("spend_key", "acct_good"),
        ("spend_key", "acct_good"),
    ]


@pytest.mark.parametrize("authorization", [None, "Bearer sk_wrong", "Token x", "Basic !!!"])
def test_each_failure_is_counted_against_the_address(authorization: str | None) -> None:
    limits = RecordingLimits()
    auth, _ = authenticator(limits)
    with pytest.raises(AuthenticationFailed):
        run(lambda: auth.merchant(authorization, "192.0.2.7"))
    assert ("failed_authentication", "192.0.2.7") in limits.calls
    assert not any(call == "spend_key" for call, _ in limits.calls)


def test_a_locked_out_address_gets_429_and_its_keys_are_not_looked_up() -> None:
    limits = RecordingLimits(failures_allowed=3)
    auth, lookups = authenticator(limits)
    statuses = []
    for n in range(6):
        try:
            run(lambda n=n: auth.merchant(f"Bearer sk_guess_{n}", "192.0.2.9"))  # type: ignore[misc]
        except (AuthenticationFailed, RateLimited) as exc:
            statuses.append(exc.status)
    assert statuses == [401, 401, 401, 429, 429, 429]
    assert lookups == ["sk_guess_0", "sk_guess_1", "sk_guess_2"]
    with pytest.raises(RateLimited):
        run(lambda: auth.merchant("Bearer sk_good", "192.0.2.9"))  # not known yet: refused like a guess
    assert run(lambda: auth.merchant("Bearer sk_good", "192.0.2.10")) == "acct_good"  # another address
    assert run(lambda: auth.merchant("Bearer sk_good", "192.0.2.9")) == "acct_good"  # now known


def test_the_admin_key_has_no_bucket_but_its_failures_count() -> None:
    limits = RecordingLimits(failures_allowed=1)
    auth, _ = authenticator(limits)
    run(lambda: auth.admin("Bearer sk_admin_x", "192.0.2.3"))
    assert ("spend_key", "admin") not in limits.calls and all(c != "spend_key" for c, _ in limits.calls)
    with pytest.raises(AuthenticationFailed):
        run(lambda: auth.admin("Bearer sk_good", "192.0.2.3"))
    with pytest.raises(RateLimited):
        run(lambda: auth.admin("Bearer sk_admin_x", "192.0.2.3"))


def request_from(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (peer, 5555)})


def test_the_address_is_the_peer_unless_a_proxy_on_this_machine_names_the_client() -> None:
    assert client_address(request_from("192.0.2.5")) == "192.0.2.5"
    assert client_address(request_from("192.0.2.5", "203.0.113.9")) == "192.0.2.5"  # chosen by the caller
    assert client_address(request_from("127.0.0.1", "203.0.113.9")) == "203.0.113.9"
    assert client_address(request_from("127.0.0.1", "10.9.9.9, 203.0.113.9")) == "203.0.113.9"
    assert client_address(request_from("127.0.0.1", "10.9.9.9", "203.0.113.9")) == "203.0.113.9"
    assert client_address(request_from("127.0.0.1")) == "127.0.0.1"
