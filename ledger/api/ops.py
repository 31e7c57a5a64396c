"""Operational routes: the welcome text, liveness, readiness and metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from ledger import metrics
from ledger.services import health

bp = Blueprint("ops", __name__)


@bp.get("/")
def welcome():
    return Response("Welcome to the banking app", mimetype="text/plain")


@bp.get("/health")
def live():
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    ok, report = health.readiness(current_app)
    report["status"] = "ready" if ok else "unavailable"
    response = jsonify(report)
    response.status_code = 200 if ok else 503
    return response


@bp.get("/metrics")
def prometheus():
    metrics.OUTBOX_BACKLOG.set(health.outbox_backlog(current_app))
    return Response(metrics.render(), mimetype=metrics.CONTENT_TYPE.split(";")[0],
                    headers={"Content-Type": metrics.CONTENT_TYPE})
