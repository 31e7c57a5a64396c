"""``/api/holds``: reserve money now, capture or void it later (API.md Part two, *Holds*)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask_jwt_extended import current_user, jwt_required

from ledger import ratelimit, validation
from ledger.api.serializers import hold_json, transaction_json
from ledger.api.transactions import _with_header_key
from ledger.errors import ValidationFailed
from ledger.jsonio import json_body
from ledger.services import holds

bp = Blueprint("holds", __name__)

HOLD_FIELDS = ("fromAccount", "toAccount", "amount", "idempotencyKey")


def hold_body(hold: dict[str, Any]) -> dict[str, Any]:
    return hold_json(hold, holds.effective_status(hold))


def path_id(value: str, what: str = "hold"):
    parsed = validation.maybe_object_id(value)
    if parsed is None:
        raise ValidationFailed(f"Invalid {what} id", errors={"id": "must be a 24-character hexadecimal id"})
    return parsed


def expires_in(value: Any) -> int:
    if value is None:
        return holds.DEFAULT_EXPIRY_SECONDS
    if isinstance(value, bool) or not isinstance(value, int) or not (
            holds.MIN_EXPIRY_SECONDS <= value <= holds.MAX_EXPIRY_SECONDS):
        text = (f"expiresInSeconds must be a whole number from {holds.MIN_EXPIRY_SECONDS:,} to "
                f"{holds.MAX_EXPIRY_SECONDS:,}")
        raise ValidationFailed(text, errors={"expiresInSeconds": text})
    return value


@bp.post("")
@jwt_required()
@ratelimit.transfer_per_user
def create_hold():
    body = _with_header_key(json_body())
    validation.require_fields(body, HOLD_FIELDS)
    from_id = validation.object_id(body["fromAccount"], "fromAccount")
    to_id = validation.object_id(body["toAccount"], "toAccount")
    amount = validation.amount(body["amount"])
    key = validation.idempotency_key(body["idempotencyKey"])
    seconds = expires_in(body.get("expiresInSeconds"))
    result = holds.create(current_user, from_id, to_id, amount, key, seconds)
    response = jsonify({"hold": hold_body(result.hold)})
    response.status_code = 201
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/<hold_id>/capture")
@jwt_required()
@ratelimit.transfer_per_user
def capture_hold(hold_id: str):
    hold_oid = path_id(hold_id)
    body = _with_header_key(json_body())
    validation.require_fields(body, ("idempotencyKey",))
    key = validation.idempotency_key(body["idempotencyKey"])
    amount = None if body.get("amount") is None else validation.amount(body["amount"])
    result = holds.capture(current_user, hold_oid, amount, key)
    response = jsonify({"hold": hold_body(result.hold), "transaction": transaction_json(result.transaction)})
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/<hold_id>/void")
@jwt_required()
def void_hold(hold_id: str):
    hold_oid = path_id(hold_id)
    return jsonify({"hold": hold_body(holds.void(current_user, hold_oid))})


@bp.get("/<hold_id>")
@jwt_required()
def get_hold(hold_id: str):
    return jsonify({"hold": hold_body(holds.get(current_user, path_id(hold_id)))})
