"""Request IDs, structured logs, per-request metrics and the headers every response carries."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import time
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from flask.globals import _cv_app, _cv_request
from werkzeug.datastructures import Headers

from ledger import metrics
from ledger.logwriter import BatchingStreamHandler

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}\Z")  # match() anchors the start; \Z is the very end

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


# One encoder for every line (``json.dumps(..., default=str)`` would build a new one per call; same output).
_LINE_ENCODER = json.JSONEncoder(default=str)

# (whole second, its "%Y-%m-%dT%H:%M:%S" text): lines of the same second share the formatting.
_second: tuple[int, str] = (-1, "")


def _timestamp(created: float, msecs: float) -> str:
    global _second
    second = int(created)
    cached = _second
    if cached[0] != second:
        cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _second = cached
    return f"{cached[1]}.{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, carrying the request id when there is a request."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context():
            entry["requestId"] = getattr(g, "request_id", None)
        fields = record.__dict__
        for key in _ACCESS_FIELDS:
            if key in fields:
                entry[key] = fields[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _LINE_ENCODER.encode(entry)


_ACCESS_FIELDS = ("method", "route", "path", "status", "durationMs", "userId")


def configure_logging(app: Flask) -> None:
    """JSON lines on stderr through one process-wide handler; INFO lines are written in batches every
    ``LOG_FLUSH_SECONDS`` (see :mod:`ledger.logwriter`), the last app configured setting the interval."""
    root = logging.getLogger()
    interval = float(app.config.get("LOG_FLUSH_SECONDS") or 0.0)
    existing = [h for h in root.handlers if getattr(h, "_ledger_handler", False)]
    if existing:
        for handler in existing:
            if isinstance(handler, BatchingStreamHandler):
                handler.interval = interval
    else:
        handler = BatchingStreamHandler(sys.stderr, interval=interval)
        handler.setFormatter(JsonFormatter())
        handler._ledger_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(app.config.get("LOG_LEVEL", "INFO"))
    app.logger.handlers.clear()
    app.logger.propagate = True


access_log = logging.getLogger("ledger.access")


def new_request_id() -> str:
    """A random version-4 UUID as 32 hex digits, as ``uuid.uuid4().hex`` writes it, without building a UUID.

    A request id names a request in logs; it guards nothing (a client may choose its own), so its 122 random
    bits come from a ``random.Random`` of its own (seeded from the OS, reseeded in every forked worker) rather
    than a system call to the OS's generator per request.
    """
    number = _random_bits(128)
    number = (number & _UUID4_CLEAR) | _UUID4_SET  # RFC 4122 variant, version 4: the bits uuid.UUID sets
    return f"{number:032x}"


# A generator of its own (the global one belongs to the application and its tests): seeded from the OS, and
# reseeded in every forked child so that workers forked from one parent never share a sequence.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)
_random_bits = _ids.getrandbits
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)


def init_app(app: Flask) -> None:
    def _start() -> None:
        # The request and ``g`` from their context variables: what the ``request``/``g`` proxies look up.
        incoming = _cv_request.get().request.environ.get("HTTP_X_REQUEST_ID", "")  # the X-Request-ID header
        state = _cv_app.get().g
        state.request_id = incoming if _REQUEST_ID.match(incoming) else new_request_id()
        state.started = time.perf_counter()

    # First of all before-request hooks (extensions registered theirs earlier), so every log line of the
    # request, including those of other hooks, carries the request id.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    config = app.config

    @app.after_request
    def _finish(response: Response) -> Response:
        # Runs on every request: plain attribute and dict work, no per-request formatting machinery.
        req = _cv_request.get().request
        state = _cv_app.get().g
        # ``g`` keeps its attributes in its __dict__; reading that directly spares the AttributeError that
        # getattr(g, name, default) raises and catches for every attribute this request did not set.
        values = state.__dict__
        request_id = values.get("request_id") or new_request_id()
        secure = config.get("COOKIE_SECURE") or config.get("ENV_NAME") == "production"
        path = req.path
        no_store = path.startswith("/api") and not values.get("cacheable_response", False)  # /api/docs
        headers = response.headers
        if type(headers) is Headers:
            _add_headers(headers, request_id, secure, no_store)
        else:  # pragma: no cover - werkzeug's responses always hold a Headers; anything else gets its own API
            _add_headers_through_api(headers, request_id, secure, no_store)
        if config.get("CORS_ORIGINS"):
            _apply_cors(response, config["CORS_ORIGINS"])
        started = values.get("started")
        duration = time.perf_counter() - started if started is not None else 0.0
        rule = req.url_rule
        route = rule.rule if rule is not None else "<unmatched>"
        method = req.method
        status = response.status_code
        metrics.observe_request(method, route, status, duration)
        if access_log.isEnabledFor(logging.INFO):
            _log_access(method, route, path, status, round(duration * 1000, 2), _user_id(values),
                        values.get("request_id"))
        return response


def _add_headers(headers: Headers, request_id: str, secure: bool, no_store: bool) -> None:
    """X-Request-ID, the security headers (those the view did not set), HSTS when ``secure``, and
    ``Cache-Control: no-store`` when ``no_store``: what ``headers[...] = ``/``headers.add`` would do, appended
    to the header list directly. Every value appended is one of ours, free of line breaks (the request id is
    either checked by ``_REQUEST_ID`` or generated), so werkzeug's check of each value is not repeated here."""
    entries = headers._list
    present = {name.lower() for name, _value in entries}
    if "x-request-id" in present:
        headers["X-Request-ID"] = request_id
    else:
        entries.append(("X-Request-ID", request_id))
    if present.isdisjoint(_SECURITY_NAMES):
        entries.extend(_SECURITY_ENTRIES)
    else:
        entries.extend(entry for entry, lowered in zip(_SECURITY_ENTRIES, _SECURITY_NAMES, strict=True)
                       if lowered not in present)
    if secure and "strict-transport-security" not in present:
        entries.append(("Strict-Transport-Security", HSTS))
    if no_store:
        if "cache-control" in present:
            headers["Cache-Control"] = "no-store"
        else:
            entries.append(("Cache-Control", "no-store"))


def _add_headers_through_api(headers: Any, request_id: str, secure: bool, no_store: bool) -> None:
    headers["X-Request-ID"] = request_id
    present = {name.lower() for name, _value in headers}
    for (name, value), lowered in zip(_SECURITY_ENTRIES, _SECURITY_NAMES, strict=True):
        if lowered not in present:
            headers.add(name, value)
    if secure and "strict-transport-security" not in present:
        headers.add("Strict-Transport-Security", HSTS)
    if no_store:
        headers["Cache-Control"] = "no-store"


_SECURITY_ENTRIES = tuple(SECURITY_HEADERS.items())
_SECURITY_NAMES = tuple(name.lower() for name in SECURITY_HEADERS)


def _log_access(method: str, route: str, path: str, status: int, duration_ms: float, user_id: str | None,
                request_id: str | None) -> None:
    """The access line: an INFO record of ``ledger.access`` carrying the request's fields.

    When the only handler it would reach is the one :func:`configure_logging` installs (the usual case in a
    deployment), the line is handed straight to that handler, exactly as ``JsonFormatter`` would write the
    record, without building one; the handler queues it for its writer thread (or writes it at once when
    ``LOG_FLUSH_SECONDS`` is 0). Any other handler, filter or logger setting (tests, an operator's logging
    configuration) gets the record itself, through ``logging`` as usual.
    """
    handler = _sole_ledger_handler()
    if handler is None:
        access_log.handle(_access_record(method, route, path, status, duration_ms, user_id))
        return
    now = time.time()
    line = access_line(_timestamp(now, (now - int(now)) * 1000), method, route, path, status, duration_ms,
                       user_id, request_id)
    handler.write_line(line + handler.terminator)


def _access_record(method: str, route: str, path: str, status: int, duration_ms: float,
                   user_id: str | None) -> logging.LogRecord:
    """The record ``access_log.info()`` would make, without its search of the call stack for the caller."""
    fields = {"method": method, "route": route, "path": path, "status": status, "durationMs": duration_ms,
              "userId": user_id}
    return access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, "%s %s %s", (method, route, status),
                                 None, "_finish", fields)


def access_line(timestamp: str, method: str, route: str, path: str, status: int, duration_ms: float,
                user_id: str | None, request_id: str | None) -> str:
    """The access line's JSON, character for character what ``JsonFormatter`` writes for the access record
    (same keys in the same order, ``json``'s default separators and ASCII escaping), written with the JSON
    string encoder directly rather than through a dict and the general encoder."""
    return (f'{{"time": {_quote(timestamp)}, "level": "INFO", "logger": "ledger.access", '
            f'"message": {_quote(f"{method} {route} {status}")}, "requestId": {_text_or_null(request_id)}, '
            f'"method": {_quote(method)}, "route": {_quote(route)}, "path": {_quote(path)}, '
            f'"status": {int.__repr__(status)}, "durationMs": {float.__repr__(duration_ms)}, '
            f'"userId": {_text_or_null(user_id)}}}')


_quote = json.encoder.encode_basestring_ascii  # what the encoder writes for a str with ensure_ascii


def _text_or_null(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _sole_ledger_handler() -> BatchingStreamHandler | None:
    """The ledger's stream handler, if it is the only thing an INFO record of ``ledger.access`` would reach."""
    if access_log.filters:
        return None
    found = None
    logger: logging.Logger | None = access_log
    while logger is not None:
        for handler in logger.handlers:
            if (found is not None or not getattr(handler, "_ledger_handler", False) or handler.filters
                    or handler.level > logging.INFO or type(handler) is not BatchingStreamHandler
                    or type(handler.formatter) is not JsonFormatter):
                return None
            found = handler
        if not logger.propagate:
            break
        logger = logger.parent
    return found


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


def _user_id(values: dict[str, Any]) -> str | None:
    user = values.get("_jwt_extended_jwt_user")
    loaded = user.get("loaded_user") if isinstance(user, dict) else None
    return str(loaded["_id"]) if loaded else None
