"""Account lifecycle racing money over real HTTP (gunicorn, one worker, 16 threads, the embedded engine).

A freeze races a stream of transfers out of the account; a close races a credit into it. Each race is decided
by whichever conditional update lands first, and every outcome is checked through the API alone.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.gunicorn_process import running_gunicorn
from tests.test_e2e_transfers import Bank, Client, Reply, Server, run_together, transfer

pytestmark = pytest.mark.e2e

SYSTEM_EMAIL = "system-e2e-lifecycle@ledger.test"
SYSTEM_PASSWORD = "system-e2e-lifecycle-1"
INACTIVE = "Both accounts must be active to process the transaction"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    environment = {
        "JWT_SECRET": uuid.uuid4().hex * 2,
        "SYSTEM_USER_EMAIL": SYSTEM_EMAIL,
        "SYSTEM_USER_PASSWORD": SYSTEM_PASSWORD,
        "SYSTEM_USER_NAME": "E2E Lifecycle System",
        "RATELIMIT_ENABLED": "false",
    }
    with running_gunicorn(tmp_path_factory.mktemp("gunicorn-lifecycle"), environment) as running:
        yield Server(running)


@pytest.fixture
def bank(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bank]:
    monkeypatch.setattr("tests.test_e2e_transfers.SYSTEM_EMAIL", SYSTEM_EMAIL)
    monkeypatch.setattr("tests.test_e2e_transfers.SYSTEM_PASSWORD", SYSTEM_PASSWORD)
    helper = Bank(server)
    yield helper
    helper.client.close()


def set_status(client: Client, token: str, account: str, status: str):
    return client.call("PATCH", f"/api/accounts/{account}", token, body={"status": status})


def test_a_freeze_racing_transfers_stops_every_later_one(server, bank):
    owner, payee = bank.user(), bank.user()
    source = bank.account(owner, funds=1000)
    target = bank.account(payee)
    workers, per_worker = 6, 15
    frozen_at: list[float] = []
    freeze_started = threading.Event()

    def work(client: Client, index: int) -> list[tuple[float, float, int, str]]:
        if index == 0:  # the operator: let some transfers land, then freeze
            time.sleep(0.05)
            freeze_started.set()
            reply = set_status(client, bank.system_token, source, "FROZEN")
            assert reply.status == 200, reply.body
            frozen_at.append(time.monotonic())
            return []
        results = []
        for _ in range(per_worker):
            started = time.monotonic()
            reply = transfer(client, owner, source, target, 1)
            results.append((started, time.monotonic(), reply.status,
                            reply.body["message"] if isinstance(reply.body, dict) else reply.body))
        return results

    outcomes = [o for batch in run_together(server, workers, work) for o in batch]
    assert frozen_at, "the freeze did not answer"
    completed = [o for o in outcomes if o[2] == 200]
    refused = [o for o in outcomes if o[2] != 200]
    assert all(status == 400 and message == INACTIVE for _, _, status, message in refused), refused
    # Once the freeze has answered, no transfer that starts afterwards moves money.
    assert not [o for o in completed if o[0] > frozen_at[0]]
    assert bank.balance(owner, source) == Decimal(1000 - len(completed))
    assert bank.balance(payee, target) == Decimal(len(completed))
    # And it thaws: the next transfer goes through.
    assert set_status(bank.client, bank.system_token, source, "ACTIVE").status == 200
    assert transfer(bank.client, owner, source, target, 1).status == 200


def test_a_close_racing_a_credit_never_leaves_money_in_a_closed_account(server, bank):
    payer, owner = bank.user(), bank.user()
    source = bank.account(payer, funds=100)
    outcomes = []
    for _ in range(12):
        target = bank.account(owner)

        def race(client: Client, index: int, target: str = target):
            if index == 0:
                return set_status(client, owner, target, "CLOSED")
            return transfer(client, payer, source, target, 1)

        close, credit = run_together(server, 2, race)
        balance = bank.balance(owner, target)
        status = bank.client.call("GET", f"/api/accounts/{target}", owner).body["account"]["status"]
        if close.status == 200:
            assert (credit.status, credit.body["message"]) == (400, INACTIVE)
            assert (status, balance) == ("CLOSED", 0)
        else:
            assert close.status == 400, close.body
            assert close.body["message"] == "Account balance must be zero to close it"
            assert credit.status == 200, credit.body
            assert (status, balance) == ("ACTIVE", 1)
        outcomes.append(close.status)
    assert bank.balance(payer, source) == 100 - outcomes.count(400)


def create_hold(client: Client, token: str, source: str, target: str, amount) -> str:
    reply = client.call("POST", "/api/holds", token, body={"fromAccount": source, "toAccount": target,
                                                           "amount": amount, "idempotencyKey": uuid.uuid4().hex})
    assert reply.status == 201, reply.body
    return reply.body["hold"]["_id"]


def test_capture_and_void_race_and_exactly_one_wins(server, bank):
    owner, payee = bank.user(), bank.user()
    source = bank.account(owner, funds=100)
    target = bank.account(payee)
    captured = 0
    for _ in range(10):
        hold_id = create_hold(bank.client, owner, source, target, 5)

        def race(client: Client, index: int, hold_id: str = hold_id):
            if index == 0:
                return client.call("POST", f"/api/holds/{hold_id}/capture", owner,
                                   body={"idempotencyKey": uuid.uuid4().hex})
            return client.call("POST", f"/api/holds/{hold_id}/void", owner, body={})

        capture, void = run_together(server, 2, race)
        assert sorted([capture.status, void.status]) == [200, 409], (capture.body, void.body)
        loser = capture if capture.status == 409 else void
        winner_status = "CAPTURED" if capture.status == 200 else "VOIDED"
        assert loser.body["message"] == f"Hold is {winner_status}"
        captured += capture.status == 200
    reply = bank.client.call("GET", f"/api/accounts/balance/{source}", owner)
    assert Decimal(reply.body["balance"]) == Decimal(reply.body["availableBalance"]) == 100 - 5 * captured
    assert bank.balance(payee, target) == 5 * captured


def test_concurrent_reversals_with_different_keys_reverse_once(server, bank):
    owner, payee = bank.user(), bank.user()
    source = bank.account(owner, funds=100)
    target = bank.account(payee)
    paid = transfer(bank.client, owner, source, target, 40)
    assert paid.status == 200
    txn_id = paid.body["transaction"]["_id"]

    replies = run_together(server, 8, lambda client, index: client.call(
        "POST", f"/api/transactions/{txn_id}/reverse", bank.system_token,
        body={"idempotencyKey": uuid.uuid4().hex}))
    assert sorted(r.status for r in replies) == [201] + [409] * 7, [r.body for r in replies]
    assert bank.balance(owner, source) == 100
    assert bank.balance(payee, target) == 0


def test_transfers_and_holds_racing_for_the_last_of_the_balance(server, bank):
    owner, payee = bank.user(), bank.user()
    source = bank.account(owner, funds=100)
    target = bank.account(payee)

    def race(client: Client, index: int) -> Reply:
        if index % 2:
            return client.call("POST", "/api/holds", owner, body={
                "fromAccount": source, "toAccount": target, "amount": 30, "idempotencyKey": uuid.uuid4().hex})
        return transfer(client, owner, source, target, 30)

    replies = run_together(server, 8, race)
    won = [r for r in replies if r.status in (200, 201)]
    assert len(won) == 3, [r.body for r in replies]
    assert all(r.status == 400 for r in replies if r not in won)
    reply = bank.client.call("GET", f"/api/accounts/balance/{source}", owner)
    moved = 30 * sum(r.status == 200 for r in won)
    assert Decimal(reply.body["balance"]) == 100 - moved
    assert Decimal(reply.body["availableBalance"]) == 10
