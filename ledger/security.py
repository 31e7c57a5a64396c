"""Passwords, tokens and the flask-jwt-extended wiring.

Tokens are HS256 JWTs with the Node service's claim ``userId`` plus ``iat``, ``exp`` and ``jti``. Tokens the
Node service minted (``{userId, iat, exp}``, no ``jti``) are accepted and revocable, because revocation is
keyed on a SHA-256 hash of the token string itself, not on ``jti``. Every failure answers with the Node
service's exact 401 messages through our error envelope; flask-jwt-extended's own 422s never escape.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import bcrypt
from flask import Flask, current_app, request
from flask_jwt_extended import JWTManager

from ledger.errors import TokenBlacklisted, TokenInvalid, TokenMissing, error_response

jwt = JWTManager()

_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
# An authentication scheme is case-insensitive (RFC 9110 11.1); flask-jwt-extended compares "Bearer" exactly.
_BEARER_SCHEME = re.compile(r"(^|,)(\s*)bearer(?=\s)", re.IGNORECASE)

# A fixed hash to compare against when the email is unknown, so login takes the same time either way.
_DUMMY_HASH_CACHE: dict[int, bytes] = {}


# ------------------------------------------------------------------------------------------ passwords


def hash_password(plain: str, rounds: int | None = None) -> str:
    rounds = rounds or current_app.config["BCRYPT_ROUNDS"]
    return bcrypt.hashpw(plain.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def verify_password(plain: str, hashed: str | None) -> bool:
    """Check ``plain`` against a bcrypt hash (``$2a$``/``$2b$``/``$2y$``); always spends one bcrypt check."""
    candidate = plain.encode("utf-8")
    if len(candidate) > 72:
        candidate = b""  # never valid: registration refuses passwords over 72 bytes
    if not hashed:
        rounds = current_app.config["BCRYPT_ROUNDS"]
        dummy = _DUMMY_HASH_CACHE.get(rounds)
        if dummy is None:
            dummy = _DUMMY_HASH_CACHE[rounds] = bcrypt.hashpw(b"dummy-password", bcrypt.gensalt(rounds))
        bcrypt.checkpw(candidate or b"x", dummy)
        return False
    try:
        # An over-long password still spends its check, or its speed would tell which emails exist.
        matched = bcrypt.checkpw(candidate or b"x", hashed.encode("ascii"))
    except ValueError:
        return False
    return matched and bool(candidate)


# ------------------------------------------------------------------------------------------ tokens


def token_hash(encoded: str) -> str:
    """What the blocklist stores: a SHA-256 of the token, so a database reader cannot replay it."""
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _bearer_token() -> str | None:
    """The token flask-jwt-extended reads from ``Authorization``, parsed by the same rules."""
    header = request.headers.get("Authorization", "").strip().strip(",")
    if not header:
        return None
    fields = [f for f in re.split(r",\s*", header) if f and f.split()[0] == "Bearer"]
    if len(fields) != 1:
        return None
    parts = fields[0].split()
    return parts[1] if len(parts) == 2 else None


def presented_tokens() -> list[str]:
    """The tokens this request carries, Bearer header first, then the ``token`` cookie."""
    tokens = []
    bearer = _bearer_token()
    if bearer:
        tokens.append(bearer)
    cookie = request.cookies.get(current_app.config["JWT_ACCESS_COOKIE_NAME"])
    if cookie and cookie not in tokens:
        tokens.append(cookie)
    return tokens


def authenticating_token() -> str | None:
    """The token flask-jwt-extended authenticates this request with (the header wins over the cookie)."""
    bearer = _bearer_token()
    if bearer:
        return bearer
    return request.cookies.get(current_app.config["JWT_ACCESS_COOKIE_NAME"]) or None


def set_token_cookie(response: Any, token: str) -> None:
    config = current_app.config
    response.set_cookie(
        config["JWT_ACCESS_COOKIE_NAME"],
        token,
        max_age=int(config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()),
        path="/",
        secure=bool(config["COOKIE_SECURE"]),
        httponly=True,
        samesite="Lax",
    )


def clear_token_cookie(response: Any) -> None:
    config = current_app.config
    response.set_cookie(
        config["JWT_ACCESS_COOKIE_NAME"],
        "",
        max_age=0,
        expires=0,
        path="/",
        secure=bool(config["COOKIE_SECURE"]),
        httponly=True,
        samesite="Lax",
    )


def init_app(app: Flask) -> None:
    """Bind flask-jwt-extended and route all of its failures to the Node service's 401 messages."""
    app.config["JWT_COOKIE_SECURE"] = bool(app.config["COOKIE_SECURE"])
    jwt.init_app(app)

    @app.before_request
    def _normalize_bearer_scheme() -> None:
        # Node clients that send "bearer <jwt>" were accepted there; spell the scheme the way the parser expects.
        header = request.environ.get("HTTP_AUTHORIZATION")
        if header:
            request.environ["HTTP_AUTHORIZATION"] = _BEARER_SCHEME.sub(r"\1\2Bearer", header)

    def missing(_reason: str) -> Any:
        return error_response(TokenMissing.status_code, TokenMissing.message)

    def invalid(*_args: Any) -> Any:
        return error_response(TokenInvalid.status_code, TokenInvalid.message)

    def revoked(*_args: Any) -> Any:
        return error_response(TokenBlacklisted.status_code, TokenBlacklisted.message)

    jwt.unauthorized_loader(missing)
    jwt.invalid_token_loader(invalid)
    jwt.expired_token_loader(invalid)
    jwt.needs_fresh_token_loader(invalid)
    jwt.token_verification_failed_loader(invalid)
    jwt.user_lookup_error_loader(invalid)
    jwt.revoked_token_loader(revoked)

    @jwt.token_in_blocklist_loader
    def _is_revoked(_header: dict, _payload: dict) -> bool:
        from ledger.services import auth as auth_service

        encoded = authenticating_token()
        return encoded is not None and auth_service.is_token_revoked(encoded)

    @jwt.user_lookup_loader
    def _load_user(_header: dict, payload: dict) -> dict | None:
        from ledger.services import auth as auth_service

        user_id = payload.get(app.config["JWT_IDENTITY_CLAIM"])
        if not isinstance(user_id, str) or not _OBJECT_ID.match(user_id):
            return None
        return auth_service.find_user_by_id(user_id)

    @jwt.token_verification_loader
    def _has_expiry(_header: dict, payload: dict) -> bool:
        # A token without exp would never expire: refuse it (the Node service always set exp).
        return isinstance(payload.get("exp"), int | float) and isinstance(payload.get("iat"), int | float)
