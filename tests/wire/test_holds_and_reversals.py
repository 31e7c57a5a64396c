"""The command scripts of the money-moving routes of Part two: holds (create, capture, void) and reversals.

Each is one transaction with the transfer's guarantees (docs/wire-protocol.md): the same session fields on every
command, ``startTransaction`` with ``readConcern: snapshot`` on the first, ``majority`` with our ``wtimeout`` on
the commit, everything on the primary, nothing outside the transaction but authentication; and the conditional
updates that protect the money carry every rule in their filters. A ``TransientTransactionError`` at any step of a
capture or a reversal aborts the attempt and reruns the whole transaction under the same session with the next
``txnNumber``, and the request still answers success, exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from ledger import hashchain
from tests.wire.bank import (
    ABORT,
    HOLD_CAPTURE,
    HOLD_CREATE,
    HOLD_VOID,
    INSIDE,
    REVERSE,
    Bank,
    Scripted,
    Step,
    attempt_of,
    check_sessions,
    serve_abort,
    serve_auth,
    serve_steps,
    wrote,
)
from tests.wire.replset import NO_SUCH_TRANSACTION, WAIT, WRITE_CONFLICT, ReplicaSet, http

TRANSIENT = {
    "WriteConflict": lambda got: got.error(WRITE_CONFLICT),
    "NoSuchTransaction": lambda got: got.error(NO_SUCH_TRANSACTION),
    "network error": lambda got: got.hangup(),
}
ABORTED = Step("abortTransaction", None, ABORT)
HELD = 3_000  # minor units the hold reserves


def available(amount: int) -> dict[str, Any]:
    return {"$expr": {"$gte": [{"$subtract": ["$balance", {"$ifNull": ["$held", 0]}]}, amount]}}


def assert_chained(entries: list[dict[str, Any]], heads: list[str]) -> None:
    for entry, head in zip(entries, heads, strict=True):
        assert entry["prevHash"] == head
        assert entry["hash"] == hashchain.entry_hash(entry, head)


@pytest.fixture
def bank(app) -> Bank:
    return Bank(app)


@pytest.fixture
def hold(bank) -> dict[str, Any]:
    """An ACTIVE hold of 30.00 on the customer's account for the target, an hour from expiry."""
    bank.source["held"] = HELD
    now = datetime.now(UTC)
    return {"_id": ObjectId(), "fromAccount": bank.source["_id"], "toAccount": bank.target["_id"],
            "owner": bank.customer["_id"], "initiator": bank.customer["_id"], "amount": HELD, "currency": "INR",
            "status": "ACTIVE", "expiresAt": now + timedelta(hours=1), "idempotencyKey": "h-1",
            "fingerprint": "f" * 64, "failure": {}, "createdAt": now, "updatedAt": now}


def received(target: dict[str, Any]) -> dict[str, Any]:
    """The target after an earlier transfer of 25.50 to it (chained): what a reversal debits."""
    target.update(balance=2550, seq=1, lastHash="c3" * 32)
    return target


def original_transfer(bank: Bank) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"_id": ObjectId(), "kind": "TRANSFER", "fromAccount": bank.source["_id"], "toAccount": bank.target["_id"],
            "amount": 2550, "currency": "INR", "status": "COMPLETED", "initiator": bank.customer["_id"],
            "idempotencyKey": "t-1", "fingerprint": "0" * 64, "failure": {}, "createdAt": now, "updatedAt": now}


def capture_steps(bank: Bank, hold: dict[str, Any]) -> Scripted:
    return [("find", "transactions", lambda got: got.cursor([])),
            ("find", "holds", lambda got: got.cursor([hold])),
            ("find", "accounts", lambda got: got.cursor([bank.source, bank.target])),
            ("insert", "transactions", wrote),
            ("update", "holds", wrote),
            ("update", "accounts", wrote),
            ("insert", "ledgers", wrote),
            ("insert", "notifications", wrote),
            ("commitTransaction", None, lambda got: got.ok())]


def reverse_steps(bank: Bank, original: dict[str, Any]) -> Scripted:
    return [("find", "transactions", lambda got: got.cursor([])),
            ("find", "transactions", lambda got: got.cursor([original])),
            ("find", "accounts", lambda got: got.cursor([bank.source, bank.target])),
            ("insert", "transactions", wrote),
            ("update", "transactions", wrote),
            ("update", "accounts", wrote),
            ("insert", "ledgers", wrote),
            ("insert", "notifications", wrote),
            ("commitTransaction", None, lambda got: got.ok())]


def capture(app, bank: Bank, hold: dict[str, Any], key: str, amount: Any = None):
    body = {"idempotencyKey": key, **({"amount": amount} if amount is not None else {})}
    return http(app, "POST", f"/api/holds/{hold['_id']}/capture", bank.customer_token, json=body)


def reverse(app, bank: Bank, original: dict[str, Any], key: str):
    return http(app, "POST", f"/api/transactions/{original['_id']}/reverse", bank.system_token,
                json={"idempotencyKey": key, "reason": "chargeback"})


# ---------------------------------------------------------------------------------------------- scripts


def test_creating_a_hold_is_one_transaction_that_reserves_on_the_available_balance(app, replica_set, bank):
    response = http(app, "POST", "/api/holds", bank.customer_token,
                    json={**bank.transfer_body("h-new", 30), "expiresInSeconds": 3600})
    served = serve_auth(replica_set, bank.customer) + serve_steps(replica_set, [
        ("find", "accounts", lambda got: got.cursor([bank.source, bank.target])),
        ("insert", "holds", wrote),
        ("update", "accounts", wrote),
        ("commitTransaction", None, lambda got: got.ok())])

    reply = response.result(WAIT)
    assert reply.status_code == 201, reply.get_json()
    check_sessions(served, HOLD_CREATE)
    replica_set.assert_quiet()
    hold = served[3].doc["documents"][0]
    assert (hold["amount"], hold["status"], hold["owner"]) == (HELD, "ACTIVE", bank.customer["_id"])
    (reserve,) = served[4].doc["updates"]
    # The reservation is one conditional update carrying every rule: the caller's, active, same currency, and
    # enough available (balance - held) for it.
    assert reserve["q"] == {"_id": bank.source["_id"], "user": bank.customer["_id"], "status": "ACTIVE",
                            "currency": "INR", **available(HELD)}
    assert reserve["u"]["$inc"] == {"held": HELD}


def test_capturing_a_hold_moves_the_money_and_releases_the_reservation_in_one_transaction(
        app, replica_set, bank, hold):
    response = capture(app, bank, hold, "c-1", 20)  # a partial capture: 2000 of the 3000 held
    served = serve_auth(replica_set, bank.customer) + serve_steps(replica_set, capture_steps(bank, hold))

    reply = response.result(WAIT)
    assert reply.status_code == 200, reply.get_json()
    check_sessions(served, HOLD_CAPTURE)
    replica_set.assert_quiet()
    assert served[2].doc["filter"] == {"initiator": bank.customer["_id"], "idempotencyKey": "c-1"}
    assert served[3].doc["filter"] == {"_id": hold["_id"]}
    record = served[5].doc["documents"][0]
    assert (record["kind"], record["amount"], record["hold"], record["status"]) == (
        "HOLD_CAPTURE", 2000, hold["_id"], "COMPLETED")
    (won,) = served[6].doc["updates"]
    assert set(won["q"]) == {"_id", "status", "expiresAt"}
    assert (won["q"]["_id"], won["q"]["status"], set(won["q"]["expiresAt"])) == (hold["_id"], "ACTIVE", {"$gt"})
    assert won["u"]["$set"]["status"] == "CAPTURED"
    assert won["u"]["$set"]["captureTransaction"] == record["_id"]
    debit, credit = served[7].doc["updates"]
    # What the hold reserved stops being held as the money moves, in the debit's own conditional update.
    assert debit["q"] == {"_id": bank.source["_id"], "currency": "INR", "seq": 7, "lastHash": bank.source["lastHash"],
                          "user": bank.customer["_id"], "status": "ACTIVE", "balance": {"$gte": 2000},
                          **available(2000 - HELD)}
    assert debit["u"]["$inc"] == {"balance": -2000, "seq": 1, "held": -HELD}
    assert credit["q"]["seq"] == 0
    entries = served[8].doc["documents"]
    assert_chained(entries, [bank.source["lastHash"], hashchain.GENESIS])
    assert [u["u"]["$set"]["lastHash"] for u in (debit, credit)] == [e["hash"] for e in entries]
    assert reply.get_json()["hold"]["status"] == "CAPTURED"


def test_voiding_a_hold_is_one_transaction_that_releases_exactly_its_reservation(app, replica_set, bank, hold):
    response = http(app, "POST", f"/api/holds/{hold['_id']}/void", bank.customer_token)
    served = serve_auth(replica_set, bank.customer) + serve_steps(replica_set, [
        ("find", "holds", lambda got: got.cursor([hold])),
        ("update", "holds", wrote),
        ("update", "accounts", wrote),
        ("commitTransaction", None, lambda got: got.ok())])

    reply = response.result(WAIT)
    assert reply.status_code == 200, reply.get_json()
    check_sessions(served, HOLD_VOID)
    replica_set.assert_quiet()
    (won,) = served[3].doc["updates"]
    assert (won["q"]["_id"], won["q"]["status"], set(won["q"]["expiresAt"])) == (hold["_id"], "ACTIVE", {"$gt"})
    assert won["u"]["$set"]["status"] == "VOIDED"
    (release,) = served[4].doc["updates"]
    assert release["q"] == {"_id": bank.source["_id"], "held": {"$gte": HELD}}
    assert release["u"] == {"$inc": {"held": -HELD}}
    assert reply.get_json()["hold"]["status"] == "VOIDED"


def test_a_reversal_is_one_transaction_that_marks_the_original_and_moves_the_money_back(app, replica_set, bank):
    bank.source.pop("held", None)
    received(bank.target)
    original = original_transfer(bank)
    response = reverse(app, bank, original, "r-1")
    served = serve_auth(replica_set, bank.system) + serve_steps(replica_set, reverse_steps(bank, original))

    reply = response.result(WAIT)
    assert reply.status_code == 201, reply.get_json()
    check_sessions(served, REVERSE)
    replica_set.assert_quiet()
    assert served[2].doc["filter"] == {"initiator": bank.system["_id"], "idempotencyKey": "r-1"}
    assert served[3].doc["filter"] == {"_id": original["_id"]}
    record = served[5].doc["documents"][0]
    assert (record["kind"], record["amount"], record["reverses"], record["fromAccount"], record["toAccount"]) == (
        "REVERSAL", 2550, original["_id"], bank.target["_id"], bank.source["_id"])
    (marked,) = served[6].doc["updates"]
    # Of any number of concurrent reversals, one update matches.
    assert marked["q"] == {"_id": original["_id"], "status": "COMPLETED", "reversedBy": {"$exists": False}}
    assert marked["u"]["$set"]["status"] == "REVERSED"
    assert marked["u"]["$set"]["reversedBy"] == record["_id"]
    debit, credit = served[7].doc["updates"]
    # The recipient is debited under the customer rules: never driven negative, nor below what it holds.
    assert debit["q"] == {"_id": bank.target["_id"], "currency": "INR", "seq": 1, "lastHash": "c3" * 32,
                          "user": bank.target["user"], "status": "ACTIVE", "balance": {"$gte": 2550},
                          **available(2550)}
    assert credit["q"] == {"_id": bank.source["_id"], "status": "ACTIVE", "currency": "INR", "seq": 7,
                           "lastHash": bank.source["lastHash"]}
    entries = served[8].doc["documents"]
    assert_chained(entries, ["c3" * 32, bank.source["lastHash"]])
    assert {m["userId"] for m in served[9].doc["documents"]} == {bank.customer["_id"], bank.target["user"]}


def test_a_reversal_first_releases_the_recipient_s_holds_past_expiry_in_the_same_transaction(
        app, replica_set, bank):
    received(bank.target)["held"] = 2550  # all of it reserved by a hold that expired, not yet swept
    expired_hold = {"_id": ObjectId(), "amount": 2550}
    original = original_transfer(bank)
    response = reverse(app, bank, original, "r-2")
    steps = reverse_steps(bank, original)
    release: Scripted = [("find", "holds", lambda got: got.cursor([expired_hold])),
                         ("update", "holds", wrote),
                         ("update", "accounts", wrote)]
    served = serve_auth(replica_set, bank.system) + serve_steps(replica_set, [*steps[:3], *release, *steps[3:]])

    reply = response.result(WAIT)
    assert reply.status_code == 201, reply.get_json()
    check_sessions(served, [*REVERSE[:5], Step("find", "holds", INSIDE), Step("update", "holds", INSIDE),
                            Step("update", "accounts", INSIDE), *REVERSE[5:]])
    replica_set.assert_quiet()
    assert served[5].doc["filter"]["fromAccount"] == bank.target["_id"]
    (released,) = served[7].doc["updates"]
    assert released["q"] == {"_id": bank.target["_id"], "held": {"$gte": 2550}}
    assert released["u"] == {"$inc": {"held": -2550}}
    assert served[8].doc["documents"][0]["status"] == "COMPLETED"


# ------------------------------------------------------------------------------------- transient reruns


def rerun_at_every_step(replica_set: ReplicaSet, send, auth_user: dict[str, Any], steps: Scripted,
                        script: list[Step], success: int, inject: Any) -> None:
    """For every command before the commit: that command fails with ``inject``; the app aborts, reruns the
    whole transaction in the same session with the next txnNumber, and the request answers ``success``."""
    attempt_script = script[2:]
    for step in range(len(attempt_script) - 1):
        response = send(f"k-{step}")
        serve_auth(replica_set, auth_user)
        first = serve_steps(replica_set, steps, inject={step: inject})
        abort = serve_abort(replica_set)
        second = serve_steps(replica_set, steps)

        reply = response.result(WAIT)
        assert reply.status_code == success, (step, reply.get_json())
        check_sessions([*first, abort], [*attempt_script[: step + 1], ABORTED])
        check_sessions(second, attempt_script)
        (session, number), (session_again, next_number) = attempt_of(first), attempt_of(second)
        assert session_again == session, f"step {step}: the rerun left the request's session"
        assert next_number == number + 1, f"step {step}: the rerun reused a transaction number"
        replica_set.assert_quiet(0.05)


def rerun_on_commit(replica_set: ReplicaSet, send, auth_user: dict[str, Any], steps: Scripted,
                    script: list[Step], success: int) -> None:
    response = send("k-commit")
    serve_auth(replica_set, auth_user)
    first = serve_steps(replica_set, steps, inject={len(steps) - 1: TRANSIENT["NoSuchTransaction"]})
    second = serve_steps(replica_set, steps)  # a failed commit ends the transaction: nothing to abort

    assert response.result(WAIT).status_code == success
    check_sessions(first, script[2:])
    check_sessions(second, script[2:])
    assert attempt_of(second) == (attempt_of(first)[0], attempt_of(first)[1] + 1)
    replica_set.assert_quiet()


@pytest.mark.parametrize("error", TRANSIENT)
def test_a_transient_error_at_any_step_of_a_capture_reruns_the_whole_transaction(
        app, replica_set, bank, hold, error):
    rerun_at_every_step(replica_set, lambda key: capture(app, bank, hold, key), bank.customer,
                        capture_steps(bank, hold), HOLD_CAPTURE, 200, TRANSIENT[error])


@pytest.mark.parametrize("error", TRANSIENT)
def test_a_transient_error_at_any_step_of_a_reversal_reruns_the_whole_transaction(app, replica_set, bank, error):
    bank.source.pop("held", None)
    received(bank.target)
    original = original_transfer(bank)
    rerun_at_every_step(replica_set, lambda key: reverse(app, bank, original, key), bank.system,
                        reverse_steps(bank, original), REVERSE, 201, TRANSIENT[error])


def test_a_transient_commit_failure_of_a_capture_or_a_reversal_reruns_it(app, replica_set, bank, hold):
    rerun_on_commit(replica_set, lambda key: capture(app, bank, hold, key), bank.customer,
                    capture_steps(bank, hold), HOLD_CAPTURE, 200)
    bank.source.pop("held", None)
    received(bank.target)
    original = original_transfer(bank)
    rerun_on_commit(replica_set, lambda key: reverse(app, bank, original, key), bank.system,
                    reverse_steps(bank, original), REVERSE, 201)
