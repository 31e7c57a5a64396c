"""``PATCH /api/accounts/:id``: the owner closes, the system user freezes and unfreezes (API.md, Part two).

Every rule is checked through the API, and every refusal is checked to change nothing.
"""

from __future__ import annotations

import itertools

import pytest
from bson import ObjectId

from tests import ledger_checks

INACTIVE = "Both accounts must be active to process the transaction"


def patch(api, token, account_id, status, **kwargs):
    return api.request("PATCH", f"/api/accounts/{account_id}", token, json={"status": status}, **kwargs)


@pytest.fixture
def owner(api):
    return api.user("Owner")


def test_owner_closes_an_empty_account_and_closed_is_final(app, api, owner):
    _, token = owner
    account = api.open_account(token)
    response = patch(api, token, account, "CLOSED")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()["account"]
    assert body["_id"] == account
    assert body["status"] == "CLOSED"
    assert body["updatedAt"].endswith("Z")
    assert set(body) == {"_id", "status", "updatedAt"}
    assert ledger_checks.account_doc(app, account)["status"] == "CLOSED"
    # Final: nobody, in any direction, changes it again; the stored document stays as it is.
    before = ledger_checks.account_doc(app, account)
    for caller, status in itertools.product((token, api.system_token()), ("ACTIVE", "FROZEN", "CLOSED")):
        again = patch(api, caller, account, status)
        assert again.status_code == 409, (status, again.get_json())
        assert again.get_json()["status"] == "failed"
    assert ledger_checks.account_doc(app, account) == before


def test_a_closed_account_neither_sends_nor_receives(app, api, owner):
    _, token = owner
    funded = api.funded_account(token, 100)
    empty = api.open_account(token)
    assert patch(api, token, empty, "CLOSED").status_code == 200
    before = ledger_checks.snapshot(app)
    into = api.transfer(token, funded, empty, 1)
    assert into.status_code == 400
    assert into.get_json()["message"] == INACTIVE
    funding = api.fund(empty, 5)
    assert funding.status_code == 400
    after = ledger_checks.snapshot(app)
    assert after["balances"] == before["balances"]
    assert after["ledgers"] == before["ledgers"]
    ledger_checks.assert_ledger_consistent(app)


@pytest.mark.parametrize("amount", [0.01, 100])
def test_close_refuses_a_non_zero_balance(app, api, owner, amount):
    _, token = owner
    account = api.funded_account(token, amount)
    before = ledger_checks.account_doc(app, account)
    response = patch(api, token, account, "CLOSED")
    assert response.status_code == 400
    assert response.get_json()["message"] == "Account balance must be zero to close it"
    assert ledger_checks.account_doc(app, account) == before


def test_close_refuses_held_funds(app, api, owner):
    # Holds keep their reservation in ``held``; an account holding anything is not closable.
    _, token = owner
    account = api.open_account(token)
    ledger_checks.database(app).accounts.update_one({"_id": ObjectId(account)}, {"$set": {"held": 500}})
    response = patch(api, token, account, "CLOSED")
    assert response.status_code == 400
    assert "holds" in response.get_json()["message"]
    assert ledger_checks.account_doc(app, account)["status"] == "ACTIVE"


def test_system_user_freezes_and_unfreezes_and_a_frozen_account_is_still(app, api, owner):
    _, token = owner
    frozen = api.funded_account(token, 100)
    other = api.funded_account(api.user("Other")[1], 100)
    system = api.system_token()
    response = patch(api, system, frozen, "FROZEN")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["account"]["status"] == "FROZEN"
    assert "balance" not in response.get_json()["account"]  # an operator sees the status, not the money
    # Setting the status it already has answers the same, changes nothing.
    assert patch(api, system, frozen, "FROZEN").get_json()["account"]["status"] == "FROZEN"
    before = ledger_checks.snapshot(app)
    out = api.transfer(token, frozen, other, 1)
    assert out.status_code == 400
    assert out.get_json()["message"] == INACTIVE
    assert api.fund(frozen, 1).status_code == 400
    assert ledger_checks.snapshot(app)["balances"] == before["balances"]
    # The owner cannot thaw it, nor close it while frozen.
    assert patch(api, token, frozen, "ACTIVE").status_code == 403
    closing = patch(api, token, frozen, "CLOSED")
    assert closing.status_code == 409
    assert "frozen" in closing.get_json()["message"]
    thawed = patch(api, system, frozen, "ACTIVE")
    assert thawed.status_code == 200
    assert thawed.get_json()["account"]["status"] == "ACTIVE"
    assert api.transfer(token, frozen, other, 1).status_code == 200
    ledger_checks.assert_ledger_consistent(app)


def test_owner_may_not_freeze_or_unfreeze(app, api, owner):
    _, token = owner
    account = api.open_account(token)
    for status in ("FROZEN", "ACTIVE"):
        response = patch(api, token, account, status)
        assert response.status_code == 403
        assert response.get_json()["message"] == "Forbidden, user is not a system user"
    assert ledger_checks.account_doc(app, account)["status"] == "ACTIVE"


def test_system_user_may_not_close_a_customer_account_nor_its_own(app, api, owner):
    _, token = owner
    account = api.open_account(token)
    system = api.system_token()
    response = patch(api, system, account, "CLOSED")
    assert response.status_code == 403
    api.funded_account(token, 1)  # opens the system account in INR
    system_account = ledger_checks.database(app).accounts.find_one({"systemCurrency": "INR"})
    for status in ("CLOSED", "FROZEN", "ACTIVE"):
        refused = patch(api, system, str(system_account["_id"]), status)
        assert refused.status_code in (400, 404), (status, refused.get_json())
    assert ledger_checks.account_doc(app, str(system_account["_id"]))["status"] == "ACTIVE"
    assert ledger_checks.account_doc(app, account)["status"] == "ACTIVE"


def test_another_users_account_looks_absent(app, api, owner):
    _, token = owner
    account = api.open_account(token)
    stranger = api.user("Stranger")[1]
    hidden = patch(api, stranger, account, "CLOSED")
    absent = patch(api, stranger, str(ObjectId()), "CLOSED")
    assert hidden.status_code == absent.status_code == 404
    assert hidden.get_json() == absent.get_json()
    assert patch(api, api.system_token(), str(ObjectId()), "FROZEN").status_code == 404
    assert ledger_checks.account_doc(app, account)["status"] == "ACTIVE"


@pytest.mark.parametrize("account_id", ["nope", "123", "z" * 24, "0" * 23, "0" * 25])
def test_a_malformed_id_is_a_400(api, owner, account_id):
    response = patch(api, owner[1], account_id, "CLOSED")
    assert response.status_code == 400
    assert response.get_json()["status"] == "failed"


@pytest.mark.parametrize("body", [{}, {"status": ""}, {"status": None}, {"status": "closed"}, {"status": "OPEN"},
                                  {"status": ["CLOSED"]}, {"status": {"$ne": "x"}}, {"status": 1},
                                  {"status": "CLOSED\u0000"}])
def test_a_bad_status_is_a_400_and_changes_nothing(app, api, owner, body):
    _, token = owner
    account = api.open_account(token)
    response = api.request("PATCH", f"/api/accounts/{account}", token, json=body)
    assert response.status_code == 400, response.get_json()
    assert "status" in response.get_json().get("errors", {})
    assert ledger_checks.account_doc(app, account)["status"] == "ACTIVE"


def test_needs_a_token(api, owner):
    account = api.open_account(owner[1])
    response = api.request("PATCH", f"/api/accounts/{account}", None, json={"status": "CLOSED"})
    assert response.status_code == 401


def test_every_transition_from_every_status_by_every_caller(app, api):
    """The whole table: (status before, caller, wanted) -> the answer and the status after."""
    owner_id, token = api.user("Table")
    system = api.system_token()
    expected = {
        # (before, caller, wanted): (http status, status after)
        ("ACTIVE", "owner", "CLOSED"): (200, "CLOSED"),
        ("ACTIVE", "owner", "FROZEN"): (403, "ACTIVE"),
        ("ACTIVE", "owner", "ACTIVE"): (403, "ACTIVE"),
        ("ACTIVE", "system", "CLOSED"): (403, "ACTIVE"),
        ("ACTIVE", "system", "FROZEN"): (200, "FROZEN"),
        ("ACTIVE", "system", "ACTIVE"): (200, "ACTIVE"),
        ("FROZEN", "owner", "CLOSED"): (409, "FROZEN"),
        ("FROZEN", "owner", "FROZEN"): (403, "FROZEN"),
        ("FROZEN", "owner", "ACTIVE"): (403, "FROZEN"),
        ("FROZEN", "system", "CLOSED"): (403, "FROZEN"),
        ("FROZEN", "system", "FROZEN"): (200, "FROZEN"),
        ("FROZEN", "system", "ACTIVE"): (200, "ACTIVE"),
        ("CLOSED", "owner", "CLOSED"): (409, "CLOSED"),
        ("CLOSED", "owner", "FROZEN"): (409, "CLOSED"),
        ("CLOSED", "owner", "ACTIVE"): (409, "CLOSED"),
        ("CLOSED", "system", "CLOSED"): (409, "CLOSED"),
        ("CLOSED", "system", "FROZEN"): (409, "CLOSED"),
        ("CLOSED", "system", "ACTIVE"): (409, "CLOSED"),
    }
    for (before, caller, wanted), (code, after) in expected.items():
        account = api.open_account(token)
        ledger_checks.set_status(app, account, before)
        response = patch(api, token if caller == "owner" else system, account, wanted)
        assert response.status_code == code, (before, caller, wanted, response.get_json())
        assert ledger_checks.account_doc(app, account)["status"] == after, (before, caller, wanted)
        assert ledger_checks.account_doc(app, account)["user"] == ObjectId(owner_id)


def test_openapi_documents_the_route(client):
    spec = client.get("/api/openapi.json").get_json()
    operation = spec["paths"]["/api/accounts/{account_id}"]["patch"]
    assert set(operation["responses"]) >= {"200", "400", "401", "403", "404", "409"}
