"""``/api/transactions``: transfers and system funding (the Node service's transaction controller)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask_jwt_extended import current_user, jwt_required

from ledger import ratelimit, validation
from ledger.api.serializers import transaction_json
from ledger.errors import NotSystemUser, ValidationFailed
from ledger.jsonio import json_body
from ledger.services import history, reversals, transfers
from ledger.services.transfers import TransferResult

bp = Blueprint("transactions", __name__)

TRANSFER_FIELDS = ("fromAccount", "toAccount", "amount", "idempotencyKey")
FUNDING_FIELDS = ("toAccount", "amount", "idempotencyKey")


def _with_header_key(body: dict[str, Any]) -> dict[str, Any]:
    """Take ``idempotencyKey`` from the body or the ``Idempotency-Key`` header; both and different is a 400."""
    header_key = request.headers.get("Idempotency-Key")
    body_key = body.get("idempotencyKey")
    if header_key is not None and not validation.is_missing(body_key) and body_key != header_key:
        raise ValidationFailed(
            "Idempotency-Key header and idempotencyKey field differ",
            errors={"idempotencyKey": "differs from the Idempotency-Key header"},
        )
    if header_key is not None and validation.is_missing(body_key):
        return {**body, "idempotencyKey": header_key}
    return body


def _respond(result: TransferResult, message: str, status: int):
    response = jsonify({
        "message": "Transaction already processed" if result.replayed and status == 200 else message,
        "transaction": transaction_json(result.transaction),
    })
    response.status_code = status
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("")
@jwt_required()
@ratelimit.transfer_per_user  # inside jwt_required: keyed on the verified user
def create_transaction():
    body = _with_header_key(json_body())
    validation.require_fields(body, TRANSFER_FIELDS)
    from_id = validation.object_id(body["fromAccount"], "fromAccount")
    to_id = validation.object_id(body["toAccount"], "toAccount")
    amount = validation.amount(body["amount"])
    key = validation.idempotency_key(body["idempotencyKey"])
    result = transfers.transfer(current_user, from_id, to_id, amount, key)
    return _respond(result, "Transaction processed successfully", 200)


@bp.post("/system/initial-funds")
@jwt_required()
def create_initial_funds():
    if not current_user.get("systemUser"):
        raise NotSystemUser()
    body = _with_header_key(json_body())
    validation.require_fields(body, FUNDING_FIELDS)
    to_id = validation.object_id(body["toAccount"], "toAccount")
    amount = validation.amount(body["amount"])
    key = validation.idempotency_key(body["idempotencyKey"])
    result = transfers.fund(current_user, to_id, amount, key)
    return _respond(result, "Initial funds transaction created successfully", 201)


@bp.post("/<transaction_id>/reverse")
@jwt_required()
def reverse_transaction(transaction_id: str):
    if not current_user.get("systemUser"):
        raise NotSystemUser()
    original_id = validation.maybe_object_id(transaction_id)
    if original_id is None:
        raise ValidationFailed("Invalid transaction id", errors={"id": "must be a 24-character hexadecimal id"})
    body = _with_header_key(json_body())
    validation.require_fields(body, ("idempotencyKey",))
    key = validation.idempotency_key(body["idempotencyKey"])
    reason = validation.reason(body.get("reason"))
    result = reversals.reverse(current_user, original_id, key, reason)
    return _respond(result, "Transaction reversed successfully", 201)


@bp.get("/<transaction_id>")
@jwt_required()
def get_transaction(transaction_id: str):
    record = history.get_transaction(current_user["_id"],
                                     validation.path_object_id(transaction_id, "transactionId"))
    return jsonify({"transaction": transaction_json(record)})
