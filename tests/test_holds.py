"""Holds through the API: reserve, capture (all or part), void, expire — and the races between them."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from bson import ObjectId

from ledger.services import audit
from ledger.services import holds as hold_service
from tests import test_faults as faults
from tests.conftest import Api
from tests.ledger_checks import assert_ledger_consistent, database, snapshot

INSUFFICIENT_PREFIX = "Insufficient balance. Available balance is "


class Holds:
    def __init__(self, api: Api) -> None:
        self.api = api

    def create(self, token, source, target, amount, key=None, **extra):
        return self.api.request("POST", "/api/holds", token, json={
            "fromAccount": source, "toAccount": target, "amount": amount,
            "idempotencyKey": key or uuid.uuid4().hex, **extra})

    def capture(self, token, hold_id, amount=None, key=None):
        body = {"idempotencyKey": key or uuid.uuid4().hex}
        if amount is not None:
            body["amount"] = amount
        return self.api.request("POST", f"/api/holds/{hold_id}/capture", token, json=body)

    def void(self, token, hold_id):
        return self.api.request("POST", f"/api/holds/{hold_id}/void", token, json={})

    def get(self, token, hold_id):
        return self.api.request("GET", f"/api/holds/{hold_id}", token)

    def available(self, token, account):
        response = self.api.request("GET", f"/api/accounts/balance/{account}", token)
        body = response.get_json()
        return body["balance"], body["availableBalance"]


@pytest.fixture
def h(api):
    return Holds(api)


@pytest.fixture
def shop(api):
    """A customer with 100 and a merchant with an empty account."""
    _, customer = api.user("Customer")
    _, merchant = api.user("Merchant")
    return customer, api.funded_account(customer, 100), merchant, api.open_account(merchant)


def expire(app, hold_id: str) -> None:
    """Move a hold's expiry into the past, as the clock would."""
    past = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=1)
    database(app).holds.update_one({"_id": ObjectId(hold_id)}, {"$set": {"expiresAt": past}})


def assert_invariants(app):
    for account in database(app).accounts.find({"systemCurrency": {"$exists": False}}):
        held = account.get("held", 0)
        active = sum(x["amount"] for x in database(app).holds.find({"fromAccount": account["_id"],
                                                                    "status": "ACTIVE"}))
        assert held == active, account
        assert 0 <= account["balance"] - held <= account["balance"], account
    assert_ledger_consistent(app)


def test_a_hold_reserves_without_moving_money(app, h, shop):
    customer, source, merchant, target = shop
    response = h.create(customer, source, target, 30, expiresInSeconds=600)
    assert response.status_code == 201, response.get_json()
    hold = response.get_json()["hold"]
    assert set(hold) == {"_id", "fromAccount", "toAccount", "amount", "currency", "status", "expiresAt",
                         "createdAt", "updatedAt"}
    assert (hold["status"], hold["amount"], hold["currency"]) == ("ACTIVE", 30, "INR")
    assert h.available(customer, source) == (100, 70)
    assert h.available(merchant, target) == (0, 0)
    account = h.api.request("GET", f"/api/accounts/{source}", customer).get_json()["account"]
    assert (account["balance"], account["availableBalance"]) == (100, 70)
    # A transfer sees only what is available.
    refused = h.api.transfer(customer, source, target, 71)
    assert refused.status_code == 400
    assert refused.get_json()["message"] == ("Insufficient balance. Available balance is 70. "
                                              "Required balance is 71")
    assert h.api.transfer(customer, source, target, 70).status_code == 200
    assert h.available(customer, source) == (30, 0)
    listed = h.api.request("GET", f"/api/accounts/{source}/holds", customer).get_json()["holds"]
    assert [x["_id"] for x in listed] == [hold["_id"]]
    assert_invariants(app)


def test_creating_is_idempotent_and_refusals_replay(app, h, shop):
    customer, source, _, target = shop
    key = uuid.uuid4().hex
    first = h.create(customer, source, target, 30, key)
    again = h.create(customer, source, target, 30, key)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert h.create(customer, source, target, 31, key).status_code == 422
    assert h.available(customer, source) == (100, 70)
    refused_key = uuid.uuid4().hex
    refused = h.create(customer, source, target, 71, refused_key)
    assert refused.status_code == 400
    assert refused.get_json()["message"].startswith(INSUFFICIENT_PREFIX)
    h.void(customer, first.get_json()["hold"]["_id"])
    replay = h.create(customer, source, target, 71, refused_key)  # still refused: the answer was recorded
    assert replay.status_code == 400
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert_invariants(app)


def test_full_capture_moves_the_money_once(app, h, shop):
    customer, source, merchant, target = shop
    hold_id = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    key = uuid.uuid4().hex
    response = h.capture(customer, hold_id, key=key)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["hold"]["status"] == "CAPTURED"
    assert body["hold"]["capturedAmount"] == 30
    txn = body["transaction"]
    assert (txn["kind"], txn["hold"], txn["amount"], txn["fromAccount"], txn["toAccount"]) == (
        "HOLD_CAPTURE", hold_id, 30, source, target)
    assert h.available(customer, source) == (70, 70)
    assert h.available(merchant, target) == (30, 30)
    replay = h.capture(customer, hold_id, key=key)
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == body
    again = h.capture(customer, hold_id)
    assert again.status_code == 409
    assert again.get_json()["message"] == "Hold is CAPTURED"
    assert h.void(customer, hold_id).status_code == 409
    assert h.available(customer, source) == (70, 70)
    assert_invariants(app)


def test_partial_capture_releases_the_rest(app, h, shop):
    customer, source, merchant, target = shop
    hold_id = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    assert h.capture(customer, hold_id, amount=40).status_code == 400  # more than held
    response = h.capture(customer, hold_id, amount=12.5)
    assert response.status_code == 200
    assert response.get_json()["hold"]["capturedAmount"] == 12.5
    assert h.available(customer, source) == (87.5, 87.5)
    assert h.available(merchant, target) == (12.5, 12.5)
    assert_invariants(app)


def test_void_releases_and_is_final(app, h, shop):
    customer, source, _, target = shop
    hold_id = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    response = h.void(customer, hold_id)
    assert response.status_code == 200
    assert response.get_json()["hold"]["status"] == "VOIDED"
    assert h.available(customer, source) == (100, 100)
    assert h.void(customer, hold_id).get_json()["message"] == "Hold is VOIDED"
    assert h.capture(customer, hold_id).status_code == 409
    assert_invariants(app)


def test_an_expired_hold_stops_counting_before_any_sweep(app, h, shop):
    customer, source, _, target = shop
    hold_id = h.create(customer, source, target, 60).get_json()["hold"]["_id"]
    expire(app, hold_id)
    assert h.get(customer, hold_id).get_json()["hold"]["status"] == "EXPIRED"
    assert h.available(customer, source) == (100, 100)
    assert h.api.request("GET", f"/api/accounts/{source}/holds", customer).get_json()["holds"] == []
    assert h.capture(customer, hold_id).get_json()["message"] == "Hold is EXPIRED"
    assert h.void(customer, hold_id).status_code == 409
    # The next debit releases it in its own transaction: all 100 can move.
    assert h.api.transfer(customer, source, target, 100).status_code == 200
    stored = database(app).holds.find_one({"_id": ObjectId(hold_id)})
    assert stored["status"] == "EXPIRED"
    assert database(app).accounts.find_one({"_id": ObjectId(source)})["held"] == 0
    assert_invariants(app)


def test_the_sweep_marks_expired_holds_and_releases_them(app, h, shop):
    customer, source, _, target = shop
    expired = [h.create(customer, source, target, 10).get_json()["hold"]["_id"] for _ in range(3)]
    live = h.create(customer, source, target, 10).get_json()["hold"]["_id"]
    for hold_id in expired:
        expire(app, hold_id)
    with app.app_context():
        assert hold_service.expire_due() == 1  # one account tidied
        assert hold_service.expire_due() == 0  # nothing left to do
    statuses = {str(x["_id"]): x["status"] for x in database(app).holds.find({})}
    assert [statuses[x] for x in expired] == ["EXPIRED"] * 3
    assert statuses[live] == "ACTIVE"
    assert database(app).accounts.find_one({"_id": ObjectId(source)})["held"] == 1000  # minor units
    assert_invariants(app)


def test_who_sees_and_who_acts(app, h, shop):
    customer, source, merchant, target = shop
    hold_id = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    _, stranger = h.api.user("Stranger")
    assert h.get(merchant, hold_id).status_code == 200  # the receiving side may look
    assert h.get(stranger, hold_id).status_code == 404
    assert h.get(customer, str(ObjectId())).get_json() == h.get(stranger, hold_id).get_json()
    for actor in (merchant, stranger, h.api.system_token()):
        assert h.capture(actor, hold_id).status_code == 404
        assert h.void(actor, hold_id).status_code == 404
    assert h.api.request("GET", f"/api/accounts/{source}/holds", merchant).status_code == 404
    assert h.get(customer, "not-an-id").status_code == 400
    # A hold on someone else's account does not exist for the caller.
    assert h.create(merchant, source, target, 1).get_json()["message"] == "One or both accounts not found"
    assert_invariants(app)


@pytest.mark.parametrize("extra", [{"expiresInSeconds": 59}, {"expiresInSeconds": 604_801},
                                   {"expiresInSeconds": True}, {"expiresInSeconds": 90.5},
                                   {"expiresInSeconds": "600"}, {"amount": 0}, {"amount": -1},
                                   {"amount": 1.001}, {"idempotencyKey": ""}])
def test_bad_requests_are_400_and_change_nothing(app, h, shop, extra):
    customer, source, _, target = shop
    before = snapshot(app)
    response = h.api.request("POST", "/api/holds", customer, json={
        "fromAccount": source, "toAccount": target, "amount": 5, "idempotencyKey": uuid.uuid4().hex, **extra})
    assert response.status_code == 400, response.get_json()
    assert snapshot(app) == before
    assert database(app).holds.count_documents({}) == 0


def test_a_frozen_accounts_hold_can_be_voided_not_captured(app, h, shop):
    customer, source, _, target = shop
    first = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    second = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    system = h.api.system_token()
    assert h.api.request("PATCH", f"/api/accounts/{source}", system, json={"status": "FROZEN"}).status_code == 200
    refused = h.capture(customer, first)
    assert refused.status_code == 400
    assert refused.get_json()["message"] == "Both accounts must be active to process the transaction"
    assert h.void(customer, second).status_code == 200
    assert h.create(customer, source, target, 1).status_code == 400
    assert_invariants(app)


def test_an_account_closes_only_once_its_hold_is_settled(app, h, api):
    _, token = api.user()
    account = api.funded_account(token, 10)
    other = api.open_account(token)
    hold_id = h.create(token, account, other, 10).get_json()["hold"]["_id"]
    close = {"status": "CLOSED"}
    assert api.request("PATCH", f"/api/accounts/{account}", token, json=close).status_code == 400
    assert h.capture(token, hold_id).status_code == 200  # moves everything out: balance 0, nothing held
    assert api.request("PATCH", f"/api/accounts/{account}", token, json=close).status_code == 200
    assert_invariants(app)


def test_capture_void_and_expiry_race_and_exactly_one_wins(app, h, shop):
    customer, source, merchant, target = shop
    for _ in range(8):
        hold_id = h.create(customer, source, target, 5).get_json()["hold"]["_id"]
        barrier = threading.Barrier(3)

        def act(which: str, hold_id: str = hold_id, barrier: threading.Barrier = barrier) -> tuple[str, int]:
            client = app.test_client()
            headers = {"Authorization": f"Bearer {customer}"}
            barrier.wait()
            if which == "capture":
                return which, client.post(f"/api/holds/{hold_id}/capture", headers=headers,
                                          json={"idempotencyKey": uuid.uuid4().hex}).status_code
            if which == "void":
                return which, client.post(f"/api/holds/{hold_id}/void", headers=headers, json={}).status_code
            with app.app_context():
                expire(app, hold_id)
                hold_service.expire_due()
            return which, 0

        with ThreadPoolExecutor(max_workers=3) as pool:
            results = dict(pool.map(act, ["capture", "void", "expire"]))
        final = database(app).holds.find_one({"_id": ObjectId(hold_id)})["status"]
        winners = [w for w in ("capture", "void") if results[w] == 200]
        assert len(winners) <= 1, results
        assert {results["capture"], results["void"]} <= {200, 409}
        assert final == {"capture": "CAPTURED", "void": "VOIDED"}.get(winners[0] if winners else "", "EXPIRED")
        assert_invariants(app)


def test_transfers_racing_a_hold_for_the_last_of_the_balance(app, h, shop):
    customer, source, _, target = shop
    headers = {"Authorization": f"Bearer {customer}"}

    def act(index: int) -> int:
        client = app.test_client()
        if index % 2:
            return client.post("/api/holds", headers=headers, json={
                "fromAccount": source, "toAccount": target, "amount": 30,
                "idempotencyKey": uuid.uuid4().hex}).status_code
        return client.post("/api/transactions", headers=headers, json={
            "fromAccount": source, "toAccount": target, "amount": 30,
            "idempotencyKey": uuid.uuid4().hex}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(act, range(8)))
    assert statuses.count(200) + statuses.count(201) == 3  # 3 x 30 fit in 100, a fourth never does
    balance, available = h.available(customer, source)
    assert available == 10
    assert balance == 100 - 30 * statuses.count(200)
    assert_invariants(app)


# ----------------------------------------------------------------------------------- fault injection

Collection, Session = faults.mock_collection.Collection, faults.mock_session.ClientSession
CAPTURE_STEPS = {
    "key lookup": faults.Step("key lookup", Collection, "find_one", "transactions"),
    "hold read": faults.Step("hold read", Collection, "find_one", "holds"),
    "account read": faults.Step("account read", Collection, "find", "accounts"),
    "record insert": faults.Step("record insert", Collection, "insert_one", "transactions"),
    "hold update": faults.Step("hold update", Collection, "update_one", "holds"),
    "money moves": faults.Step("money moves", Collection, "bulk_write", "accounts"),
    "ledger insert": faults.Step("ledger insert", Collection, "insert_many", "ledgers"),
    "commit": faults.Step("commit", Session, "commit_transaction", None),
}
CREATE_STEPS = {
    "account read": faults.Step("account read", Collection, "find", "accounts"),
    "hold insert": faults.Step("hold insert", Collection, "insert_one", "holds"),
    "reservation": faults.Step("reservation", Collection, "update_one", "accounts"),
    "commit": faults.Step("commit", Session, "commit_transaction", None),
}
VOID_STEPS = {
    "hold read": faults.Step("hold read", Collection, "find_one", "holds"),
    "hold update": faults.Step("hold update", Collection, "update_one", "holds"),
    "release": faults.Step("release", Collection, "update_one", "accounts"),
    "commit": faults.Step("commit", Session, "commit_transaction", None),
}


def transient_cases(steps: dict) -> list[tuple[str, bool]]:
    """Each step, failing before and after its real call; a commit's transient error means it did not happen."""
    return [(step, after) for step in steps for after in (False, True) if not (step == "commit" and after)]


@pytest.mark.parametrize(("step", "after"), transient_cases(CREATE_STEPS))
def test_create_survives_a_transient_error_at_any_step(app, h, shop, monkeypatch, step, after):
    customer, source, _, target = shop
    fault = faults.inject(monkeypatch, CREATE_STEPS[step], faults.transient_error, after=after)
    assert h.create(customer, source, target, 30).status_code == 201
    assert fault.raised == 1
    assert database(app).holds.count_documents({}) == 1
    assert h.available(customer, source) == (100, 70)
    assert_invariants(app)


@pytest.mark.parametrize(("step", "after"), transient_cases(CAPTURE_STEPS))
def test_capture_survives_a_transient_error_at_any_step(app, h, shop, monkeypatch, step, after):
    customer, source, merchant, target = shop
    hold_id = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    fault = faults.inject(monkeypatch, CAPTURE_STEPS[step], faults.transient_error, after=after)
    assert h.capture(customer, hold_id).status_code == 200
    assert fault.raised == 1
    assert h.available(customer, source) == (70, 70)
    assert database(app).transactions.count_documents({"kind": "HOLD_CAPTURE"}) == 1
    assert_invariants(app)


@pytest.mark.parametrize(("step", "after"), transient_cases(VOID_STEPS))
def test_void_survives_a_transient_error_at_any_step(app, h, shop, monkeypatch, step, after):
    customer, source, _, target = shop
    hold_id = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    fault = faults.inject(monkeypatch, VOID_STEPS[step], faults.transient_error, after=after)
    assert h.void(customer, hold_id).status_code == 200
    assert fault.raised == 1
    assert h.available(customer, source) == (100, 100)
    assert_invariants(app)


@pytest.mark.parametrize(("steps", "action"), [(CREATE_STEPS, "create"), (CAPTURE_STEPS, "capture"),
                                               (VOID_STEPS, "void")])
def test_a_plain_error_at_any_step_writes_nothing(app, h, shop, monkeypatch, steps, action):
    customer, source, _, target = shop
    hold_id = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    for step in steps.values():
        before = snapshot(app)
        holds_before = list(database(app).holds.find({}))
        with monkeypatch.context() as patch:
            fault = faults.inject(patch, step, faults.plain_error)
            if action == "create":
                response = h.create(customer, source, target, 30)
            elif action == "capture":
                response = h.capture(customer, hold_id)
            else:
                response = h.void(customer, hold_id)
        assert fault.raised == 1, step.name
        assert response.status_code == 500, (step.name, response.get_json())
        assert snapshot(app) == before, step.name
        assert list(database(app).holds.find({})) == holds_before, step.name
    assert_invariants(app)


@pytest.mark.parametrize("tamper", ["held without a hold", "hold without held", "held beyond balance"])
def test_verify_names_a_held_amount_the_holds_do_not_explain(app, h, shop, tamper):
    customer, source, _, target = shop
    hold_id = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    accounts, holds = database(app).accounts, database(app).holds
    if tamper == "held without a hold":
        holds.update_one({"_id": ObjectId(hold_id)}, {"$set": {"status": "VOIDED"}})
    elif tamper == "hold without held":
        accounts.update_one({"_id": ObjectId(source)}, {"$set": {"held": 0}})
    else:
        accounts.update_one({"_id": ObjectId(source)}, {"$set": {"held": 20000}})
        holds.update_one({"_id": ObjectId(hold_id)}, {"$set": {"amount": 20000}})
    with app.app_context():
        problems = audit.verify().problems
    assert problems
    assert all(p.check == "held" and str(p.account) == source for p in problems), problems


def test_a_duplicate_key_on_a_captures_entries_is_a_logged_503_that_writes_nothing(app, h, shop, monkeypatch, caplog):
    from pymongo.errors import BulkWriteError

    customer, source, _, target = shop
    hold_id = h.create(customer, source, target, 30).get_json()["hold"]["_id"]
    before = snapshot(app)

    def duplicate() -> BulkWriteError:
        return BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000 (injected)",
                                                "keyPattern": {"account": 1, "seq": 1}}]})

    fault = faults.inject(monkeypatch, CAPTURE_STEPS["ledger insert"], duplicate)
    response = h.capture(customer, hold_id)
    assert fault.raised == 1
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "unexpected duplicate key capturing a hold" in caplog.text
    assert snapshot(app) == before
    assert h.get(customer, hold_id).get_json()["hold"]["status"] == "ACTIVE"
