"""Notifications: every state change's outbox row reaches the consumer group once, even across a stopped
consumer or relay, and the charge path never waits for them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import ray
import redis

from serve_app.workers.notifications import RELAY_NAME, STREAM, consumer_name
from serve_app.workers.recovery import SWEEPER_NAME
from tests.integration.polling import until
from tests.integration.stack_fixtures import STACK_NAMESPACE, Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


def deliveries(database_url: str, aggregate_id: str) -> list[tuple[str, int]]:
    """(topic, times delivered) of the aggregate's outbox rows, in outbox order; 0 for not delivered."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """
            SELECT o.topic, count(d.outbox_id) FROM outbox o
              LEFT JOIN notification_deliveries d ON d.outbox_id = o.id
             WHERE o.aggregate_id = %s GROUP BY o.id, o.topic ORDER BY o.id
            """,
            (aggregate_id,),
        ).fetchall()
    return [(topic, int(n)) for topic, n in rows]


def published(database_url: str, aggregate_id: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT bool_and(published_at IS NOT NULL) FROM outbox WHERE aggregate_id = %s", (aggregate_id,)
        ).fetchone()
    return bool(row and row[0])


def actor(name: str) -> Any:
    return ray.get_actor(name, namespace=STACK_NAMESPACE)


@pytest.fixture
def sweeper_paused(admin: httpx.Client) -> Iterator[None]:
    """The recovery sweeper starts an idle relay or consumer again on its schedule; these tests keep one idle
    on purpose, so the sweeper is away meanwhile. The API creates it anew on the next admin sweep."""
    ray.kill(actor(SWEEPER_NAME), no_restart=True)
    yield
    assert admin.post("/v1/admin/recovery/sweep", json={}).status_code == 200
    assert ray.get(actor(SWEEPER_NAME).stats.remote())["running"]


def test_each_state_change_is_delivered_once(merchant: Merchant, api_database_url: str) -> None:
    charge = merchant.charge(amount=2000).json()
    refund = merchant.refund(charge["id"], amount=500).json()
    until(
        lambda: (
            deliveries(api_database_url, charge["id"]) == [("charge.succeeded", 1), ("charge.refunded", 1)]
        )
    )
    until(lambda: deliveries(api_database_url, refund["id"]) == [("refund.created", 1)])
    with psycopg.connect(api_database_url) as conn:
        payload = conn.execute(
            "SELECT d.payload FROM notification_deliveries d JOIN outbox o ON o.id = d.outbox_id"
            " WHERE o.aggregate_id = %s AND o.topic = 'charge.succeeded'",
            (charge["id"],),
        ).fetchone()
    assert payload is not None and payload[0]["id"] == charge["id"] and payload[0]["status"] == "succeeded"


@pytest.mark.usefixtures("sweeper_paused")
def test_an_entry_whose_outbox_row_is_gone_is_dropped_and_blocks_nothing(
    merchant: Merchant, api_database_url: str, redis_url: str
) -> None:
    """A late redelivery of a row retention removed must not be retried for ever ahead of everything else."""
    with redis.Redis.from_url(redis_url) as client:
        fields = {"outbox_id": "987654321987", "topic": "charge.succeeded", "aggregate_id": "ch_gone"}
        client.xadd(STREAM, {**fields, "payload": "{}"})
    charge = merchant.charge(amount=321).json()["id"]
    until(lambda: deliveries(api_database_url, charge) == [("charge.succeeded", 1)])
    with psycopg.connect(api_database_url) as conn:
        gone = conn.execute("SELECT count(*) FROM notification_deliveries WHERE outbox_id = 987654321987")
        assert gone.fetchone() == (0,)


def test_a_stopped_consumer_loses_nothing(merchant: Merchant, api_database_url: str) -> None:
    consumer = actor(consumer_name(0))
    assert ray.get(consumer.stop.remote())
    try:
        charges = [merchant.charge(amount=100 + i).json()["id"] for i in range(5)]
        until(lambda: all(published(api_database_url, c) for c in charges))
        # the consumer's loop ended when stop returned: nothing can deliver them now
        assert all(deliveries(api_database_url, c) == [("charge.succeeded", 0)] for c in charges)
    finally:
        assert ray.get(consumer.start.remote())
    until(lambda: all(deliveries(api_database_url, c) == [("charge.succeeded", 1)] for c in charges))


@pytest.mark.usefixtures("sweeper_paused")
def test_a_killed_relay_never_blocks_a_charge_and_catches_up(
    merchant: Merchant, api_database_url: str
) -> None:
    ray.kill(actor(RELAY_NAME), no_restart=False)  # Ray restarts it idle; its rows wait in the outbox
    until(lambda: not ray.get(actor(RELAY_NAME).stats.remote())["running"])  # the new, idle incarnation
    response = merchant.charge(amount=4321)
    assert response.status_code == 200, response.text
    charge_id = response.json()["id"]
    assert deliveries(api_database_url, charge_id) == [("charge.succeeded", 0)]
    assert not published(api_database_url, charge_id)
    assert ray.get(actor(RELAY_NAME).start.remote())  # what the recovery sweeper's schedule does
    until(lambda: deliveries(api_database_url, charge_id) == [("charge.succeeded", 1)])
