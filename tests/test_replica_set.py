"""What only a real MongoDB replica set can show: write conflicts, majority commits, indexes as the server has them.

Every test here is marked ``replica_set`` and skipped (with the reason printed) unless ``LEDGER_TEST_MONGO_URI``
names a replica set, e.g. the one ``scripts/test --replica-set`` starts with docker compose. The embedded engine
serializes transactions, so it can never produce a write conflict; these tests prove the retry logic against the
real thing.
"""

from __future__ import annotations

import functools
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from pymongo import monitoring
from pymongo.write_concern import WriteConcern

from ledger import db, metrics
from ledger.services.audit import verify
from tests.conftest import Api, drop_database, make_app

pytestmark = pytest.mark.replica_set

RETRY_REASONS = ("transient", "transient-commit", "unknown-commit")


def retries_so_far() -> float:
    """Transaction retries counted by ``ledger.metrics.RETRIES`` in this process, all reasons together."""
    return sum(metrics.REGISTRY.get_sample_value("ledger_transaction_retries_total", {"reason": reason}) or 0.0
               for reason in RETRY_REASONS)


class CommandRecorder(monitoring.CommandListener):
    """Keeps a copy of every command the driver sends."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_the_test_database_is_a_replica_set_member_with_a_primary(app):
    hello = db.check_replica_set(db.get_client(app))
    assert hello.get("setName") or hello.get("msg") == "isdbgrid"


def test_ready_reports_the_replica_set(app, client):
    hello = db.check_replica_set(db.get_client(app))

    response = client.get("/ready")

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["engine"] == "mongodb"
    assert body["replicaSet"] == (hello.get("setName") or "mongos")


def test_a_write_conflict_with_an_open_transaction_is_retried_until_it_commits(app):
    with app.app_context():
        client = db.get_client(app)
        collection = db.get_db(app)["conflict_probe"]
        collection.insert_one({"_id": "hot", "n": 0})
        reasons: list[str] = []
        blocker = client.start_session()
        blocker.start_transaction(write_concern=WriteConcern("majority"))
        collection.update_one({"_id": "hot"}, {"$inc": {"n": 1}}, session=blocker)  # holds the document

        def release_blocker(reason: str) -> None:
            reasons.append(reason)
            if blocker.in_transaction:
                blocker.commit_transaction()

        def bump(session) -> str:
            collection.update_one({"_id": "hot"}, {"$inc": {"n": 10}}, session=session)
            return "committed"

        try:
            outcome = db.run_in_transaction(bump, on_retry=release_blocker, timeout_seconds=30)
        finally:
            if blocker.in_transaction:
                blocker.abort_transaction()
            blocker.end_session()
        final = collection.find_one({"_id": "hot"})["n"]

    assert outcome == "committed"
    assert reasons[0] == "transient"  # the first attempt met the blocker's write: a WriteConflict, retried
    assert final == 11  # both writes, neither lost


def test_concurrent_transfers_from_one_hot_account_conflict_and_all_succeed_after_retries():
    app = make_app(RATELIMIT_ENABLED=False)
    try:
        api = Api(app.test_client())
        _, token = api.user()
        source = api.funded_account(token, 100000)
        targets = [api.open_account(token) for _ in range(4)]
        workers = 16
        before = retries_so_far()
        completed = 0
        for _round in range(6):  # bounded: a conflict is near certain in the first round, guaranteed by none
            barrier = threading.Barrier(workers, timeout=30)

            def send(index: int, barrier: threading.Barrier = barrier) -> int:
                client = Api(app.test_client())
                barrier.wait()
                return client.transfer(token, source, targets[index % len(targets)], 1).status_code

            with ThreadPoolExecutor(max_workers=workers) as pool:
                statuses = list(pool.map(send, range(workers), timeout=120))
            assert statuses == [200] * workers
            completed += workers
            if retries_so_far() > before:
                break

        assert retries_so_far() > before, "no write conflict was ever retried"
        assert Decimal(str(api.balance(token, source))) == 100000 - completed
        assert sum(Decimal(str(api.balance(token, t))) for t in targets) == completed
        with app.app_context():
            report = verify()
        assert report.problems == []
    finally:
        drop_database(app)


def test_transfers_read_at_snapshot_and_commit_with_majority_write_concern(app, api, monkeypatch):
    recorder = CommandRecorder()
    monkeypatch.setattr(db, "MongoClient", functools.partial(db.MongoClient, event_listeners=[recorder]))
    holder = db._ClientHolder()  # a client of its own, built through the patched constructor;
    monkeypatch.setattr(db, "_holder", holder)  # the process-wide one is left alone
    try:
        _, token = api.user()
        source = api.funded_account(token, 100)
        target = api.open_account(token)
        recorder.commands.clear()

        assert api.transfer(token, source, target, 1, key=uuid.uuid4().hex).status_code == 200
    finally:
        holder.reset()  # closes the recording client

    commits = [command for name, command in recorder.commands if name == "commitTransaction"]
    assert len(commits) == 1
    assert commits[0]["writeConcern"]["w"] == "majority"
    first = [command for _, command in recorder.commands if command.get("startTransaction")]
    assert len(first) == 1
    assert first[0]["readConcern"]["level"] == "snapshot"
    session_id, transaction_number = first[0]["lsid"], first[0]["txnNumber"]
    writes = [name for name, command in recorder.commands
              if command.get("lsid") == session_id and command.get("txnNumber") == transaction_number
              and name in {"insert", "update"}]
    assert sorted(set(writes)) == ["insert", "update"]  # the transfer's writes all ran inside that transaction


def test_the_server_reports_the_ttl_and_unique_indexes_the_models_declare(app):
    with app.app_context():
        database = db.get_db(app)
        indexes = {name: database[name].index_information()
                   for name in ("users", "accounts", "transactions", "ledgers", "tokenblacklists")}
        missing = db.missing_indexes(database)

    assert missing == []
    assert indexes["tokenblacklists"]["expiresAt_1"]["expireAfterSeconds"] == 0
    assert indexes["tokenblacklists"]["tokenHash_1"]["unique"] is True
    assert indexes["transactions"]["initiator_1_idempotencyKey_1"]["unique"] is True
    assert indexes["ledgers"]["account_1_seq_1"]["unique"] is True
    assert indexes["users"]["email_1"]["unique"] is True
    assert indexes["accounts"]["systemCurrency_1"]["unique"] is True
    assert indexes["accounts"]["systemCurrency_1"]["sparse"] is True
