"""The system user: the one identity allowed to create money, bootstrapped from configuration or the CLI."""

from __future__ import annotations

import logging
from typing import Any

from pymongo.client_session import ClientSession
from pymongo.errors import DuplicateKeyError

from ledger import db
from ledger.models import Account, User, to_document, utcnow
from ledger.money import DEFAULT_CURRENCY
from ledger.security import hash_password

log = logging.getLogger(__name__)


class SystemUserConflict(RuntimeError):
    """The email belongs to an ordinary user (never silently promoted), or another system user already holds
    the system account of that currency (one system account per currency, one system user in practice)."""


def ensure_system_user(email: str, password: str, name: str, currency: str = DEFAULT_CURRENCY) -> tuple[dict, bool]:
    """Create the system user and its system account once; return ``(user, created)``. Idempotent."""
    database = db.get_db()
    existing = database.users.find_one({"email": email})
    if existing is not None:
        if not existing.get("systemUser"):
            raise SystemUserConflict(f"{email} is an ordinary user; refusing to make it the system user")
        _ensure_system_account(existing, currency)
        return existing, False
    now = utcnow()
    user = to_document(User, email=email, name=name, password=hash_password(password), systemUser=True,
                       createdAt=now, updatedAt=now)
    account = to_document(Account, user=user["_id"], status="ACTIVE", currency=currency, balance=0, seq=0,
                          systemUser=True, systemCurrency=currency, createdAt=now, updatedAt=now)

    def create(session: ClientSession) -> None:
        database.users.insert_one(user, session=session)
        database.accounts.insert_one(account, session=session)

    try:
        db.run_in_transaction(create)
    except DuplicateKeyError as exc:
        winner = database.users.find_one({"email": email})
        if winner is not None and winner.get("systemUser"):  # another worker bootstrapped it at the same moment
            return winner, False
        raise _currency_taken(currency, email) from exc
    return user, True


def _currency_taken(currency: str, email: str) -> SystemUserConflict:
    database = db.get_db()
    holder = database.accounts.find_one({"systemCurrency": currency}, {"user": 1})
    owner = database.users.find_one({"_id": holder["user"]}, {"email": 1}) if holder else None
    owner_email = owner["email"] if owner else "another user"
    return SystemUserConflict(
        f"the {currency} system account already belongs to the system user {owner_email}; refusing to make "
        f"{email} a second one (set SYSTEM_USER_EMAIL back to {owner_email})"
    )


def _ensure_system_account(user: dict[str, Any], currency: str) -> None:
    database = db.get_db()
    if database.accounts.find_one({"user": user["_id"], "systemCurrency": currency}, {"_id": 1}):
        return
    now = utcnow()
    account = to_document(Account, user=user["_id"], status="ACTIVE", currency=currency, balance=0, seq=0,
                          systemUser=True, systemCurrency=currency, createdAt=now, updatedAt=now)
    try:
        database.accounts.insert_one(account)
    except DuplicateKeyError as exc:
        holder = database.accounts.find_one({"systemCurrency": currency}, {"user": 1})
        if holder is None or holder["user"] != user["_id"]:
            raise _currency_taken(currency, user["email"]) from exc
        # else: a concurrent start-up created this user's account first


def bootstrap_from_config(app: Any) -> None:
    """At start-up: create the system user when SYSTEM_USER_EMAIL/PASSWORD/NAME are all set."""
    email = app.config.get("SYSTEM_USER_EMAIL")
    password = app.config.get("SYSTEM_USER_PASSWORD")
    name = app.config.get("SYSTEM_USER_NAME")
    if not (email and password and name):
        if email or password or name:
            log.warning("SYSTEM_USER_EMAIL, SYSTEM_USER_PASSWORD and SYSTEM_USER_NAME must all be set; "
                        "no system user bootstrapped")
        return
    from ledger import validation

    user, created = ensure_system_user(validation.email(email), validation.password(password),
                                       validation.name(name))
    log.info("system user %s %s", user["email"], "created" if created else "already present")
