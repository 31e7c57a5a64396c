"""Operational routes: the welcome text, liveness, readiness and metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template, request, url_for

from ledger import metrics
from ledger.api.contract import PUBLIC, declare, ok
from ledger.api.schemas import Health, Readiness
from ledger.services import health

bp = Blueprint("ops", __name__)


WELCOME = "Welcome to the banking app"


@bp.get("/")
@declare("welcome", tag="operations", summary="Welcome text", security=PUBLIC,
         description="`text/plain` unless the client prefers `text/html` (a browser), which gets the same "
                     "sentence with links to `/api/docs` and `/api/openapi.json`.",
         responses={200: ok("`Welcome to the banking app`", media=("text/plain", "text/html"))})
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
@declare("health", tag="operations", summary="Liveness", security=PUBLIC,
         responses={200: ok("The process runs.", Health)})
def live():
    return jsonify({"status": "ok"})


@bp.get("/ready")
@declare("ready", tag="operations", summary="Readiness", security=PUBLIC,
         description="Ready when the database answers, is a replica set with a primary (or the embedded "
                     "engine) and the indexes exist.",
         responses={200: ok("Ready.", Readiness), 503: ok("Not ready; `error` says why.", Readiness)})
def ready():
    ok, report = health.readiness(current_app)
    report["status"] = "ready" if ok else "unavailable"
    response = jsonify(report)
    response.status_code = 200 if ok else 503
    return response


@bp.get("/metrics")
@declare("metrics", tag="operations", summary="Prometheus metrics", security=PUBLIC,
         responses={200: ok("Prometheus text exposition format 0.0.4.", media="text/plain")})
def prometheus():
    metrics.OUTBOX_BACKLOG.set(health.outbox_backlog(current_app))
    return Response(metrics.render(), mimetype=metrics.CONTENT_TYPE.split(";")[0],
                    headers={"Content-Type": metrics.CONTENT_TYPE})
