"""``/api/auth``: register, login, logout (the Node service's auth controller)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ledger import ratelimit, validation
from ledger.errors import NoTokenToRevoke, ValidationFailed
from ledger.jsonio import json_body
from ledger.security import clear_token_cookie, presented_tokens, set_token_cookie
from ledger.services import auth as auth_service

bp = Blueprint("auth", __name__)


def _session_response(user: dict, token: str, status: int):
    response = jsonify({"user": auth_service.public_user(user), "token": token})
    response.status_code = status
    set_token_cookie(response, token)
    return response


@bp.post("/register")
@ratelimit.register_per_address
@ratelimit.register_per_email
def register():
    body = json_body()
    for field in ("email", "password", "name"):
        if validation.is_missing(body.get(field)):
            raise ValidationFailed(f"{field} is required", errors={field: f"{field} is required"})
    email = validation.email(body.get("email"))
    password = validation.password(body.get("password"))
    name = validation.name(body.get("name"))
    user, token = auth_service.register(email, password, name)
    return _session_response(user, token, 201)


@bp.post("/login")
@ratelimit.login_per_address
@ratelimit.login_per_email
def login():
    body = json_body()
    for field in ("email", "password"):
        if validation.is_missing(body.get(field)):
            raise ValidationFailed(f"{field} is required", errors={field: f"{field} is required"})
    if not isinstance(body.get("email"), str):
        raise ValidationFailed("email must be a string", errors={"email": "email must be a string"})
    password = validation.login_password(body.get("password"))
    user, token = auth_service.authenticate(body["email"].strip().lower(), password)
    return _session_response(user, token, 200)


@bp.post("/logout")
def logout():
    tokens = presented_tokens()
    if not tokens:
        raise NoTokenToRevoke()
    auth_service.revoke(tokens)
    response = jsonify({"message": "User logged out successfully"})
    clear_token_cookie(response)
    return response
