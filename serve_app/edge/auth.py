"""Who is calling: a merchant by its secret key, or the operator by the admin key."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

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


class Authenticator:
    """Resolves keys to merchants, caching hits (at most ``cache_size``, the oldest going first, so memory
    does not follow every merchant that ever called); keys are only ever compared as hashes."""

    def __init__(
        self,
        admin_key: str | None,
        lookup: Callable[[str], Awaitable[str | None]],
        cache_size: int = 100_000,
    ) -> None:
        self._admin_hash = hash_api_key(admin_key) if admin_key else None
        self._lookup = lookup
        self._cache: dict[bytes, str] = {}
        self._cache_size = cache_size

    def is_admin(self, key: str) -> bool:
        return self._admin_hash is not None and keys_equal(hash_api_key(key), self._admin_hash)

    async def merchant(self, authorization: str | None) -> str:
        key = bearer_key(authorization)
        digest = hash_api_key(key)
        merchant_id = self._cache.get(digest)
        if merchant_id is None:
            merchant_id = await self._lookup(key)
            if merchant_id is None:
                raise AuthenticationFailed("Invalid API key provided.")
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[digest] = merchant_id
        return merchant_id

    def admin(self, authorization: str | None) -> None:
        if not self.is_admin(bearer_key(authorization)):
            raise AuthenticationFailed("This endpoint needs the admin key.")
