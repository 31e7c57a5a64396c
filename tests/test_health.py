"""Liveness and readiness: ``GET /health`` while the process runs, ``GET /ready`` only when the database can serve.

The replica-set checks are exercised here with a fake client (no MongoDB server runs on this machine);
``tests/test_replica_set.py`` repeats what matters against a real replica set.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError

from ledger import db
from tests.conftest import make_app


class FakeClient:
    """A client whose ``hello`` answers what the test says; databases come from the real (embedded) client."""

    def __init__(self, hello: dict[str, Any] | Exception, real: Any = None) -> None:
        self._hello = hello
        self._real = real
        self.admin = self

    def command(self, name: str) -> dict[str, Any]:
        assert name == "hello"
        if isinstance(self._hello, Exception):
            raise self._hello
        return dict(self._hello)

    def __getitem__(self, name: str) -> Any:
        return self._real[name]


@pytest.fixture
def as_mongodb(app, monkeypatch):
    """Make ``app`` believe it talks to MongoDB whose ``hello`` the test chooses; data stays where it is."""
    real = db.get_client(app)

    def use(hello: dict[str, Any] | Exception) -> None:
        monkeypatch.setitem(app.config, "MONGO_URI", "mongodb://127.0.0.1:27017/?replicaSet=rs0")
        monkeypatch.setattr(db, "get_client", lambda _app=None: FakeClient(hello, real))

    return use


def test_health_answers_200_json_while_the_process_runs(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_answers_200_once_the_database_has_every_declared_index(client):
    response = client.get("/ready")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["engine"] == ("embedded" if db.is_embedded(client.application) else "mongodb")


def test_ready_answers_503_naming_an_index_that_was_dropped(app, client):
    with app.app_context():
        db.get_db(app).transactions.drop_index("initiator_1_idempotencyKey_1")

    response = client.get("/ready")

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["missingIndexes"] == ["transactions.initiator_1_idempotencyKey_1"]


def test_ready_answers_503_when_an_index_lost_its_uniqueness(app, client):
    with app.app_context():
        transactions = db.get_db(app).transactions
        transactions.drop_index("initiator_1_idempotencyKey_1")
        transactions.create_index([("initiator", 1), ("idempotencyKey", 1)])  # same keys, not unique

    response = client.get("/ready")

    assert response.status_code == 503
    assert response.get_json()["missingIndexes"] == ["transactions.initiator_1_idempotencyKey_1"]


def test_ready_answers_503_without_driver_text_when_the_database_does_not_answer(client, monkeypatch):
    def down(_database):
        raise ServerSelectionTimeoutError("127.0.0.1:27017: [Errno 111] Connection refused")

    monkeypatch.setattr(db, "missing_indexes", down)

    response = client.get("/ready")

    assert response.status_code == 503
    assert response.get_json()["error"] == "the database did not answer"
    assert "Errno" not in response.get_data(as_text=True)


def test_ready_reports_the_replica_set_when_it_has_a_primary(client, as_mongodb):
    as_mongodb({"setName": "rs0", "isWritablePrimary": True, "hosts": ["mongo1:27017"]})

    response = client.get("/ready")

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["engine"] == "mongodb"
    assert response.get_json()["replicaSet"] == "rs0"


def test_ready_answers_503_when_the_replica_set_has_no_primary(client, as_mongodb):
    as_mongodb({"setName": "rs0", "isWritablePrimary": False, "secondary": True})

    response = client.get("/ready")

    assert response.status_code == 503
    assert response.get_json()["error"] == "the replica set has no writable primary here"


def test_ready_answers_503_when_the_server_cannot_be_reached(client, as_mongodb):
    as_mongodb(ServerSelectionTimeoutError("No servers found yet"))

    response = client.get("/ready")

    assert response.status_code == 503
    assert response.get_json()["error"] == "the database did not answer"


def test_a_standalone_server_is_refused_with_a_message_that_says_how_to_fix_it():
    standalone = FakeClient({"isWritablePrimary": True, "maxWireVersion": 21})

    with pytest.raises(db.NotAReplicaSet, match=r"standalone MongoDB server.*need a replica set.*rs\.initiate"):
        db.check_replica_set(standalone)


@pytest.mark.parametrize("hello", [
    {"setName": "rs0", "isWritablePrimary": True},
    {"msg": "isdbgrid", "isWritablePrimary": True},
], ids=["primary", "mongos"])
def test_a_writable_primary_and_mongos_are_accepted(hello):
    assert db.check_replica_set(FakeClient(hello)) == hello


@pytest.mark.parametrize("hello", [
    # A directConnection URI naming a secondary: it knows the primary, but every write here would fail.
    {"setName": "rs0", "isWritablePrimary": False, "secondary": True, "primary": "mongo1:27017"},
    # Started with --replSet but rs.initiate() has not run yet: wait for it rather than refuse to start.
    {"isreplicaset": True, "isWritablePrimary": False},
], ids=["secondary-that-knows-the-primary", "member-not-initiated"])
def test_a_member_that_cannot_take_writes_is_unavailable_not_refused(hello):
    with pytest.raises(db.DatabaseUnavailable):
        db.check_replica_set(FakeClient(hello))


def test_a_server_that_does_not_answer_is_unavailable_rather_than_refused():
    with pytest.raises(db.DatabaseUnavailable):
        db.check_replica_set(FakeClient(ConnectionFailure("connection refused")))


def test_the_service_refuses_to_start_against_a_standalone_server(monkeypatch):
    monkeypatch.setattr(db, "get_client", lambda _app=None: FakeClient({"isWritablePrimary": True}))

    with pytest.raises(db.NotAReplicaSet):
        make_app(MONGO_URI="mongodb://127.0.0.1:27017/banking-ledger", SYSTEM_USER_EMAIL=None,
                 SYSTEM_USER_PASSWORD=None, SYSTEM_USER_NAME=None)
