"""``/api/ledger``: proving the ledger (system user only)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask_jwt_extended import current_user, jwt_required

from ledger.errors import NotSystemUser
from ledger.services import audit

bp = Blueprint("ledger", __name__)


@bp.get("/verify")
@jwt_required()
def verify():
    if not current_user.get("systemUser"):
        raise NotSystemUser()
    report = audit.verify(keep=audit.DEFAULT_KEEP)
    return jsonify({"ok": report.ok, "checked": report.checked(), "problemCount": report.problem_count,
                    "problems": [problem.as_json() for problem in report.problems]})
