"""``GET /api/openapi.json``: the OpenAPI 3.0 document of every route, built with apispec from the app itself.

Paths and methods come from ``app.url_map`` (so a route cannot exist without the generator noticing); what
each operation takes and answers is declared here, per endpoint, in :data:`OPERATIONS`. A route missing from
that table is left out of the document and reported by :func:`undocumented_routes` (a test keeps it empty).
The shapes (schemas, security schemes, shared responses and headers) are registered as apispec components
and referenced by name, so a client generator gets named models.
"""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from flask import Blueprint, Flask, current_app, jsonify
from werkzeug.routing import Rule

from ledger import models, money, validation
from ledger.api import docs

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.0.3"
_IGNORED_METHODS = {"HEAD", "OPTIONS"}  # answered by Flask itself for every route
_CONVERTER = re.compile(r"<(?:[a-zA-Z_][a-zA-Z0-9_]*(?:\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")

OBJECT_ID_PATTERN = "^[0-9a-fA-F]{24}$"
NO_CONTROL_CHARACTERS = "^[^\\u0000-\\u001F\\u007F]*$"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


# ----------------------------------------------------------------------------------------- components

MONEY_AMOUNT = {
    "type": "number",
    "minimum": 0,
    "exclusiveMinimum": True,
    "maximum": int(money.MAX_AMOUNT_MAJOR),
    "description": "A JSON number in major units (10.5 = ten rupees fifty). At most as many decimals as the "
                   "currency's ISO-4217 exponent (2 for INR/USD/EUR/GBP, 0 for JPY/KRW). Strings, booleans, "
                   "NaN/Infinity, zero and negatives are refused with 400.",
    "example": 1000,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "description": "The one envelope of every error.",
        "required": ["message", "status"],
        "properties": {
            "message": {"type": "string", "example": "Account not found"},
            "status": {"type": "string", "enum": ["failed"]},
            "errors": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "Per-field reasons, when a field is at fault."},
        },
        "additionalProperties": False,
    },
    "ObjectId": {"type": "string", "pattern": OBJECT_ID_PATTERN, "example": "65f1c0ffee0123456789abcd"},
    "Timestamp": {"type": "string", "format": "date-time", "example": "2026-03-01T10:00:00.000Z"},
    "Currency": {"type": "string", "enum": sorted(money.CURRENCY_EXPONENTS), "example": "INR",
                 "description": "ISO-4217 code (case-insensitive on input)."},
    "Money": MONEY_AMOUNT,
    "Balance": {"type": "number", "description": "Major units; only the system account may be negative.",
                "example": 1000.5},
    "IdempotencyKey": {"type": "string", "minLength": 1, "maxLength": validation.IDEMPOTENCY_KEY_MAX_LENGTH,
                       "pattern": NO_CONTROL_CHARACTERS,
                       "description": "Scoped to the calling user; never expires. May be sent in the "
                                      "Idempotency-Key header instead.",
                       "example": "order-2026-0001"},
    "User": {
        "type": "object",
        "required": ["_id", "email", "name"],
        "properties": {"_id": _schema("ObjectId"), "email": {"type": "string", "format": "email"},
                       "name": {"type": "string"}},
        "additionalProperties": False,
    },
    "Session": {
        "type": "object",
        "required": ["user", "token"],
        "properties": {"user": _schema("User"), "token": {"type": "string", "description": "HS256 JWT"}},
        "additionalProperties": False,
    },
    "RegisterRequest": {
        "type": "object",
        "required": ["email", "password", "name"],
        "properties": {
            "email": {"type": "string", "format": "email", "maxLength": 254,
                      "description": "Trimmed and lower-cased."},
            # The rule is 6 to 72 *bytes* of UTF-8; JSON Schema counts characters (1 to 4 bytes each), so the
            # bounds below are the character counts no valid password can fall outside of.
            "password": {"type": "string", "minLength": -(-validation.PASSWORD_MIN_BYTES // 4),
                         "maxLength": validation.PASSWORD_MAX_BYTES,
                         "description": "6 to 72 bytes of UTF-8 (not characters); over 72 bytes is a 400, never "
                                        "a silent truncation."},
            "name": {"type": "string", "minLength": 1, "maxLength": validation.NAME_MAX_LENGTH},
        },
        "description": "Other fields (systemUser, _id, ...) are ignored.",
    },
    "LoginRequest": {
        "type": "object",
        "required": ["email", "password"],
        "properties": {"email": {"type": "string"}, "password": {"type": "string"}},
    },
    "Message": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}},
        "additionalProperties": False,
    },
    "Account": {
        "type": "object",
        "required": ["_id", "user", "status", "currency", "balance", "availableBalance", "createdAt", "updatedAt"],
        "properties": {
            "_id": _schema("ObjectId"),
            "user": _schema("ObjectId"),
            "status": {"type": "string", "enum": ["ACTIVE", "FROZEN", "CLOSED"]},
            "currency": _schema("Currency"),
            "balance": _schema("Balance"),
            "availableBalance": _schema("AvailableBalance"),
            "createdAt": _schema("Timestamp"),
            "updatedAt": _schema("Timestamp"),
        },
        "additionalProperties": False,
    },
    "AccountRequest": {
        "type": "object",
        "properties": {"currency": {"type": "string", "nullable": True,
                                    "enum": [*sorted(money.CURRENCY_EXPONENTS), None],
                                    "description": "ISO-4217 code, case-insensitive; absent or null: INR."}},
        "description": "Optional; currency defaults to INR. Client-sent balance, status, user and _id are "
                       "ignored.",
    },
    "AccountResponse": {
        "type": "object", "required": ["account"], "properties": {"account": _schema("Account")},
        "additionalProperties": False,
    },
    "AccountStatusRequest": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ACTIVE", "FROZEN", "CLOSED"]}},
        "description": "The owner may close (`CLOSED`, final; balance 0 and nothing held); the system user "
                       "freezes (`FROZEN`) and unfreezes (`ACTIVE`) customer accounts.",
    },
    "AccountStatusResponse": {
        "type": "object", "required": ["account"],
        "properties": {"account": {
            "type": "object", "required": ["_id", "status", "updatedAt"],
            "properties": {"_id": _schema("ObjectId"),
                           "status": {"type": "string", "enum": ["ACTIVE", "FROZEN", "CLOSED"]},
                           "updatedAt": _schema("Timestamp")},
            "additionalProperties": False,
        }},
        "additionalProperties": False,
    },
    "ReversalRequest": {
        "type": "object",
        "required": ["idempotencyKey"],
        "properties": {"idempotencyKey": _schema("IdempotencyKey"),
                       "reason": {"type": "string", "maxLength": 500}},
    },
    "Hold": {
        "type": "object",
        "required": ["_id", "fromAccount", "toAccount", "amount", "currency", "status", "expiresAt", "createdAt",
                     "updatedAt"],
        "properties": {
            "_id": _schema("ObjectId"),
            "fromAccount": _schema("ObjectId"),
            "toAccount": _schema("ObjectId"),
            "amount": _schema("Money"),
            "currency": _schema("Currency"),
            "status": {"type": "string", "enum": ["ACTIVE", "CAPTURED", "VOIDED", "EXPIRED"],
                       "description": "An ACTIVE hold past expiresAt is EXPIRED from that instant."},
            "expiresAt": _schema("Timestamp"),
            "createdAt": _schema("Timestamp"),
            "updatedAt": _schema("Timestamp"),
            "capturedAmount": _schema("Money"),
        },
        "additionalProperties": False,
    },
    "HoldResponse": {
        "type": "object", "required": ["hold"], "properties": {"hold": _schema("Hold")},
        "additionalProperties": False,
    },
    "HoldList": {
        "type": "object", "required": ["holds"],
        "properties": {"holds": {"type": "array", "items": _schema("Hold")}},
        "additionalProperties": False,
    },
    "CaptureResponse": {
        "type": "object", "required": ["hold", "transaction"],
        "properties": {"hold": _schema("Hold"), "transaction": _schema("Transaction")},
        "additionalProperties": False,
    },
    "HoldRequest": {
        "type": "object",
        "required": ["fromAccount", "toAccount", "amount", "idempotencyKey"],
        "properties": {"fromAccount": _schema("ObjectId"), "toAccount": _schema("ObjectId"),
                       "amount": _schema("Money"), "idempotencyKey": _schema("IdempotencyKey"),
                       "expiresInSeconds": {"type": "integer", "minimum": 60, "maximum": 604800,
                                            "default": 86400}},
    },
    "CaptureRequest": {
        "type": "object",
        "required": ["idempotencyKey"],
        "properties": {"idempotencyKey": _schema("IdempotencyKey"),
                       "amount": {**_schema("Money"), "description": "At most the held amount; absent: all."}},
    },
    "AccountList": {
        "type": "object", "required": ["accounts"],
        "properties": {"accounts": {"type": "array", "items": _schema("Account")}},
        "additionalProperties": False,
    },
    "BalanceResponse": {
        "type": "object", "required": ["accountId", "balance"],
        "properties": {"accountId": _schema("ObjectId"), "balance": _schema("Balance"),
                       "availableBalance": _schema("AvailableBalance"),
                       "at": {**_schema("Timestamp"), "description": "Present when `?at=` was given: the balance "
                                                                     "right after the last entry at or before it."}},
        "description": "`{accountId, balance, availableBalance}`, or with `?at=`: `{accountId, balance, at}`.",
        "additionalProperties": False,
    },
    "AvailableBalance": {"type": "number", "description": "Balance minus what unexpired holds reserve (major "
                                                          "units).",
                         "example": 1000.5},
    "Hash": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256, lower-case hex.",
             "example": "0" * 64},
    "Entry": {
        "type": "object",
        "required": ["_id", "account", "type", "amount", "currency", "balanceAfter", "seq", "transaction",
                     "counterparty", "kind", "createdAt"],
        "properties": {
            "_id": _schema("ObjectId"),
            "account": _schema("ObjectId"),
            "type": {"type": "string", "enum": ["DEBIT", "CREDIT"]},
            "amount": _schema("Money"),
            "currency": _schema("Currency"),
            "balanceAfter": _schema("Balance"),
            "seq": {"type": "integer", "minimum": 1, "description": "The account's entry number: 1, 2, 3, ..."},
            "transaction": _schema("ObjectId"),
            "counterparty": {**_schema("ObjectId"), "nullable": True, "description": "The other account."},
            "kind": {"type": "string", "nullable": True,
                     "enum": ["TRANSFER", "INITIAL_FUNDS", "REVERSAL", "HOLD_CAPTURE", None]},
            "createdAt": _schema("Timestamp"),
            "prevHash": {**_schema("Hash"), "nullable": True,
                         "description": "The previous entry's hash on this account (64 zeros for seq 1); null only "
                                        "on entries written before the chain existed, until backfilled."},
            "hash": {**_schema("Hash"), "nullable": True,
                     "description": "SHA-256 of the canonical line (docs/hash-chain.md)."},
        },
        "additionalProperties": False,
    },
    "EntriesPage": {
        "type": "object", "required": ["entries", "nextCursor"],
        "properties": {"entries": {"type": "array", "items": _schema("Entry")},
                       "nextCursor": {"type": "string", "nullable": True,
                                      "description": "Pass as `cursor` for the next (older) page; null on the "
                                                     "last page."}},
        "additionalProperties": False,
    },
    "Statement": {
        "type": "object",
        "required": ["account", "currency", "from", "to", "openingBalance", "closingBalance", "totalDebits",
                     "totalCredits", "openingHash", "closingHash", "entries"],
        "properties": {
            "account": _schema("ObjectId"),
            "currency": _schema("Currency"),
            "from": {"type": "string", "format": "date"},
            "to": {"type": "string", "format": "date"},
            "openingBalance": _schema("Balance"),
            "closingBalance": _schema("Balance"),
            "totalDebits": {"type": "number", "minimum": 0},
            "totalCredits": {"type": "number", "minimum": 0},
            "openingHash": {**_schema("Hash"), "nullable": True},
            "closingHash": {**_schema("Hash"), "nullable": True},
            "entries": {"type": "array", "items": _schema("Entry"), "description": "Oldest first."},
        },
        "additionalProperties": False,
    },
    "TransactionEnvelope": {
        "type": "object", "required": ["transaction"], "properties": {"transaction": _schema("Transaction")},
        "additionalProperties": False,
    },
    "VerifyProblem": {
        "type": "object", "required": ["check", "account", "seq", "transaction", "message"],
        "properties": {
            "check": {"type": "string", "example": "hash"},
            "account": {**_schema("ObjectId"), "nullable": True},
            "seq": {"type": "integer", "nullable": True},
            "transaction": {**_schema("ObjectId"), "nullable": True},
            "message": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "VerifyReport": {
        "type": "object", "required": ["ok", "checked", "problemCount", "problems"],
        "properties": {
            "ok": {"type": "boolean"},
            "checked": {"type": "object", "additionalProperties": {"type": "integer"}},
            "problemCount": {"type": "integer", "minimum": 0},
            "problems": {"type": "array", "items": _schema("VerifyProblem"), "maxItems": 100,
                         "description": "The first 100 problems."},
        },
        "additionalProperties": False,
    },
    "Transaction": {
        "type": "object",
        "required": ["_id", "fromAccount", "toAccount", "amount", "status", "idempotencyKey", "createdAt",
                     "updatedAt"],
        "properties": {
            "_id": _schema("ObjectId"),
            "fromAccount": _schema("ObjectId"),
            "toAccount": _schema("ObjectId"),
            "amount": _schema("Money"),
            "currency": _schema("Currency"),
            "kind": {"type": "string", "enum": list(models.TRANSACTION_KINDS)},
            "status": {"type": "string", "enum": ["PENDING", "COMPLETED", "FAILED", "REVERSED"]},
            "idempotencyKey": _schema("IdempotencyKey"),
            "createdAt": _schema("Timestamp"),
            "updatedAt": _schema("Timestamp"),
            "reverses": {**_schema("ObjectId"), "description": "On a REVERSAL: the transaction it reverses."},
            "reversedBy": {**_schema("ObjectId"), "description": "On a REVERSED transaction: its reversal."},
        },
        "additionalProperties": False,
    },
    "TransactionResponse": {
        "type": "object", "required": ["message", "transaction"],
        "properties": {"message": {"type": "string"}, "transaction": _schema("Transaction")},
        "additionalProperties": False,
    },
    "TransferRequest": {
        "type": "object",
        "required": ["fromAccount", "toAccount", "amount", "idempotencyKey"],
        "properties": {"fromAccount": _schema("ObjectId"), "toAccount": _schema("ObjectId"),
                       "amount": _schema("Money"), "idempotencyKey": _schema("IdempotencyKey")},
    },
    "FundingRequest": {
        "type": "object",
        "required": ["toAccount", "amount", "idempotencyKey"],
        "properties": {"toAccount": _schema("ObjectId"), "amount": _schema("Money"),
                       "idempotencyKey": _schema("IdempotencyKey")},
    },
    "Health": {
        "type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "engine"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "engine": {"type": "string", "enum": ["embedded", "mongodb"]},
            "replicaSet": {"type": "string"},
            "error": {"type": "string"},
            "missingIndexes": {"type": "array", "items": {"type": "string"}},
        },
    },
}

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"description": "The client's X-Request-ID when it is safe (1-128 of [A-Za-z0-9._:-]), "
                                    "else a generated one. Present on every response.",
                     "required": True, "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "`true` when this answer replays an earlier request with the same "
                                           "idempotency key.", "schema": {"type": "string", "enum": ["true"]}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}},
    "X-RateLimit-Limit": {"description": "Requests allowed in the current window.", "schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"description": "Requests left in the current window.",
                              "schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"description": "Unix time at which the window resets.", "schema": {"type": "integer"}},
    "Set-Cookie": {"description": "`token=<jwt>; HttpOnly; SameSite=Lax; Path=/; Max-Age=604800` (plus `Secure` "
                                  "when COOKIE_SECURE or production).", "schema": {"type": "string"}},
}

_REQUEST_ID = {"X-Request-ID": _ref("headers", "X-Request-ID")}
_RATE_LIMIT_HEADERS = {name: _ref("headers", name)
                       for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")}


def _error(description: str, **headers: dict[str, str]) -> dict[str, Any]:
    return {"description": description, "headers": {**_REQUEST_ID, **headers},
            "content": {"application/json": {"schema": _schema("Error")}}}


RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": _error("Invalid input: malformed or non-object JSON, nesting deeper than 32, a missing or "
                         "wrongly typed field, or a business rule (see the message)."),
    "Unauthorized": _error("No token (`Unauthorized, token is missing`), a revoked one (`... is blacklisted`) "
                           "or a bad, expired or alg=none one (`... is invalid`)."),
    "Forbidden": _error("`Forbidden, user is not a system user`."),
    "NotFound": _error("`Account not found`: absent or not owned by the caller (no existence oracle)."),
    "MethodNotAllowed": _error("The path exists but not with this method; `Allow` lists the methods."),
    "Conflict": _error("`Transaction is still pending`: the same key is being processed; retry shortly.",
                       **{"Retry-After": _ref("headers", "Retry-After")}),
    "PayloadTooLarge": _error("Request body over 100 KB."),
    "UnsupportedMediaType": _error("A body whose Content-Type is not application/json."),
    "Unprocessable": _error("Email already registered, or an idempotency key reused with a different request."),
    "TooManyRequests": _error("Rate limit reached.", **{"Retry-After": _ref("headers", "Retry-After")},
                              **_RATE_LIMIT_HEADERS),
    "ServiceUnavailable": _error("The database is unreachable or a transaction kept conflicting; retry.",
                                 **{"Retry-After": _ref("headers", "Retry-After")}),
}

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "`Authorization: Bearer <jwt>` (checked before the cookie)."},
    "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "token",
                   "description": "The `token` cookie set by register and login."},
}
AUTHENTICATED = [{"bearerAuth": []}, {"cookieAuth": []}]
PUBLIC: list[dict[str, list[str]]] = []

IDEMPOTENCY_KEY_HEADER = {
    "name": "Idempotency-Key", "in": "header", "required": False, "schema": _schema("IdempotencyKey"),
    "description": "Alternative to the body's idempotencyKey; both present and different is a 400.",
}


# ----------------------------------------------------------------------------------------- operations


def _ok(description: str, schema: str | None = None, *, media: str = "application/json",
        **headers: dict[str, str]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "headers": {**_REQUEST_ID, **headers}}
    if media == "application/json":
        response["content"] = {media: {"schema": _schema(schema) if schema else {"type": "object"}}}
    else:
        response["content"] = {media: {"schema": {"type": "string"}}}
    return response


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
             413: "PayloadTooLarge", 415: "UnsupportedMediaType", 422: "Unprocessable", 429: "TooManyRequests",
             503: "ServiceUnavailable"}
    return {str(code): _ref("responses", names[code]) for code in codes}


def _json_body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _schema(schema)}}}


_SESSION_HEADERS = {"Set-Cookie": _ref("headers", "Set-Cookie"), **_RATE_LIMIT_HEADERS}
_TRANSFER_HEADERS = {"Idempotent-Replayed": _ref("headers", "Idempotent-Replayed")}

#: endpoint -> method -> operation. Paths and path parameters are added from the URL map.
OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "ops.welcome": {"get": {
        "tags": ["operations"], "operationId": "welcome", "summary": "Welcome text", "security": PUBLIC,
        "description": "`text/plain` unless the client prefers `text/html` (a browser), which gets the same "
                       "sentence with links to `/api/docs` and `/api/openapi.json`.",
        "responses": {"200": {**_ok("`Welcome to the banking app`", media="text/plain"),
                              "content": {"text/plain": {"schema": {"type": "string"}},
                                          "text/html": {"schema": {"type": "string"}}}}},
    }},
    "ops.live": {"get": {
        "tags": ["operations"], "operationId": "health", "summary": "Liveness", "security": PUBLIC,
        "responses": {"200": _ok("The process runs.", "Health")},
    }},
    "ops.ready": {"get": {
        "tags": ["operations"], "operationId": "ready", "summary": "Readiness", "security": PUBLIC,
        "description": "Ready when the database answers, is a replica set with a primary (or the embedded "
                       "engine) and the indexes exist.",
        "responses": {"200": _ok("Ready.", "Readiness"), "503": _ok("Not ready; `error` says why.", "Readiness")},
    }},
    "ops.prometheus": {"get": {
        "tags": ["operations"], "operationId": "metrics", "summary": "Prometheus metrics", "security": PUBLIC,
        "responses": {"200": _ok("Prometheus text exposition format 0.0.4.", media="text/plain")},
    }},
    "openapi.document": {"get": {
        "tags": ["operations"], "operationId": "openapi", "summary": "This OpenAPI document", "security": PUBLIC,
        "responses": {"200": _ok("OpenAPI 3.0 document.")},
    }},
    "docs.page": {"get": {
        "tags": ["operations"], "operationId": "apiDocs", "summary": "Interactive documentation (Swagger UI)",
        "security": PUBLIC,
        "description": "An HTML page rendering this document; \"Try it out\" calls this server. Its assets are "
                       "served by this server (no CDN); its Content-Security-Policy allows this origin only.",
        "responses": {"200": _ok("The HTML page.", media="text/html")},
    }},
    "docs.asset": {"get": {
        "tags": ["operations"], "operationId": "apiDocsAsset", "summary": "A file of the documentation page",
        "security": PUBLIC,
        "parameters": [{"name": "v", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "The file's content hash (its ETag). When it matches, the answer is "
                                       "`Cache-Control: public, max-age=31536000, immutable`; otherwise "
                                       "`no-cache`."}],
        "responses": {"200": {"description": "The file.", "headers": {**_REQUEST_ID, "ETag": {"schema": {
                                  "type": "string"}}, "Cache-Control": {"schema": {"type": "string"}}},
                              "content": {media: {"schema": {"type": "string"}}
                                          for media in ("text/javascript", "text/css", "image/png")}},
                      "304": {"description": "Not modified (If-None-Match named the current ETag).",
                              "headers": _REQUEST_ID},
                      **_errors(404)},
    }},
    "auth.register": {"post": {
        "tags": ["auth"], "operationId": "register", "summary": "Create a user and log in", "security": PUBLIC,
        "description": "Rate-limited per client address and per email (RATELIMIT_REGISTER).",
        "requestBody": _json_body("RegisterRequest"),
        "responses": {"201": _ok("Registered; the token is also set as the `token` cookie.", "Session",
                                 **_SESSION_HEADERS),
                      **_errors(400, 413, 415, 422, 429, 503)},
    }},
    "auth.login": {"post": {
        "tags": ["auth"], "operationId": "login", "summary": "Log in", "security": PUBLIC,
        "description": "Email is trimmed and lower-cased. Unknown email and wrong password get the same 401 "
                       "and take the same time. Rate-limited per client address and per email "
                       "(RATELIMIT_LOGIN).",
        "requestBody": _json_body("LoginRequest"),
        "responses": {"200": _ok("Logged in; the token is also set as the `token` cookie.", "Session",
                                 **_SESSION_HEADERS),
                      **_errors(400, 401, 413, 415, 429, 503)},
    }},
    "auth.logout": {"post": {
        "tags": ["auth"], "operationId": "logout", "summary": "Revoke the presented token(s)",
        "description": "Idempotent. An invalid or expired token is a 200 with nothing to revoke. Revocation "
                       "lasts until the token's own expiry.",
        "security": [*AUTHENTICATED, {}],
        "responses": {"200": _ok("Logged out; the cookie is cleared (`Max-Age=0`).", "Message",
                                 **{"Set-Cookie": _ref("headers", "Set-Cookie")}),
                      "400": _error("`No token found`."), **_errors(503)},
    }},
    "accounts.create_account": {"post": {
        "tags": ["accounts"], "operationId": "createAccount", "summary": "Open an account (balance 0, ACTIVE)",
        "requestBody": _json_body("AccountRequest", required=False),
        "responses": {"201": _ok("Opened.", "AccountResponse"), **_errors(400, 401, 413, 415, 503)},
    }},
    "accounts.list_accounts": {"get": {
        "tags": ["accounts"], "operationId": "listAccounts", "summary": "The caller's accounts",
        "responses": {"200": _ok("The caller's accounts.", "AccountList"), **_errors(401, 503)},
    }},
    "accounts.list_accounts_of_user": {"get": {
        "tags": ["accounts"], "operationId": "listAccountsOfUser", "summary": "A user's accounts (the caller only)",
        "responses": {"200": _ok("The caller's accounts.", "AccountList"),
                      "404": _error("Any id but the caller's own (never another user's data)."),
                      **_errors(401, 503)},
    }},
    "accounts.get_balance": {"get": {
        "tags": ["accounts"], "operationId": "getBalance", "summary": "An account's balance (now, or at an instant)",
        "parameters": [{"name": "at", "in": "query", "required": False,
                        "schema": {"type": "string", "format": "date-time"},
                        "description": "An ISO-8601 instant with its zone (`2026-03-01T10:00:00.000Z`): the "
                                       "balance right after the last entry at or before it (0 before the first). "
                                       "Malformed or in the future: 400."}],
        "responses": {"200": _ok("The balance.", "BalanceResponse"), **_errors(400, 401, 404, 503)},
    }},
    "accounts.list_entries": {"get": {
        "tags": ["ledger"], "operationId": "listEntries", "summary": "The account's ledger entries, newest first",
        "description": "Keyset-paginated on the account's sequence number: every entry exactly once across the "
                       "pages, even while transfers land (new entries appear on a fresh first page).",
        "parameters": [
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "The previous page's `nextCursor`; any other value (or another account's) is a 400."},
        ],
        "responses": {"200": _ok("One page.", "EntriesPage"),
                      "400": _error("A malformed account id, a bad limit or a cursor we did not issue for this "
                                    "account."),
                      **_errors(401, 404, 503)},
    }},
    "accounts.get_statement": {"get": {
        "tags": ["ledger"], "operationId": "getStatement", "summary": "A statement for whole UTC days",
        "description": "`openingBalance + totalCredits - totalDebits == closingBalance` exactly. With "
                       "`Accept: text/csv` the same entries as CSV (a header row, one row per entry, "
                       "`Content-Disposition: attachment`).",
        "parameters": [
            {"name": "from", "in": "query", "required": True, "schema": {"type": "string", "format": "date"}},
            {"name": "to", "in": "query", "required": True, "schema": {"type": "string", "format": "date"},
             "description": "Inclusive; from <= to, at most 366 days."},
        ],
        "responses": {"200": {"description": "The statement.", "headers": dict(_REQUEST_ID),
                              "content": {"application/json": {"schema": _schema("Statement")},
                                          "text/csv": {"schema": {"type": "string"}}}},
                      "400": _error("A malformed account id, a missing, malformed or impossible date, from after "
                                    "to, or more than 366 days."),
                      **_errors(401, 404, 503)},
    }},
    "accounts.get_account": {"get": {
        "tags": ["accounts"], "operationId": "getAccount", "summary": "One of the caller's accounts",
        "responses": {"200": _ok("The account.", "AccountResponse"), **_errors(401, 404, 503)},
    }},
    "accounts.change_account_status": {"patch": {
        "tags": ["accounts"], "operationId": "changeAccountStatus",
        "summary": "Close an account (owner) or freeze/unfreeze it (system user)",
        "description": "A frozen or closed account neither sends nor receives. Setting the status an account "
                       "already has is a 200 (closing excepted: closed is final, so any change after it is a "
                       "409).",
        "requestBody": _json_body("AccountStatusRequest"),
        "responses": {"200": _ok("The account's new status.", "AccountStatusResponse"),
                      "400": _error("A malformed id, a missing or unknown status, a non-zero balance or held "
                                    "funds on close, a system account."),
                      "403": _error("Freezing or unfreezing by anyone but the system user; closing by anyone "
                                    "but the owner."),
                      "404": _error("No such account, or not visible to the caller."),
                      "409": _error("The account is closed (final), or frozen when its owner closes it."),
                      **_errors(401, 413, 415, 503)},
    }},
    "transactions.create_transaction": {"post": {
        "tags": ["transactions"], "operationId": "createTransaction", "summary": "Transfer between accounts",
        "description": "Exactly once per (caller, idempotencyKey). A replay answers with the first attempt's "
                       "status and body plus `Idempotent-Replayed: true`; business rejections (insufficient "
                       "funds, inactive account, currency mismatch) are recorded and replayed too. "
                       "Rate-limited per user (RATELIMIT_TRANSFER).",
        "parameters": [IDEMPOTENCY_KEY_HEADER],
        "requestBody": _json_body("TransferRequest"),
        "responses": {"200": _ok("Completed, or a replay of a completed transfer (`Transaction already "
                                 "processed`).", "TransactionResponse", **_TRANSFER_HEADERS, **_RATE_LIMIT_HEADERS),
                      "400": _error("Missing fields, bad types or ids, a bad amount, the same account twice, "
                                    "`One or both accounts not found` (also when fromAccount is not the "
                                    "caller's), inactive accounts, a currency mismatch or insufficient balance.",
                                    **_TRANSFER_HEADERS),
                      **_errors(401, 409, 413, 415, 422, 429, 503)},
    }},
    "transactions.get_transaction": {"get": {
        "tags": ["transactions"], "operationId": "getTransaction",
        "summary": "One transaction, for its initiator or the owner of either account",
        "responses": {"200": _ok("The transaction.", "TransactionEnvelope"),
                      "400": _error("A malformed transaction id."),
                      "404": _error("`Transaction not found`: absent or not visible to the caller."),
                      **_errors(401, 503)},
    }},
    "ledger.verify": {"get": {
        "tags": ["ledger"], "operationId": "verifyLedger", "summary": "Prove the ledger (system user only)",
        "description": "Every hash-chain link and hash, sequences, running balances, stored balances, "
                       "transactions' entries and per-currency sums (docs/hash-chain.md). 200 whether or not "
                       "problems were found; `ok` says which.",
        "responses": {"200": _ok("The verification report.", "VerifyReport"), **_errors(401, 403, 503)},
    }},
    "transactions.create_initial_funds": {"post": {
        "tags": ["transactions"], "operationId": "createInitialFunds",
        "summary": "Fund an account from the system account (system user only)",
        "parameters": [IDEMPOTENCY_KEY_HEADER],
        "requestBody": _json_body("FundingRequest"),
        "responses": {"201": _ok("Funded, or a replay of that funding.", "TransactionResponse",
                                 **_TRANSFER_HEADERS),
                      "400": _error("Missing fields, bad types, a bad amount, `Account not found` or an "
                                    "inactive target.", **_TRANSFER_HEADERS),
                      **_errors(401, 403, 409, 413, 415, 422, 503)},
    }},
    "transactions.reverse_transaction": {"post": {
        "tags": ["transactions"], "operationId": "reverseTransaction",
        "summary": "Reverse a completed transfer or funding in full (system user only)",
        "description": "One database transaction writes the REVERSAL, both entries, the links both ways and "
                       "the original's REVERSED status. Exactly once per original, whatever the keys; a "
                       "reversal the recipient can no longer cover is recorded FAILED and replayed.",
        "parameters": [IDEMPOTENCY_KEY_HEADER],
        "requestBody": _json_body("ReversalRequest"),
        "responses": {"201": _ok("Reversed, or a replay of that reversal.", "TransactionResponse",
                                 **_TRANSFER_HEADERS),
                      "400": _error("A malformed id or key, or the original recipient no longer holds the "
                                    "amount (insufficient balance, recorded and replayed).", **_TRANSFER_HEADERS),
                      "404": _error("`Transaction not found`."),
                      "409": _error("The original is not a COMPLETED transfer or funding (failed, already "
                                    "reversed, a reversal), or still pending."),
                      **_errors(401, 403, 413, 415, 422, 503)},
    }},
    "accounts.list_holds": {"get": {
        "tags": ["holds"], "operationId": "listAccountHolds", "summary": "The account's unexpired ACTIVE holds",
        "responses": {"200": _ok("Soonest expiry first.", "HoldList"),
                      "400": _error("A malformed id."), **_errors(401, 404, 503)},
    }},
    "holds.create_hold": {"post": {
        "tags": ["holds"], "operationId": "createHold", "summary": "Reserve money on the caller's account",
        "description": "The rules of a transfer, with the funds check against availableBalance. No money "
                       "moves; availableBalance drops by the amount until capture, void or expiry. Idempotent "
                       "per (caller, idempotencyKey); refusals are recorded and replayed.",
        "parameters": [IDEMPOTENCY_KEY_HEADER],
        "requestBody": _json_body("HoldRequest"),
        "responses": {"201": _ok("Held, or a replay of that hold.", "HoldResponse", **_TRANSFER_HEADERS),
                      "400": _error("Missing fields, bad types or ids, a bad amount or expiry, `One or both "
                                    "accounts not found`, inactive accounts, a currency mismatch or "
                                    "insufficient available balance.", **_TRANSFER_HEADERS),
                      **_errors(401, 409, 413, 415, 422, 429, 503)},
    }},
    "holds.capture_hold": {"post": {
        "tags": ["holds"], "operationId": "captureHold", "summary": "Capture all or part of a hold",
        "description": "Exactly once: a HOLD_CAPTURE transfer with ledger entries; a partial capture releases "
                       "the rest. Capture, void and expiry race safely: one wins, the others get 409.",
        "parameters": [IDEMPOTENCY_KEY_HEADER],
        "requestBody": _json_body("CaptureRequest"),
        "responses": {"200": _ok("Captured, or a replay of that capture.", "CaptureResponse",
                                 **_TRANSFER_HEADERS),
                      "400": _error("A malformed id or key, more than held, an inactive account."),
                      "404": _error("`Hold not found` (or not the caller's)."),
                      "409": _error("The hold is no longer ACTIVE: `Hold is CAPTURED|VOIDED|EXPIRED`."),
                      **_errors(401, 413, 415, 422, 429, 503)},
    }},
    "holds.void_hold": {"post": {
        "tags": ["holds"], "operationId": "voidHold", "summary": "Release a hold",
        "responses": {"200": _ok("Voided.", "HoldResponse"),
                      "400": _error("A malformed id."),
                      "404": _error("`Hold not found` (or not the caller's)."),
                      "409": _error("The hold is no longer ACTIVE: `Hold is CAPTURED|VOIDED|EXPIRED`."),
                      **_errors(401, 503)},
    }},
    "holds.get_hold": {"get": {
        "tags": ["holds"], "operationId": "getHold", "summary": "A hold (owner of either account)",
        "responses": {"200": _ok("The hold.", "HoldResponse"),
                      "400": _error("A malformed id."), **_errors(401, 404, 503)},
    }},
}

_PATH_PARAMETER_SCHEMAS = {"account_id": _schema("ObjectId"), "user_id": _schema("ObjectId"),
                           "asset_name": {"type": "string", "enum": list(docs.ASSET_NAMES)},
                           "transaction_id": _schema("ObjectId"), "hold_id": _schema("ObjectId")}


# ----------------------------------------------------------------------------------------- building


def openapi_path(rule: Rule) -> str:
    """``/api/accounts/<account_id>`` -> ``/api/accounts/{account_id}``."""
    return _CONVERTER.sub(r"{\1}", rule.rule)


def documented_methods(rule: Rule) -> set[str]:
    return {m.lower() for m in (rule.methods or set()) - _IGNORED_METHODS}


def undocumented_routes(app: Flask) -> list[str]:
    """``METHOD path`` of every route the document leaves out (should be none)."""
    missing = []
    for rule in app.url_map.iter_rules():
        operations = OPERATIONS.get(rule.endpoint, {})
        missing += [f"{m.upper()} {rule.rule}" for m in sorted(documented_methods(rule)) if m not in operations]
    return missing


def build_spec(app: Flask) -> dict[str, Any]:
    spec = APISpec(
        title="Banking Ledger API",
        version=str(app.config.get("API_VERSION", "1.0.0")),
        openapi_version=OPENAPI_VERSION,
        info={"description": (
            "A double-entry banking ledger, drop-in compatible with the Node.js service. Money is a JSON number "
            "in major units; ids are 24-hex ObjectIds; every error is `{message, status: \"failed\"}`. Any "
            "method a path does not list answers 405 with `Allow`; unknown paths answer 404. Bodies over "
            "100 KB answer 413, JSON nested deeper than 32 levels answers 400. Every response carries "
            "X-Request-ID; every /api response but the files of `/api/docs` carries `Cache-Control: no-store`."
        )},
        tags=[{"name": "auth"}, {"name": "accounts"}, {"name": "transactions"}, {"name": "holds"}, {"name": "ledger"},
              {"name": "operations"}],
        security=AUTHENTICATED,
    )
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema)
    for name, header in HEADERS.items():
        spec.components.header(name, header)
    for name, response in RESPONSES.items():
        spec.components.response(name, response)
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)

    paths: dict[str, dict[str, Any]] = {}
    parameters: dict[str, list[dict[str, Any]]] = {}
    operation_ids: set[str] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        operations = OPERATIONS.get(rule.endpoint, {})
        path = openapi_path(rule)
        for method in sorted(documented_methods(rule)):
            if method not in operations:
                continue
            operation = dict(operations[method])
            if operation["operationId"] in operation_ids:
                # A second path for the same view (POST /api/accounts/create): same operation, its own id.
                operation["operationId"] += "Via" + path.rstrip("/").rsplit("/", 1)[-1].title()
            operation_ids.add(operation["operationId"])
            paths.setdefault(path, {})[method] = operation
        parameters[path] = [{"name": arg, "in": "path", "required": True,
                             "schema": _PATH_PARAMETER_SCHEMAS.get(arg, {"type": "string"})}
                            for arg in sorted(rule.arguments)]
    for path, operations in paths.items():
        spec.path(path=path, operations=operations, parameters=parameters[path] or None)
    return spec.to_dict()


@bp.get("/api/openapi.json")
def document():
    cached = current_app.extensions.get("ledger.openapi")
    if cached is None:
        cached = current_app.extensions["ledger.openapi"] = build_spec(current_app)
    return jsonify(cached)
