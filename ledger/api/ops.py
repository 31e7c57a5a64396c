"""Operational routes: the welcome text, liveness, readiness and metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template, request, url_for

from ledger import metrics
from ledger.services import health

bp = Blueprint("ops", __name__)


WELCOME = "Welcome to the banking app"


@bp.get("/")
def welcome():
    """The Node service's plain-text welcome; a browser (which prefers HTML) gets it with links to the docs."""
    if request.accept_mimetypes.best_match(["text/plain", "text/html"]) == "text/html":
        response = Response(render_template("docs/welcome.html", text=WELCOME, docs_url=url_for("docs.page"),
                                            spec_url=url_for("openapi.document")), mimetype="text/html")
    else:
        response = Response(WELCOME, mimetype="text/plain")
    response.vary.add("Accept")
    return response


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
