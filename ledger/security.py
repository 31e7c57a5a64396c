"""Passwords, tokens and the flask-jwt-extended wiring.

Tokens are HS256 JWTs with the Node service's claim ``userId`` plus ``iat``, ``exp`` and ``jti``. Tokens the
Node service minted (``{userId, iat, exp}``, no ``jti``) are accepted and revocable, because revocation is
keyed on a SHA-256 hash of the token's *canonical* compact serialisation (each segment's decoded bytes,
re-encoded as unpadded base64url), which every token has, with or without ``jti``.

One token has one accepted spelling. A JWT decoder may accept other strings for the same token (PyJWT takes
a padded signature segment; older versions also took ``+``/``/``, stray characters and non-zero trailing
bits), so a revocation keyed on the string as sent could be sidestepped by re-spelling the token. A token
that is not in canonical form is therefore refused outright (``Unauthorized, token is invalid``), and a
revocation's key is computed from the decoded bytes, so a logout sent with any spelling revokes the token.
For every token we or the Node service issued the canonical form *is* the string, so the hashes stored
before this rule (SHA-256 of the string as sent) remain the keys.

The ``Authorization`` header is parsed here, once, by :func:`parse_authorization`, and rewritten before any
view runs into the single form flask-jwt-extended's parser handles (``Bearer <jwt>``), into one it refuses
(malformed), or removed (no Bearer credentials: the cookie is looked at). flask-jwt-extended and our own code
(logout, the blocklist check) therefore always agree on which token a request carries, and no header value
can reach an exception in either parser. Every failure answers with the Node service's exact 401 messages
through our error envelope; flask-jwt-extended's own 422s never escape.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from typing import Any

import bcrypt
from flask import Flask, current_app, request
from flask.globals import _cv_request
from flask_jwt_extended import JWTManager, get_current_user

from ledger.errors import TokenBlacklisted, TokenInvalid, TokenMissing, error_response

jwt = JWTManager()

_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
_BASE64URL_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# What flask-jwt-extended is shown when the header names Bearer but cannot be read: its parser refuses this
# (three parts) with InvalidHeaderError, which our invalid-token loader answers with a 401.
_MALFORMED_BEARER = "Bearer malformed authorization"

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


def _lenient_segment_bytes(segment: str) -> bytes | None:
    """A segment's bytes as a forgiving base64url decoder reads them (padding, ``+/`` and stray characters)."""
    try:
        data = segment.encode("ascii", errors="ignore")
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return None


def _encode_segment(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def canonical_token(encoded: str) -> str | None:
    """The canonical compact serialisation of ``encoded``: every segment's bytes as unpadded base64url.

    Segments are split the way PyJWT splits them (first ``.`` and last ``.``). ``None`` when a segment does not
    decode at all: such a string is no token.
    """
    header, dot, rest = encoded.partition(".")
    payload, dot2, signature = rest.rpartition(".")
    if not dot or not dot2:
        return None
    decoded = [_lenient_segment_bytes(segment) for segment in (header, payload, signature)]
    if any(raw is None for raw in decoded):
        return None
    return ".".join(_encode_segment(raw) for raw in decoded if raw is not None)


# Pure functions of the token string, asked about the same few tokens on every authenticated request.
_TOKENS_REMEMBERED = 4096


@functools.lru_cache(maxsize=_TOKENS_REMEMBERED)
def is_canonical_token(encoded: str) -> bool:
    """True when ``encoded`` is three non-empty base64url segments, each exactly as re-encoding writes it."""
    segments = encoded.split(".")
    if len(segments) != 3 or not all(_BASE64URL_SEGMENT.fullmatch(segment) for segment in segments):
        return False
    return canonical_token(encoded) == encoded


@functools.lru_cache(maxsize=_TOKENS_REMEMBERED)
def token_hash(encoded: str) -> str:
    """The blocklist key: SHA-256 of the token's canonical serialisation (never the token itself).

    For a token in canonical form (every token we or the Node service minted) this is the SHA-256 of the
    string, which is what the blocklist has always stored; every other spelling maps to the same key.
    """
    canonical = canonical_token(encoded) or encoded
    return hashlib.sha256(canonical.encode("utf-8", errors="surrogatepass")).hexdigest()


def parse_authorization(header: str | None) -> tuple[str, str | None]:
    """Read an ``Authorization`` value: ``("absent", None)``, ``("bearer", token)`` or ``("malformed", None)``.

    The value may list several comma-separated credentials (as flask-jwt-extended allows); blank ones are
    ignored and the scheme is case-insensitive (RFC 9110 11.1). No Bearer credential at all is *absent* (the
    cookie is looked at next); exactly one Bearer credential with exactly one token is that token; anything
    else naming Bearer (no token, extra parts, two Bearer credentials) is *malformed*. Never raises.
    """
    if not header:
        return "absent", None
    bearer = [parts for parts in (field.split() for field in header.split(","))
              if parts and parts[0].lower() == "bearer"]
    if not bearer:
        return "absent", None
    if len(bearer) != 1 or len(bearer[0]) != 2:
        return "malformed", None
    return "bearer", bearer[0][1]


def _bearer_token() -> str | None:
    """The Bearer token of this request's ``Authorization`` header, if it carries exactly one."""
    kind, token = parse_authorization(request.headers.get("Authorization"))
    return token if kind == "bearer" else None


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
    kind, token = parse_authorization(request.headers.get("Authorization"))
    if kind == "bearer":
        return token
    if kind == "malformed":
        return None
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
    def _normalize_authorization() -> None:
        # flask-jwt-extended sees only what parse_authorization read: "Bearer <jwt>" (any scheme case, as Node
        # clients sent it), a value its parser refuses, or no header at all (then it reads the cookie).
        environ = _cv_request.get().request.environ  # the request itself, not through the proxy
        if "HTTP_AUTHORIZATION" not in environ:
            return
        kind, token = parse_authorization(environ["HTTP_AUTHORIZATION"])
        if kind == "bearer":
            environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        elif kind == "malformed":
            environ["HTTP_AUTHORIZATION"] = _MALFORMED_BEARER
        else:
            del environ["HTTP_AUTHORIZATION"]  # request.headers is a live view of the environ

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
        if encoded is None or not is_canonical_token(encoded):
            # Another spelling of a token would sidestep its revocation: one token, one accepted string.
            raise TokenInvalid()
        return auth_service.is_token_revoked(encoded)

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


def caller() -> Any:
    """The authenticated user's document, for views under ``@jwt_required()``.

    flask-jwt-extended's ``current_user`` is a proxy that resolves the document again (through the request
    context and ``get_current_user``, no database call) on every item read; the services read the caller's
    fields many times per request, so views hand them the document itself.
    """
    return get_current_user()
