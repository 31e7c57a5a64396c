"""Opening and reading accounts. Every read is scoped to the owner: another user's account does not exist."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from ledger import db
from ledger.errors import AccountNotFound
from ledger.models import Account, to_document, utcnow

ACCOUNT_FIELDS = {"_id": 1, "user": 1, "status": 1, "currency": 1, "balance": 1, "createdAt": 1, "updatedAt": 1}


def open_account(owner_id: ObjectId, currency: str) -> dict[str, Any]:
    """A new ACTIVE account with a zero balance (a single-document write)."""
    now = utcnow()
    account = to_document(Account, user=owner_id, status="ACTIVE", currency=currency, balance=0, seq=0,
                          createdAt=now, updatedAt=now)
    db.get_db().accounts.insert_one(account)
    return account


def list_accounts(owner_id: ObjectId) -> list[dict[str, Any]]:
    return list(db.get_db().accounts.find({"user": owner_id}, ACCOUNT_FIELDS))


def get_account(owner_id: ObjectId, account_id: ObjectId | None) -> dict[str, Any]:
    """The caller's account, or AccountNotFound whether it is absent or someone else's."""
    if account_id is None:
        raise AccountNotFound()
    account = db.get_db().accounts.find_one({"_id": account_id, "user": owner_id}, ACCOUNT_FIELDS)
    if account is None:
        raise AccountNotFound()
    return account
