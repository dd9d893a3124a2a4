"""A merchant's Node backend works against payray unchanged: Stripe's own Node SDK (``tests/node``) as the
client, run by node from the suite, one check per test, each as a fresh merchant."""

from __future__ import annotations

import json
import subprocess

import pytest

from ops.stack import StackInfo
from tests.integration.node_checks import NODE_CHECKS
from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]

CHECKS = [
    "charges_create_retrieve_list",
    "same_idempotency_key_same_charge",
    "reused_key_with_other_parameters_is_an_idempotency_error",
    "decline_is_a_card_error",
    "bad_parameter_is_an_invalid_request_naming_it",
    "unknown_charge_is_resource_missing",
    "bad_key_is_an_authentication_error",
    "refunds_partial_then_too_much",
    "balance_and_payout",
    "auto_pagination_walks_every_charge_once",
    "updates_set_and_unset_metadata",
    "request_id_and_lists_both_ways",
    "customers_lifecycle",
    "charge_for_an_unknown_customer_is_resource_missing",
    "events_list_and_retrieve",
    "charges_listed_by_customer",
    "events_page_backwards",
    "webhook_endpoints_create_retrieve_update_list_del",
    "webhook_delivered_and_verified",
    "payment_intent_lifecycle",
    "payment_intent_manual_capture_in_part",
    "payment_intent_cancel_then_capture_is_refused",
    "payment_intent_decline_then_another_card",
    "payment_intent_idempotency_key_replays_and_guards",
    "payment_intent_events_listed",
]


@pytest.mark.parametrize("check", CHECKS)
def test_stripe_node(node: str, stack: StackInfo, merchant: Merchant, check: str) -> None:
    ran = subprocess.run(
        [node, "checks.mjs", stack.base_url, merchant.api_key, check],
        cwd=NODE_CHECKS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    [line] = [json.loads(out) for out in ran.stdout.splitlines() if out.startswith("{")]
    assert line == {"check": check, "ok": True}, line.get("error")


def test_every_check_of_the_script_runs_here() -> None:
    """A check added to ``checks.mjs`` but not to ``CHECKS`` would never run: keep the two lists one."""
    script = (NODE_CHECKS / "checks.mjs").read_text()
    defined = [name for name in CHECKS if f"async {name}()" in script]
    assert defined == CHECKS
    assert script.count("\n  async ") == len(CHECKS)
