"""``/api/auth``: register, login, logout (the Node service's auth controller)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ledger import ratelimit
from ledger.api.contract import OPTIONAL_AUTH, PUBLIC, RATE_LIMITED, body, declare, error, errors, ok
from ledger.api.schemas import LoginRequest, Message, RegisterRequest, Session
from ledger.errors import NoTokenToRevoke
from ledger.security import clear_token_cookie, presented_tokens, set_token_cookie
from ledger.services import auth as auth_service

bp = Blueprint("auth", __name__)


def _session_response(user: dict, token: str, status: int):
    response = jsonify({"user": auth_service.public_user(user), "token": token})
    response.status_code = status
    set_token_cookie(response, token)
    return response


_SESSION_HEADERS = ("Set-Cookie", *RATE_LIMITED)


@bp.post("/register")
@declare("register", tag="auth", summary="Create a user and log in", security=PUBLIC,
         description="Rate-limited per client address and per email (RATELIMIT_REGISTER).",
         body=RegisterRequest,
         responses={201: ok("Registered; the token is also set as the `token` cookie.", Session, *_SESSION_HEADERS),
                    **errors(400, 413, 415, 422, 429, 503)})
@ratelimit.register_per_address
@ratelimit.register_per_email
def register():
    registration = body()
    user, token = auth_service.register(registration.email, registration.password, registration.name)
    return _session_response(user, token, 201)


@bp.post("/login")
@declare("login", tag="auth", summary="Log in", security=PUBLIC,
         description="Email is trimmed and lower-cased. Unknown email and wrong password get the same 401 and "
                     "take the same time. Rate-limited per client address and per email (RATELIMIT_LOGIN).",
         body=LoginRequest,
         responses={200: ok("Logged in; the token is also set as the `token` cookie.", Session, *_SESSION_HEADERS),
                    **errors(400, 401, 413, 415, 429, 503)})
@ratelimit.login_per_address
@ratelimit.login_per_email
def login():
    credentials = body()
    user, token = auth_service.authenticate(credentials.email, credentials.password)
    return _session_response(user, token, 200)


@bp.post("/logout")
@declare("logout", tag="auth", summary="Revoke the presented token(s)", security=OPTIONAL_AUTH,
         description="Idempotent. An invalid or expired token is a 200 with nothing to revoke. Revocation lasts "
                     "until the token's own expiry.",
         responses={200: ok("Logged out; the cookie is cleared (`Max-Age=0`).", Message, "Set-Cookie"),
                    400: error("`No token found`."), **errors(503)})
def logout():
    tokens = presented_tokens()
    if not tokens:
        raise NoTokenToRevoke()
    auth_service.revoke(tokens)
    response = jsonify({"message": "User logged out successfully"})
    clear_token_cookie(response)
    return response
