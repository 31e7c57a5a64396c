"""Transfers and initial funds through HTTP: every row of the Transfers section of API.md.

After every test the ledger invariants are checked (audit clean, balances sum to zero, no negative customer
balance), so each scenario also proves that nothing it did left the books inconsistent.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal

import pytest
from bson import ObjectId

from tests.ledger_checks import (
    account_doc,
    assert_ledger_consistent,
    balance_minor,
    count,
    database,
    set_status,
    snapshot,
)

TRANSFER_PATH = "/api/transactions"
FUNDING_PATH = "/api/transactions/system/initial-funds"
MISSING_TRANSFER = "Missing required fields: fromAccount, toAccount, amount, idempotencyKey"
MISSING_FUNDING = "Missing required fields: toAccount, amount, idempotencyKey"
NOT_FOUND = "One or both accounts not found"
INACTIVE = "Both accounts must be active to process the transaction"
ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def _ledger_stays_consistent(app):
    yield
    assert_ledger_consistent(app)


def key() -> str:
    return f"key-{uuid.uuid4().hex}"


def raw_post(api, token, path, text, headers=None):
    """POST a body exactly as written (for numbers the JSON encoder would never produce)."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return api.request("POST", path, token, data=text, headers=all_headers)


def assert_failed(response, status, message=None):
    body = response.get_json()
    assert response.status_code == status, body
    assert body["status"] == "failed"
    if message is not None:
        assert body["message"] == message
    return body


@pytest.fixture
def pair(api):
    """One user with an account holding 100 INR and an empty second account."""
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(token)
    return token, source, target


# ------------------------------------------------------------------------------------------ success


def test_a_transfer_answers_completed_with_amounts_in_major_units(api, pair):
    token, source, target = pair
    idem = key()

    response = api.transfer(token, source, target, Decimal("10.5"), key=idem)

    assert response.status_code == 200
    body = response.get_json()
    assert body["message"] == "Transaction processed successfully"
    txn = body["transaction"]
    assert txn["status"] == "COMPLETED"
    assert txn["amount"] == Decimal("10.5")
    assert (txn["fromAccount"], txn["toAccount"], txn["idempotencyKey"]) == (source, target, idem)
    assert re.fullmatch(r"[0-9a-f]{24}", txn["_id"])
    assert ISO_MILLIS.match(txn["createdAt"])
    assert ISO_MILLIS.match(txn["updatedAt"])
    assert json.loads(response.data)["transaction"]["amount"] == 10.5  # a JSON number, not a string
    assert "Idempotent-Replayed" not in response.headers
    assert api.balance(token, source) == Decimal("89.5")
    assert api.balance(token, target) == Decimal("10.5")


def test_a_transfer_to_another_users_account_credits_that_user(api, pair):
    token, source, _ = pair
    _, other_token = api.user()
    other_account = api.open_account(other_token)

    response = api.transfer(token, source, other_account, 40)

    assert response.status_code == 200
    assert api.balance(other_token, other_account) == 40
    assert api.balance(token, source) == 60


def test_a_completed_transfer_writes_one_record_two_positive_entries_and_two_notifications(api, app, pair):
    token, source, target = pair
    before = snapshot(app)

    response = api.transfer(token, source, target, 25)

    txn_id = ObjectId(response.get_json()["transaction"]["_id"])
    after = snapshot(app)
    assert after["transactions"] == before["transactions"] + 1
    entries = sorted(database(app).ledgers.find({"transaction": txn_id}), key=lambda e: e["type"])
    assert [(e["type"], str(e["account"]), e["amount"]) for e in entries] == [
        ("CREDIT", target, 2500), ("DEBIT", source, 2500)]
    assert [e["balanceAfter"] for e in entries] == [2500, 7500]
    kinds = sorted(n["kind"] for n in database(app).notifications.find({"context.transactionId": str(txn_id)}))
    assert kinds == ["credit_notice", "transfer_receipt"]


def test_ten_transfers_of_a_tenth_move_exactly_one(api, pair):
    token, source, target = pair

    for _ in range(10):
        assert api.transfer(token, source, target, Decimal("0.1")).status_code == 200

    assert api.balance(token, target) == 1
    assert api.balance(token, source) == 99
    response = api.request("GET", f"/api/accounts/balance/{source}", token)
    assert json.loads(response.data)["balance"] == 99


def test_balances_render_as_json_numbers_with_their_decimals(api, pair):
    token, source, target = pair
    api.transfer(token, source, target, Decimal("10.5"))

    response = api.request("GET", f"/api/accounts/balance/{target}", token)

    assert re.search(rb'"balance":\s*10\.5[,}]', response.data), response.data


# -------------------------------------------------------------------------------- missing fields


@pytest.mark.parametrize("field", ["fromAccount", "toAccount", "amount", "idempotencyKey"])
@pytest.mark.parametrize("absent", ["omitted", "empty", "null"])
def test_each_missing_or_empty_field_gets_the_node_message(api, pair, field, absent):
    token, source, target = pair
    body = {"fromAccount": source, "toAccount": target, "amount": 5, "idempotencyKey": key()}
    if absent == "omitted":
        del body[field]
    else:
        body[field] = "" if absent == "empty" else None

    response = api.request("POST", TRANSFER_PATH, token, json=body)

    assert_failed(response, 400, MISSING_TRANSFER)


def test_an_empty_object_gets_the_missing_fields_message(api, pair):
    token, _, _ = pair
    assert_failed(api.request("POST", TRANSFER_PATH, token, json={}), 400, MISSING_TRANSFER)


def test_a_transfer_without_a_token_is_unauthorized(api, pair):
    _, source, target = pair
    response = api.request("POST", TRANSFER_PATH, None,
                           json={"fromAccount": source, "toAccount": target, "amount": 5, "idempotencyKey": key()})
    assert_failed(response, 401, "Unauthorized, token is missing")


# ----------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(("field", "value"), [
    ("fromAccount", 12345),
    ("fromAccount", {"$ne": None}),
    ("fromAccount", "not-an-id"),
    ("fromAccount", "0" * 25),
    ("toAccount", ["0" * 24]),
    ("toAccount", "zz" * 12),
    ("idempotencyKey", 42),
    ("idempotencyKey", {"$gt": ""}),
    ("idempotencyKey", "k" * 256),
])
def test_wrong_types_and_malformed_ids_are_a_400_and_move_nothing(api, app, pair, field, value):
    token, source, target = pair
    body = {"fromAccount": source, "toAccount": target, "amount": 5, "idempotencyKey": key(), field: value}
    before = snapshot(app)

    response = api.request("POST", TRANSFER_PATH, token, json=body)

    assert_failed(response, 400)
    assert field in response.get_json().get("errors", {})
    assert snapshot(app) == before


def test_an_idempotency_key_of_255_characters_is_accepted(api, pair):
    token, source, target = pair
    assert api.transfer(token, source, target, 1, key="k" * 255).status_code == 200


@pytest.mark.parametrize("amount", [
    0, -5, Decimal("-0.01"), "10", "abc", True, False, {"value": 10}, [10],
    Decimal("1.005"), Decimal("0.001"), 1_000_000_000_001, Decimal("1000000000000.01"),
])
def test_bad_amounts_are_a_400_and_move_nothing(api, app, pair, amount):
    token, source, target = pair
    before = snapshot(app)

    response = api.request("POST", TRANSFER_PATH, token,
                           json={"fromAccount": source, "toAccount": target, "amount": amount,
                                 "idempotencyKey": key()})

    body = assert_failed(response, 400)
    assert "amount" in body.get("errors", {})
    assert snapshot(app) == before


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400",
                                     "0.1000000000000000000000000000001", "10.000000000000000000000000000000001"])
def test_non_finite_and_absurd_number_literals_are_a_400(api, app, pair, literal):
    token, source, target = pair
    before = snapshot(app)
    text = (f'{{"fromAccount": "{source}", "toAccount": "{target}", "amount": {literal}, '
            f'"idempotencyKey": "{key()}"}}')

    response = raw_post(api, token, TRANSFER_PATH, text)

    assert_failed(response, 400)
    assert snapshot(app) == before


def test_exactly_one_trillion_is_accepted(api):
    _, token = api.user()
    source = api.funded_account(token, 1_000_000_000_000)
    target = api.open_account(token)

    response = api.transfer(token, source, target, 1_000_000_000_000)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["transaction"]["amount"] == 1_000_000_000_000
    assert api.balance(token, target) == 1_000_000_000_000
    assert api.balance(token, source) == 0


def test_the_same_amount_written_with_a_trailing_zero_is_the_same_request(api, pair):
    token, source, target = pair
    idem = key()
    first = raw_post(api, token, TRANSFER_PATH,
                     f'{{"fromAccount":"{source}","toAccount":"{target}","amount":10.5,"idempotencyKey":"{idem}"}}')
    second = raw_post(api, token, TRANSFER_PATH,
                      f'{{"fromAccount":"{source}","toAccount":"{target}","amount":10.50,"idempotencyKey":"{idem}"}}')

    assert first.status_code == 200
    assert second.status_code == 200
    assert second.get_json()["transaction"]["_id"] == first.get_json()["transaction"]["_id"]
    assert api.balance(token, source) == Decimal("89.5")


def test_decimals_in_a_zero_decimal_currency_are_a_400_and_do_not_consume_the_key(api, app):
    _, token = api.user()
    source = api.funded_account(token, 100, currency="JPY")
    target = api.open_account(token, currency="JPY")
    idem = key()
    before = snapshot(app)

    response = api.transfer(token, source, target, Decimal("1.5"), key=idem)

    assert_failed(response, 400)
    assert snapshot(app) == before
    assert api.transfer(token, source, target, 2, key=idem).status_code == 200
    assert api.balance(token, target) == 2


def test_a_transfer_to_the_same_account_is_a_400(api, app, pair):
    token, source, _ = pair
    before = snapshot(app)

    response = api.transfer(token, source, source, 5)

    assert_failed(response, 400)
    assert snapshot(app) == before


def test_a_body_that_is_not_a_json_object_is_a_400(api, pair):
    token, _, _ = pair
    assert_failed(raw_post(api, token, TRANSFER_PATH, "[1, 2]"), 400)
    assert_failed(raw_post(api, token, TRANSFER_PATH, '{"fromAccount": '), 400)


# --------------------------------------------------------------------------------- not found


@pytest.mark.parametrize("which", ["absent source", "absent target", "source of another user"])
def test_unknown_or_foreign_accounts_are_not_found_and_write_nothing(api, app, pair, which):
    token, source, target = pair
    _, stranger_token = api.user()
    foreign = api.funded_account(stranger_token, 50)
    ghost = str(ObjectId())
    from_id, to_id = {"absent source": (ghost, target), "absent target": (source, ghost),
                      "source of another user": (foreign, target)}[which]
    idem = key()
    before = snapshot(app)

    response = api.transfer(token, from_id, to_id, 5, key=idem)

    assert_failed(response, 400, NOT_FOUND)
    assert snapshot(app) == before
    assert count(app, "transactions", {"idempotencyKey": idem}) == 0
    # The key was not consumed: a valid request with it goes through.
    assert api.transfer(token, source, target, 5, key=idem).status_code == 200
    assert api.balance(stranger_token, foreign) == 50


# ------------------------------------------------------------------------------ business rules


@pytest.mark.parametrize(("frozen", "status"), [("source", "FROZEN"), ("target", "FROZEN"), ("target", "CLOSED")])
def test_a_transfer_touching_an_inactive_account_is_refused_and_recorded_failed(api, app, pair, frozen, status):
    token, source, target = pair
    set_status(app, source if frozen == "source" else target, status)
    idem = key()

    response = api.transfer(token, source, target, 5, key=idem)

    assert_failed(response, 400, INACTIVE)
    records = list(database(app).transactions.find({"idempotencyKey": idem}))
    assert [r["status"] for r in records] == ["FAILED"]
    assert count(app, "ledgers", {"transaction": records[0]["_id"]}) == 0
    assert count(app, "notifications", {"context.transactionId": str(records[0]["_id"])}) == 0
    assert balance_minor(app, source) == 10000
    assert balance_minor(app, target) == 0


def test_a_transfer_between_currencies_is_refused(api, app):
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(token, currency="USD")

    response = api.transfer(token, source, target, 5)

    body = assert_failed(response, 400)
    assert "currency" in body["message"].lower()
    assert balance_minor(app, source) == 10000
    assert balance_minor(app, target) == 0


@pytest.mark.parametrize(("funded", "amount", "available", "required"), [
    (Decimal("50.25"), 100, "50.25", "100"),
    (Decimal("10.5"), Decimal("10.51"), "10.5", "10.51"),
    (0, Decimal("0.01"), "0", "0.01"),
])
def test_insufficient_balance_gets_the_node_message(api, app, funded, amount, available, required):
    _, token = api.user()
    source = api.funded_account(token, funded) if funded else api.open_account(token)
    target = api.open_account(token)

    response = api.transfer(token, source, target, amount)

    assert_failed(response, 400,
                  f"Insufficient balance. Available balance is {available}. Required balance is {required}")
    assert balance_minor(app, target) == 0


# ------------------------------------------------------------------------------------ idempotency


def test_a_replay_answers_the_same_transaction_with_the_replay_header(api, app, pair):
    token, source, target = pair
    idem = key()
    first = api.transfer(token, source, target, 30, key=idem)
    before = snapshot(app)

    replay = api.transfer(token, source, target, 30, key=idem)

    assert replay.status_code == 200
    assert replay.get_json()["message"] == "Transaction already processed"
    assert replay.get_json()["transaction"] == first.get_json()["transaction"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert snapshot(app) == before  # no second record, entry or notification
    assert api.balance(token, source) == 70


def test_a_completed_transfer_still_replays_after_its_account_is_drained_and_frozen(api, app, pair):
    token, source, target = pair
    idem = key()
    first = api.transfer(token, source, target, 60, key=idem)
    assert api.transfer(token, source, target, 40).status_code == 200  # source now holds 0
    set_status(app, source, "FROZEN")

    replay = api.transfer(token, source, target, 60, key=idem)

    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["transaction"] == first.get_json()["transaction"]
    assert balance_minor(app, target) == 10000


def test_a_rejected_transfer_replays_its_rejection_even_after_the_account_is_funded(api, app):
    _, token = api.user()
    source = api.funded_account(token, 10)
    target = api.open_account(token)
    idem = key()
    first = api.transfer(token, source, target, 50, key=idem)
    assert_failed(first, 400)
    assert api.fund(source, 100).status_code == 201

    retry = api.transfer(token, source, target, 50, key=idem)

    assert retry.status_code == 400
    assert retry.get_json() == first.get_json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert api.balance(token, source) == 110
    assert api.balance(token, target) == 0


def test_an_inactive_rejection_is_replayed_after_the_account_is_reactivated(api, app, pair):
    token, source, target = pair
    set_status(app, target, "FROZEN")
    idem = key()
    assert_failed(api.transfer(token, source, target, 5, key=idem), 400, INACTIVE)
    set_status(app, target, "ACTIVE")

    retry = api.transfer(token, source, target, 5, key=idem)

    assert_failed(retry, 400, INACTIVE)
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert balance_minor(app, target) == 0


@pytest.mark.parametrize("change", ["amount", "toAccount"])
def test_reusing_a_key_with_a_different_request_is_a_422(api, app, pair, change):
    token, source, target = pair
    other = api.open_account(token)
    idem = key()
    assert api.transfer(token, source, target, 5, key=idem).status_code == 200

    if change == "amount":
        response = api.transfer(token, source, target, 6, key=idem)
    else:
        response = api.transfer(token, source, other, 5, key=idem)

    assert_failed(response, 422, "idempotencyKey was already used with a different request")
    assert api.balance(token, source) == 95
    assert api.balance(token, other) == 0


def test_reusing_a_rejected_key_with_a_different_request_is_a_422(api, pair):
    token, source, target = pair
    idem = key()
    assert_failed(api.transfer(token, source, target, 500, key=idem), 400)

    response = api.transfer(token, source, target, 5, key=idem)

    assert_failed(response, 422, "idempotencyKey was already used with a different request")
    assert api.balance(token, target) == 0


def test_idempotency_keys_are_scoped_to_the_calling_user(api, pair):
    token_a, source_a, target_a = pair
    _, token_b = api.user()
    source_b = api.funded_account(token_b, 100)
    target_b = api.open_account(token_b)
    shared = key()
    first = api.transfer(token_a, source_a, target_a, 10, key=shared)

    second = api.transfer(token_b, source_b, target_b, 20, key=shared)

    assert second.status_code == 200
    assert second.get_json()["message"] == "Transaction processed successfully"
    assert "Idempotent-Replayed" not in second.headers
    assert second.get_json()["transaction"]["_id"] != first.get_json()["transaction"]["_id"]
    assert api.balance(token_b, target_b) == 20
    assert api.balance(token_a, target_a) == 10


def test_the_idempotency_key_header_alone_is_enough(api, pair):
    token, source, target = pair
    idem = key()
    body = {"fromAccount": source, "toAccount": target, "amount": 7}

    first = api.request("POST", TRANSFER_PATH, token, json=body, headers={"Idempotency-Key": idem})
    replay = api.request("POST", TRANSFER_PATH, token, json=body, headers={"Idempotency-Key": idem})

    assert first.status_code == 200
    assert first.get_json()["transaction"]["idempotencyKey"] == idem
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert api.balance(token, target) == 7


def test_a_header_key_differing_from_the_body_key_is_a_400(api, app, pair):
    token, source, target = pair
    before = snapshot(app)

    response = api.transfer(token, source, target, 7, key=key(), headers={"Idempotency-Key": key()})

    assert_failed(response, 400)
    assert snapshot(app) == before


def test_a_header_key_equal_to_the_body_key_is_accepted(api, pair):
    token, source, target = pair
    idem = key()
    response = api.transfer(token, source, target, 7, key=idem, headers={"Idempotency-Key": idem})
    assert response.status_code == 200


# ----------------------------------------------------------------------------------- initial funds


def test_initial_funds_answer_201_and_replay_the_same_body(api, app):
    _, token = api.user()
    account = api.open_account(token)
    idem = key()

    first = api.fund(account, Decimal("250.75"), key=idem)
    replay = api.fund(account, Decimal("250.75"), key=idem)

    assert first.status_code == 201
    body = first.get_json()
    assert body["message"] == "Initial funds transaction created successfully"
    assert body["transaction"]["status"] == "COMPLETED"
    assert body["transaction"]["amount"] == Decimal("250.75")
    assert body["transaction"]["toAccount"] == account
    assert "Idempotent-Replayed" not in first.headers
    assert replay.status_code == 201
    assert replay.get_json() == body
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert api.balance(token, account) == Decimal("250.75")


def test_initial_funds_by_a_customer_are_forbidden(api, app):
    _, token = api.user()
    account = api.open_account(token)
    before = snapshot(app)

    response = api.request("POST", FUNDING_PATH, token,
                           json={"toAccount": account, "amount": 100, "idempotencyKey": key()})

    assert_failed(response, 403, "Forbidden, user is not a system user")
    assert snapshot(app) == before


@pytest.mark.parametrize("field", ["toAccount", "amount", "idempotencyKey"])
def test_initial_funds_with_a_missing_field_get_the_node_message(api, field):
    _, token = api.user()
    body = {"toAccount": api.open_account(token), "amount": 100, "idempotencyKey": key()}
    del body[field]

    response = api.request("POST", FUNDING_PATH, api.system_token(), json=body)

    assert_failed(response, 400, MISSING_FUNDING)


def test_initial_funds_to_an_absent_account_are_not_found(api, app):
    api.system_token()
    before = snapshot(app)
    response = api.fund(str(ObjectId()), 100)
    assert_failed(response, 400, "Account not found")
    assert snapshot(app) == before


def test_initial_funds_to_an_inactive_account_are_refused(api, app):
    _, token = api.user()
    account = api.open_account(token)
    set_status(app, account, "FROZEN")

    response = api.fund(account, 100)

    assert_failed(response, 400)
    assert balance_minor(app, account) == 0


def test_a_system_account_is_opened_per_currency_on_first_funding_and_goes_negative(api, app):
    _, token = api.user()
    usd = api.open_account(token, currency="USD")
    system_accounts = database(app).accounts.find({"systemCurrency": "USD"})
    assert list(system_accounts) == []

    assert api.fund(usd, 40).status_code == 201
    assert api.fund(usd, Decimal("2.5")).status_code == 201

    [usd_system] = list(database(app).accounts.find({"systemCurrency": "USD"}))
    assert usd_system["balance"] == -4250
    assert usd_system["currency"] == "USD"
    assert balance_minor(app, usd) == 4250


def test_initial_funds_write_two_positive_entries_typed_by_direction(api, app):
    _, token = api.user()
    account = api.open_account(token)

    response = api.fund(account, 100)

    txn_id = ObjectId(response.get_json()["transaction"]["_id"])
    entries = {e["type"]: e for e in database(app).ledgers.find({"transaction": txn_id})}
    assert set(entries) == {"DEBIT", "CREDIT"}
    assert entries["DEBIT"]["amount"] == entries["CREDIT"]["amount"] == 10000
    assert str(entries["CREDIT"]["account"]) == account
    assert account_doc(app, str(entries["DEBIT"]["account"]))["systemCurrency"] == "INR"
    notices = list(database(app).notifications.find({"context.transactionId": str(txn_id)}))
    assert [n["kind"] for n in notices] == ["funding_credit_notice"]


def test_initial_funds_with_a_reused_key_and_another_amount_are_a_422(api, app):
    _, token = api.user()
    account = api.open_account(token)
    idem = key()
    assert api.fund(account, 100, key=idem).status_code == 201

    response = api.fund(account, 101, key=idem)

    assert_failed(response, 422, "idempotencyKey was already used with a different request")
    assert balance_minor(app, account) == 10000
