"""Elections on a three-member set: the primary steps down during a transfer, the members' ``hello`` answers
change, and the driver must find the new primary; the transfer completes once there, or answers 503 and the
same-key retry resolves it. ``/ready`` follows the set: 503 with no primary, 200 again after the election.

Errors are answered the way a MongoDB 7.0 member answers them after stepping down: ``NotWritablePrimary``
inside a transaction carries ``TransientTransactionError``; ``PrimarySteppedDown`` on a commit carries
``RetryableWriteError``.
"""

from __future__ import annotations

import time

import pytest

from tests.wire.bank import READY, TRANSFER, Bank, check_sessions, serve_attempt, serve_auth
from tests.wire.conftest import start_app
from tests.wire.replset import NO_SUCH_TRANSACTION, NOT_WRITABLE_PRIMARY, PRIMARY_STEPPED_DOWN, WAIT, Received, http

ATTEMPT = TRANSFER[2:]
STEPPED_DOWN_IN_TRANSACTION = {**NOT_WRITABLE_PRIMARY, "errorLabels": ["TransientTransactionError"]}
STEPPED_DOWN_ON_COMMIT = {**PRIMARY_STEPPED_DOWN, "errorLabels": ["RetryableWriteError"]}


@pytest.mark.parametrize("step", range(5))
def test_a_step_down_inside_the_transaction_reruns_it_on_the_new_primary(three_members, step):
    app = start_app(three_members)
    bank = Bank(app)
    old, new = three_members.members[0], three_members.members[1]
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body(f"elect-{step}"))
    serve_auth(three_members, bank.customer)

    def step_down(got: Received) -> None:
        three_members.elect(new)  # the hello answers change first, as on a real set
        got.error(STEPPED_DOWN_IN_TRANSACTION, "not primary")

    first = serve_attempt(three_members, bank, inject={step: step_down})
    abort = three_members.receive()  # to the new primary, which never heard of the transaction
    assert abort.name == "abortTransaction"
    abort.error(NO_SUCH_TRANSACTION)
    second = serve_attempt(three_members, bank)

    reply = response.result(WAIT)
    assert reply.status_code == 200, reply.get_json()
    assert all(got.member is old for got in first)
    assert all(got.member is new for got in second)
    check_sessions(second, ATTEMPT)
    assert second[0].doc["txnNumber"] == first[0].doc["txnNumber"] + 1
    three_members.assert_quiet()


@pytest.mark.parametrize("outcome", ["the commit had replicated", "the commit was lost"])
def test_a_step_down_on_the_commit_is_retried_on_the_new_primary(three_members, outcome):
    app = start_app(three_members)
    bank = Bank(app)
    new = three_members.members[2]
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body("elect-commit"))
    serve_auth(three_members, bank.customer)

    def step_down(got: Received) -> None:
        three_members.elect(new)
        got.error(STEPPED_DOWN_ON_COMMIT, "primary stepped down")

    first = serve_attempt(three_members, bank, inject={5: step_down})
    retried = three_members.expect("commitTransaction")  # the driver's own retry, on the new primary
    assert retried.member is new
    assert (retried.doc["lsid"], retried.doc["txnNumber"]) == (first[0].doc["lsid"], first[0].doc["txnNumber"])
    if outcome == "the commit had replicated":
        retried.ok()
        expected_id = first[1].doc["documents"][0]["_id"]
    else:  # the new primary never saw it: the whole transaction runs again there
        retried.error(NO_SUCH_TRANSACTION)
        second = serve_attempt(three_members, bank)
        assert all(got.member is new for got in second)
        check_sessions(second, ATTEMPT)
        expected_id = second[1].doc["documents"][0]["_id"]

    reply = response.result(WAIT)
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["transaction"]["_id"] == str(expected_id)
    three_members.assert_quiet()


def test_with_no_primary_the_transfer_and_ready_answer_503_and_after_the_election_the_same_key_completes(
        three_members):
    app = start_app(three_members, TRANSACTION_TIMEOUT_SECONDS=1)
    bank = Bank(app)
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body("no-primary"))
    serve_auth(three_members, bank.customer)

    def lose_the_primary(got: Received) -> None:
        three_members.elect(None)
        got.error(STEPPED_DOWN_IN_TRANSACTION, "not primary")

    serve_attempt(three_members, bank, inject={1: lose_the_primary})
    readiness = http(app, "GET", "/ready")  # waits for a primary alongside the transfer

    reply = response.result(WAIT)
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"
    ready_reply = readiness.result(WAIT)
    assert ready_reply.status_code == 503
    # Whether the driver already knew the primary was gone (no server to select) or still sent hello to the old
    # primary (which now answers as a secondary) depends on timing; both are "no primary", both 503.
    assert ready_reply.get_json()["error"] in {"the database did not answer",
                                               "the replica set has no writable primary here"}
    three_members.assert_quiet()  # no member was writable: nothing else was sent

    three_members.elect(three_members.members[1])
    readiness = http(app, "GET", "/ready")
    for step in READY:
        three_members.serve_list_indexes(three_members.expect("listIndexes", step.collection))
    assert readiness.result(WAIT).status_code == 200
    retry = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body("no-primary"))
    serve_auth(three_members, bank.customer)
    attempt = serve_attempt(three_members, bank)
    assert retry.result(WAIT).status_code == 200
    assert all(got.member is three_members.members[1] for got in attempt)
    three_members.assert_quiet()


def test_started_with_no_primary_the_app_serves_health_and_finishes_start_up_once_one_is_elected(
        three_members, monkeypatch):
    import ledger
    from ledger import create_app, db

    monkeypatch.setattr(ledger, "STARTUP_RETRY_SECONDS", 0.2)
    three_members.elect(None)  # a set still electing its first primary
    app = create_app({"MONGO_URI": three_members.uri()})  # waits out server selection (5 s), then defers
    three_members.assert_quiet(0.05)  # it could send nothing: no member was writable

    three_members.elect(three_members.members[1])
    assert http(app, "GET", "/health").result(WAIT).status_code == 200  # the first request starts the retries
    for _ in db.declared_indexes():
        three_members.serve_create_indexes(three_members.expect("createIndexes"))
    readiness = http(app, "GET", "/ready")
    for step in READY:
        three_members.serve_list_indexes(three_members.expect("listIndexes", step.collection))
    assert readiness.result(WAIT).status_code == 200
    deadline = time.monotonic() + WAIT
    while not app.extensions["ledger.indexes"]["ready"]:  # start-up marked them itself: money can move
        assert time.monotonic() < deadline, "start-up never completed"
        time.sleep(0.05)
    three_members.assert_quiet()
