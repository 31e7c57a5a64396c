"""Domain errors and the one JSON error envelope for every failure path.

Services raise the errors below, named for the rule that was broken. This module is the one place that maps
them, routing errors, oversized bodies and unexpected exceptions to HTTP: every error leaves as
``{"message": ..., "status": "failed"}`` (optionally with ``"errors": {field: text}``), never as an HTML page,
a stack trace or a database driver's text.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from flask_limiter.errors import RateLimitExceeded
from pymongo.errors import ConnectionFailure, PyMongoError
from werkzeug.exceptions import HTTPException

from ledger.db import DatabaseUnavailable

log = logging.getLogger(__name__)


class LedgerError(Exception):
    """Base of every error with a meaning for the client."""

    status_code = 400
    message = "Bad request"
    replayed = False  # True when this is an idempotent replay of a recorded outcome

    def __init__(self, message: str | None = None, *, errors: dict[str, str] | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.errors = errors

    def headers(self) -> dict[str, str]:
        return {"Idempotent-Replayed": "true"} if self.replayed else {}


# ---------------------------------------------------------------------------------- input and auth


class ValidationFailed(LedgerError):
    status_code = 400
    message = "Invalid request"


class UnsupportedMediaType(LedgerError):
    status_code = 415
    message = "Content-Type must be application/json"


class EmailAlreadyExists(LedgerError):
    status_code = 422
    message = "Email already exists in the database"


class InvalidCredentials(LedgerError):
    status_code = 401
    message = "Invalid email or password"


class TokenMissing(LedgerError):
    status_code = 401
    message = "Unauthorized, token is missing"


class TokenInvalid(LedgerError):
    status_code = 401
    message = "Unauthorized, token is invalid"


class TokenBlacklisted(LedgerError):
    status_code = 401
    message = "Unauthorized, token is blacklisted"


class NotSystemUser(LedgerError):
    status_code = 403
    message = "Forbidden, user is not a system user"


class NoTokenToRevoke(LedgerError):
    status_code = 400
    message = "No token found"


# ------------------------------------------------------------------------------- accounts and money


class AccountNotFound(LedgerError):
    status_code = 404
    message = "Account not found"


class TransactionNotFound(LedgerError):
    status_code = 404
    message = "Transaction not found"


class TransferAccountNotFound(LedgerError):
    """A transfer names an account that is absent, or a source the caller does not own."""

    status_code = 400
    message = "One or both accounts not found"


class FundingTargetNotFound(LedgerError):
    status_code = 400
    message = "Account not found"


class BusinessRejection(LedgerError):
    """A rule refused the transfer; the attempt is recorded as FAILED and replayed identically."""

    status_code = 400
    code = "REJECTED"

    def as_failure(self) -> dict[str, object]:
        """What the FAILED transaction record stores, so a replay can answer identically."""
        return {"code": self.code, "message": self.message, "httpStatus": self.status_code}

    @classmethod
    def replay_of(cls, failure: dict[str, object]) -> BusinessRejection:
        error = cls(str(failure.get("message") or cls.message))
        error.status_code = int(failure.get("httpStatus") or 400)  # type: ignore[arg-type]
        error.code = str(failure.get("code") or cls.code)
        error.replayed = True
        return error


class AccountsInactive(BusinessRejection):
    message = "Both accounts must be active to process the transaction"
    code = "ACCOUNT_INACTIVE"


class TargetAccountInactive(BusinessRejection):
    message = "Account must be active to receive funds"
    code = "ACCOUNT_INACTIVE"


class CurrencyMismatch(BusinessRejection):
    message = "Currency mismatch: both accounts must use the same currency"
    code = "CURRENCY_MISMATCH"


class InsufficientFunds(BusinessRejection):
    code = "INSUFFICIENT_FUNDS"


class AccountStatusConflict(LedgerError):
    """The account's current status does not allow the requested change (closed is final)."""

    status_code = 409
    message = "Account is closed"


class AccountNotClosable(LedgerError):
    status_code = 400
    message = "Account cannot be closed"


class OwnerOnly(LedgerError):
    status_code = 403
    message = "Forbidden, only the account owner may close it"


class TransactionNotReversible(LedgerError):
    status_code = 409
    message = "Transaction cannot be reversed"


class HoldNotFound(LedgerError):
    status_code = 404
    message = "Hold not found"


class HoldConflict(LedgerError):
    """Capture, void and expiry race: the loser hears the status that won."""

    status_code = 409
    message = "Hold is no longer active"


class IdempotencyConflict(LedgerError):
    status_code = 422
    message = "idempotencyKey was already used with a different request"


class TransactionPending(LedgerError):
    status_code = 409
    message = "Transaction is still pending"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Retry-After": "1"}


class ServiceUnavailable(LedgerError):
    status_code = 503
    message = "Service temporarily unavailable, please retry"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Retry-After": "2"}


# ------------------------------------------------------------------------------------- rendering


_HTTP_MESSAGES = {
    400: "Bad request",
    404: "Route not found",
    405: "Method not allowed",
    413: "Request body is too large (limit 100 KB)",
    415: "Content-Type must be application/json",
    429: "Too many requests, please retry later",
}


def error_response(status: int, message: str, errors: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"message": message, "status": "failed"}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Route every failure of the app through :func:`error_response`."""

    @app.errorhandler(LedgerError)
    def _ledger_error(exc: LedgerError) -> Response:
        return error_response(exc.status_code, exc.message, exc.errors, exc.headers())

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = _HTTP_MESSAGES.get(status) or exc.name
        headers = {}
        valid_methods = getattr(exc, "valid_methods", None)
        if status == 405 and valid_methods:
            headers["Allow"] = ", ".join(sorted(valid_methods))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            headers["Retry-After"] = str(retry_after)
        if status == 429 and not isinstance(exc, RateLimitExceeded) and "Retry-After" not in headers:
            headers["Retry-After"] = "60"  # flask-limiter's own 429s get the exact value in its after-request hook
        return error_response(status, message, headers=headers)

    @app.errorhandler(DatabaseUnavailable)
    def _database_not_ready(exc: DatabaseUnavailable) -> Response:
        # No primary, indexes not in place yet, or transaction retries exhausted: a retry later will do.
        log.warning("database unavailable: %s", exc)
        return error_response(503, ServiceUnavailable.message, headers={"Retry-After": "2"})

    @app.errorhandler(ConnectionFailure)
    def _database_unreachable(exc: ConnectionFailure) -> Response:
        log.error("database unreachable: %s", type(exc).__name__)
        return error_response(503, ServiceUnavailable.message, headers={"Retry-After": "2"})

    @app.errorhandler(PyMongoError)
    def _database_error(exc: PyMongoError) -> Response:
        log.exception("database error")
        return error_response(500, "Internal server error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):  # pragma: no cover - handled above
            return _http_error(exc)
        log.exception("unhandled error")
        return error_response(500, "Internal server error")
