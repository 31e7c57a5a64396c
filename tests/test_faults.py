"""Fault injection at every step of a transfer: no partial and no double application, ever.

Faults are injected by wrapping the embedded engine's (already serialized) collection and session methods for a
given number of calls, raising the errors a replica set raises: ``TransientTransactionError`` (write conflict,
step-down: rerun everything), ``UnknownTransactionCommitResult`` (retry the commit only), and plain failures
(abort, answer 500). Only calls made inside a transaction (with ``session=``) are hit, so authentication reads
and test setup are untouched. Wrapping the serialized methods keeps the engine lock in force.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from bson import ObjectId
from mongomock_ng import collection as mock_collection
from mongomock_ng import session as mock_session
from pymongo.errors import OperationFailure

from tests.conftest import REPLICA_SET_URI, Api
from tests.ledger_checks import assert_ledger_consistent, balance_minor, count, database, snapshot

pytestmark = pytest.mark.skipif(
    bool(REPLICA_SET_URI),
    reason="faults are injected by wrapping the embedded engine's classes; against a replica set the real "
           "conflicts and retries are exercised by tests/test_replica_set.py and tests/test_concurrency.py",
)

TRANSIENT = "TransientTransactionError"
UNKNOWN_COMMIT = "UnknownTransactionCommitResult"


def transient_error() -> OperationFailure:
    return OperationFailure("WriteConflict (injected)", code=112, details={"errorLabels": [TRANSIENT]})


def unknown_commit_error() -> OperationFailure:
    return OperationFailure("InterruptedDueToReplStateChange (injected)", code=11602,
                            details={"errorLabels": [UNKNOWN_COMMIT]})


def plain_error() -> OperationFailure:
    return OperationFailure("InternalError (injected): do not show me", code=1, details={})


@dataclass
class Fault:
    """Raise ``error()`` on the next ``times`` matching calls, before or after the real call runs."""

    error: Callable[[], Exception]
    times: int
    after: bool = False
    raised: int = 0

    def clear(self) -> None:
        self.times = self.raised


@dataclass(frozen=True)
class Step:
    name: str
    owner: Any
    method: str
    collection: str | None  # None for the session's commit


STEPS = {
    "account read": Step("account read", mock_collection.Collection, "find", "accounts"),
    "record insert": Step("record insert", mock_collection.Collection, "insert_one", "transactions"),
    "before the debit": Step("before the debit", mock_collection.Collection, "bulk_write", "accounts"),
    "after the debit": Step("after the debit", mock_collection.Collection, "bulk_write", "accounts"),
    "before the ledger insert": Step("before the ledger insert", mock_collection.Collection, "insert_many",
                                     "ledgers"),
    "after the ledger insert": Step("after the ledger insert", mock_collection.Collection, "insert_many",
                                    "ledgers"),
    "outbox insert": Step("outbox insert", mock_collection.Collection, "insert_many", "notifications"),
    "commit": Step("commit", mock_session.ClientSession, "commit_transaction", None),
}
AFTER_STEPS = {"after the debit", "after the ledger insert"}


def inject(monkeypatch: pytest.MonkeyPatch, step: Step, error: Callable[[], Exception], times: int = 1,
           after: bool = False) -> Fault:
    fault = Fault(error, times, after)
    original = getattr(step.owner, step.method)  # the engine's serialized wrapper: the lock still applies

    def faulty(self, *args, **kwargs):
        if step.collection is None:
            applies = fault.raised < fault.times
        else:
            applies = (fault.raised < fault.times and self.name == step.collection
                       and kwargs.get("session") is not None)
        if applies and not fault.after:
            fault.raised += 1
            raise fault.error()
        result = original(self, *args, **kwargs)
        if applies:
            fault.raised += 1
            raise fault.error()
        return result

    monkeypatch.setattr(step.owner, step.method, faulty)
    return fault


def inject_at(monkeypatch, name: str, error: Callable[[], Exception], times: int = 1) -> Fault:
    return inject(monkeypatch, STEPS[name], error, times, after=name in AFTER_STEPS)


@pytest.fixture
def setup(api, app):
    """A user with 100 INR in one account and an empty second account; faults go in after this."""
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(token)
    return token, source, target


def key() -> str:
    return f"fault-{uuid.uuid4().hex}"


def assert_applied_exactly_once(app, response, source, target, amount_minor=2500):
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["transaction"]["status"] == "COMPLETED"
    txn_id = ObjectId(body["transaction"]["_id"])
    records = list(database(app).transactions.find({"idempotencyKey": body["transaction"]["idempotencyKey"]}))
    assert [r["_id"] for r in records] == [txn_id]
    entries = sorted((e["type"], str(e["account"]), e["amount"])
                     for e in database(app).ledgers.find({"transaction": txn_id}))
    assert entries == [("CREDIT", target, amount_minor), ("DEBIT", source, amount_minor)]
    kinds = sorted(n["kind"] for n in database(app).notifications.find({"context.transactionId": str(txn_id)}))
    assert kinds == ["credit_notice", "transfer_receipt"]
    assert balance_minor(app, source) == 10000 - amount_minor
    assert balance_minor(app, target) == amount_minor
    assert_ledger_consistent(app)


def assert_nothing_written(app, before):
    assert snapshot(app) == before
    assert_ledger_consistent(app)


# ------------------------------------------------------------------------- transient errors: rerun


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("times", [1, 3])
def test_a_transient_error_at_any_step_is_retried_and_the_transfer_applies_once(app, api, setup, monkeypatch,
                                                                               step, times):
    token, source, target = setup
    fault = inject_at(monkeypatch, step, transient_error, times=times)

    response = api.transfer(token, source, target, 25)

    assert fault.raised == times
    assert_applied_exactly_once(app, response, source, target)


@pytest.mark.parametrize("stale", ["source", "target"])
def test_an_account_changed_since_it_was_read_reruns_the_transfer(app, api, setup, monkeypatch, stale):
    token, source, target = setup
    original_find = mock_collection.Collection.find
    stale_reads = []

    def find_with_a_stale_read(self, *args, **kwargs):
        cursor = original_find(self, *args, **kwargs)
        if self.name != "accounts" or kwargs.get("session") is None or stale_reads:
            return cursor
        documents = list(cursor)
        for document in documents:
            if str(document["_id"]) == (source if stale == "source" else target):
                document["seq"] -= 1  # as if read before another transfer touched the account
                stale_reads.append(document["_id"])
        return documents

    monkeypatch.setattr(mock_collection.Collection, "find", find_with_a_stale_read)

    response = api.transfer(token, source, target, 25)

    assert len(stale_reads) == 1
    assert_applied_exactly_once(app, response, source, target)


def test_a_transient_error_while_recording_a_rejection_records_it_once(app, api, setup, monkeypatch):
    token, source, target = setup
    fault = inject_at(monkeypatch, "record insert", transient_error, times=2)
    idem = key()

    response = api.transfer(token, source, target, 500, key=idem)

    assert fault.raised == 2
    assert response.status_code == 400
    assert response.get_json()["message"].startswith("Insufficient balance.")
    assert [r["status"] for r in database(app).transactions.find({"idempotencyKey": idem})] == ["FAILED"]
    assert count(app, "notifications", {"kind": "transfer_receipt"}) == 0
    assert_ledger_consistent(app)


@pytest.mark.parametrize("step", ["before the debit", "after the ledger insert", "outbox insert", "commit"])
def test_initial_funds_survive_a_transient_error_and_apply_once(app, api, monkeypatch, step):
    _, token = api.user()
    account = api.open_account(token, currency="EUR")  # the EUR system account is opened in this transaction
    api.system_token()
    fault = inject_at(monkeypatch, step, transient_error, times=2)

    response = api.fund(account, 40)

    assert fault.raised == 2
    assert response.status_code == 201, response.get_json()
    txn_id = ObjectId(response.get_json()["transaction"]["_id"])
    assert count(app, "accounts", {"systemCurrency": "EUR"}) == 1
    assert count(app, "ledgers", {"transaction": txn_id}) == 2
    assert count(app, "notifications", {"context.transactionId": str(txn_id)}) == 1
    assert balance_minor(app, account) == 4000
    assert_ledger_consistent(app)


# ------------------------------------------------------------------------ unknown commit results


def test_a_commit_that_did_not_happen_is_retried_and_applies_once(app, api, setup, monkeypatch):
    token, source, target = setup
    fault = inject(monkeypatch, STEPS["commit"], unknown_commit_error, times=2, after=False)

    response = api.transfer(token, source, target, 25)

    assert fault.raised == 2
    assert_applied_exactly_once(app, response, source, target)


def test_a_commit_whose_acknowledgement_was_lost_is_not_applied_twice(app, api, setup, monkeypatch):
    token, source, target = setup
    fault = inject(monkeypatch, STEPS["commit"], unknown_commit_error, times=2, after=True)

    response = api.transfer(token, source, target, 25)

    assert fault.raised == 2
    assert_applied_exactly_once(app, response, source, target)


# ---------------------------------------------------------------- non-transient errors: abort, 500


@pytest.mark.parametrize("step", list(STEPS))
def test_a_non_transient_error_at_any_step_is_a_500_json_and_writes_nothing(app, api, setup, monkeypatch, step):
    token, source, target = setup
    before = snapshot(app)
    fault = inject_at(monkeypatch, step, plain_error, times=1)
    idem = key()

    response = api.transfer(token, source, target, 25, key=idem)

    assert fault.raised == 1
    assert response.status_code == 500
    assert response.get_json() == {"message": "Internal server error", "status": "failed"}
    assert b"injected" not in response.data
    assert_nothing_written(app, before)
    # The failed attempt consumed nothing: the same key now performs the transfer, once.
    assert_applied_exactly_once(app, api.transfer(token, source, target, 25, key=idem), source, target)


def dump(app) -> dict[str, list[dict]]:
    """Every document of every collection, in natural order."""
    data = database(app)
    return {name: list(data[name].find({})) for name in sorted(data.list_collection_names())}


@pytest.mark.parametrize("step", ["after the debit", "outbox insert", "commit"])
def test_an_aborted_transfer_leaves_every_collection_exactly_as_it_was(app, api, setup, monkeypatch, step):
    token, source, target = setup
    assert api.transfer(token, source, target, 5).status_code == 200  # earlier history that must survive
    before = dump(app)
    inject_at(monkeypatch, step, plain_error, times=1)

    response = api.transfer(token, source, target, 25)

    assert response.status_code == 500
    assert dump(app) == before


# ------------------------------------------------------------------ persistent errors: 503, retry later


@pytest.mark.parametrize("step", ["account read", "after the debit", "outbox insert", "commit"])
def test_transient_errors_past_the_time_budget_answer_503_with_retry_after(app, api, setup, monkeypatch, step):
    token, source, target = setup
    app.config["TRANSACTION_TIMEOUT_SECONDS"] = 0.3
    before = snapshot(app)
    fault = inject_at(monkeypatch, step, transient_error, times=10**6)
    idem = key()

    response = api.transfer(token, source, target, 25, key=idem)

    assert fault.raised >= 2
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.get_json()["status"] == "failed"
    fault.clear()  # before the checks: the audit reads with a session too, and must not hit the fault
    assert_nothing_written(app, before)
    assert_applied_exactly_once(app, api.transfer(token, source, target, 25, key=idem), source, target)


def test_a_commit_that_never_answers_is_a_503_and_leaves_the_engine_usable(app, api, setup, monkeypatch):
    token, source, target = setup
    app.config["TRANSACTION_TIMEOUT_SECONDS"] = 0.3
    before = snapshot(app)
    fault = inject(monkeypatch, STEPS["commit"], unknown_commit_error, times=10**6, after=False)
    idem = key()

    response = api.transfer(token, source, target, 25, key=idem)

    assert response.status_code == 503
    assert "Retry-After" in response.headers
    fault.clear()
    # Another thread can use the database: the abandoned transaction released the engine.
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(lambda: Api(app.test_client()).balance(token, source)).result(timeout=10)
    assert other == 100
    assert_nothing_written(app, before)
    assert_applied_exactly_once(app, api.transfer(token, source, target, 25, key=idem), source, target)


def test_a_commit_that_happened_but_never_acknowledged_is_a_503_then_replays(app, api, setup, monkeypatch):
    token, source, target = setup
    app.config["TRANSACTION_TIMEOUT_SECONDS"] = 0.3
    fault = inject(monkeypatch, STEPS["commit"], unknown_commit_error, times=10**6, after=True)
    idem = key()

    response = api.transfer(token, source, target, 25, key=idem)

    assert response.status_code == 503
    fault.clear()
    retry = api.transfer(token, source, target, 25, key=idem)
    assert retry.status_code == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert_applied_exactly_once(app, retry, source, target)


def test_faults_in_one_transfer_do_not_disturb_a_concurrent_one(app, api, monkeypatch):
    _, token = api.user()
    a = api.funded_account(token, 100)
    b = api.open_account(token)
    c = api.funded_account(token, 100)
    d = api.open_account(token)
    fault = inject_at(monkeypatch, "after the debit", transient_error, times=5)
    barrier = threading.Barrier(2, timeout=10)

    def send(source, target):
        client = Api(app.test_client())
        barrier.wait()
        return client.transfer(token, source, target, 25)

    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = [f.result(timeout=30) for f in [pool.submit(send, a, b), pool.submit(send, c, d)]]

    assert fault.raised == 5
    for response, (source, target) in zip(responses, [(a, b), (c, d)], strict=True):
        assert_applied_exactly_once(app, response, source, target)
