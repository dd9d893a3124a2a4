"""``/openapi.json`` describes what the routes really take and answer, so a fuzzer or client generator can."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.edge.app import api


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return api.openapi()


def test_money_posts_take_json_or_form_bodies_and_an_idempotency_key(schema: dict[str, Any]) -> None:
    for path in ("/v1/charges", "/v1/refunds", "/v1/payouts"):
        create = schema["paths"][path]["post"]
        assert set(create["requestBody"]["content"]) == {
            "application/json",
            "application/x-www-form-urlencoded",
        }
        assert [p["name"] for p in create["parameters"] if p["in"] == "header"] == ["Idempotency-Key"]
        assert {"200", "400", "401", "409", "413", "422", "500", "503"} <= set(create["responses"])
        assert create["security"] == [{"merchantKey": []}]


def test_every_error_answer_is_the_stripe_envelope(schema: dict[str, Any]) -> None:
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    body = response["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_lists_document_their_query_parameters(schema: dict[str, Any]) -> None:
    names = {p["name"] for p in schema["paths"]["/v1/refunds"]["get"]["parameters"]}
    created = {"created", "created[gt]", "created[gte]", "created[lt]", "created[lte]"}
    assert names == {"limit", "starting_after", "ending_before", "charge", *created}
    runs = {p["name"] for p in schema["paths"]["/v1/reconciliation/runs"]["get"]["parameters"]}
    assert runs == {"limit", "starting_after"}
    [limit] = [p for p in schema["paths"]["/v1/charges"]["get"]["parameters"] if p["name"] == "limit"]
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}


def test_successes_name_their_objects(schema: dict[str, Any]) -> None:
    ok = schema["paths"]["/v1/charges/{charge_id}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Charge"}
    charge = schema["components"]["schemas"]["Charge"]
    assert {"id", "amount", "currency", "status", "metadata"} <= set(charge["required"])


def test_every_answer_documents_stripes_headers(schema: dict[str, Any]) -> None:
    for path in schema["paths"].values():
        for op in path.values():
            for answer in op["responses"].values():
                assert {"Request-Id", "Stripe-Version"} <= set(answer.get("headers", {}))
