"""The system user: the one identity allowed to create money, bootstrapped from configuration or the CLI."""

from __future__ import annotations

import contextlib
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
    """The email belongs to an ordinary user; it is never silently promoted."""


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
    except DuplicateKeyError:  # another worker bootstrapped it at the same moment
        return database.users.find_one({"email": email}), False
    return user, True


def _ensure_system_account(user: dict[str, Any], currency: str) -> None:
    database = db.get_db()
    if database.accounts.find_one({"user": user["_id"], "systemCurrency": currency}, {"_id": 1}):
        return
    now = utcnow()
    account = to_document(Account, user=user["_id"], status="ACTIVE", currency=currency, balance=0, seq=0,
                          systemUser=True, systemCurrency=currency, createdAt=now, updatedAt=now)
    with contextlib.suppress(DuplicateKeyError):  # a concurrent start-up created it first
        database.accounts.insert_one(account)


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
