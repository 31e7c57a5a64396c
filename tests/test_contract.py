"""The routes' contracts are declared once (``ledger.api.contract``) and the OpenAPI document is generated from them.

- a route declared on a fresh blueprint appears in the document with its body, query parameters and responses,
  and its view validates with exactly the models it documents;
- a route without a declaration is reported missing (the documented-routes test in ``test_openapi.py`` fails);
- the declared request models give, for any body, the same outcome as the rules applied by hand in the order
  the Node service applied them (message and ``errors`` map byte for byte): checked on generated bodies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from flask import Blueprint, Flask, jsonify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import validation
from ledger.api import schemas
from ledger.api.contract import (
    PUBLIC,
    body,
    build_spec,
    declare,
    error,
    errors,
    ok,
    path,
    query,
    undeclared_path_parameters,
    undocumented_routes,
)
from ledger.api.openapi import build_spec as served_builder
from ledger.errors import ValidationFailed
from tests.conftest import drop_database, make_app


@pytest.fixture
def app_with() -> Iterator[Callable[[Blueprint], Flask]]:
    """Apps with one extra blueprint; their databases are dropped afterwards."""
    made: list[Flask] = []

    def make(blueprint: Blueprint) -> Flask:
        app = make_app()
        app.register_blueprint(blueprint)
        made.append(app)
        return app
    yield make
    for app in made:
        drop_database(app)


def _declared_blueprint() -> Blueprint:
    bp = Blueprint("probe", __name__)

    @bp.post("/probe/<hold_id>/fund")
    @declare("probeFund", tag="operations", summary="A probe", security=PUBLIC, body=schemas.FundingRequest,
             query=schemas.EntriesQuery, idempotency_header=True, path={"hold_id": schemas.HOLD_ID},
             responses={201: ok("Probed.", schemas.Message), 409: error("A probe conflict."), **errors(400, 503)})
    def probe(hold_id: str):
        hold = path("hold_id")
        funding = body()
        page = query()
        return jsonify({"message": f"{hold} {funding.toAccount} {funding.amount} {funding.idempotencyKey} "
                                   f"{page.limit}"}), 201

    return bp


def test_a_declared_route_appears_in_the_document_from_its_declaration_alone(app_with) -> None:
    app = app_with(_declared_blueprint())

    document = build_spec(app)

    operation = document["paths"]["/probe/{hold_id}/fund"]["post"]
    assert operation["operationId"] == "probeFund"
    assert operation["security"] == []
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FundingRequest"}
    assert [(p["name"], p["in"], p["required"]) for p in operation["parameters"]] == [
        ("Idempotency-Key", "header", False), ("limit", "query", False), ("cursor", "query", False)]
    assert operation["parameters"][1]["schema"] == {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}
    assert set(operation["responses"]) == {"201", "409", "400", "503"}
    assert operation["responses"]["400"] == {"$ref": "#/components/responses/BadRequest"}
    assert operation["responses"]["409"]["description"] == "A probe conflict."
    assert document["paths"]["/probe/{hold_id}/fund"]["parameters"] == [
        {"name": "hold_id", "in": "path", "required": True, "schema": {"$ref": "#/components/schemas/ObjectId"}}]
    funding = document["components"]["schemas"]["FundingRequest"]
    assert funding["required"] == ["toAccount", "amount", "idempotencyKey"]
    assert funding["properties"]["amount"] == {"$ref": "#/components/schemas/Money"}
    assert undocumented_routes(app) == []


def test_the_served_document_is_the_generated_one(client, app: Flask) -> None:
    assert served_builder is build_spec
    assert client.get("/api/openapi.json").get_json() == build_spec(app)


def test_a_route_without_a_declaration_is_reported_and_left_out(app_with) -> None:
    bp = Blueprint("bare", __name__)

    @bp.get("/bare")
    def bare():
        return "bare"

    app = app_with(bp)

    assert undocumented_routes(app) == ["GET /bare"]
    assert "/bare" not in build_spec(app)["paths"]


def test_every_path_parameter_of_every_route_is_declared(app: Flask) -> None:
    assert undeclared_path_parameters(app) == []


def test_an_undeclared_path_parameter_is_reported_and_documented_as_a_plain_string(app_with) -> None:
    bp = Blueprint("loose", __name__)

    @bp.get("/loose/<thing>")
    @declare("loose", tag="operations", summary="Loose", responses={200: ok("Loose.")})
    def loose(thing: str):
        return thing

    app = app_with(bp)

    assert undeclared_path_parameters(app) == ["<thing> in /loose/<thing>"]
    assert build_spec(app)["paths"]["/loose/{thing}"]["parameters"] == [
        {"name": "thing", "in": "path", "required": True, "schema": {"type": "string"}}]


def test_removing_one_declaration_from_a_real_route_fails_the_documented_routes_check(app: Flask) -> None:
    view = app.view_functions["holds.get_hold"]
    declared = view.__ledger_contract__
    try:
        del view.__ledger_contract__
        assert undocumented_routes(app) == ["GET /api/holds/<hold_id>"]
    finally:
        view.__ledger_contract__ = declared
    assert undocumented_routes(app) == []


def test_the_declared_route_validates_with_the_models_it_documents(app_with) -> None:
    app = app_with(_declared_blueprint())
    client = app.test_client()
    good = {"toAccount": "65f1c0ffee0123456789abcd", "amount": 10.5}

    hold = "/probe/65f1c0ffee0123456789abce/fund"
    response = client.post(hold + "?limit=7", json=good, headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 201
    assert response.get_json() == {"message": "65f1c0ffee0123456789abce 65f1c0ffee0123456789abcd 10.5 k-1 7"}

    bad_path = client.post("/probe/x/fund", json={"amount": 1})
    assert bad_path.status_code == 400
    assert bad_path.get_json() == {"message": "Invalid hold id", "status": "failed",
                                   "errors": {"id": "must be a 24-character hexadecimal id"}}

    missing = client.post(hold, json={"amount": 1})
    assert missing.status_code == 400
    assert missing.get_json()["message"] == "Missing required fields: toAccount, amount, idempotencyKey"

    bad_limit = client.post(hold + "?limit=0", json=good, headers={"Idempotency-Key": "k-1"})
    assert bad_limit.get_json()["message"] == "limit must be an integer from 1 to 200"

    differing = client.post(hold, json={**good, "idempotencyKey": "a"}, headers={"Idempotency-Key": "b"})
    assert differing.get_json()["message"] == "Idempotency-Key header and idempotencyKey field differ"


# ----------------------------------------------------------------------------------------- fidelity

def _by_hand(fields: tuple[str, ...], checks: dict[str, Any]):
    """The routes' former validation, written out: Node's missing-fields message, then each rule in order."""
    def run(raw: dict[str, Any]) -> dict[str, Any]:
        validation.require_fields(raw, fields)
        return {name: check(raw.get(name)) for name, check in checks.items()}
    return run


def _auth_by_hand(fields: tuple[str, ...], checks: dict[str, Any]):
    def run(raw: dict[str, Any]) -> dict[str, Any]:
        for field in fields:
            if validation.is_missing(raw.get(field)):
                raise ValidationFailed(f"{field} is required", errors={field: f"{field} is required"})
        return {name: check(raw.get(name)) for name, check in checks.items()}
    return run


def _login_email(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationFailed("email must be a string", errors={"email": "email must be a string"})
    return value.strip().lower()


TRANSFER = ("fromAccount", "toAccount", "amount", "idempotencyKey")
ORACLES = {
    schemas.TransferRequest: _by_hand(TRANSFER, {
        "fromAccount": lambda v: validation.object_id(v, "fromAccount"),
        "toAccount": lambda v: validation.object_id(v, "toAccount"),
        "amount": validation.amount, "idempotencyKey": validation.idempotency_key}),
    schemas.FundingRequest: _by_hand(TRANSFER[1:], {
        "toAccount": lambda v: validation.object_id(v, "toAccount"),
        "amount": validation.amount, "idempotencyKey": validation.idempotency_key}),
    schemas.HoldRequest: _by_hand(TRANSFER, {
        "fromAccount": lambda v: validation.object_id(v, "fromAccount"),
        "toAccount": lambda v: validation.object_id(v, "toAccount"),
        "amount": validation.amount, "idempotencyKey": validation.idempotency_key,
        "expiresInSeconds": schemas.expires_in}),
    schemas.CaptureRequest: _by_hand(("idempotencyKey",), {
        "idempotencyKey": validation.idempotency_key,
        "amount": lambda v: None if v is None else validation.amount(v)}),
    schemas.ReversalRequest: _by_hand(("idempotencyKey",), {
        "idempotencyKey": validation.idempotency_key, "reason": validation.reason}),
    schemas.RegisterRequest: _auth_by_hand(("email", "password", "name"), {
        "email": validation.email, "password": validation.password, "name": validation.name}),
    schemas.LoginRequest: _auth_by_hand(("email", "password"), {
        "email": _login_email, "password": validation.login_password}),
}

_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**13), st.just(""), st.text(max_size=300),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-10, max_value=10**12),
    st.sampled_from(["65f1c0ffee0123456789abcd", "65F1C0FFEE0123456789ABCD", "a@b.co", " A@B.CO ", "INR", "jpy",
                     "secret-pass", "x" * 80, "k\x00", 86400, 59, Decimal("0.001")]),
    st.dictionaries(st.just("$ne"), st.none(), max_size=1), st.lists(st.integers(), max_size=2),
)
_keys = st.sampled_from(["fromAccount", "toAccount", "amount", "idempotencyKey", "expiresInSeconds", "reason",
                         "email", "password", "name", "status", "currency", "extra"])


def _outcome(check, raw: dict[str, Any]) -> tuple[str, Any]:
    try:
        result = check(raw)
    except ValidationFailed as exc:
        return "failed", (exc.message, exc.errors)
    return "ok", result.model_dump() if isinstance(result, schemas.RequestModel) else result


VALID = {"fromAccount": "65f1c0ffee0123456789abcd", "toAccount": "65f1c0ffee0123456789abce",
         "amount": Decimal("10.50"), "idempotencyKey": "order-1", "expiresInSeconds": 600, "reason": " typo ",
         "email": " Ann@Example.COM ", "password": "password-123", "name": " Ann "}


def _bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Anything, or a valid body with a few fields removed or replaced (so both outcomes are common)."""
    mutated = st.builds(lambda drop, replace: {**{k: v for k, v in VALID.items() if k not in drop}, **replace},
                        st.sets(_keys, max_size=2), st.dictionaries(_keys, _values, max_size=2))
    return st.one_of(st.dictionaries(_keys, _values, max_size=7), mutated, st.just(VALID))


@pytest.mark.parametrize("model", list(ORACLES), ids=lambda model: model.__name__)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_bodies())
def test_a_declared_body_model_decides_exactly_as_the_rules_applied_by_hand(model, raw: dict[str, Any]) -> None:
    assert _outcome(model.model_validate, raw) == _outcome(ORACLES[model], raw)


@pytest.mark.parametrize("model", list(ORACLES), ids=lambda model: model.__name__)
def test_the_valid_body_passes_and_each_missing_required_field_fails(model) -> None:
    assert _outcome(model.model_validate, VALID)[0] == "ok"
    for field in model.required_fields():
        assert _outcome(model.model_validate, {k: v for k, v in VALID.items() if k != field})[0] == "failed"
