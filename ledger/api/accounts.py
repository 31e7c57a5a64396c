"""``/api/accounts``: open and read the caller's accounts (the Node service's account controller)."""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, jsonify, request
from flask_jwt_extended import current_user, jwt_required

from ledger import validation
from ledger.api.serializers import account_json, available_balance, entry_json, hold_json
from ledger.errors import AccountNotFound, ValidationFailed
from ledger.hashchain import iso_millis
from ledger.jsonio import iso_utc, json_body
from ledger.models import ACCOUNT_STATUSES
from ledger.money import DEFAULT_CURRENCY, format_plain, to_major
from ledger.services import accounts as account_service
from ledger.services import history
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
    at = request.args.get("at")
    if at is not None:
        instant = validation.instant(at)
        account, balance_minor = history.balance_at(current_user["_id"], validation.maybe_object_id(account_id),
                                                    instant)
        return jsonify({"accountId": str(account["_id"]), "balance": to_major(balance_minor, account["currency"]),
                        "at": iso_millis(instant)})
    account = account_service.get_account(current_user["_id"], validation.maybe_object_id(account_id))
    balance = to_major(account.get("balance", 0), account["currency"])
    return jsonify({"accountId": str(account["_id"]), "balance": balance,
                    "availableBalance": available_balance(account)})


@bp.get("/<account_id>/entries")
@jwt_required()
def list_entries(account_id: str):
    account_oid = validation.path_object_id(account_id, "accountId")
    limit = validation.page_limit(request.args.get("limit"), history.DEFAULT_PAGE_SIZE, history.MAX_PAGE_SIZE)
    page = history.list_entries(current_user["_id"], account_oid, limit, request.args.get("cursor"))
    return jsonify({"entries": [entry_json(e) for e in page.entries], "nextCursor": page.next_cursor})


STATEMENT_CSV_COLUMNS = ("seq", "createdAt", "type", "amount", "currency", "balanceAfter", "counterparty", "kind",
                         "transaction", "_id", "prevHash", "hash")


@bp.get("/<account_id>/statement")
@jwt_required()
def get_statement(account_id: str):
    account_oid = validation.path_object_id(account_id, "accountId")
    start = validation.calendar_date(request.args.get("from"), "from")
    end = validation.calendar_date(request.args.get("to"), "to")
    history.statement_window(start, end)
    result = history.statement(current_user["_id"], account_oid, start, end)
    if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv":
        return _statement_csv(result)
    currency = result.account["currency"]
    return jsonify({
        "account": str(result.account["_id"]),
        "currency": currency,
        "from": result.start.isoformat(),
        "to": result.end.isoformat(),
        "openingBalance": to_major(result.opening_balance, currency),
        "closingBalance": to_major(result.closing_balance, currency),
        "totalDebits": to_major(result.total_debits, currency),
        "totalCredits": to_major(result.total_credits, currency),
        "openingHash": result.opening_hash,
        "closingHash": result.closing_hash,
        "entries": [entry_json(e) for e in result.entries],
    })


def _statement_csv(result: history.Statement) -> Response:
    """One header row, one row per entry (oldest first); amounts in major units, exactly as in the JSON."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(STATEMENT_CSV_COLUMNS)
    for entry in result.entries:
        row = entry_json(entry)
        currency = row["currency"]
        row["amount"] = format_plain(entry["amount"], currency)
        row["balanceAfter"] = format_plain(entry["balanceAfter"], currency)
        row["createdAt"] = iso_utc(entry["createdAt"])
        writer.writerow(["" if row[column] is None else row[column] for column in STATEMENT_CSV_COLUMNS])
    filename = f"statement-{result.account['_id']}-{result.start.isoformat()}-{result.end.isoformat()}.csv"
    response = Response(buffer.getvalue(), mimetype="text/csv")
    response.headers["Content-Type"] = "text/csv; charset=utf-8"
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Vary"] = "Accept"
    return response


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
