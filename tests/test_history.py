"""Reading the ledger (API.md Part two): entries with keyset cursors, statements (JSON and CSV), balance at an
instant, one transaction for either party, availableBalance, and GET /api/ledger/verify."""

from __future__ import annotations

import csv
import io
import string
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from bson import ObjectId
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import hashchain
from ledger.command_count import CommandCounter
from tests.conftest import Api
from tests.history import seed_history
from tests.ledger_checks import database

GENESIS = "0" * 64
AUTH_COLLECTIONS = ("tokenblacklists", "users")


def entries_page(api: Api, token: str, account: str, **params: Any):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return api.request("GET", f"/api/accounts/{account}/entries" + (f"?{query}" if query else ""), token)


def walk(api: Api, token: str, account: str, limit: int, between_pages=None) -> list[dict[str, Any]]:
    seen, cursor = [], None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = entries_page(api, token, account, **params)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert len(body["entries"]) <= limit
        seen += body["entries"]
        cursor = body["nextCursor"]
        if cursor is None:
            return seen
        if between_pages:
            between_pages()


@pytest.fixture
def pair(api: Api) -> dict[str, str]:
    _, alice = api.user()
    _, bob = api.user()
    a = api.funded_account(alice, 100)
    b = api.open_account(bob)
    return {"alice": alice, "bob": bob, "a": a, "b": b}


# --------------------------------------------------------------------------------------------- entries


def test_entries_come_newest_first_with_their_counterparty_kind_and_chain(api: Api, app: Flask, pair) -> None:
    assert api.transfer(pair["alice"], pair["a"], pair["b"], Decimal("10.25")).status_code == 200
    assert api.transfer(pair["bob"], pair["b"], pair["a"], 3).status_code == 200

    body = entries_page(api, pair["alice"], pair["a"]).get_json()

    system = str(database(app).accounts.find_one({"systemCurrency": "INR"})["_id"])
    assert [(e["seq"], e["type"], e["amount"], e["balanceAfter"], e["counterparty"], e["kind"])
            for e in body["entries"]] == [
        (3, "CREDIT", 3, Decimal("92.75"), pair["b"], "TRANSFER"),
        (2, "DEBIT", Decimal("10.25"), Decimal("89.75"), pair["b"], "TRANSFER"),
        (1, "CREDIT", 100, 100, system, "INITIAL_FUNDS"),
    ]
    assert body["nextCursor"] is None
    first = body["entries"][0]
    assert set(first) >= {"_id", "account", "type", "amount", "currency", "balanceAfter", "seq", "transaction",
                          "counterparty", "kind", "createdAt"}
    assert first["currency"] == "INR"
    assert first["account"] == pair["a"]
    assert body["entries"][-1]["prevHash"] == GENESIS
    assert [e["prevHash"] for e in body["entries"][:-1]] == [e["hash"] for e in body["entries"][1:]]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 200])
def test_walking_every_page_returns_every_entry_once(api: Api, pair, limit: int) -> None:
    for _ in range(9):
        assert api.transfer(pair["alice"], pair["a"], pair["b"], 1).status_code == 200

    seen = walk(api, pair["alice"], pair["a"], limit)

    assert [e["seq"] for e in seen] == list(range(10, 0, -1))


def test_pages_stay_exactly_once_while_new_transfers_land(api: Api, pair) -> None:
    for _ in range(6):
        assert api.transfer(pair["alice"], pair["a"], pair["b"], 1).status_code == 200

    def transfers_meanwhile() -> None:  # both directions: new entries on the walked account
        assert api.transfer(pair["alice"], pair["a"], pair["b"], 1).status_code == 200
        assert api.transfer(pair["bob"], pair["b"], pair["a"], 1).status_code == 200

    seen = walk(api, pair["alice"], pair["a"], 2, between_pages=transfers_meanwhile)

    assert [e["seq"] for e in seen] == list(range(7, 0, -1))  # the walk's snapshot: the first page's newest
    fresh = entries_page(api, pair["alice"], pair["a"], limit=1).get_json()["entries"][0]
    assert fresh["seq"] == 7 + 2 * 3  # the new entries appear on a fresh first page


def test_the_default_page_is_fifty_entries(app: Flask, api: Api, pair) -> None:
    seed_history(app, pair["a"], api.open_account(pair["alice"]), 60)
    body = entries_page(api, pair["alice"], pair["a"]).get_json()
    assert len(body["entries"]) == 50
    assert body["nextCursor"] is not None


@pytest.mark.parametrize("limit", ["0", "201", "-1", "abc", "1.5", "%205", "", "1e2", "0x10", "99999999999"])
def test_a_limit_outside_1_to_200_is_a_400(api: Api, pair, limit: str) -> None:
    response = api.request("GET", f"/api/accounts/{pair['a']}/entries?limit={limit}", pair["alice"])
    assert response.status_code == 400
    assert response.get_json()["errors"] == {"limit": "limit must be an integer from 1 to 200"}


def _cursor(api: Api, token: str, account: str) -> str:
    cursor = entries_page(api, token, account, limit=1).get_json()["nextCursor"]
    assert cursor
    return cursor


def test_a_cursor_is_bound_to_its_account(api: Api, pair) -> None:
    assert api.transfer(pair["alice"], pair["a"], pair["b"], 1).status_code == 200
    other = api.funded_account(pair["alice"], 5)
    assert api.transfer(pair["alice"], other, pair["b"], 1).status_code == 200
    cursor_of_a = _cursor(api, pair["alice"], pair["a"])

    response = entries_page(api, pair["alice"], other, cursor=cursor_of_a)
    also_bobs = entries_page(api, pair["bob"], pair["b"], cursor=cursor_of_a)

    assert response.status_code == also_bobs.status_code == 400
    assert response.get_json()["message"] == "cursor is not valid for this account"


def test_every_single_character_change_of_a_cursor_is_refused(app: Flask, api: Api, pair) -> None:
    from ledger.errors import ValidationFailed
    from ledger.services.history import decode_cursor

    assert api.transfer(pair["alice"], pair["a"], pair["b"], 1).status_code == 200
    cursor = _cursor(api, pair["alice"], pair["a"])
    alphabet = string.ascii_letters + string.digits + "-_"
    variants = {cursor[:i] + c + cursor[i + 1:] for i in range(len(cursor)) for c in alphabet} - {cursor}
    variants |= {cursor[:-1], cursor + "A", cursor + "=", "", cursor.upper(), cursor[::-1]}
    assert len(variants) > 2000

    accepted = []
    with app.test_request_context():
        assert decode_cursor(ObjectId(pair["a"]), cursor) == 2
        for variant in sorted(variants):
            try:
                decode_cursor(ObjectId(pair["a"]), variant)
            except ValidationFailed:
                continue
            accepted.append(variant)
    assert accepted == []
    # And over HTTP, one changed character per position.
    for i in range(len(cursor)):
        variant = cursor[:i] + ("A" if cursor[i] != "A" else "B") + cursor[i + 1:]
        assert entries_page(api, pair["alice"], pair["a"], cursor=variant).status_code == 400


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(junk=st.text(alphabet=string.ascii_letters + string.digits + "-_=.+/", min_size=0, max_size=80))
def test_a_cursor_we_did_not_issue_is_a_400(app: Flask, junk: str) -> None:
    api = Api(app.test_client())
    _, token = api.user()
    account = api.open_account(token)
    response = api.request("GET", f"/api/accounts/{account}/entries", token, query_string={"cursor": junk})
    assert response.status_code == 400
    assert response.get_json()["status"] == "failed"


def test_another_users_account_is_a_404_like_an_absent_one_and_a_malformed_id_a_400(api: Api, pair) -> None:
    for path in ("entries", "statement?from=2026-01-01&to=2026-01-02"):
        someone_elses = api.request("GET", f"/api/accounts/{pair['b']}/{path}", pair["alice"])
        absent = api.request("GET", f"/api/accounts/{ObjectId()}/{path}", pair["alice"])
        malformed = api.request("GET", f"/api/accounts/not-an-id/{path}", pair["alice"])
        assert someone_elses.status_code == absent.status_code == 404
        assert someone_elses.get_json() == absent.get_json() == {"message": "Account not found", "status": "failed"}
        assert malformed.status_code == 400
        assert api.request("GET", f"/api/accounts/{pair['a']}/{path}").status_code == 401


# ------------------------------------------------------------------------------------- command counts


def _own_commands(app: Flask, api: Api, token: str, path: str) -> list[tuple[str, str]]:
    from ledger import db

    with CommandCounter(db.get_client(app)) as counter:
        response = api.request("GET", path, token)
    assert response.status_code == 200, response.get_json()
    return [(c.name, c.collection) for c in counter.not_on(*AUTH_COLLECTIONS)]


def test_reading_pages_and_the_balance_then_costs_the_same_commands_at_10_1000_and_10000_entries(
        app: Flask, api: Api) -> None:
    _, token = api.user()
    busy, other = api.funded_account(token, 1_000), api.open_account(token)
    pages: dict[int, list] = {}
    later_pages: dict[int, list] = {}
    balances_then: dict[int, list] = {}
    empty_statements: dict[int, list] = {}
    for size in (10, 1_000, 10_000):
        seq = database(app).accounts.find_one({"_id": ObjectId(busy)})["seq"]
        seed_history(app, busy, other, size - seq)
        pages[size] = _own_commands(app, api, token, f"/api/accounts/{busy}/entries?limit=5")
        cursor = entries_page(api, token, busy, limit=5).get_json()["nextCursor"]
        later_pages[size] = _own_commands(app, api, token, f"/api/accounts/{busy}/entries?limit=5&cursor={cursor}")
        balances_then[size] = _own_commands(app, api, token,
                                            f"/api/accounts/balance/{busy}?at=2026-01-01T00:00:00.000Z")
        empty_statements[size] = _own_commands(app, api, token,
                                               f"/api/accounts/{busy}/statement?from=2020-01-01&to=2020-01-31")

    print(f"\ncommands per entries page: { {n: len(c) for n, c in pages.items()} }")
    expected_page = [("find", "accounts"), ("find", "ledgers"), ("find", "transactions")]
    for observed in (pages, later_pages):
        assert observed[10] == observed[1_000] == observed[10_000]
        assert [collection for _, collection in observed[10]] == [c for _, c in expected_page]
    assert balances_then[10] == balances_then[1_000] == balances_then[10_000]
    assert [collection for _, collection in balances_then[10]] == ["accounts", "ledgers"]
    assert empty_statements[10] == empty_statements[1_000] == empty_statements[10_000]
    assert [collection for _, collection in empty_statements[10]] == ["accounts", "ledgers", "ledgers"]


# ---------------------------------------------------------------------------- statements and balance at


class Clock:
    """Pins the service's clock (transfers, accounts) to chosen instants, as if they happened then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from ledger.services import accounts, transfers

        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        for module in (accounts, transfers):
            monkeypatch.setattr(module, "utcnow", lambda: self.now)

    def set(self, text: str) -> None:
        self.now = datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def dated(app: Flask, api: Api, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A (funded 100 on Jan 10), then 10 to B on Jan 12, then on Jan 15 3 back from B and 1 more to B."""
    clock = Clock(monkeypatch)
    database(app).accounts.update_many({"systemCurrency": {"$exists": True}},
                                       {"$set": {"updatedAt": datetime(2025, 1, 1, tzinfo=UTC)}})
    _, alice = api.user()
    _, bob = api.user()
    a, b = api.open_account(alice), api.open_account(bob)
    clock.set("2026-01-10T09:00:00.000Z")
    assert api.fund(a, 100).status_code == 201
    clock.set("2026-01-12T23:59:59.999Z")
    assert api.transfer(alice, a, b, 10).status_code == 200
    clock.set("2026-01-15T00:00:00.000Z")
    assert api.transfer(bob, b, a, 3).status_code == 200
    clock.set("2026-01-15T12:00:00.000Z")
    assert api.transfer(alice, a, b, 1).status_code == 200
    hashes = {e["seq"]: e["hash"] for e in database(app).ledgers.find({"account": ObjectId(a)})}
    return {"alice": alice, "bob": bob, "a": a, "b": b, "hashes": hashes}


def statement(api: Api, token: str, account: str, start: str, end: str, **kwargs: Any):
    return api.request("GET", f"/api/accounts/{account}/statement?from={start}&to={end}", token, **kwargs)


def test_a_statement_has_opening_and_closing_balances_totals_and_hashes(api: Api, dated) -> None:
    response = statement(api, dated["alice"], dated["a"], "2026-01-12", "2026-01-15")

    assert response.status_code == 200
    body = response.get_json()
    assert {k: body[k] for k in ("account", "currency", "from", "to", "openingBalance", "closingBalance",
                                 "totalDebits", "totalCredits", "openingHash", "closingHash")} == {
        "account": dated["a"], "currency": "INR", "from": "2026-01-12", "to": "2026-01-15",
        "openingBalance": 100, "closingBalance": 92, "totalDebits": 11, "totalCredits": 3,
        "openingHash": dated["hashes"][1], "closingHash": dated["hashes"][4]}
    assert [e["seq"] for e in body["entries"]] == [2, 3, 4]  # oldest first
    assert body["entries"][0]["prevHash"] == body["openingHash"]
    assert body["entries"][-1]["hash"] == body["closingHash"]


def test_a_window_without_entries_is_a_valid_statement(api: Api, dated) -> None:
    between = statement(api, dated["alice"], dated["a"], "2026-01-13", "2026-01-14").get_json()
    before_all = statement(api, dated["alice"], dated["a"], "2025-12-01", "2026-01-09").get_json()

    assert (between["openingBalance"], between["closingBalance"], between["entries"]) == (90, 90, [])
    assert between["openingHash"] == between["closingHash"] == dated["hashes"][2]
    assert (before_all["openingBalance"], before_all["closingBalance"]) == (0, 0)
    assert before_all["openingHash"] == before_all["closingHash"] == GENESIS


def test_statements_of_consecutive_windows_tile_the_chain(api: Api, dated) -> None:
    days = [(datetime(2026, 1, 8) + timedelta(days=i)).date().isoformat() for i in range(10)]
    for cut in range(1, len(days)):
        for token, account in ((dated["alice"], dated["a"]), (dated["bob"], dated["b"])):
            left = statement(api, token, account, days[0], days[cut - 1]).get_json()
            right = statement(api, token, account, days[cut], days[-1]).get_json()
            whole = statement(api, token, account, days[0], days[-1]).get_json()
            for part in (left, right, whole):
                assert part["openingBalance"] + part["totalCredits"] - part["totalDebits"] == part["closingBalance"]
            assert left["closingBalance"] == right["openingBalance"]
            assert left["closingHash"] == right["openingHash"]
            assert left["entries"] + right["entries"] == whole["entries"]


def test_a_statement_as_csv(api: Api, dated) -> None:
    json_body = statement(api, dated["alice"], dated["a"], "2026-01-01", "2026-01-31").get_json()
    response = statement(api, dated["alice"], dated["a"], "2026-01-01", "2026-01-31",
                         headers={"Accept": "text/csv"})

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"].startswith("attachment; filename=")
    assert response.headers["Cache-Control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [row["seq"] for row in rows] == ["1", "2", "3", "4"]
    assert [(row["type"], Decimal(row["amount"]), Decimal(row["balanceAfter"])) for row in rows] == [
        (e["type"], Decimal(str(e["amount"])), Decimal(str(e["balanceAfter"]))) for e in json_body["entries"]]
    assert rows[-1]["hash"] == json_body["closingHash"]
    assert rows[0]["createdAt"] == "2026-01-10T09:00:00.000Z"


@pytest.mark.parametrize("query", [
    "", "from=2026-01-01", "to=2026-01-01", "from=&to=2026-01-01", "from=2026-1-1&to=2026-01-02",
    "from=2026-02-30&to=2026-03-01", "from=2026-01-01&to=2026-13-01", "from=2026-01-02&to=2026-01-01",
    "from=2026-01-01&to=2027-01-02", "from=2026-01-01T00:00:00Z&to=2026-01-02", "from=yesterday&to=today",
    "from=%2B2026-01-01&to=2026-01-02", "from=2026-01-01&to=2026-01-0%31%31",
])
def test_a_bad_statement_window_is_a_400(api: Api, pair, query: str) -> None:
    response = api.request("GET", f"/api/accounts/{pair['a']}/statement?{query}", pair["alice"])
    assert response.status_code == 400, query
    assert response.get_json()["status"] == "failed"


def test_a_statement_may_cover_366_days_counted_inclusively(api: Api, pair) -> None:
    assert statement(api, pair["alice"], pair["a"], "2028-01-01", "2028-12-31").status_code == 200  # leap year
    assert statement(api, pair["alice"], pair["a"], "2026-01-01", "2027-01-01").status_code == 200
    assert statement(api, pair["alice"], pair["a"], "2026-01-01", "2027-01-02").status_code == 400


@pytest.mark.parametrize(("at", "balance"), [
    ("2026-01-10T08:59:59.999Z", 0),
    ("2026-01-10T09:00:00.000Z", 100),  # at an entry's instant: that entry counts
    ("2026-01-12T23:59:59.998Z", 100),
    ("2026-01-13T00:00:00Z", 90),
    ("2026-01-15T05:30:00.000+05:30", 93),  # the same instant as 2026-01-15T00:00:00Z
    ("2026-01-15T11:59:59.999999Z", 93),
    ("2026-06-01T00:00:00.000Z", 92),
])
def test_the_balance_at_an_instant(api: Api, dated, at: str, balance: int) -> None:
    response = api.request("GET", f"/api/accounts/balance/{dated['a']}", dated["alice"], query_string={"at": at})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["accountId"] == dated["a"]
    assert body["balance"] == balance
    assert body["at"].endswith("Z")


@pytest.mark.parametrize("at", ["", "yesterday", "2026-01-01", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z",
                                "2026-01-01T25:00:00Z", "2026-01-01 00:00:00Z", "9999-12-31T23:59:59Z",
                                "2026-01-01T00:00:00+25:00", "１２３"])
def test_a_malformed_or_future_instant_is_a_400(api: Api, pair, at: str) -> None:
    response = api.request("GET", f"/api/accounts/balance/{pair['a']}", pair["alice"], query_string={"at": at})
    assert response.status_code == 400, at
    assert "at" in response.get_json()["errors"]


def test_the_balance_at_now_is_the_balance(api: Api, pair) -> None:
    now = (datetime.now(UTC) + timedelta(seconds=0)).isoformat()
    response = api.request("GET", f"/api/accounts/balance/{pair['a']}", pair["alice"], query_string={"at": now})
    assert response.get_json()["balance"] == 100
    someone_elses = api.request("GET", f"/api/accounts/balance/{pair['b']}", pair["alice"], query_string={"at": now})
    assert someone_elses.status_code == 404


# ---------------------------------------------------------------------- transactions, available balance


def test_either_party_and_the_initiator_see_a_transaction_and_nobody_else(api: Api, pair) -> None:
    txn = api.transfer(pair["alice"], pair["a"], pair["b"], 5).get_json()["transaction"]
    _, stranger = api.user()

    for token in (pair["alice"], pair["bob"]):
        response = api.request("GET", f"/api/transactions/{txn['_id']}", token)
        assert response.status_code == 200
        assert response.get_json()["transaction"] == {**txn, "kind": "TRANSFER"}
    hidden = api.request("GET", f"/api/transactions/{txn['_id']}", stranger)
    absent = api.request("GET", f"/api/transactions/{ObjectId()}", stranger)
    assert hidden.status_code == absent.status_code == 404
    assert hidden.get_json() == absent.get_json() == {"message": "Transaction not found", "status": "failed"}
    assert api.request("GET", "/api/transactions/nope", pair["alice"]).status_code == 400
    assert api.request("GET", f"/api/transactions/{txn['_id']}").status_code == 401


def test_a_rejected_transfer_is_visible_to_its_initiator_as_failed(api: Api, pair) -> None:
    key = "too-much"
    assert api.transfer(pair["alice"], pair["a"], pair["b"], 1000, key=key).status_code == 400
    from ledger import db

    record = db.get_db(api.client.application).transactions.find_one({"idempotencyKey": key})
    response = api.request("GET", f"/api/transactions/{record['_id']}", pair["alice"])
    assert response.status_code == 200
    assert response.get_json()["transaction"]["status"] == "FAILED"


def test_funding_shows_its_kind_and_the_system_user_sees_it(api: Api, pair, app: Flask) -> None:
    record = database(app).transactions.find_one({"toAccount": ObjectId(pair["a"])})
    for token in (pair["alice"], api.system_token()):
        response = api.request("GET", f"/api/transactions/{record['_id']}", token)
        assert response.status_code == 200
        assert response.get_json()["transaction"]["kind"] == "INITIAL_FUNDS"


def test_available_balance_equals_the_balance_while_there_are_no_holds(api: Api, pair) -> None:
    assert api.transfer(pair["alice"], pair["a"], pair["b"], Decimal("0.5")).status_code == 200
    balance = api.request("GET", f"/api/accounts/balance/{pair['a']}", pair["alice"]).get_json()
    account = api.request("GET", f"/api/accounts/{pair['a']}", pair["alice"]).get_json()["account"]
    listed = api.request("GET", "/api/accounts", pair["alice"]).get_json()["accounts"][0]
    assert balance == {"accountId": pair["a"], "balance": Decimal("99.5"), "availableBalance": Decimal("99.5")}
    assert account["availableBalance"] == account["balance"] == listed["availableBalance"] == Decimal("99.5")


# ------------------------------------------------------------------------------------------- verify


def test_only_the_system_user_may_verify_the_ledger(api: Api, pair) -> None:
    response = api.request("GET", "/api/ledger/verify", pair["alice"])
    assert response.status_code == 403
    assert response.get_json()["message"] == "Forbidden, user is not a system user"
    assert api.request("GET", "/api/ledger/verify").status_code == 401

    body = api.request("GET", "/api/ledger/verify", api.system_token()).get_json()

    assert body["ok"] is True
    assert body["problems"] == []
    assert body["checked"] == {"accounts": 3, "entries": 2, "transactions": 1, "currencies": 1}


def test_the_verify_route_names_what_was_tampered_with(api: Api, app: Flask, pair) -> None:
    assert api.transfer(pair["alice"], pair["a"], pair["b"], 7).status_code == 200
    entry = database(app).ledgers.find_one({"account": ObjectId(pair["b"]), "seq": 1})
    database(app).ledgers.update_one({"_id": entry["_id"]}, {"$set": {"amount": 70000}})

    body = api.request("GET", "/api/ledger/verify", api.system_token()).get_json()

    assert body["ok"] is False
    assert {"check": "hash", "account": pair["b"], "seq": 1, "transaction": None} in [
        {k: p[k] for k in ("check", "account", "seq", "transaction")} for p in body["problems"]]
    assert body["problemCount"] == len(body["problems"])
    assert all(p["message"] for p in body["problems"])
    assert hashchain.entry_hash(entry, entry["prevHash"]) == entry["hash"]  # it was fine before the edit
