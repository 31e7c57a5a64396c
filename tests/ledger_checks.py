"""Checks shared by the transfer test modules: direct database reads and the ledger's invariants.

The invariants are the ones API.md promises for every state the service can be in: every stored balance equals
credits minus debits of its ledger entries (``ledger.services.audit.verify``), all balances sum to zero, and no
customer account (anything but the system user's per-currency accounts) is negative.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from flask import Flask
from pymongo.database import Database

from ledger import db
from ledger.services import audit


def database(app: Flask) -> Database:
    return db.get_db(app)


def account_doc(app: Flask, account_id: str) -> dict[str, Any]:
    found = database(app).accounts.find_one({"_id": ObjectId(account_id)})
    assert found is not None, f"account {account_id} is missing"
    return found


def balance_minor(app: Flask, account_id: str) -> int:
    return account_doc(app, account_id)["balance"]


def set_status(app: Flask, account_id: str, status: str) -> None:
    database(app).accounts.update_one({"_id": ObjectId(account_id)}, {"$set": {"status": status}})


def count(app: Flask, collection: str, query: dict[str, Any] | None = None) -> int:
    return len(list(database(app)[collection].find(query or {})))


def snapshot(app: Flask) -> dict[str, Any]:
    """Everything a transfer could write: counts of records, entries, messages and every balance."""
    data = database(app)
    return {
        "transactions": count(app, "transactions"),
        "ledgers": count(app, "ledgers"),
        "notifications": count(app, "notifications"),
        "balances": {str(a["_id"]): a["balance"] for a in data.accounts.find({}, {"balance": 1})},
    }


def assert_ledger_consistent(app: Flask) -> audit.AuditReport:
    """The ledger invariants hold: no audit problem, balances sum to 0, no negative customer balance."""
    with app.app_context():
        report = audit.verify()
    assert report.problems == [], report.problems
    assert report.total_balance_minor == 0
    negatives = [a for a in database(app).accounts.find({"systemCurrency": {"$exists": False}})
                 if a["balance"] < 0]
    assert negatives == [], negatives
    return report
