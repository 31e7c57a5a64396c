"""``POST /api/transactions/:id/reverse``: a correction is a new transaction, at most once per original."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from bson import ObjectId

from tests import test_faults as faults
from tests.conftest import Api
from tests.ledger_checks import assert_ledger_consistent, balance_minor, database, snapshot

INSUFFICIENT_PREFIX = "Insufficient balance. Available balance is "


def reverse(api: Api, txn_id: str, key: str | None = None, token: str | None = None, **body):
    return api.request("POST", f"/api/transactions/{txn_id}/reverse", token or api.system_token(),
                       json={"idempotencyKey": key or uuid.uuid4().hex, **body})


@pytest.fixture
def paid(api):
    """Alice paid Bob 30 out of 100; returns (alice token, alice account, bob token, bob account, txn id)."""
    _, alice = api.user("Alice")
    _, bob = api.user("Bob")
    source = api.funded_account(alice, 100)
    target = api.open_account(bob)
    response = api.transfer(alice, source, target, 30)
    assert response.status_code == 200
    return alice, source, bob, target, response.get_json()["transaction"]["_id"]


def test_a_reversal_moves_the_money_back_and_links_both_ways(app, api, paid):
    alice, source, bob, target, txn_id = paid
    response = reverse(api, txn_id, reason="sent to the wrong account")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["message"] == "Transaction reversed successfully"
    reversal = body["transaction"]
    assert (reversal["kind"], reversal["status"], reversal["reverses"]) == ("REVERSAL", "COMPLETED", txn_id)
    assert (reversal["fromAccount"], reversal["toAccount"], reversal["amount"]) == (target, source, 30)
    assert api.balance(alice, source) == 100
    assert api.balance(bob, target) == 0
    original = database(app).transactions.find_one({"_id": ObjectId(txn_id)})
    assert original["status"] == "REVERSED"
    assert str(original["reversedBy"]) == reversal["_id"]
    stored = database(app).transactions.find_one({"_id": ObjectId(reversal["_id"])})
    assert stored["reason"] == "sent to the wrong account"
    entries = sorted((e["type"], str(e["account"]), e["amount"])
                     for e in database(app).ledgers.find({"transaction": ObjectId(reversal["_id"])}))
    assert entries == [("CREDIT", source, 3000), ("DEBIT", target, 3000)]
    notices = list(database(app).notifications.find({"kind": "reversal_notice"}))
    assert sorted(n["context"]["side"] for n in notices) == ["credited", "debited"]
    assert_ledger_consistent(app)


def test_a_funding_can_be_reversed_back_to_the_system_account(app, api):
    _, token = api.user()
    account = api.open_account(token)
    funding = api.fund(account, 40)
    response = reverse(api, funding.get_json()["transaction"]["_id"])
    assert response.status_code == 201, response.get_json()
    assert api.balance(token, account) == 0
    system = database(app).accounts.find_one({"systemCurrency": "INR"})
    assert system["balance"] == 0
    # The system user's own account gets no email; the customer gets one.
    assert [n["context"]["side"] for n in database(app).notifications.find({"kind": "reversal_notice"})] == [
        "debited"]
    assert_ledger_consistent(app)


def test_the_same_key_replays_and_a_different_reason_conflicts(app, api, paid):
    *_, txn_id = paid
    key = uuid.uuid4().hex
    first = reverse(api, txn_id, key, reason="duplicate charge")
    again = reverse(api, txn_id, key, reason="duplicate charge")
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["transaction"] == first.get_json()["transaction"]
    assert reverse(api, txn_id, key, reason="something else").status_code == 422
    assert database(app).transactions.count_documents({"kind": "REVERSAL"}) == 1


@pytest.mark.parametrize("what", ["reversed", "a reversal", "failed"])
def test_only_a_completed_transfer_or_funding_can_be_reversed(app, api, paid, what):
    alice, source, _, target, txn_id = paid
    first = reverse(api, txn_id)
    if what == "reversed":
        target_id = txn_id
    elif what == "a reversal":
        target_id = first.get_json()["transaction"]["_id"]
    else:
        failed = api.transfer(alice, source, target, 10_000)
        assert failed.status_code == 400
        target_id = str(database(app).transactions.find_one({"status": "FAILED"})["_id"])
    before = snapshot(app)
    response = reverse(api, target_id)
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["message"].startswith("Transaction cannot be reversed")
    assert snapshot(app) == before


def test_a_reversal_never_drives_the_recipient_negative_and_the_refusal_replays(app, api, paid):
    alice, source, bob, target, txn_id = paid
    elsewhere = api.open_account(bob)
    assert api.transfer(bob, target, elsewhere, 20).status_code == 200  # Bob spent most of it
    key = uuid.uuid4().hex
    before = snapshot(app)
    refused = reverse(api, txn_id, key)
    assert refused.status_code == 400
    assert refused.get_json()["message"].startswith(INSUFFICIENT_PREFIX)
    after = snapshot(app)
    assert after["balances"] == before["balances"]
    assert after["ledgers"] == before["ledgers"]
    assert after["transactions"] == before["transactions"] + 1  # the refusal is recorded under the key
    assert database(app).transactions.find_one({"_id": ObjectId(txn_id)})["status"] == "COMPLETED"
    replay = reverse(api, txn_id, key)
    assert replay.status_code == 400
    assert replay.headers["Idempotent-Replayed"] == "true"
    # Once Bob holds the amount again, a new key reverses it.
    assert api.transfer(bob, elsewhere, target, 20).status_code == 200
    assert reverse(api, txn_id).status_code == 201
    assert api.balance(alice, source) == 100
    assert_ledger_consistent(app)


def test_a_frozen_party_blocks_the_reversal(app, api, paid):
    *_, target, txn_id = paid
    frozen = api.request("PATCH", f"/api/accounts/{target}", api.system_token(), json={"status": "FROZEN"})
    assert frozen.status_code == 200
    response = reverse(api, txn_id)
    assert response.status_code == 400
    assert response.get_json()["message"] == "Both accounts must be active to process the transaction"


def test_only_the_system_user_reverses(app, api, paid):
    alice, *_, txn_id = paid
    before = snapshot(app)
    response = reverse(api, txn_id, token=alice)
    assert response.status_code == 403
    assert response.get_json()["message"] == "Forbidden, user is not a system user"
    assert snapshot(app) == before


@pytest.mark.parametrize(("txn_id", "status"), [("nope", 400), ("f" * 23, 400), (str(ObjectId()), 404)])
def test_a_malformed_or_unknown_id(api, txn_id, status):
    assert reverse(api, txn_id).status_code == status


@pytest.mark.parametrize("body", [{"reason": "x" * 501}, {"reason": 5}, {"reason": "a\u0000b"},
                                  {"reason": "bidi\u202e"}, {"idempotencyKey": ""}, {"idempotencyKey": 7}])
def test_a_bad_body_is_a_400_and_changes_nothing(app, api, paid, body):
    *_, txn_id = paid
    before = snapshot(app)
    response = api.request("POST", f"/api/transactions/{txn_id}/reverse", api.system_token(),
                           json={"idempotencyKey": uuid.uuid4().hex, **body})
    assert response.status_code == 400, response.get_json()
    assert snapshot(app) == before


def test_concurrent_reversals_with_any_keys_reverse_exactly_once(app, api, paid):
    alice, source, bob, target, txn_id = paid
    system = api.system_token()
    keys = [uuid.uuid4().hex for _ in range(6)] + ["shared"] * 6

    def attempt(key: str) -> int:
        client = app.test_client()
        return client.post(f"/api/transactions/{txn_id}/reverse", json={"idempotencyKey": key},
                           headers={"Authorization": f"Bearer {system}"}).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(attempt, keys))
    assert database(app).transactions.count_documents({"kind": "REVERSAL", "status": "COMPLETED"}) == 1
    assert set(statuses) <= {201, 409}
    assert api.balance(alice, source) == 100
    assert api.balance(bob, target) == 0
    assert_ledger_consistent(app)


# ----------------------------------------------------------------------------------- fault injection

STEPS = {
    "key lookup": faults.Step("key lookup", faults.mock_collection.Collection, "find_one", "transactions"),
    "account read": faults.Step("account read", faults.mock_collection.Collection, "find", "accounts"),
    "record insert": faults.Step("record insert", faults.mock_collection.Collection, "insert_one", "transactions"),
    "original update": faults.Step("original update", faults.mock_collection.Collection, "update_one",
                                   "transactions"),
    "money moves": faults.Step("money moves", faults.mock_collection.Collection, "bulk_write", "accounts"),
    "ledger insert": faults.Step("ledger insert", faults.mock_collection.Collection, "insert_many", "ledgers"),
    "outbox insert": faults.Step("outbox insert", faults.mock_collection.Collection, "insert_many",
                                 "notifications"),
    "commit": faults.Step("commit", faults.mock_session.ClientSession, "commit_transaction", None),
}


@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("step", list(STEPS))
def test_a_transient_error_at_any_step_reruns_and_reverses_once(app, api, paid, monkeypatch, step, after):
    alice, source, bob, target, txn_id = paid
    fault = faults.inject(monkeypatch, STEPS[step], faults.transient_error, times=1, after=after)
    response = reverse(api, txn_id)
    assert fault.raised == 1
    assert response.status_code == 201, response.get_json()
    assert database(app).transactions.count_documents({"kind": "REVERSAL"}) == 1
    assert api.balance(alice, source) == 100
    assert api.balance(bob, target) == 0
    assert_ledger_consistent(app)


@pytest.mark.parametrize("step", list(STEPS))
def test_a_plain_error_at_any_step_writes_nothing_and_the_key_still_works(app, api, paid, monkeypatch, step):
    alice, source, _, _, txn_id = paid
    before = snapshot(app)
    fault = faults.inject(monkeypatch, STEPS[step], faults.plain_error, times=1)
    key = uuid.uuid4().hex
    response = reverse(api, txn_id, key)
    assert fault.raised == 1
    assert response.status_code == 500
    assert snapshot(app) == before
    assert database(app).transactions.find_one({"_id": ObjectId(txn_id)})["status"] == "COMPLETED"
    monkeypatch.undo()
    assert reverse(api, txn_id, key).status_code == 201
    assert balance_minor(app, source) == 10000
    assert_ledger_consistent(app)


def test_a_hold_past_expiry_on_the_recipient_does_not_block_a_reversal(app, api, paid):
    """Expiry is exact without the sweep: a reversal, like a transfer, releases the recipient's expired holds in
    its own transaction instead of counting them (it used to be refused, and the refusal replayed for ever)."""
    from datetime import UTC, datetime, timedelta

    alice, source, bob, target, txn_id = paid
    held = api.request("POST", "/api/holds", bob, json={"fromAccount": target, "toAccount": source, "amount": 30,
                                                        "idempotencyKey": uuid.uuid4().hex})
    assert held.status_code == 201, held.get_json()
    hold_id = ObjectId(held.get_json()["hold"]["_id"])
    database(app).holds.update_one({"_id": hold_id}, {"$set": {"expiresAt": datetime.now(UTC) - timedelta(seconds=1)}})

    response = reverse(api, txn_id)
    assert response.status_code == 201, response.get_json()
    assert api.balance(alice, source) == 100
    assert api.balance(bob, target) == 0
    assert database(app).holds.find_one({"_id": hold_id})["status"] == "EXPIRED"
    assert database(app).accounts.find_one({"_id": ObjectId(target)})["held"] == 0
    assert_ledger_consistent(app)
