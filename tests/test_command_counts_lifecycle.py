"""Database commands of the Part-two changing routes: the same commands at 10, 1,000 and 10,000 prior entries.

Budgets (own commands, authentication's two lookups excluded): a hold 4 (read both accounts, insert the hold,
reserve, commit), a capture 9 (key lookup, hold read, accounts read, record insert, hold update, debit+credit,
entries, outbox, commit), a void 4 (hold read, hold update, release, commit), a reversal 9 (key lookup,
original read, accounts read, record insert, original update, debit+credit, entries, outbox, commit), a status
change 1, a balance read with holds 2 (the account, its due holds). Counts, never times.
"""

from __future__ import annotations

import uuid

from flask import Flask

from tests.conftest import Api
from tests.history import seed_history
from tests.test_command_counts import AUTH_COLLECTIONS, HISTORY_SIZES, _count, _entries_on

BUDGETS = {"hold": 4, "capture": 9, "void": 4, "reverse": 9, "freeze": 1, "balance": 2}


def _own(counter) -> list[tuple[str, str]]:
    return [(c.name, c.collection) for c in counter.not_on(*AUTH_COLLECTIONS)]


def test_changing_routes_issue_the_same_commands_whatever_the_history(app: Flask, api: Api) -> None:
    _, token = api.user()
    busy, other = api.funded_account(token, 1_000), api.open_account(token)
    system = api.system_token()
    seen: dict[str, dict[int, list[tuple[str, str]]]] = {name: {} for name in BUDGETS}

    for size in HISTORY_SIZES:
        seed_history(app, busy, other, size - _entries_on(app, busy))
        hold = _count(app, api, "POST", "/api/holds", token, expected_status=201, json={
            "fromAccount": busy, "toAccount": other, "amount": 2, "idempotencyKey": uuid.uuid4().hex})
        hold_id = api.request("GET", f"/api/accounts/{busy}/holds", token).get_json()["holds"][0]["_id"]
        seen["hold"][size] = _own(hold)
        seen["balance"][size] = _own(_count(app, api, "GET", f"/api/accounts/balance/{busy}", token))
        seen["capture"][size] = _own(_count(app, api, "POST", f"/api/holds/{hold_id}/capture", token,
                                            json={"idempotencyKey": uuid.uuid4().hex, "amount": 1}))
        second = api.request("POST", "/api/holds", token, json={
            "fromAccount": busy, "toAccount": other, "amount": 1, "idempotencyKey": uuid.uuid4().hex})
        seen["void"][size] = _own(_count(app, api, "POST", f"/api/holds/{second.get_json()['hold']['_id']}/void",
                                         token, json={}))
        paid = api.transfer(token, busy, other, 1).get_json()["transaction"]["_id"]
        seen["reverse"][size] = _own(_count(app, api, "POST", f"/api/transactions/{paid}/reverse", system,
                                            expected_status=201, json={"idempotencyKey": uuid.uuid4().hex}))
        seen["freeze"][size] = _own(_count(app, api, "PATCH", f"/api/accounts/{other}", system,
                                           json={"status": "FROZEN"}))
        api.request("PATCH", f"/api/accounts/{other}", system, json={"status": "ACTIVE"})

    print("\ncommands per request by prior entries:",
          {name: {n: len(c) for n, c in by_size.items()} for name, by_size in seen.items()})
    for name, by_size in seen.items():
        first, *rest = by_size.values()
        assert all(signature == first for signature in rest), (name, by_size)
        assert len(first) <= BUDGETS[name], (name, first)
