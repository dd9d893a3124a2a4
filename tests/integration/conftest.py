"""Fixtures shared by the integration tests: one Ray for the session, and the running stack on it."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

#: Where the session's Ray writes the Serve replicas' logs (the API's unplanned errors are logged there).
SERVE_LOGS = Path("/tmp/ray/session_latest/logs/serve")
#: Failures that get the replicas' latest unplanned errors beside them: the first few say what broke.
EXPLAINED_FAILURES = 3
_explained = 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    """A failed integration test's report carries the last unplanned errors the API replicas logged: a 500
    says only that one was logged, and in CI the log is gone with the machine."""
    global _explained
    outcome = yield
    report = outcome.get_result()
    if report.failed and _explained < EXPLAINED_FAILURES:
        _explained += 1
        report.sections.append(("the API replicas' last unplanned errors", last_unhandled(SERVE_LOGS)))


def last_unhandled(logs: Path, blocks: int = 3, frames: int = 12) -> str:
    """The last ``blocks`` "unhandled" log entries of every replica log under ``logs``, each with its
    innermost ``frames`` lines (where it was raised)."""
    found: list[str] = []
    for log in sorted(logs.glob("replica_*.log")):
        lines = log.read_text(errors="replace").splitlines()
        starts = [i for i, line in enumerate(lines) if " unhandled " in line][-blocks:]
        for start in starts:
            request = lines[start].split(" -- ")[0].split()[-1]
            block = [line for line in lines[start : start + 400] if request in line]
            found.append(f"{log.name}:\n" + "\n".join(block[:1] + block[1:][-frames:]))
    return "\n\n".join(found) or f"none under {logs}"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray for the session; ``num_cpus`` makes Ray pick free ports (never Redis's 6379)."""
    ray.init(num_cpus=2, include_dashboard=False, namespace="payray-test", log_to_driver=False)
    yield
    ray.shutdown()


from tests.integration.node_checks import node  # noqa: E402  (stripe-node's checks)
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
    "node",
    "psp_control",
    "receivers",
    "stack",
]
