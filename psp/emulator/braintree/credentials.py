"""Who may call the Braintree personality: merchant ids with their public and private keys.

The SDK authenticates with HTTP Basic ``public_key:private_key`` on ``/merchants/{merchant_id}/…``. A key
pair that is unknown, or that belongs to another merchant, is a 401 (the SDK's ``AuthenticationError``).
The private key also signs the merchant's webhooks, as Braintree's does.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MERCHANT_ID = "payray_emulator"
DEFAULT_PUBLIC_KEY = "emulator_public_key"
DEFAULT_PRIVATE_KEY = "emulator_private_key"

Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Merchant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    merchant_id: Ident
    public_key: Ident
    private_key: Ident


DEFAULT_MERCHANT = Merchant(
    merchant_id=DEFAULT_MERCHANT_ID, public_key=DEFAULT_PUBLIC_KEY, private_key=DEFAULT_PRIVATE_KEY
)


class Credentials:
    """Merchants by id; starts with the default test merchant."""

    def __init__(self) -> None:
        self._merchants: dict[str, Merchant] = {}
        self.reset()

    def reset(self) -> None:
        self._merchants = {DEFAULT_MERCHANT_ID: DEFAULT_MERCHANT}

    def add(self, merchant: Merchant) -> None:
        self._merchants[merchant.merchant_id] = merchant

    def get(self, merchant_id: str) -> Merchant | None:
        return self._merchants.get(merchant_id)

    def authenticate(self, merchant_id: str, authorization: str) -> Merchant | None:
        """The merchant when ``authorization`` carries its key pair; None otherwise."""
        merchant = self._merchants.get(merchant_id)
        scheme, _, credential = authorization.partition(" ")
        if merchant is None or scheme.lower() != "basic":
            return None
        try:
            public, _, private = base64.b64decode(credential.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        same_public = hmac.compare_digest(public.encode(), merchant.public_key.encode())
        same_private = hmac.compare_digest(private.encode(), merchant.private_key.encode())
        return merchant if same_public and same_private else None
