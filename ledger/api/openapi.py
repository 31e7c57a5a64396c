"""``GET /api/openapi.json``: the OpenAPI 3.0 document, generated from the routes' declarations.

Nothing here describes a route: each view declares its body, parameters and responses once
(:mod:`ledger.api.contract`, with the models of :mod:`ledger.api.schemas`), the route validates its input
with those declarations, and this document is built from them and from ``app.url_map`` on first request.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ledger.api.contract import (  # noqa: F401 - the document's API, for tests and tools
    PUBLIC,
    build_spec,
    declare,
    declared_endpoints,
    documented_methods,
    ok,
    openapi_path,
    undocumented_routes,
)

bp = Blueprint("openapi", __name__)


@bp.get("/api/openapi.json")
@declare("openapi", tag="operations", summary="This OpenAPI document", security=PUBLIC,
         responses={200: ok("OpenAPI 3.0 document.")})
def document():
    cached = current_app.extensions.get("ledger.openapi")
    if cached is None:
        cached = current_app.extensions["ledger.openapi"] = build_spec(current_app)
    return jsonify(cached)
