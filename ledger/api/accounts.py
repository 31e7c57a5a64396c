"""``/api/accounts``: open and read the caller's accounts (the Node service's account controller)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask_jwt_extended import current_user, jwt_required

from ledger import validation
from ledger.api.serializers import account_json, hold_json
from ledger.errors import AccountNotFound, ValidationFailed
from ledger.jsonio import json_body
from ledger.models import ACCOUNT_STATUSES
from ledger.money import DEFAULT_CURRENCY, to_major
from ledger.services import accounts as account_service
from ledger.services import holds as hold_service

bp = Blueprint("accounts", __name__)


@bp.post("")
@bp.post("/create")
@jwt_required()
def create_account():
    body = json_body(required=False)
    currency = body.get("currency")
    currency = DEFAULT_CURRENCY if currency is None else validation.currency(currency)
    account = account_service.open_account(current_user["_id"], currency)
    return jsonify({"account": account_json(account)}), 201


@bp.get("")
@jwt_required()
def list_accounts():
    accounts = account_service.list_accounts(current_user["_id"])
    return jsonify({"accounts": [account_json(a) for a in accounts]})


@bp.get("/user/<user_id>")
@jwt_required()
def list_accounts_of_user(user_id: str):
    # Only the caller's own id is visible; any other id looks like a user with no accounts we can show.
    if validation.maybe_object_id(user_id) != current_user["_id"]:
        raise AccountNotFound("No accounts found for this user")
    accounts = account_service.list_accounts(current_user["_id"])
    return jsonify({"accounts": [account_json(a) for a in accounts]})


@bp.get("/balance/<account_id>")
@jwt_required()
def get_balance(account_id: str):
    account = account_service.get_account(current_user["_id"], validation.maybe_object_id(account_id))
    balance = to_major(account.get("balance", 0), account["currency"])
    available = to_major(account["available"], account["currency"])
    return jsonify({"accountId": str(account["_id"]), "balance": balance, "availableBalance": available})


@bp.patch("/<account_id>")
@jwt_required()
def change_account_status(account_id: str):
    account_oid = validation.maybe_object_id(account_id)
    if account_oid is None:
        raise ValidationFailed("Invalid account id", errors={"id": "must be a 24-character hexadecimal id"})
    body = json_body()
    validation.require_fields(body, ("status",))
    status = body["status"]
    if status not in ACCOUNT_STATUSES:
        raise ValidationFailed(f"status must be one of {', '.join(ACCOUNT_STATUSES)}",
                               errors={"status": f"must be one of {', '.join(ACCOUNT_STATUSES)}"})
    account = account_service.change_status(current_user, account_oid, status)
    return jsonify({"account": {"_id": str(account["_id"]), "status": account["status"],
                                "updatedAt": account.get("updatedAt")}})


@bp.get("/<account_id>/holds")
@jwt_required()
def list_holds(account_id: str):
    account_oid = validation.maybe_object_id(account_id)
    if account_oid is None:
        raise ValidationFailed("Invalid account id", errors={"id": "must be a 24-character hexadecimal id"})
    active = hold_service.list_active(current_user, account_oid)
    return jsonify({"holds": [hold_json(h, "ACTIVE") for h in active]})


@bp.get("/<account_id>")
@jwt_required()
def get_account(account_id: str):
    account = account_service.get_account(current_user["_id"], validation.maybe_object_id(account_id))
    return jsonify({"account": account_json(account)})
