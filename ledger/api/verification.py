"""``/api/ledger``: proving the ledger (system user only)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask_jwt_extended import jwt_required

from ledger.api.contract import declare, errors, ok
from ledger.api.schemas import VerifyReport
from ledger.errors import NotSystemUser
from ledger.security import caller
from ledger.services import audit

bp = Blueprint("ledger", __name__)


@bp.get("/verify")
@declare("verifyLedger", tag="ledger", summary="Prove the ledger (system user only)",
         description="Every hash-chain link and hash, sequences, running balances, stored balances, transactions' "
                     "entries and per-currency sums (docs/hash-chain.md). 200 whether or not problems were found; "
                     "`ok` says which.",
         responses={200: ok("The verification report.", VerifyReport), **errors(401, 403, 503)})
@jwt_required()
def verify():
    if not caller().get("systemUser"):
        raise NotSystemUser()
    report = audit.verify(keep=audit.DEFAULT_KEEP)
    return jsonify({"ok": report.ok, "checked": report.checked(), "problemCount": report.problem_count,
                    "problems": [problem.as_json() for problem in report.problems]})
