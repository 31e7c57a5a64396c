"""Request IDs, structured logs, per-request metrics and the headers every response carries."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, request

from ledger import metrics

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HSTS = "max-age=31536000; includeSubDomains"  # only where the cookie is Secure, i.e. the service is behind TLS

# CORS: off unless CORS_ORIGINS lists exact origins. Credentials are allowed (the token cookie), so never "*".
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
CORS_EXPOSE_HEADERS = ("X-Request-ID, Idempotent-Replayed, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, "
                       "X-RateLimit-Reset")
CORS_MAX_AGE = "600"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, carrying the request id when there is a request."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context():
            entry["requestId"] = getattr(g, "request_id", None)
        for key in ("method", "route", "path", "status", "durationMs", "userId"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(app: Flask) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_ledger_handler", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._ledger_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(app.config.get("LOG_LEVEL", "INFO"))
    app.logger.handlers.clear()
    app.logger.propagate = True


access_log = logging.getLogger("ledger.access")


def init_app(app: Flask) -> None:
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    # First of all before-request hooks (extensions registered theirs earlier), so every log line of the
    # request, including those of other hooks, carries the request id.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = getattr(g, "request_id", None) or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if current_app.config.get("COOKIE_SECURE") or current_app.config.get("ENV_NAME") == "production":
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        if current_app.config.get("CORS_ORIGINS"):
            _apply_cors(response, current_app.config["CORS_ORIGINS"])
        if request.path.startswith("/api") and not g.get("cacheable_response"):  # only /api/docs assets are
            response.headers["Cache-Control"] = "no-store"
        started = getattr(g, "started", None)
        duration = time.perf_counter() - started if started is not None else 0.0
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        metrics.observe_request(request.method, route, response.status_code, duration)
        access_log.info(
            "%s %s %s", request.method, route, response.status_code,
            extra={"method": request.method, "route": route, "path": request.path,
                   "status": response.status_code, "durationMs": round(duration * 1000, 2),
                   "userId": _user_id()},
        )
        return response


def _apply_cors(response: Response, allowed_origins: list[str]) -> None:
    """Allow exactly the configured origins (with credentials); answer preflights for them."""
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if not origin or origin not in allowed_origins:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        response.headers["Access-Control-Allow-Methods"] = response.headers.get("Allow") or "GET, POST"
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE


def _user_id() -> str | None:
    user = getattr(g, "_jwt_extended_jwt_user", None)
    loaded = user.get("loaded_user") if isinstance(user, dict) else None
    return str(loaded["_id"]) if loaded else None
