"""When the database cannot safely take a write, the answer is 503 with Retry-After, never a 500 and never an
unsafe write."""

from __future__ import annotations

import uuid

import pytest
from pymongo.errors import OperationFailure

from ledger import db
from tests.conftest import Api, drop_database, make_app, unique_email


def _register(api: Api):
    return api.request("POST", "/api/auth/register",
                       json={"email": unique_email(), "password": "password-123", "name": "Later"})


def test_registration_answers_503_when_transaction_retries_run_out(client, monkeypatch):
    def exhausted(*_args, **_kwargs):
        raise db.TransactionRetriesExhausted("transaction kept conflicting")

    monkeypatch.setattr(db, "run_in_transaction", exhausted)

    response = _register(Api(client))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.get_json() == {"message": "Service temporarily unavailable, please retry", "status": "failed"}


def test_writes_wait_for_the_indexes_and_the_service_opens_by_itself_once_they_exist(monkeypatch):
    real_ensure = db.ensure_indexes

    def node_era_database(_database):  # what start-up sees on a Node database that is not migrated yet
        raise OperationFailure("E11000 duplicate key error building index account_1_seq_1", code=11000)

    monkeypatch.setattr(db, "ensure_indexes", node_era_database)
    monkeypatch.setattr(db, "INDEX_RECHECK_SECONDS", 0.0)
    app = make_app(SYSTEM_USER_EMAIL=None, SYSTEM_USER_PASSWORD=None, SYSTEM_USER_NAME=None)
    try:
        api = Api(app.test_client())
        refused = _register(api)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "2"
        with app.app_context():
            assert db.get_db().users.count_documents({}) == 0

        with app.app_context():
            real_ensure(db.get_db())  # the migration (another process) creates the indexes

        assert _register(api).status_code == 201
    finally:
        drop_database(app)


@pytest.mark.parametrize("route", ["/api/transactions", "/api/transactions/system/initial-funds"])
def test_money_does_not_move_before_the_idempotency_index_exists(app, api, route, monkeypatch):
    _, token = api.user()
    source = api.funded_account(token, 10)
    target = api.open_account(api.user()[1])
    monkeypatch.setitem(app.extensions, "ledger.indexes", {"ready": False, "checked": float("-inf")})
    with app.app_context():
        db.get_db().transactions.drop_index("initiator_1_idempotencyKey_1")
        before = db.get_db().transactions.count_documents({})

    body = {"fromAccount": source, "toAccount": target, "amount": 1, "idempotencyKey": uuid.uuid4().hex}
    caller = token if route == "/api/transactions" else api.system_token()
    response = api.request("POST", route, caller, json=body)

    assert response.status_code == 503
    with app.app_context():
        assert db.get_db().transactions.count_documents({}) == before
    assert api.balance(token, source) == 10
