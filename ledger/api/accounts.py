"""``/api/accounts``: open and read the caller's accounts (the Node service's account controller)."""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, jsonify, request
from flask_jwt_extended import jwt_required

from ledger.api.contract import body, declare, error, errors, ok, path, query
from ledger.api.schemas import (
    ACCOUNT_ID,
    ACCOUNT_ID_FIELD,
    ID_OR_NOT_FOUND,
    AccountList,
    AccountRequest,
    AccountResponse,
    AccountStatusRequest,
    AccountStatusResponse,
    BalanceQuery,
    BalanceResponse,
    EntriesPage,
    EntriesQuery,
    HoldList,
    Statement,
    StatementQuery,
)
from ledger.api.serializers import account_json, available_balance, entry_json, hold_json
from ledger.errors import AccountNotFound
from ledger.hashchain import iso_millis
from ledger.jsonio import iso_utc
from ledger.money import format_plain, to_major
from ledger.security import caller
from ledger.services import accounts as account_service
from ledger.services import history
from ledger.services import holds as hold_service

bp = Blueprint("accounts", __name__)


@bp.post("")
@bp.post("/create")
@declare("createAccount", tag="accounts", summary="Open an account (balance 0, ACTIVE)",
         body=AccountRequest, body_required=False,
         responses={201: ok("Opened.", AccountResponse), **errors(400, 401, 413, 415, 503)})
@jwt_required()
def create_account():
    currency = body().currency
    account = account_service.open_account(caller()["_id"], currency)
    return jsonify({"account": account_json(account)}), 201


@bp.get("")
@declare("listAccounts", tag="accounts", summary="The caller's accounts",
         responses={200: ok("The caller's accounts.", AccountList), **errors(401, 503)})
@jwt_required()
def list_accounts():
    accounts = account_service.list_accounts(caller()["_id"])
    return jsonify({"accounts": [account_json(a) for a in accounts]})


@bp.get("/user/<user_id>")
@declare("listAccountsOfUser", tag="accounts", summary="A user's accounts (the caller only)",
         responses={200: ok("The caller's accounts.", AccountList),
                    404: error("Any id but the caller's own (never another user's data)."), **errors(401, 503)},
         path={"user_id": ID_OR_NOT_FOUND})
@jwt_required()
def list_accounts_of_user(user_id: str):
    # Only the caller's own id is visible; any other id looks like a user with no accounts we can show.
    if path("user_id") != caller()["_id"]:
        raise AccountNotFound("No accounts found for this user")
    accounts = account_service.list_accounts(caller()["_id"])
    return jsonify({"accounts": [account_json(a) for a in accounts]})


@bp.get("/balance/<account_id>")
@declare("getBalance", tag="accounts", summary="An account's balance (now, or at an instant)", query=BalanceQuery,
         path={"account_id": ID_OR_NOT_FOUND},
         responses={200: ok("The balance.", BalanceResponse), **errors(400, 401, 404, 503)})
@jwt_required()
def get_balance(account_id: str):
    instant = query().at
    if instant is not None:
        account, balance_minor = history.balance_at(caller()["_id"], path("account_id"), instant)
        return jsonify({"accountId": str(account["_id"]), "balance": to_major(balance_minor, account["currency"]),
                        "at": iso_millis(instant)})
    account = account_service.get_account(caller()["_id"], path("account_id"))
    balance = to_major(account.get("balance", 0), account["currency"])
    return jsonify({"accountId": str(account["_id"]), "balance": balance,
                    "availableBalance": available_balance(account)})


@bp.get("/<account_id>/entries")
@declare("listEntries", tag="ledger", summary="The account's ledger entries, newest first",
         description="Keyset-paginated on the account's sequence number: every entry exactly once across the "
                     "pages, even while transfers land (new entries appear on a fresh first page).",
         query=EntriesQuery, path={"account_id": ACCOUNT_ID_FIELD},
         responses={200: ok("One page.", EntriesPage),
                    400: error("A malformed account id, a bad limit or a cursor we did not issue for this account."),
                    **errors(401, 404, 503)})
@jwt_required()
def list_entries(account_id: str):
    account_oid = path("account_id")
    page_query = query()
    page = history.list_entries(caller()["_id"], account_oid, page_query.limit, page_query.cursor)
    return jsonify({"entries": [entry_json(e) for e in page.entries], "nextCursor": page.next_cursor})


STATEMENT_CSV_COLUMNS = ("seq", "createdAt", "type", "amount", "currency", "balanceAfter", "counterparty", "kind",
                         "transaction", "_id", "prevHash", "hash")


@bp.get("/<account_id>/statement")
@declare("getStatement", tag="ledger", summary="A statement for whole UTC days",
         description="`openingBalance + totalCredits - totalDebits == closingBalance` exactly. With "
                     "`Accept: text/csv` the same entries as CSV (a header row, one row per entry, "
                     "`Content-Disposition: attachment`).",
         query=StatementQuery, path={"account_id": ACCOUNT_ID_FIELD},
         responses={200: {**ok("The statement.", Statement),
                          "content": {"application/json": {"schema": Statement},
                                      "text/csv": {"schema": {"type": "string"}}}},
                    400: error("A malformed account id, a missing, malformed or impossible date, from after to, or "
                               "more than 366 days."),
                    **errors(401, 404, 503)})
@jwt_required()
def get_statement(account_id: str):
    account_oid = path("account_id")
    window = query()
    start, end = window.from_, window.to
    history.statement_window(start, end)
    result = history.statement(caller()["_id"], account_oid, start, end)
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
@declare("changeAccountStatus", tag="accounts", summary="Close an account (owner) or freeze/unfreeze it (system user)",
         description="A frozen or closed account neither sends nor receives. Setting the status an account "
                     "already has is a 200 (closing excepted: closed is final, so any change after it is a 409).",
         body=AccountStatusRequest, path={"account_id": ACCOUNT_ID},
         responses={200: ok("The account's new status.", AccountStatusResponse),
                    400: error("A malformed id, a missing or unknown status, a non-zero balance or held funds on "
                               "close, a system account."),
                    403: error("Freezing or unfreezing by anyone but the system user; closing by anyone but the "
                               "owner."),
                    404: error("No such account, or not visible to the caller."),
                    409: error("The account is closed (final), or frozen when its owner closes it."),
                    **errors(401, 413, 415, 503)})
@jwt_required()
def change_account_status(account_id: str):
    account_oid = path("account_id")
    account = account_service.change_status(caller(), account_oid, body().status)
    return jsonify({"account": {"_id": str(account["_id"]), "status": account["status"],
                                "updatedAt": account.get("updatedAt")}})


@bp.get("/<account_id>/holds")
@declare("listAccountHolds", tag="holds", summary="The account's unexpired ACTIVE holds",
         path={"account_id": ACCOUNT_ID},
         responses={200: ok("Soonest expiry first.", HoldList), 400: error("A malformed id."),
                    **errors(401, 404, 503)})
@jwt_required()
def list_holds(account_id: str):
    active = hold_service.list_active(caller(), path("account_id"))
    return jsonify({"holds": [hold_json(h, "ACTIVE") for h in active]})


@bp.get("/<account_id>")
@declare("getAccount", tag="accounts", summary="One of the caller's accounts",
         path={"account_id": ID_OR_NOT_FOUND},
         responses={200: ok("The account.", AccountResponse), **errors(401, 404, 503)})
@jwt_required()
def get_account(account_id: str):
    account = account_service.get_account(caller()["_id"], path("account_id"))
    return jsonify({"account": account_json(account)})
