"""Opening and reading accounts. Every read is scoped to the owner: another user's account does not exist."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument

from ledger import db
from ledger.errors import (
    AccountNotClosable,
    AccountNotFound,
    AccountStatusConflict,
    NotSystemUser,
    OwnerOnly,
    ServiceUnavailable,
)
from ledger.models import Account, to_document, utcnow
from ledger.services.holds import available_balance

ACCOUNT_FIELDS = {"_id": 1, "user": 1, "status": 1, "currency": 1, "balance": 1, "held": 1, "createdAt": 1,
                  "updatedAt": 1}


def open_account(owner_id: ObjectId, currency: str) -> dict[str, Any]:
    """A new ACTIVE account with a zero balance (a single-document write)."""
    now = utcnow()
    account = to_document(Account, user=owner_id, status="ACTIVE", currency=currency, balance=0, seq=0,
                          createdAt=now, updatedAt=now)
    db.get_db().accounts.insert_one(account)
    return account


def with_available(account: dict[str, Any]) -> dict[str, Any]:
    """The account with ``available``: its balance less what unexpired holds reserve (minor units)."""
    account["available"] = available_balance(account)
    return account


def list_accounts(owner_id: ObjectId) -> list[dict[str, Any]]:
    return [with_available(a) for a in db.get_db().accounts.find({"user": owner_id}, ACCOUNT_FIELDS)]


def get_account(owner_id: ObjectId, account_id: ObjectId | None) -> dict[str, Any]:
    """The caller's account, or AccountNotFound whether it is absent or someone else's."""
    if account_id is None:
        raise AccountNotFound()
    account = db.get_db().accounts.find_one({"_id": account_id, "user": owner_id}, ACCOUNT_FIELDS)
    if account is None:
        raise AccountNotFound()
    return with_available(account)


# ------------------------------------------------------------------------------------- lifecycle

CHANGE_FIELDS = {"_id": 1, "user": 1, "status": 1, "currency": 1, "balance": 1, "held": 1, "systemCurrency": 1,
                 "updatedAt": 1}
_CUSTOMER = {"systemCurrency": {"$exists": False}}
_NOTHING_HELD = {"$in": [0, None]}  # accounts written before holds existed have no ``held`` field
_ATTEMPTS = 5


def change_status(caller: dict[str, Any], account_id: ObjectId | None, wanted: str) -> dict[str, Any]:
    """Apply ``PATCH /api/accounts/:id``; every rule is part of one conditional update of the account.

    The owner may close (``ACTIVE`` -> ``CLOSED``, final) an account with a zero balance and nothing held; the
    system user may freeze and unfreeze customer accounts. A transfer's own conditional updates require
    ``ACTIVE`` on both sides, so a status change and a transfer racing on one account are decided by whichever
    update lands first, never by a read. A refused change reads the account afterwards only to name the reason.
    """
    if account_id is None:
        raise AccountNotFound()
    if wanted == "CLOSED":
        return _close(caller, account_id)
    if not caller.get("systemUser"):
        # Only the system user freezes and unfreezes. Closed is final for everyone, so the owner of a closed
        # account hears that rather than a permission error; anyone else's account does not exist.
        own = db.get_db().accounts.find_one({"_id": account_id, "user": caller["_id"]}, {"status": 1})
        if own is None:
            raise AccountNotFound()
        if own["status"] == "CLOSED":
            raise AccountStatusConflict("Account is closed; its status can no longer change")
        raise NotSystemUser()
    return _freeze_or_unfreeze(account_id, wanted)


def _close(caller: dict[str, Any], account_id: ObjectId) -> dict[str, Any]:
    accounts = db.get_db().accounts
    for _ in range(_ATTEMPTS):
        now = utcnow()
        changed = accounts.find_one_and_update(
            {"_id": account_id, "user": caller["_id"], "status": "ACTIVE", "balance": 0, "held": _NOTHING_HELD,
             **_CUSTOMER},
            {"$set": {"status": "CLOSED", "updatedAt": now}},
            projection=CHANGE_FIELDS, return_document=ReturnDocument.AFTER,
        )
        if changed is not None:
            return changed
        account = accounts.find_one({"_id": account_id}, CHANGE_FIELDS)
        if account is None or (account["user"] != caller["_id"] and not caller.get("systemUser")):
            raise AccountNotFound()
        if account.get("systemCurrency"):
            raise AccountNotClosable("A system account cannot be closed")
        if account["status"] == "CLOSED":
            raise AccountStatusConflict("Account is already closed")
        if account["user"] != caller["_id"]:
            raise OwnerOnly()
        if account["status"] != "ACTIVE":
            raise AccountStatusConflict(f"Account is {account['status'].lower()}; it cannot be closed")
        if account.get("balance", 0) != 0:
            raise AccountNotClosable("Account balance must be zero to close it")
        if account.get("held"):
            raise AccountNotClosable("Account has active holds; void or capture them first")
        # Every condition holds now: the account changed between our update and our read. Try again.
    raise ServiceUnavailable()


def _freeze_or_unfreeze(account_id: ObjectId, wanted: str) -> dict[str, Any]:
    accounts = db.get_db().accounts
    current = "ACTIVE" if wanted == "FROZEN" else "FROZEN"
    for _ in range(_ATTEMPTS):
        changed = accounts.find_one_and_update(
            {"_id": account_id, "status": current, **_CUSTOMER},
            {"$set": {"status": wanted, "updatedAt": utcnow()}},
            projection=CHANGE_FIELDS, return_document=ReturnDocument.AFTER,
        )
        if changed is not None:
            return changed
        account = accounts.find_one({"_id": account_id, **_CUSTOMER}, CHANGE_FIELDS)
        if account is None:
            raise AccountNotFound()
        if account["status"] == wanted:
            return account  # already there: setting a status is idempotent
        if account["status"] == "CLOSED":
            raise AccountStatusConflict("Account is closed; its status can no longer change")
    raise ServiceUnavailable()
