"""The replica's key cache stays bounded however many merchants call."""

from __future__ import annotations

import asyncio

from serve_app.edge.auth import Authenticator


def test_the_key_cache_keeps_at_most_its_bound_and_still_answers_every_key() -> None:
    lookups: list[str] = []

    async def lookup(key: str) -> str | None:
        lookups.append(key)
        return f"acct_{key}"

    auth = Authenticator("sk_admin_x", lookup, cache_size=3)

    async def scenario() -> list[str]:
        return [await auth.merchant(f"Bearer k{i % 5}") for i in range(20)]

    found = asyncio.run(scenario())
    assert found == [f"acct_k{i % 5}" for i in range(20)]
    assert len(auth._cache) == 3
    assert len(lookups) > 5  # evicted keys were looked up again, not answered wrongly
