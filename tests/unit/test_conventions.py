"""Stripe's headers on every answer, and ``doc_url`` on every error that has a code."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from payray.errors import InvalidRequest, NotFound, PayrayError
from serve_app.edge.conventions import API_VERSION, StripeHeaders, new_request_id
from serve_app.edge.failures import ContainFailures
from serve_app.wire.render import error_object


def app() -> FastAPI:
    api = FastAPI()
    api.add_middleware(ContainFailures)
    api.add_middleware(StripeHeaders)

    @api.get("/ok")
    async def ok() -> dict[str, str]:
        return {"ok": "yes"}

    @api.get("/boom")
    async def boom() -> None:
        raise ValueError("unplanned")

    return api


def test_every_answer_has_its_own_request_id_and_the_version() -> None:
    with TestClient(app(), raise_server_exceptions=False) as client:
        first, second, missing = client.get("/ok"), client.get("/ok"), client.get("/nowhere")
    for response in (first, second, missing):
        assert response.headers["Request-Id"].startswith("req_")
        assert response.headers["Stripe-Version"] == API_VERSION
    assert first.headers["Request-Id"] != second.headers["Request-Id"]


def test_a_500_names_the_one_request_id() -> None:
    with TestClient(app(), raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers.get_list("Request-Id") == [response.headers["Request-Id"]]


def test_the_pinned_version_is_echoed_and_a_malformed_one_refused() -> None:
    with TestClient(app()) as client:
        pinned = client.get("/ok", headers={"Stripe-Version": "2024-06-20"})
        bad = client.get("/ok", headers={"Stripe-Version": "yesterday"})
    assert pinned.headers["Stripe-Version"] == "2024-06-20"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Stripe-Version"
    assert bad.headers["Request-Id"].startswith("req_") and bad.headers["Stripe-Version"] == API_VERSION


def test_request_ids_look_like_stripes() -> None:
    rid = new_request_id()
    assert rid.startswith("req_") and len(rid) == 18 and rid[4:].isalnum()


def test_an_error_with_a_code_links_stripes_page() -> None:
    error = error_object(NotFound("No such charge: 'ch_x'", param="id"))["error"]
    assert error["doc_url"] == "https://stripe.com/docs/error-codes/resource-missing"
    assert error_object(InvalidRequest("x"))["error"]["doc_url"].endswith("/parameter-invalid")
    assert "doc_url" not in error_object(PayrayError("unplanned"))["error"]
