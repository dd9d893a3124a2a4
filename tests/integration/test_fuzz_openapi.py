"""Schemathesis against the running stack, from its own ``/openapi.json``: no input may produce a 5xx, and
every response must be one the schema documents (status code, content type, body).

Bounded to stay within a minute or two: ``MAX_EXAMPLES`` generated cases per operation (valid and invalid
ones), after schemathesis' own coverage cases (boundaries, wrong types, missing parameters). Operations that
start background work (a reconciliation run, a recovery sweep) and the Prometheus text are left out.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ops.stack import StackInfo
from serve_app.edge.rate_limits import KEY_PREFIX

pytestmark = [pytest.mark.integration]

MAX_EXAMPLES = 100
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(stack: StackInfo) -> Any:
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    return schema.exclude(
        path=["/v1/reconciliation/runs", "/v1/admin/recovery/sweep"], method="POST"
    ).exclude(path="/metrics")


@pytest.fixture(scope="module")
def keys(stack: StackInfo) -> dict[str, str]:
    """The bearer key for each security scheme the schema names."""
    created = httpx.post(
        f"{stack.base_url}/v1/merchants",
        json={"name": f"fuzz-{uuid.uuid4().hex[:8]}"},
        headers={"Authorization": f"Bearer {stack.admin_key}"},
        timeout=60,
    )
    assert created.status_code == 200, created.text
    return {"merchantKey": created.json()["api_key"], "adminKey": stack.admin_key}


@pytest.fixture
def forget_failed_authentications(redis_url: str) -> Iterator[None]:
    """The fuzzer's hundreds of keyless cases empty this address's failed-authentication bucket; forget
    them afterwards, so the tests that follow do not start locked out (429)."""
    yield
    control = redis.Redis.from_url(redis_url)
    for key in control.scan_iter(f"{KEY_PREFIX}:failed_auth:*"):
        control.delete(key)


@pytest.mark.timeout(900)  # every operation, MAX_EXAMPLES each: minutes on a slow or busy machine
@pytest.mark.usefixtures("forget_failed_authentications")
def test_no_input_gets_a_5xx_and_every_answer_is_documented(
    api_schema: Any, keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each operation gets ``MAX_EXAMPLES`` valid and as many invalid cases; every failure is collected so
    one run reports them all."""
    tally: dict[str, Any] = {"operations": 0, "cases": 0, "5xx": 0, "by_status": {}}
    failures: list[str] = []
    try:
        for result in api_schema.get_all_operations():
            operation = result.ok()
            tally["operations"] += 1
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(operation, mode, keys, tally, failures)
    finally:
        text = json.dumps(tally, sort_keys=True)
        print(f"\nschemathesis: {text}")
        Path(tmp_path_factory.getbasetemp(), "fuzz_openapi_summary.json").write_text(text)
    assert tally["cases"] > 0
    assert not failures, "\n\n".join(failures[:20])


def fuzz(
    operation: Any, mode: GenerationMode, keys: dict[str, str], tally: dict[str, Any], failures: list[str]
) -> None:
    """Up to ``MAX_EXAMPLES`` cases of one operation, with the key its security scheme names."""
    security = operation.definition.raw.get("security") or [{}]
    scheme = next(iter(security[0]), None)
    headers = {"Authorization": f"Bearer {keys[scheme]}"} if scheme else {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])  # fmt: skip
    def call(case: Any) -> None:
        response = case.call(headers=headers, timeout=30)
        status = str(response.status_code)
        tally["cases"] += 1
        tally["by_status"][status] = tally["by_status"].get(status, 0) + 1
        tally["5xx"] += response.status_code >= 500
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except Exception as failure:
            failures.append(f"{operation.label} ({mode.value}): {failure}")

    try:
        call()
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body): the positive cases cover it
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_the_schema_describes_bodies_queries_headers_and_responses(stack: StackInfo) -> None:
    """What a fuzzer (or a client generator) needs is there, not just paths."""
    schema = httpx.get(f"{stack.base_url}/openapi.json", timeout=30).json()
    charges = schema["paths"]["/v1/charges"]
    create = charges["post"]
    body = create["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-www-form-urlencoded"}
    assert set(body["application/json"]["schema"]["required"]) == {"amount", "currency", "payment_method"}
    assert {"name": "Idempotency-Key", "in": "header", "required": True}.items() <= create["parameters"][
        0
    ].items()
    assert {"200", "202", "400", "401", "402", "409", "413", "422"} <= set(create["responses"])
    assert create["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    listed = {p["name"] for p in charges["get"]["parameters"]}
    assert {"limit", "starting_after"} <= listed
    assert {"merchantKey", "adminKey"} == set(schema["components"]["securitySchemes"])
