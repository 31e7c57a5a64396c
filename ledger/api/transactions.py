"""``/api/transactions``: transfers and system funding (the Node service's transaction controller)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask_jwt_extended import jwt_required

from ledger import ratelimit
from ledger.api.contract import RATE_LIMITED, body, declare, error, errors, ok, path
from ledger.api.schemas import (
    TRANSACTION_ID,
    TRANSACTION_ID_FIELD,
    FundingRequest,
    ReversalRequest,
    TransactionEnvelope,
    TransactionResponse,
    TransferRequest,
)
from ledger.api.serializers import transaction_json
from ledger.errors import NotSystemUser
from ledger.security import caller
from ledger.services import history, reversals, transfers
from ledger.services.transfers import TransferResult

bp = Blueprint("transactions", __name__)

REPLAYED = "Idempotent-Replayed"


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
@declare("createTransaction", tag="transactions", summary="Transfer between accounts",
         description="Exactly once per (caller, idempotencyKey). A replay answers with the first attempt's status "
                     "and body plus `Idempotent-Replayed: true`; business rejections (insufficient funds, inactive "
                     "account, currency mismatch) are recorded and replayed too. Rate-limited per user "
                     "(RATELIMIT_TRANSFER).",
         body=TransferRequest, idempotency_header=True,
         responses={200: ok("Completed, or a replay of a completed transfer (`Transaction already processed`).",
                            TransactionResponse, REPLAYED, *RATE_LIMITED),
                    400: error("Missing fields, bad types or ids, a bad amount, the same account twice, `One or both "
                               "accounts not found` (also when fromAccount is not the caller's), inactive accounts, "
                               "a currency mismatch or insufficient balance.", REPLAYED),
                    **errors(401, 409, 413, 415, 422, 429, 503)})
@jwt_required()
@ratelimit.transfer_per_user  # inside jwt_required: keyed on the verified user
def create_transaction():
    transfer = body()
    result = transfers.transfer(caller(), transfer.fromAccount, transfer.toAccount, transfer.amount,
                                transfer.idempotencyKey)
    return _respond(result, "Transaction processed successfully", 200)


@bp.post("/system/initial-funds")
@declare("createInitialFunds", tag="transactions",
         summary="Fund an account from the system account (system user only)",
         body=FundingRequest, idempotency_header=True,
         responses={201: ok("Funded, or a replay of that funding.", TransactionResponse, REPLAYED),
                    400: error("Missing fields, bad types, a bad amount, `Account not found` or an inactive target.",
                               REPLAYED),
                    **errors(401, 403, 409, 413, 415, 422, 503)})
@jwt_required()
def create_initial_funds():
    if not caller().get("systemUser"):
        raise NotSystemUser()
    funding = body()
    result = transfers.fund(caller(), funding.toAccount, funding.amount, funding.idempotencyKey)
    return _respond(result, "Initial funds transaction created successfully", 201)


@bp.post("/<transaction_id>/reverse")
@declare("reverseTransaction", tag="transactions",
         summary="Reverse a completed transfer or funding in full (system user only)",
         description="One database transaction writes the REVERSAL, both entries, the links both ways and the "
                     "original's REVERSED status. Exactly once per original, whatever the keys; a reversal the "
                     "recipient can no longer cover is recorded FAILED and replayed.",
         body=ReversalRequest, idempotency_header=True, path={"transaction_id": TRANSACTION_ID},
         responses={201: ok("Reversed, or a replay of that reversal.", TransactionResponse, REPLAYED),
                    400: error("A malformed id or key, or the original recipient no longer holds the amount "
                               "(insufficient balance, recorded and replayed).", REPLAYED),
                    404: error("`Transaction not found`."),
                    409: error("The original is not a COMPLETED transfer or funding (failed, already reversed, a "
                               "reversal), or still pending."),
                    **errors(401, 403, 413, 415, 422, 503)})
@jwt_required()
def reverse_transaction(transaction_id: str):
    if not caller().get("systemUser"):
        raise NotSystemUser()
    original_id = path("transaction_id")
    reversal = body()
    result = reversals.reverse(caller(), original_id, reversal.idempotencyKey, reversal.reason)
    return _respond(result, "Transaction reversed successfully", 201)


@bp.get("/<transaction_id>")
@declare("getTransaction", tag="transactions",
         summary="One transaction, for its initiator or the owner of either account",
         responses={200: ok("The transaction.", TransactionEnvelope), 400: error("A malformed transaction id."),
                    404: error("`Transaction not found`: absent or not visible to the caller."),
                    **errors(401, 503)},
         path={"transaction_id": TRANSACTION_ID_FIELD})
@jwt_required()
def get_transaction(transaction_id: str):
    record = history.get_transaction(caller()["_id"], path("transaction_id"))
    return jsonify({"transaction": transaction_json(record)})
