"""Smaller review findings, each pinned by a test a regression would fail.

- A unique index other than the idempotency key refusing a write inside a transfer is a logged 503 (retryable,
  nothing committed), never a 500.
- Logout treats a duplicate key as "already revoked" only on the ``tokenHash`` index: a leftover Node index
  refusing the entry must not let logout answer 200 while revoking nothing.
- Register, login and logout wait for the indexes, as transfers do.
- The ``balance >= amount`` guard in the debit filter holds on its own: a stale, inflated balance read with
  an unchanged sequence number cannot overdraw.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId
from pymongo import ASCENDING, IndexModel

from ledger import db
from ledger.services import transfers
from tests.conftest import unique_email

UNAVAILABLE = {"message": "Service temporarily unavailable, please retry", "status": "failed"}


def _state(app) -> dict[str, Any]:
    with app.app_context():
        database = db.get_db(app)
        return {
            "balances": {a["_id"]: a.get("balance") for a in database.accounts.find({}, {"balance": 1})},
            "transactions": database.transactions.count_documents({}),
            "ledgers": database.ledgers.count_documents({}),
            "notifications": database.notifications.count_documents({}),
        }


# ------------------------------------------------------------------------ duplicates inside a transfer


@pytest.mark.parametrize("route", ["transfer", "funding"])
@pytest.mark.parametrize("side", ["source", "target"])
def test_a_duplicate_on_the_ledger_sequence_index_is_a_logged_503_and_a_retry_with_the_key_succeeds(
        app, api, caplog, route, side):
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])
    with app.app_context():
        database = db.get_db()
        if route == "funding":
            system_id = database.users.find_one({"systemUser": True})["_id"]
            system_account = database.accounts.find_one({"user": system_id, "systemCurrency": "INR"})
            source_doc = system_account
        else:
            source_doc = database.accounts.find_one({"_id": ObjectId(source)})
        target_doc = database.accounts.find_one({"_id": ObjectId(target)})
        blocked = source_doc if side == "source" else target_doc
        # An entry already holding the account's next sequence number (a botched manual repair, say).
        squatter = database.ledgers.insert_one({
            "account": blocked["_id"], "seq": blocked.get("seq", 0) + 1, "type": "CREDIT", "amount": 1,
            "currency": "INR", "transaction": ObjectId(), "balanceAfter": 0, "createdAt": datetime.now(UTC),
        }).inserted_id
    before = _state(app)
    key = uuid.uuid4().hex

    def send():
        if route == "funding":
            return api.fund(target, 5, key)
        return api.transfer(token, source, target, 5, key)

    with caplog.at_level(logging.ERROR, logger="ledger.services.transfers"):
        response = send()
    assert response.status_code == 503, response.get_json()
    assert response.get_json() == UNAVAILABLE
    assert response.headers["Retry-After"] == "2"
    assert any("unexpected duplicate key" in record.getMessage() for record in caplog.records)
    assert _state(app) == before  # nothing of the attempt was committed

    with app.app_context():
        db.get_db().ledgers.delete_one({"_id": squatter})
    retried = send()
    assert retried.status_code in {200, 201}, retried.get_json()
    assert retried.get_json()["transaction"]["status"] == "COMPLETED"


# --------------------------------------------------------------------------------------------- logout


def test_logout_refused_by_a_leftover_node_index_is_a_503_not_a_silent_success(app, api, caplog):
    """Node's unique ``token`` index on the blocklist: our entries carry no ``token``, so the second is a
    duplicate ``null`` there. That is not "someone revoked it already"."""
    with app.app_context():
        db.get_db().tokenblacklists.create_indexes([IndexModel([("token", ASCENDING)], unique=True)])
    _, first = api.user()
    _, second = api.user()
    assert api.request("POST", "/api/auth/logout", first).status_code == 200
    with caplog.at_level(logging.ERROR, logger="ledger.services.auth"):
        response = api.request("POST", "/api/auth/logout", second)
    assert response.status_code == 503, response.get_json()
    assert response.get_json() == UNAVAILABLE
    assert any("other than tokenHash" in record.getMessage() for record in caplog.records)
    # Honest: the token was not revoked and the client was told to retry.
    assert api.request("GET", "/api/accounts", second).status_code == 200
    assert api.request("GET", "/api/accounts", first).status_code == 401


def test_a_double_logout_of_one_token_is_still_idempotent(app, api):
    _, token = api.user()
    for _ in range(3):
        assert api.request("POST", "/api/auth/logout", token).status_code == 200
    with app.app_context():
        assert db.get_db().tokenblacklists.count_documents({}) == 1


def test_a_concurrent_logout_that_lost_the_upsert_race_counts_as_revoked(app, api, monkeypatch):
    """The duplicate a racing logout meets is on tokenHash: that one is swallowed (the token is revoked)."""
    from pymongo.errors import DuplicateKeyError

    _, token = api.user()
    assert api.request("POST", "/api/auth/logout", token).status_code == 200
    with app.app_context():
        collection_type = type(db.get_db().tokenblacklists)

    def lost_race(self, *args, **kwargs):
        raise DuplicateKeyError("E11000 duplicate key error collection: tokenblacklists index: tokenHash_1",
                                11000, {"keyPattern": {"tokenHash": 1}, "keyValue": {"tokenHash": "x"}})

    monkeypatch.setattr(collection_type, "update_one", lost_race)
    assert api.request("POST", "/api/auth/logout", token).status_code == 200


# ---------------------------------------------------------------------------------- waiting for indexes


@pytest.mark.parametrize("route", ["register", "login", "logout"])
def test_register_login_and_logout_wait_for_the_indexes(app, api, monkeypatch, route):
    password = "password-123"
    email = unique_email()
    token = api.register(email=email, password=password)["token"]
    monkeypatch.setattr(db, "INDEX_RECHECK_SECONDS", 0.0)
    with app.app_context():
        db.get_db().tokenblacklists.drop_index("tokenHash_1")
    monkeypatch.setitem(app.extensions, "ledger.indexes", {"ready": False, "checked": float("-inf")})

    def send():
        if route == "register":
            return api.request("POST", "/api/auth/register",
                               json={"email": unique_email(), "password": password, "name": "N"})
        if route == "login":
            return api.login(email, password)
        return api.request("POST", "/api/auth/logout", token)

    refused = send()
    assert refused.status_code == 503, refused.get_json()
    assert refused.get_json() == UNAVAILABLE
    with app.app_context():
        assert db.get_db().tokenblacklists.count_documents({}) == 0
        db.ensure_indexes(db.get_db())
    assert send().status_code in {200, 201}


# ------------------------------------------------------------------------------- the balance guard


def test_a_stale_inflated_balance_read_with_an_unchanged_sequence_cannot_overdraw(app, api, monkeypatch):
    """Only ``balance >= amount`` in the debit filter stands between this read and an overdraft: the sequence
    number is as read, so the sequence pin matches. (Holds, or any way of moving a balance without bumping the
    sequence, would produce exactly this read.)"""
    _, token = api.user()
    source = api.funded_account(token, 10)
    target = api.open_account(api.user()[1])
    before = _state(app)
    real_get_db = db.get_db
    inflated_reads = []

    class InflatingAccounts:
        def __init__(self, collection):
            self._collection = collection

        def find(self, *args, **kwargs):
            documents = list(self._collection.find(*args, **kwargs))
            if not inflated_reads:  # the first read only: a retry reads the truth
                for document in documents:
                    if document["_id"] == ObjectId(source):
                        document["balance"] = 1_000_000  # stale and inflated; seq untouched
                        inflated_reads.append(document)
            return iter(documents)

        def __getattr__(self, name):
            return getattr(self._collection, name)

    class Database:
        def __init__(self, database):
            self._database = database

        @property
        def accounts(self):
            return InflatingAccounts(self._database.accounts)

        def __getattr__(self, name):
            return getattr(self._database, name)

        def __getitem__(self, name):
            return self._database[name]

    monkeypatch.setattr(transfers.db, "get_db", lambda *a, **k: Database(real_get_db(*a, **k)))
    response = api.transfer(token, source, target, 500)
    monkeypatch.undo()

    assert inflated_reads, "the transfer never read the inflated balance: the test proves nothing"
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["message"].startswith("Insufficient balance. Available balance is 10")
    after = _state(app)
    assert after["balances"] == before["balances"]
    assert after["ledgers"] == before["ledgers"]
    assert api.balance(token, source) == 10
