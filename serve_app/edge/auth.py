"""Who is calling: a merchant by its secret key, or the operator by the admin key; and whether they may call
now (the rate limits of ``rate_limits.py``: each key's requests, each address's failed authentications)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol

from payray.errors import AuthenticationFailed
from payray.ids import hash_api_key, keys_equal


def bearer_key(authorization: str | None) -> str:
    """The secret key from ``Bearer sk_…`` or HTTP Basic (the key as user name), as Stripe accepts."""
    if not authorization:
        raise AuthenticationFailed("No API key provided: send 'Authorization: Bearer <secret key>'.")
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            user = base64.b64decode(value, validate=True).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            user = ""
        if user:
            return user
    raise AuthenticationFailed("Malformed Authorization header: expected 'Bearer <secret key>'.")


class Limits(Protocol):
    """The rate limits authentication applies; each method raises ``RateLimited`` (429) when over."""

    async def spend_key(self, merchant_id: str) -> None: ...

    async def check_address(self, address: str) -> None: ...

    async def failed_authentication(self, address: str) -> None: ...


class NoLimits:
    async def spend_key(self, merchant_id: str) -> None:
        return None

    async def check_address(self, address: str) -> None:
        return None

    async def failed_authentication(self, address: str) -> None:
        return None


class Authenticator:
    """Resolves keys to merchants, caching hits (at most ``cache_size``, the oldest going first, so memory
    does not follow every merchant that ever called); keys are only ever compared as hashes.

    Each merchant request spends a token of its key's bucket. A key not in the cache is looked up only
    while the caller's address has failed authentications to spare, and each failure spends one. The admin
    key is compared the same way but has no bucket of its own: the operator's tools are not throttled.
    """

    def __init__(
        self,
        admin_key: str | None,
        lookup: Callable[[str], Awaitable[str | None]],
        cache_size: int = 100_000,
        limits: Limits | None = None,
    ) -> None:
        self._admin_hash = hash_api_key(admin_key) if admin_key else None
        self._lookup = lookup
        self._cache: dict[bytes, str] = {}
        self._cache_size = cache_size
        self._limits = limits or NoLimits()

    def is_admin(self, key: str) -> bool:
        return self._admin_hash is not None and keys_equal(hash_api_key(key), self._admin_hash)

    async def merchant(self, authorization: str | None, address: str = "unknown") -> str:
        key = await self._key(authorization, address)
        digest = hash_api_key(key)
        merchant_id = self._cache.get(digest)
        if merchant_id is None:
            await self._limits.check_address(address)
            merchant_id = await self._lookup(key)
            if merchant_id is None:
                await self._failed(address, AuthenticationFailed("Invalid API key provided."))
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[digest] = merchant_id
        await self._limits.spend_key(merchant_id)
        return merchant_id

    async def admin(self, authorization: str | None, address: str = "unknown") -> None:
        key = await self._key(authorization, address)
        await self._limits.check_address(address)
        if not self.is_admin(key):
            await self._failed(address, AuthenticationFailed("This endpoint needs the admin key."))

    async def _key(self, authorization: str | None, address: str) -> str:
        try:
            return bearer_key(authorization)
        except AuthenticationFailed as exc:
            await self._failed(address, exc)

    async def _failed(self, address: str, failure: AuthenticationFailed) -> NoReturn:
        """Spend one of the address's failed authentications (429 when none is left), then refuse."""
        await self._limits.failed_authentication(address)
        raise failure
