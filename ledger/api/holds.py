"""``/api/holds``: reserve money now, capture or void it later (API.md Part two, *Holds*)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask_jwt_extended import jwt_required

from ledger import ratelimit
from ledger.api.contract import body, declare, error, errors, ok, path
from ledger.api.schemas import HOLD_ID, CaptureRequest, CaptureResponse, HoldRequest, HoldResponse
from ledger.api.serializers import hold_json, transaction_json
from ledger.security import caller
from ledger.services import holds

bp = Blueprint("holds", __name__)

REPLAYED = "Idempotent-Replayed"
NO_LONGER_ACTIVE = "The hold is no longer ACTIVE: `Hold is CAPTURED|VOIDED|EXPIRED`."


def hold_body(hold: dict[str, Any]) -> dict[str, Any]:
    return hold_json(hold, holds.effective_status(hold))


@bp.post("")
@declare("createHold", tag="holds", summary="Reserve money on the caller's account",
         description="The rules of a transfer, with the funds check against availableBalance. No money moves; "
                     "availableBalance drops by the amount until capture, void or expiry. Idempotent per (caller, "
                     "idempotencyKey); refusals are recorded and replayed.",
         body=HoldRequest, idempotency_header=True,
         responses={201: ok("Held, or a replay of that hold.", HoldResponse, REPLAYED),
                    400: error("Missing fields, bad types or ids, a bad amount or expiry, `One or both accounts not "
                               "found`, inactive accounts, a currency mismatch or insufficient available balance.",
                               REPLAYED),
                    **errors(401, 409, 413, 415, 422, 429, 503)})
@jwt_required()
@ratelimit.transfer_per_user
def create_hold():
    hold = body()
    result = holds.create(caller(), hold.fromAccount, hold.toAccount, hold.amount, hold.idempotencyKey,
                          hold.expiresInSeconds)
    response = jsonify({"hold": hold_body(result.hold)})
    response.status_code = 201
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/<hold_id>/capture")
@declare("captureHold", tag="holds", summary="Capture all or part of a hold",
         description="Exactly once: a HOLD_CAPTURE transfer with ledger entries; a partial capture releases the "
                     "rest. Capture, void and expiry race safely: one wins, the others get 409.",
         body=CaptureRequest, idempotency_header=True, path={"hold_id": HOLD_ID},
         responses={200: ok("Captured, or a replay of that capture.", CaptureResponse, REPLAYED),
                    400: error("A malformed id or key, more than held, an inactive account."),
                    404: error("`Hold not found` (or not the caller's)."),
                    409: error(NO_LONGER_ACTIVE),
                    **errors(401, 413, 415, 422, 429, 503)})
@jwt_required()
@ratelimit.transfer_per_user
def capture_hold(hold_id: str):
    hold_oid = path("hold_id")
    capture = body()
    result = holds.capture(caller(), hold_oid, capture.amount, capture.idempotencyKey)
    response = jsonify({"hold": hold_body(result.hold), "transaction": transaction_json(result.transaction)})
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/<hold_id>/void")
@declare("voidHold", tag="holds", summary="Release a hold", path={"hold_id": HOLD_ID},
         responses={200: ok("Voided.", HoldResponse), 400: error("A malformed id."),
                    404: error("`Hold not found` (or not the caller's)."), 409: error(NO_LONGER_ACTIVE),
                    **errors(401, 503)})
@jwt_required()
def void_hold(hold_id: str):
    return jsonify({"hold": hold_body(holds.void(caller(), path("hold_id")))})


@bp.get("/<hold_id>")
@declare("getHold", tag="holds", summary="A hold (owner of either account)", path={"hold_id": HOLD_ID},
         responses={200: ok("The hold.", HoldResponse), 400: error("A malformed id."), **errors(401, 404, 503)})
@jwt_required()
def get_hold(hold_id: str):
    return jsonify({"hold": hold_body(holds.get(caller(), path("hold_id")))})
