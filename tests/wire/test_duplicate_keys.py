"""Duplicate keys as a MongoDB server reports them (E11000 with ``keyPattern``/``keyValue``), and what each means.

* on the caller-scoped idempotency index ``(initiator, idempotencyKey)`` → the transaction is aborted and the
  stored record is read back: a replay (200 + ``Idempotent-Replayed``), the first attempt's business rejection
  again, 422 for a different request under the key, or 409 ``Retry-After`` while the first is not committed;
* on any other index (ledger sequence, outbox dedupe key, system account, the Node service's *global*
  ``idempotencyKey`` index of an unmigrated database) → logged, 503 with ``Retry-After``: never a replay of a
  record that does not exist under this caller;
* on ``users.email`` at registration → 422 ``EmailAlreadyExists``; on the blocklist at logout → already revoked.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ledger.services.transfers import fingerprint
from tests.wire.bank import (
    ABORT,
    REGISTER,
    TRANSFER,
    Bank,
    Step,
    check_sessions,
    duplicate_key,
    serve_abort,
    serve_attempt,
    serve_auth,
)
from tests.wire.replset import WAIT, ReplicaSet, http

ATTEMPT = TRANSFER[2:]


@pytest.fixture
def bank(app):
    return Bank(app)


def stored_record(bank: Bank, key: str, **changes: Any) -> dict[str, Any]:
    """The transaction record a first request with ``key`` left on the server."""
    from decimal import Decimal

    from bson import ObjectId

    from ledger.models import utcnow

    now = utcnow()
    record = {"_id": ObjectId(), "kind": "TRANSFER", "fromAccount": bank.source["_id"], "toAccount": bank.target["_id"],
              "amount": 2500, "currency": "INR", "status": "COMPLETED", "idempotencyKey": key,
              "initiator": bank.customer["_id"], "failure": {}, "createdAt": now, "updatedAt": now,
              "fingerprint": fingerprint("TRANSFER", bank.source["_id"], bank.target["_id"], Decimal(25))}
    record.update(changes)
    return record


def transfer_meeting_the_idempotency_index(app, replica_set: ReplicaSet, bank: Bank, key: str,
                                           stored: dict[str, Any] | None, amount: Any = 25):
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body(key, amount))
    serve_auth(replica_set, bank.customer)
    served = serve_attempt(replica_set, bank, inject={1: duplicate_key})
    served.append(serve_abort(replica_set))
    read = replica_set.expect("find", "transactions").cursor([stored] if stored else [])
    check_sessions(served, [*ATTEMPT[:2], Step("abortTransaction", None, ABORT)])
    assert "txnNumber" not in read.doc  # the replay read runs after the aborted transaction, outside it
    reply = response.result(WAIT)
    replica_set.assert_quiet()
    return reply


def test_the_idempotency_index_means_a_replay_of_the_stored_transfer(app, replica_set, bank):
    stored = stored_record(bank, "dup-1")

    reply = transfer_meeting_the_idempotency_index(app, replica_set, bank, "dup-1", stored)

    assert reply.status_code == 200
    assert reply.headers["Idempotent-Replayed"] == "true"
    assert reply.get_json()["message"] == "Transaction already processed"
    assert reply.get_json()["transaction"]["_id"] == str(stored["_id"])


def test_the_idempotency_index_with_a_recorded_rejection_replays_the_rejection(app, replica_set, bank):
    stored = stored_record(bank, "dup-2", status="FAILED",
                           failure={"code": "INSUFFICIENT_FUNDS", "message": "Insufficient balance. Available "
                                    "balance is 1.00. Required balance is 25.00"})

    reply = transfer_meeting_the_idempotency_index(app, replica_set, bank, "dup-2", stored)

    assert reply.status_code == 400
    assert reply.get_json()["message"].startswith("Insufficient balance")


def test_the_idempotency_index_with_a_different_request_under_the_key_is_422(app, replica_set, bank):
    stored = stored_record(bank, "dup-3")

    reply = transfer_meeting_the_idempotency_index(app, replica_set, bank, "dup-3", stored, amount=26)

    assert reply.status_code == 422


def test_the_idempotency_index_with_nothing_committed_yet_is_409_retry_after(app, replica_set, bank):
    reply = transfer_meeting_the_idempotency_index(app, replica_set, bank, "dup-4", None)

    assert reply.status_code == 409
    assert reply.headers["Retry-After"] == "1"


def test_an_old_server_s_duplicate_key_without_key_pattern_is_recognized_by_the_index_name(app, replica_set, bank):
    stored = stored_record(bank, "dup-5")
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body("dup-5"))
    serve_auth(replica_set, bank.customer)
    serve_attempt(replica_set, bank, inject={1: lambda got: got.write_error(
        11000, "E11000 duplicate key error collection: ledger-wire.transactions index: "
               "initiator_1_idempotencyKey_1 dup key: { : ObjectId('0'), : \"dup-5\" }")})
    serve_abort(replica_set)
    replica_set.expect("find", "transactions").cursor([stored])

    assert response.result(WAIT).status_code == 200


# Any other unique index a transfer's or funding's writes can meet.
OTHER_INDEXES = {
    "ledger sequence": (3, "account_1_seq_1", {"account": 1, "seq": 1}),
    "outbox dedupe key": (4, "dedupeKey_1", {"dedupeKey": 1}),
    "Node's global idempotencyKey (unmigrated)": (1, "idempotencyKey_1", {"idempotencyKey": 1}),
}


@pytest.mark.parametrize("index", OTHER_INDEXES)
def test_a_duplicate_key_on_any_other_index_is_logged_and_answers_503(app, replica_set, bank, index, caplog):
    step, name, pattern = OTHER_INDEXES[index]
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body(f"other-{step}"))
    serve_auth(replica_set, bank.customer)
    served = serve_attempt(replica_set, bank, inject={step: lambda got: duplicate_key(got, name, pattern)})
    served.append(serve_abort(replica_set))

    with caplog.at_level(logging.ERROR, logger="ledger.services.transfers"):
        reply = response.result(WAIT)
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"
    check_sessions(served, [*ATTEMPT[: step + 1], Step("abortTransaction", None, ABORT)])
    assert any("unexpected duplicate key" in record.getMessage() for record in caplog.records)
    replica_set.assert_quiet()  # no replay read: there is no record under this caller to replay


def test_the_first_funding_meeting_another_system_account_answers_503(app, replica_set, bank):
    response = http(app, "POST", "/api/transactions/system/initial-funds", bank.system_token,
                    json=bank.funding_body("sys-dup"))
    serve_auth(replica_set, bank.system)
    replica_set.expect("find", "accounts").cursor([bank.target])
    duplicate_key(replica_set.expect("insert", "accounts"), "systemCurrency_1", {"systemCurrency": 1})
    serve_abort(replica_set)

    assert response.result(WAIT).status_code == 503
    replica_set.assert_quiet()


def test_register_meeting_the_email_index_is_422_and_aborts(app, replica_set):
    response = http(app, "POST", "/api/auth/register",
                    json={"email": "taken@example.test", "password": "password-123", "name": "T"})
    served = [duplicate_key(replica_set.expect("insert", "users"), "email_1", {"email": 1}),
              serve_abort(replica_set)]

    reply = response.result(WAIT)
    assert reply.status_code == 422
    assert reply.get_json()["message"] == "Email already exists in the database"
    check_sessions(served, [REGISTER[0], Step("abortTransaction", None, ABORT)])
    replica_set.assert_quiet()


def test_logout_meeting_a_concurrent_revocation_of_the_same_token_is_still_200(app, replica_set, bank):
    response = http(app, "POST", "/api/auth/logout", bank.customer_token)
    replica_set.expect("update", "tokenblacklists").write_error(
        11000, "E11000 duplicate key error collection: ledger-wire.tokenblacklists index: tokenHash_1",
        keyPattern={"tokenHash": 1})

    assert response.result(WAIT).status_code == 200
    replica_set.assert_quiet()
