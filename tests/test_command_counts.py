"""Database commands per request: constant, whatever the account's history.

The Node service summed an account's whole ledger on every balance read and transfer, so both got slower as
history grew. Here balances are stored, and each request issues a fixed, small set of commands: these tests
count them (on the embedded engine through its command listeners, on a replica set through pymongo's command
monitoring) at 10, 1,000 and 10,000 prior ledger entries and require the very same commands each time.

Targets: a transfer issues at most 6 commands itself (commit included), a balance read exactly 1, and
authentication at most 2 (the blocklist check and the user lookup). Counts, never times.
"""

from __future__ import annotations

import uuid
from typing import Any

from bson import ObjectId
from flask import Flask

from ledger import db
from ledger.command_count import CommandCounter
from tests.conftest import Api
from tests.history import seed_history

AUTH_COLLECTIONS = ("tokenblacklists", "users")
HISTORY_SIZES = (10, 1_000, 10_000)

# What a transfer addresses, in order: read both accounts, insert the record, debit+credit in one bulk
# update, insert both ledger entries, insert the outbox messages, commit.
TRANSFER_COLLECTIONS = ["accounts", "transactions", "accounts", "ledgers", "notifications", "admin"]


def _count(app: Flask, api: Api, method: str, path: str, token: str, *, json: Any = None,
           expected_status: int = 200) -> CommandCounter:
    with CommandCounter(db.get_client(app)) as counter:
        response = api.request(method, path, token, json=json)
    assert response.status_code == expected_status, response.get_json()
    return counter


def _transfer(app: Flask, api: Api, token: str, source: str, target: str) -> CommandCounter:
    body = {"fromAccount": source, "toAccount": target, "amount": 1, "idempotencyKey": uuid.uuid4().hex}
    return _count(app, api, "POST", "/api/transactions", token, json=body)


def _signature(counter: CommandCounter) -> list[tuple[str, str]]:
    return [(command.name, command.collection) for command in counter.commands]


def _entries_on(app: Flask, account_id: str) -> int:
    return db.get_db(app).accounts.find_one({"_id": ObjectId(account_id)}, {"seq": 1})["seq"]


def test_a_transfer_issues_six_commands_of_its_own_and_two_for_authentication(app: Flask, api: Api) -> None:
    _, token = api.user()
    source, target = api.funded_account(token, 100), api.open_account(token)

    counter = _transfer(app, api, token, source, target)

    own = counter.not_on(*AUTH_COLLECTIONS)
    assert [command.collection for command in own] == TRANSFER_COLLECTIONS
    assert own[-1].name == "commitTransaction"
    assert len(counter.on(*AUTH_COLLECTIONS)) <= 2


def test_a_balance_read_issues_one_command_of_its_own_and_two_for_authentication(app: Flask, api: Api) -> None:
    _, token = api.user()
    account = api.funded_account(token, 100)

    counter = _count(app, api, "GET", f"/api/accounts/balance/{account}", token)

    assert [command.collection for command in counter.not_on(*AUTH_COLLECTIONS)] == ["accounts"]
    assert sorted(command.collection for command in counter.on(*AUTH_COLLECTIONS)) == ["tokenblacklists",
                                                                                        "users"]


def test_transfers_and_balance_reads_issue_the_same_commands_at_10_1000_and_10000_prior_entries(
        app: Flask, api: Api) -> None:
    _, token = api.user()
    busy, other = api.funded_account(token, 1_000), api.open_account(token)
    _, recipient_token = api.user()
    recipient = api.open_account(recipient_token)
    transfers: dict[int, list[tuple[str, str]]] = {}
    balances: dict[int, list[tuple[str, str]]] = {}

    for size in HISTORY_SIZES:
        seed_history(app, busy, other, size - _entries_on(app, busy))
        assert _entries_on(app, busy) == size
        balances[size] = _signature(_count(app, api, "GET", f"/api/accounts/balance/{busy}", token))
        transfers[size] = _signature(_transfer(app, api, token, busy, recipient))

    print(f"\ncommands per transfer by prior entries: { {n: len(c) for n, c in transfers.items()} }; "
          f"per balance read: { {n: len(c) for n, c in balances.items()} }")
    assert transfers[10] == transfers[1_000] == transfers[10_000]
    assert balances[10] == balances[1_000] == balances[10_000]
    assert len(transfers[10]) <= 6 + 2
    assert len(balances[10]) == 1 + 2
    assert api.balance(recipient_token, recipient) == 3


def test_seeded_history_keeps_every_balance_equal_to_its_entries(app: Flask, api: Api) -> None:
    from ledger.services import audit

    _, token = api.user()
    first, second = api.funded_account(token, 10), api.open_account(token)

    seed_history(app, first, second, 101)

    with app.app_context():
        report = audit.verify()
    assert report.problems == []
    assert report.total_balance_minor == 0
    assert _entries_on(app, first) == 102
    assert api.balance(token, first) + api.balance(token, second) == 10


def test_the_counter_counts_only_the_commands_of_its_own_thread(app: Flask) -> None:
    import threading

    database = db.get_db(app)
    other_thread = threading.Thread(target=lambda: database.accounts.find_one({"_id": ObjectId()}))

    with CommandCounter(db.get_client(app)) as counter:
        other_thread.start()
        other_thread.join(timeout=10)
        database.users.find_one({"_id": ObjectId()})

    assert not other_thread.is_alive()
    assert [command.collection for command in counter.commands] == ["users"]
