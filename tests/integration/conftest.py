"""Fixtures shared by the integration tests: one Ray for the session, and the running stack on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray for the session; ``num_cpus`` makes Ray pick free ports (never Redis's 6379)."""
    ray.init(num_cpus=2, include_dashboard=False, namespace="payray-test", log_to_driver=False)
    yield
    ray.shutdown()


from tests.integration.stack_fixtures import (  # noqa: E402  (the stack's fixtures, on this session's Ray)
    Merchant,
    admin,
    api_database_url,
    faults,
    invariants_hold,
    merchant,
    new_merchant,
    no_webhooks,
    psp_control,
    stack,
)
from tests.integration.webhook_receiver import receivers  # noqa: E402  (a merchant's endpoint on loopback)

__all__ = [
    "Merchant",
    "admin",
    "api_database_url",
    "faults",
    "invariants_hold",
    "merchant",
    "new_merchant",
    "no_webhooks",
    "psp_control",
    "receivers",
    "stack",
]
