"""Accounts: opening, listing and reading, each visible only to its owner (no existence oracle)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from bson import ObjectId

from ledger import db
from tests.conftest import Api

# Part one's fields, plus availableBalance (API.md Part two: balance minus active holds).
ACCOUNT_KEYS = {"_id", "user", "status", "currency", "balance", "availableBalance", "createdAt", "updatedAt"}
ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def wire(response) -> Any:
    """The body exactly as a plain JSON client parses it (numbers as int/float, not Decimal)."""
    return json.loads(response.get_data(as_text=True))


def assert_account_shape(account: dict[str, Any], owner_id: str) -> None:
    assert set(account) == ACCOUNT_KEYS
    assert ObjectId.is_valid(account["_id"])
    assert account["user"] == owner_id
    assert account["status"] in {"ACTIVE", "FROZEN", "CLOSED"}
    assert isinstance(account["balance"], int | float)
    assert not isinstance(account["balance"], bool)
    assert ISO_MS_Z.match(account["createdAt"]), account["createdAt"]
    assert ISO_MS_Z.match(account["updatedAt"]), account["updatedAt"]


# ------------------------------------------------------------------------------------------ opening


@pytest.mark.parametrize("path", ["/api/accounts", "/api/accounts/create"])
def test_both_create_routes_open_an_active_inr_account_with_zero_balance(api, path):
    user_id, token = api.user()
    response = api.request("POST", path, token)
    assert response.status_code == 201
    body = wire(response)
    assert set(body) == {"account"}
    account = body["account"]
    assert_account_shape(account, user_id)
    assert account["status"] == "ACTIVE"
    assert account["currency"] == "INR"
    assert account["balance"] == 0
    assert account["createdAt"] == account["updatedAt"]


@pytest.mark.parametrize("path", ["/api/accounts", "/api/accounts/create"])
def test_create_accepts_an_empty_json_object(api, path):
    _, token = api.user()
    response = api.request("POST", path, token, json={})
    assert response.status_code == 201
    assert wire(response)["account"]["currency"] == "INR"


@pytest.mark.parametrize(("sent", "stored"), [("INR", "INR"), ("USD", "USD"), ("eur", "EUR"), ("gBp", "GBP"),
                                              ("JPY", "JPY"), (None, "INR")])
def test_create_takes_an_explicit_currency_and_normalizes_its_case(api, sent, stored):
    _, token = api.user()
    response = api.request("POST", "/api/accounts/create", token, json={"currency": sent})
    assert response.status_code == 201
    assert wire(response)["account"]["currency"] == stored


@pytest.mark.parametrize("currency", ["XYZ", "US", "USDD", "", "1NR", "ÜSD", 356, True, ["INR"], {"$ne": None},
                                      {"code": "INR"}])
def test_create_with_a_bad_currency_is_400(api, currency):
    _, token = api.user()
    response = api.request("POST", "/api/accounts", token, json={"currency": currency})
    assert response.status_code == 400
    assert response.get_json()["status"] == "failed"
    assert api.request("GET", "/api/accounts", token).get_json() == {"accounts": []}


def test_create_ignores_balance_status_user_and_id_sent_by_the_client(app, api):
    user_id, token = api.user()
    other_id, other_token = api.user()
    chosen_id = str(ObjectId())
    response = api.request("POST", "/api/accounts", token, json={
        "balance": 1_000_000, "status": "FROZEN", "user": other_id, "_id": chosen_id, "seq": 99,
        "systemUser": True, "systemCurrency": "INR",
    })
    assert response.status_code == 201
    account = wire(response)["account"]
    assert account["balance"] == 0
    assert account["status"] == "ACTIVE"
    assert account["user"] == user_id
    assert account["_id"] != chosen_id
    assert api.request("GET", "/api/accounts", other_token).get_json() == {"accounts": []}
    with app.app_context():
        stored = db.get_db().accounts.find_one({"_id": ObjectId(account["_id"])})
    assert stored["balance"] == 0
    assert not stored.get("systemUser")
    assert "systemCurrency" not in stored


@pytest.mark.parametrize("headers", [{"Content-Type": "application/x-www-form-urlencoded"},
                                     {"Content-Type": "text/plain"}, {}])
@pytest.mark.parametrize("path", ["/api/accounts", "/api/accounts/create"])
def test_create_ignores_a_body_not_declared_as_json_as_node_did(api, path, headers):
    _, token = api.user()
    for body in ("currency=USD", '{"currency": "USD"}', "{not json"):
        response = api.request("POST", path, token, data=body, headers=headers)
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["account"]["currency"] == "INR"


def test_create_requires_authentication(api):
    for path in ("/api/accounts", "/api/accounts/create"):
        response = api.request("POST", path, json={})
        assert response.status_code == 401
        assert response.get_json()["message"] == "Unauthorized, token is missing"


# ------------------------------------------------------------------------------------------ reading


def test_list_shows_only_the_callers_accounts(api):
    user_id, token = api.user()
    _, other_token = api.user()
    mine = {api.open_account(token), api.open_account(token, "USD")}
    api.open_account(other_token)
    response = api.request("GET", "/api/accounts", token)
    assert response.status_code == 200
    body = wire(response)
    assert set(body) == {"accounts"}
    assert {a["_id"] for a in body["accounts"]} == mine
    for account in body["accounts"]:
        assert_account_shape(account, user_id)


def test_a_new_user_has_no_accounts(api):
    _, token = api.user()
    assert wire(api.request("GET", "/api/accounts", token)) == {"accounts": []}


def test_get_one_account_returns_what_create_returned(api):
    _, token = api.user()
    created = wire(api.request("POST", "/api/accounts", token, json={"currency": "USD"}))["account"]
    response = api.request("GET", f"/api/accounts/{created['_id']}", token)
    assert response.status_code == 200
    assert wire(response) == {"account": created}


def test_the_user_route_lists_the_callers_accounts(api):
    user_id, token = api.user()
    account_id = api.open_account(token)
    response = api.request("GET", f"/api/accounts/user/{user_id}", token)
    assert response.status_code == 200
    accounts = wire(response)["accounts"]
    assert [a["_id"] for a in accounts] == [account_id]


def test_balance_of_a_new_account_is_zero(api):
    _, token = api.user()
    account_id = api.open_account(token)
    response = api.request("GET", f"/api/accounts/balance/{account_id}", token)
    assert response.status_code == 200
    assert wire(response) == {"accountId": account_id, "balance": 0, "availableBalance": 0}


def test_balance_is_a_json_number_in_major_units_after_funding(api):
    _, token = api.user()
    account_id = api.funded_account(token, 1000)
    assert api.fund(account_id, Decimal("10.5")).status_code == 201
    response = api.request("GET", f"/api/accounts/balance/{account_id}", token)
    body = wire(response)
    assert body == {"accountId": account_id, "balance": 1010.5, "availableBalance": 1010.5}
    assert re.search(r'"balance":\s*1010\.5\b', response.get_data(as_text=True))
    account = wire(api.request("GET", f"/api/accounts/{account_id}", token))["account"]
    assert account["balance"] == 1010.5


def test_a_frozen_account_shows_its_status(app, api):
    _, token = api.user()
    account_id = api.open_account(token)
    with app.app_context():
        db.get_db().accounts.update_one({"_id": ObjectId(account_id)}, {"$set": {"status": "FROZEN"}})
    assert wire(api.request("GET", f"/api/accounts/{account_id}", token))["account"]["status"] == "FROZEN"


def test_the_system_account_is_invisible_to_ordinary_users(app, api):
    _, token = api.user()
    with app.app_context():
        system_account = db.get_db().accounts.find_one({"systemUser": True})
    assert system_account is not None
    for path in (f"/api/accounts/{system_account['_id']}", f"/api/accounts/balance/{system_account['_id']}"):
        response = api.request("GET", path, token)
        assert response.status_code == 404
        assert response.get_json()["message"] == "Account not found"


# ------------------------------------------------------------------------------------------ BOLA matrix

CALLERS = ("owner", "other", "anonymous")
TARGETS = ("owners", "others", "missing", "malformed")
MALFORMED = ("not-an-id", "123", "6b04eeaa8646244bd792fa5", "6b04eeaa8646244bd792fa5z1", "%24ne",
             "6b04eeaa8646244bd792fa5e6b04eeaa8646244bd792fa5e")


class World:
    """Two users, each with one funded account, and the ids the matrix probes."""

    def __init__(self, api: Api) -> None:
        self.owner_id, self.owner_token = api.user("Owner")
        self.other_id, self.other_token = api.user("Other")
        self.owner_account = api.funded_account(self.owner_token, 250)
        self.other_account = api.funded_account(self.other_token, 750)

    def token(self, caller: str) -> str | None:
        return {"owner": self.owner_token, "other": self.other_token, "anonymous": None}[caller]

    def account_id(self, target: str, malformed: str) -> str:
        return {"owners": self.owner_account, "others": self.other_account, "missing": str(ObjectId()),
                "malformed": malformed}[target]

    def user_id(self, target: str, malformed: str) -> str:
        return {"owners": self.owner_id, "others": self.other_id, "missing": str(ObjectId()),
                "malformed": malformed}[target]


def visible(caller: str, target: str) -> bool:
    """Only a resource's owner sees it: the owner its own, the other user theirs."""
    return (caller, target) in {("owner", "owners"), ("other", "others")}


@pytest.fixture
def world(api: Api) -> World:
    return World(api)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("route", ["account", "balance"])
def test_an_account_is_visible_only_to_its_owner(api, world, caller, target, route):
    for malformed in MALFORMED if target == "malformed" else MALFORMED[:1]:
        account_id = world.account_id(target, malformed)
        path = f"/api/accounts/{account_id}" if route == "account" else f"/api/accounts/balance/{account_id}"
        response = api.request("GET", path, world.token(caller))
        text = response.get_data(as_text=True)
        if caller == "anonymous":
            assert response.status_code == 401, text
            assert response.get_json()["message"] == "Unauthorized, token is missing"
        elif visible(caller, target):
            assert response.status_code == 200, text
            body = wire(response)
            expected_balance = 250 if target == "owners" else 750
            if route == "account":
                assert body["account"]["_id"] == account_id
                assert body["account"]["balance"] == expected_balance
            else:
                assert body == {"accountId": account_id, "balance": expected_balance,
                                "availableBalance": expected_balance}
        elif target == "malformed":
            assert response.status_code in {400, 404}, text
            assert response.get_json()["status"] == "failed"
        else:
            assert response.status_code == 404, text
            assert response.get_json() == {"message": "Account not found", "status": "failed"}
        # No matter who asks, another user's account id and balance never appear.
        hidden = [a for a, o in ((world.owner_account, "owner"), (world.other_account, "other")) if o != caller]
        if not visible(caller, target):
            for account in hidden:
                assert account not in text


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("target", TARGETS)
def test_the_accounts_of_a_user_are_listed_only_to_that_user(api, world, caller, target):
    for malformed in MALFORMED if target == "malformed" else MALFORMED[:1]:
        user_id = world.user_id(target, malformed)
        response = api.request("GET", f"/api/accounts/user/{user_id}", world.token(caller))
        text = response.get_data(as_text=True)
        if caller == "anonymous":
            assert response.status_code == 401, text
        elif visible(caller, target):
            assert response.status_code == 200, text
            expected = world.owner_account if caller == "owner" else world.other_account
            assert [a["_id"] for a in wire(response)["accounts"]] == [expected]
        else:
            assert response.status_code in {400, 403, 404}, text
            assert response.get_json()["status"] == "failed"
            assert "accounts" not in response.get_json()
        for account in (world.owner_account, world.other_account):
            if not visible(caller, target):
                assert account not in text


def test_query_parameters_cannot_widen_the_list_to_another_user(api):
    _, token = api.user()
    other_id, other_token = api.user()
    api.open_account(other_token)
    for query in (f"user={other_id}", f"userId={other_id}", "user[$ne]=x", f"_id={other_id}"):
        response = api.request("GET", f"/api/accounts?{query}", token)
        assert response.status_code == 200
        assert wire(response) == {"accounts": []}
