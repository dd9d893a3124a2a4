"""A 500 is answered in the error envelope and logged without the request's data or Postgres' context."""

from __future__ import annotations

import logging

import psycopg
import pytest
import redis.exceptions
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.edge.failures import ContainFailures, failure_name

PAN = "4000056655665556"


def failing_app(exc: Exception) -> FastAPI:
    app = FastAPI()
    app.add_middleware(ContainFailures)

    @app.post("/v1/charges/{charge_id}")
    async def fail(charge_id: str) -> None:
        try:
            raise KeyError(charge_id)
        except KeyError:
            raise exc from None

    return app


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (
            psycopg.errors.UniqueViolation(f"duplicate key\nDETAIL:  Key (metadata)=({PAN}) already exists."),
            500,
        ),
        (psycopg.errors.DataError(f'invalid input syntax for type bigint: "{PAN}"'), 500),
        (ValueError(f"cannot parse {PAN}"), 500),
        (psycopg.OperationalError(f"connection lost while sending {PAN}"), 503),
        (redis.exceptions.ConnectionError(f"Error 111 connecting while sending {PAN}"), 503),
        (redis.exceptions.TimeoutError(f"Timeout reading from socket after {PAN}"), 503),
    ],
)
def test_a_failure_is_logged_by_type_and_request_id_only(
    caplog: pytest.LogCaptureFixture, exc: Exception, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(failing_app(exc), raise_server_exceptions=True) as client:
        response = client.post(f"/v1/charges/ch_{PAN}?metadata={PAN}", json={"metadata": {"card": PAN}})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "api_error" and PAN not in response.text
    request_id = response.headers["Request-Id"]
    logged = server_log(caplog)
    assert PAN not in logged
    assert request_id in logged and type(exc).__name__ in logged
    assert "/v1/charges/{charge_id}" in logged  # the route's template, not the URL with its ids


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """Every record but the test client's own (httpx logs the URL it calls), as a handler would write it."""
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    return "\n".join(handler.format(r) for r in caplog.records if not r.name.startswith("httpx"))


def test_the_chain_of_causes_is_named_with_sqlstates() -> None:
    try:
        try:
            raise KeyError("x")
        except KeyError as inner:
            raise psycopg.errors.UniqueViolation("dup") from inner
    except psycopg.Error as exc:
        name = failure_name(exc)
    assert name == "psycopg.errors.UniqueViolation[23505] <- builtins.KeyError"
