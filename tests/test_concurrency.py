"""Concurrent requests on the embedded engine: no double spend, no lost update, exactly once per key.

Every thread has its own test client and all of them start together behind a barrier, so requests really
overlap inside the service (the engine then serializes their database work, as a replica set's write locks
would make conflicting transactions retry).
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from bson import ObjectId

from tests.conftest import Api, unique_email
from tests.ledger_checks import assert_ledger_consistent, balance_minor, count, database

INSUFFICIENT_PREFIX = "Insufficient balance. Available balance is "


def run_together(app, workers: int, action: Callable[[Api, int], Any]) -> list[Any]:
    """Run ``action(api, index)`` on ``workers`` threads released at once; return results in index order."""
    barrier = threading.Barrier(workers, timeout=30)

    def work(index: int) -> Any:
        api = Api(app.test_client())
        barrier.wait()
        return action(api, index)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, i) for i in range(workers)]
        return [f.result(timeout=60) for f in futures]


def test_concurrent_withdrawals_from_one_account_never_overdraw_it(app, api):
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(token)
    workers, amount = 20, 7  # 100 // 7 == 14 can succeed

    results = run_together(app, workers, lambda client, _: client.transfer(token, source, target, amount))

    statuses = Counter(r.status_code for r in results)
    assert statuses == {200: 14, 400: 6}, statuses
    refusals = [r.get_json()["message"] for r in results if r.status_code == 400]
    assert all(m.startswith(INSUFFICIENT_PREFIX) for m in refusals), refusals
    assert balance_minor(app, source) == 200
    assert balance_minor(app, target) == 9800
    assert count(app, "ledgers", {"account": ObjectId(source), "type": "DEBIT"}) == 14
    assert_ledger_consistent(app)


def test_racers_sharing_one_key_produce_exactly_one_transfer(app, api):
    _, token = api.user()
    source = api.funded_account(token, 1000)
    target = api.open_account(token)
    shared_key = f"race-{uuid.uuid4().hex}"
    workers = 24

    results = run_together(app, workers, lambda client, _: client.transfer(token, source, target, 10, key=shared_key))

    statuses = Counter(r.status_code for r in results)
    assert set(statuses) <= {200, 409}, statuses
    completed = [r for r in results if r.status_code == 200]
    assert len({r.get_json()["transaction"]["_id"] for r in completed}) == 1
    fresh = [r for r in completed if "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1
    assert all(r.get_json()["message"] == "Transaction already processed" for r in completed if r not in fresh)
    for pending in (r for r in results if r.status_code == 409):
        assert pending.get_json()["message"] == "Transaction is still pending"
    records = list(database(app).transactions.find({"idempotencyKey": shared_key}))
    assert len(records) == 1
    assert count(app, "ledgers", {"transaction": records[0]["_id"]}) == 2
    assert count(app, "notifications", {"context.transactionId": str(records[0]["_id"])}) == 2
    assert balance_minor(app, source) == 99000
    assert balance_minor(app, target) == 1000
    assert_ledger_consistent(app)


def test_random_transfers_among_hot_accounts_conserve_money_and_lose_no_update(app, api):
    owners = [api.user() for _ in range(3)]
    accounts = [api.funded_account(token, 500) for _, token in owners]
    tokens = [token for _, token in owners]
    workers, per_worker = 8, 25

    def work(client: Api, index: int) -> list[tuple[int, int, int, int]]:
        rng = random.Random(index)
        done = []
        for _ in range(per_worker):
            src, dst = rng.sample(range(3), 2)
            cents = rng.randint(1, 20000)
            response = client.transfer(tokens[src], accounts[src], accounts[dst], Decimal(cents).scaleb(-2))
            assert response.status_code in (200, 400), response.get_json()
            if response.status_code == 400:
                assert response.get_json()["message"].startswith(INSUFFICIENT_PREFIX)
            done.append((response.status_code, src, dst, cents))
        return done

    outcomes = [o for batch in run_together(app, workers, work) for o in batch]

    assert len(outcomes) == workers * per_worker
    expected = [50000] * 3
    for status, src, dst, cents in outcomes:
        if status == 200:
            expected[src] -= cents
            expected[dst] += cents
    assert [balance_minor(app, a) for a in accounts] == expected  # every accepted transfer applied once
    assert sum(expected) == 150000
    assert min(expected) >= 0
    succeeded = sum(1 for o in outcomes if o[0] == 200)
    assert succeeded > 0
    assert count(app, "ledgers") == 2 * (succeeded + 3)  # plus the three initial fundings
    assert_ledger_consistent(app)


def test_concurrent_first_fundings_in_a_new_currency_open_one_system_account(app, api):
    _, token = api.user()
    targets = [api.open_account(token, currency="GBP") for _ in range(12)]
    api.system_token()

    results = run_together(app, len(targets), lambda client, i: client.request(
        "POST", "/api/transactions/system/initial-funds", api.system_token(),
        json={"toAccount": targets[i], "amount": 10 + i, "idempotencyKey": uuid.uuid4().hex}))

    assert [r.status_code for r in results] == [201] * len(targets)
    [system_account] = list(database(app).accounts.find({"systemCurrency": "GBP"}))
    assert system_account["balance"] == -sum((10 + i) * 100 for i in range(len(targets)))
    assert [balance_minor(app, t) for t in targets] == [(10 + i) * 100 for i in range(len(targets))]
    assert_ledger_consistent(app)


def test_concurrent_registrations_with_one_email_create_one_user(app, api):
    email = unique_email("race")
    workers = 12

    results = run_together(app, workers, lambda client, _: client.request(
        "POST", "/api/auth/register", json={"email": email, "password": "password-123", "name": "Racer"}))

    statuses = Counter(r.status_code for r in results)
    assert statuses == {201: 1, 422: workers - 1}, statuses
    assert {r.get_json()["message"] for r in results if r.status_code == 422} == {
        "Email already exists in the database"}
    assert count(app, "users", {"email": email}) == 1
