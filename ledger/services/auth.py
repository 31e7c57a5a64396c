"""Registration, login, logout and token revocation."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from flask import current_app
from flask_jwt_extended import create_access_token, decode_token
from pymongo.client_session import ClientSession
from pymongo.errors import DuplicateKeyError

from ledger import db
from ledger.errors import EmailAlreadyExists, InvalidCredentials, ServiceUnavailable
from ledger.models import TokenBlacklist, User, to_document, utcnow
from ledger.security import hash_password, token_hash, verify_password
from ledger.services import notifications

log = logging.getLogger(__name__)

REVOCATION_CLOCK_MARGIN = timedelta(minutes=5)

PUBLIC_USER_FIELDS = {"_id": 1, "email": 1, "name": 1, "systemUser": 1}


def public_user(user: dict[str, Any]) -> dict[str, Any]:
    """What a client may see of a user: never the password hash."""
    return {"_id": str(user["_id"]), "email": user["email"], "name": user["name"]}


def issue_token(user_id: ObjectId | str) -> str:
    return create_access_token(identity=str(user_id))


def register(email: str, password: str, name: str) -> tuple[dict[str, Any], str]:
    """Create a user (and its welcome email, in the same transaction); return it with a fresh token."""
    db.require_indexes()  # the unique email index is what makes a concurrent duplicate a 422
    password_hash = hash_password(password)
    now = utcnow()
    user = to_document(User, email=email, name=name, password=password_hash, systemUser=False,
                       createdAt=now, updatedAt=now)

    def create(session: ClientSession) -> None:
        database = db.get_db()
        database.users.insert_one(user, session=session)
        notifications.enqueue(session, [notifications.welcome(user)])

    try:
        db.run_in_transaction(create)
    except DuplicateKeyError as exc:
        raise EmailAlreadyExists() from exc
    return user, issue_token(user["_id"])


def authenticate(email: str, password: str) -> tuple[dict[str, Any], str]:
    """Check credentials; the same error (and the same bcrypt cost) for an unknown email and a wrong password."""
    db.require_indexes()  # a token handed out before the blocklist's indexes exist could not be revoked safely
    user = db.get_db().users.find_one({"email": email}, {"_id": 1, "email": 1, "name": 1, "password": 1})
    if not verify_password(password, user.get("password") if user else None) or user is None:
        raise InvalidCredentials()
    return user, issue_token(user["_id"])


def find_user_by_id(user_id: str) -> dict[str, Any] | None:
    return db.get_db().users.find_one({"_id": ObjectId(user_id)}, PUBLIC_USER_FIELDS)


def is_token_revoked(encoded: str) -> bool:
    return db.get_db().tokenblacklists.find_one({"tokenHash": token_hash(encoded)}, {"_id": 1}) is not None


def revoke(encoded_tokens: list[str]) -> int:
    """Blocklist every valid token given until its own expiry; invalid or expired ones need nothing.

    Idempotent: revoking a revoked token is a no-op. Returns how many tokens were newly revoked. Any spelling of
    a token revokes the token (the key is computed from its canonical form, see :func:`token_hash`).
    """
    db.require_indexes()  # the unique tokenHash index is what makes a concurrent double logout harmless
    revoked = 0
    for encoded in encoded_tokens:
        try:
            payload = decode_token(encoded, allow_expired=False)
        except Exception:  # noqa: BLE001, S112 - an invalid or expired token has nothing left to revoke
            continue
        # The TTL monitor deletes by the database server's clock, the token expires by ours: a margin keeps a
        # clock skew between them from ending a revocation before the token itself expires.
        expires_at = datetime.fromtimestamp(int(payload["exp"]), tz=UTC) + REVOCATION_CLOCK_MARGIN
        identity = payload.get(current_app.config["JWT_IDENTITY_CLAIM"])
        entry = to_document(TokenBlacklist, tokenHash=token_hash(encoded), expiresAt=expires_at,
                            userId=str(identity) if identity is not None else None, createdAt=utcnow())
        entry.pop("_id")
        try:
            result = db.get_db().tokenblacklists.update_one(
                {"tokenHash": entry["tokenHash"]}, {"$setOnInsert": entry}, upsert=True
            )
        except DuplicateKeyError as exc:
            if not _is_token_hash_violation(exc):
                # Another unique index (the Node service's unique `token`, before migration) refused the entry:
                # the token is NOT revoked, so logout must not say it is.
                log.error("a unique index other than tokenHash refused a revocation: %s", exc.details)
                raise ServiceUnavailable() from exc
            continue  # a concurrent logout of the same token won the upsert
        revoked += 1 if result.upserted_id is not None else 0
    return revoked


def _is_token_hash_violation(exc: DuplicateKeyError) -> bool:
    details = exc.details or {}
    pattern = details.get("keyPattern")
    if pattern:
        return set(pattern) == {"tokenHash"}
    return "tokenHash_1" in str(details.get("errmsg", "")) or "tokenHash_1" in str(exc)
