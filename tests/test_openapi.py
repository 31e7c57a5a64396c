"""``GET /api/openapi.json``: a valid OpenAPI 3.0 document of exactly the routes the app serves."""

from __future__ import annotations

import copy
import re

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask

from ledger.api.openapi import declared_endpoints, openapi_path, undocumented_routes

IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def document(client) -> dict:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def _served(app: Flask) -> set[tuple[str, str]]:
    return {(method.lower(), openapi_path(rule))
            for rule in app.url_map.iter_rules() for method in (rule.methods or set()) - IGNORED_METHODS}


def _documented(document: dict) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item if method != "parameters"}


def test_every_route_the_app_serves_is_documented(app: Flask, document: dict) -> None:
    assert undocumented_routes(app) == []
    assert _served(app) <= _documented(document)


def test_every_documented_operation_exists_in_the_app(app: Flask, document: dict) -> None:
    assert _documented(document) <= _served(app)
    assert declared_endpoints(app) == {rule.endpoint for rule in app.url_map.iter_rules()}


def test_the_document_validates_against_the_openapi_3_0_schema(document: dict) -> None:
    assert document["openapi"].startswith("3.0.")
    schemathesis.openapi.from_dict(document).validate()  # raises on any violation of the OpenAPI 3.0 schema


def test_the_validator_used_above_does_reject_a_broken_document(document: dict) -> None:
    broken = copy.deepcopy(document)
    broken["paths"]["/health"]["get"]["responses"]["200"] = {"content": "not an object"}

    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()


def test_security_schemes_are_bearer_jwt_and_the_token_cookie(document: dict) -> None:
    schemes = document["components"]["securitySchemes"]

    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer",
                                     "bearerFormat": "JWT"}
    assert schemes["cookieAuth"] == {**schemes["cookieAuth"], "type": "apiKey", "in": "cookie", "name": "token"}
    assert document["security"] == [{"bearerAuth": []}, {"cookieAuth": []}]
    for public in ("/api/auth/register", "/api/auth/login", "/health", "/ready", "/metrics", "/"):
        for operation in document["paths"][public].values():
            assert operation["security"] == []


def test_errors_ids_and_money_have_their_wire_shapes(document: dict) -> None:
    schemas = document["components"]["schemas"]

    assert schemas["Error"]["required"] == ["message", "status"]
    assert schemas["Error"]["properties"]["status"]["enum"] == ["failed"]
    assert schemas["ObjectId"]["pattern"] == "^[0-9a-fA-F]{24}$"
    assert re.fullmatch(schemas["ObjectId"]["pattern"][1:-1], "65f1c0ffee0123456789abcd")
    assert schemas["Money"]["type"] == "number"
    assert schemas["Money"]["maximum"] == 1_000_000_000_000
    assert schemas["Money"]["exclusiveMinimum"] is True
    account_param = document["paths"]["/api/accounts/{account_id}"]["parameters"][0]
    assert account_param["schema"] == {"$ref": "#/components/schemas/ObjectId"}


def test_transfers_document_the_idempotency_header_replay_header_and_their_errors(document: dict) -> None:
    transfer = document["paths"]["/api/transactions"]["post"]
    funding = document["paths"]["/api/transactions/system/initial-funds"]["post"]

    assert [p["name"] for p in transfer["parameters"]] == ["Idempotency-Key"]
    assert "Idempotent-Replayed" in transfer["responses"]["200"]["headers"]
    assert "Idempotent-Replayed" in funding["responses"]["201"]["headers"]
    assert {"400", "401", "409", "413", "415", "422", "429", "503"} <= set(transfer["responses"])
    assert {"401", "403", "409", "422"} <= set(funding["responses"])
    assert {"MethodNotAllowed", "TooManyRequests", "PayloadTooLarge"} <= set(document["components"]["responses"])
    retry_after = document["components"]["responses"]["TooManyRequests"]["headers"]
    assert "Retry-After" in retry_after


def test_every_operation_documents_the_request_id_header_on_every_response(document: dict) -> None:
    responses = document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[-1]]
                assert "X-Request-ID" in response["headers"], (method, path, status)
