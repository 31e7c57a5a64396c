"""The command script of every route, as it reaches a replica set's primary (docs/wire-protocol.md).

Each test sends one HTTP request to the real app, serves the commands the driver sends from a MockupDB primary,
and checks the whole sequence: names and collections in order, each command's session fields (the
transaction's ``lsid``/``txnNumber``/``autocommit: false``, ``startTransaction`` and ``readConcern: snapshot`` on
the first, ``writeConcern: majority`` with our ``wtimeout`` on the commit), every command on the primary, and
nothing else afterwards.
"""

from __future__ import annotations

import bcrypt
import pytest
from bson import ObjectId

from ledger import hashchain
from tests.wire.bank import (
    AUTH,
    FIRST_FUNDING_IN_CURRENCY,
    FUNDING,
    INSIDE,
    LOGIN,
    LOGOUT,
    OPEN_ACCOUNT,
    OUTSIDE,
    READ_ACCOUNTS,
    READY,
    REGISTER,
    TRANSFER,
    Bank,
    Step,
    check_sessions,
    serve_attempt,
    serve_auth,
)
from tests.wire.replset import WAIT, http


@pytest.fixture
def bank(app):
    return Bank(app)


def available(amount: int) -> dict:
    """The debit filter's clause ``balance - held >= amount`` (``held`` absent counts as 0)."""
    return {"$expr": {"$gte": [{"$subtract": ["$balance", {"$ifNull": ["$held", 0]}]}, amount]}}


def assert_chained(entry: dict, prev_hash: str) -> None:
    """The entry carries ``prevHash`` and the hash of its own canonical line (docs/hash-chain.md)."""
    assert entry["prevHash"] == prev_hash
    assert entry["hash"] == hashchain.entry_hash(entry, prev_hash)


@pytest.mark.parametrize("source_chain", ["chained", "awaiting backfill"])
def test_a_transfer_is_two_auth_reads_then_one_transaction_of_six_commands(app, replica_set, bank, source_chain):
    if source_chain == "awaiting backfill":  # entries written before the chain existed: no lastHash yet
        del bank.source["lastHash"]
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body("t-1", 25.5))
    served = serve_auth(replica_set, bank.customer) + serve_attempt(replica_set, bank)

    reply = response.result(WAIT)
    assert reply.status_code == 200, reply.get_json()
    check_sessions(served, TRANSFER)
    replica_set.assert_quiet()
    read = served[2].doc
    assert read["filter"] == {"_id": {"$in": [bank.source["_id"], bank.target["_id"]]}}
    assert {"balance", "held", "seq", "lastHash", "updatedAt"} <= set(read["projection"])
    record = served[3].doc["documents"][0]
    assert (record["amount"], record["status"], record["idempotencyKey"]) == (2550, "COMPLETED", "t-1")
    assert record["initiator"] == bank.customer["_id"]
    assert reply.get_json()["transaction"]["_id"] == str(record["_id"])
    debit, credit = served[4].doc["updates"]
    entries = served[5].doc["documents"]
    # Every rule that protects the money is in the debit's filter (what holds reserve included), and both pin
    # the sequence number and the chain head read: the entries' prevHash is right only if nobody moved them.
    head = bank.source.get("lastHash", {"$exists": False})
    assert debit["q"] == {"_id": bank.source["_id"], "currency": "INR", "seq": 7, "lastHash": head,
                          "user": bank.customer["_id"], "status": "ACTIVE", "balance": {"$gte": 2550},
                          **available(2550)}
    assert debit["u"]["$inc"] == {"balance": -2550, "seq": 1}
    assert credit["q"] == {"_id": bank.target["_id"], "status": "ACTIVE", "currency": "INR", "seq": 0,
                           "lastHash": {"$exists": False}}
    assert credit["u"]["$inc"] == {"balance": 2550, "seq": 1}
    assert served[4].doc["ordered"] is True
    assert [(e["type"], e["amount"], e["balanceAfter"], e["seq"]) for e in entries] == [
        ("DEBIT", 2550, 100_000 - 2550, 8), ("CREDIT", 2550, 2550, 1)]
    # The same update that passes the filter moves the chain head to the new entry's hash.
    assert_chained(entries[1], hashchain.GENESIS)
    assert credit["u"]["$set"] == {"updatedAt": entries[1]["createdAt"], "lastHash": entries[1]["hash"]}
    if source_chain == "chained":
        assert_chained(entries[0], bank.source["lastHash"])
        assert debit["u"]["$set"] == {"updatedAt": entries[0]["createdAt"], "lastHash": entries[0]["hash"]}
    else:  # left for backfill-ledger-chain, which chains the account's entries in order
        assert {"hash", "prevHash"}.isdisjoint(entries[0])
        assert debit["u"]["$set"] == {"updatedAt": entries[0]["createdAt"]}
    assert [m["kind"] for m in served[6].doc["documents"]] == ["transfer_receipt", "credit_notice"]


def test_a_funding_with_the_system_account_in_place_is_the_same_six_commands(app, replica_set, bank):
    response = http(app, "POST", "/api/transactions/system/initial-funds", bank.system_token,
                    json=bank.funding_body("f-1", 10))
    served = serve_auth(replica_set, bank.system) + serve_attempt(replica_set, bank, funding=True)

    reply = response.result(WAIT)
    assert reply.status_code == 201, reply.get_json()
    check_sessions(served, FUNDING)
    replica_set.assert_quiet()
    debit, credit = served[4].doc["updates"]
    entries = served[5].doc["documents"]
    # The system account alone may go negative: no balance rule, but its sequence and chain head are pinned.
    assert debit["q"] == {"_id": bank.system_account["_id"], "currency": "INR", "seq": 3,
                          "lastHash": bank.system_account["lastHash"], "systemCurrency": "INR"}
    assert credit["q"] == {"_id": bank.target["_id"], "status": "ACTIVE", "currency": "INR", "seq": 0,
                           "lastHash": {"$exists": False}}
    assert_chained(entries[0], bank.system_account["lastHash"])
    assert_chained(entries[1], hashchain.GENESIS)
    assert [update["u"]["$set"]["lastHash"] for update in (debit, credit)] == [e["hash"] for e in entries]
    assert [m["kind"] for m in served[6].doc["documents"]] == ["funding_credit_notice"]


def test_a_transfer_from_an_account_with_holds_first_releases_those_past_expiry_in_the_same_transaction(
        app, replica_set, bank):
    bank.source["held"] = 5_000  # 3000 of it by a hold that expired, not yet swept
    expired_hold = {"_id": ObjectId(), "amount": 3_000}
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body("t-h", 10))
    served = serve_auth(replica_set, bank.customer)
    served.append(replica_set.expect("find", "accounts").cursor([bank.source, bank.target]))
    due = replica_set.expect("find", "holds").cursor([expired_hold])
    expire = replica_set.expect("update", "holds").ok(n=1, nModified=1)
    release = replica_set.expect("update", "accounts").ok(n=1, nModified=1)
    served += [due, expire, release]
    served += serve_attempt(replica_set, bank, skip_read=True)

    reply = response.result(WAIT)
    assert reply.status_code == 200, reply.get_json()
    check_sessions(served, [*TRANSFER[:3], Step("find", "holds", INSIDE), Step("update", "holds", INSIDE),
                            Step("update", "accounts", INSIDE), *TRANSFER[3:]])
    replica_set.assert_quiet()
    assert due.doc["filter"]["fromAccount"] == bank.source["_id"]
    assert due.doc["filter"]["status"] == "ACTIVE"
    assert set(due.doc["filter"]["expiresAt"]) == {"$lte"}
    (expiry,) = expire.doc["updates"]
    assert expiry["multi"] is True
    assert expiry["q"] == {"_id": {"$in": [expired_hold["_id"]]}, "status": "ACTIVE",
                           "expiresAt": due.doc["filter"]["expiresAt"]}  # still ACTIVE, still expired
    assert expiry["u"]["$set"]["status"] == "EXPIRED"
    (released,) = release.doc["updates"]
    assert released["q"] == {"_id": bank.source["_id"], "held": {"$gte": 3_000}}
    assert released["u"] == {"$inc": {"held": -3_000}}
    (debit, _credit) = served[-4].doc["updates"]
    assert debit["q"]["$expr"] == available(1_000)["$expr"]  # balance - held, whatever the read said


def test_the_first_funding_in_a_currency_opens_the_system_account_inside_the_same_transaction(
        app, replica_set, bank):
    response = http(app, "POST", "/api/transactions/system/initial-funds", bank.system_token,
                    json=bank.funding_body("f-2", 10))
    served = serve_auth(replica_set, bank.system)
    served.append(replica_set.expect("find", "accounts").cursor([bank.target]))  # no INR system account yet
    opened = replica_set.expect("insert", "accounts").ok(n=1)
    served.append(opened)
    served.append(replica_set.expect("insert", "transactions").ok(n=1))
    served.append(replica_set.expect("update", "accounts").ok(n=2, nModified=2))
    served.append(replica_set.expect("insert", "ledgers").ok(n=2))
    served.append(replica_set.expect("insert", "notifications").ok(n=1))
    served.append(replica_set.expect("commitTransaction").ok())

    assert response.result(WAIT).status_code == 201
    check_sessions(served, FIRST_FUNDING_IN_CURRENCY)
    account = opened.doc["documents"][0]
    assert (account["user"], account["systemCurrency"], account["balance"]) == (bank.system["_id"], "INR", 0)


def test_a_funding_by_a_customer_stops_after_authentication(app, replica_set, bank):
    response = http(app, "POST", "/api/transactions/system/initial-funds", bank.customer_token,
                    json=bank.funding_body("f-3"))
    served = serve_auth(replica_set, bank.customer)

    assert response.result(WAIT).status_code == 403
    check_sessions(served, AUTH)
    replica_set.assert_quiet()


def test_register_inserts_the_user_and_its_welcome_in_one_transaction(app, replica_set):
    response = http(app, "POST", "/api/auth/register",
                    json={"email": "New@Example.test", "password": "password-123", "name": "New"})
    served = [replica_set.expect("insert", "users").ok(n=1),
              replica_set.expect("insert", "notifications").ok(n=1),
              replica_set.expect("commitTransaction").ok()]

    reply = response.result(WAIT)
    assert reply.status_code == 201, reply.get_json()
    check_sessions(served, REGISTER)
    replica_set.assert_quiet()
    user = served[0].doc["documents"][0]
    assert user["email"] == "new@example.test"
    assert user["password"].startswith("$2b$")
    assert served[1].doc["documents"][0]["kind"] == "welcome"


def test_login_is_one_read_of_the_user(app, replica_set):
    user = {"_id": ObjectId(), "email": "l@example.test", "name": "L",
            "password": bcrypt.hashpw(b"password-123", bcrypt.gensalt(4)).decode()}
    response = http(app, "POST", "/api/auth/login", json={"email": "l@example.test", "password": "password-123"})
    served = [replica_set.expect("find", "users").cursor([user])]

    assert response.result(WAIT).status_code == 200
    check_sessions(served, LOGIN)
    assert served[0].doc["filter"] == {"email": "l@example.test"}
    replica_set.assert_quiet()


def test_logout_is_one_retryable_upsert_of_the_token_hash(app, replica_set, bank):
    response = http(app, "POST", "/api/auth/logout", bank.customer_token)
    served = [replica_set.expect("update", "tokenblacklists").ok(n=1, nModified=0,
                                                                 upserted=[{"index": 0, "_id": ObjectId()}])]

    assert response.result(WAIT).status_code == 200
    check_sessions(served, LOGOUT)
    (update,) = served[0].doc["updates"]
    assert update["upsert"] is True
    assert set(update["u"]) == {"$setOnInsert"}
    assert update["q"] == {"tokenHash": update["u"]["$setOnInsert"]["tokenHash"]}
    replica_set.assert_quiet()


def test_opening_an_account_is_one_retryable_insert(app, replica_set, bank):
    response = http(app, "POST", "/api/accounts", bank.customer_token, json={"currency": "usd"})
    served = serve_auth(replica_set, bank.customer) + [replica_set.expect("insert", "accounts").ok(n=1)]

    assert response.result(WAIT).status_code == 201
    check_sessions(served, OPEN_ACCOUNT)
    account = served[2].doc["documents"][0]
    assert (account["currency"], account["balance"], account["status"]) == ("USD", 0, "ACTIVE")
    replica_set.assert_quiet()


@pytest.mark.parametrize("route", ["/api/accounts", "/api/accounts/user/{user}", "/api/accounts/balance/{account}",
                                   "/api/accounts/{account}"])
def test_each_read_route_is_one_read_on_the_primary_outside_any_transaction(app, replica_set, bank, route):
    path = route.format(user=bank.customer["_id"], account=bank.source["_id"])
    response = http(app, "GET", path, bank.customer_token)
    served = serve_auth(replica_set, bank.customer)
    read = replica_set.expect("find", "accounts").cursor([bank.source])
    served.append(read)

    assert response.result(WAIT).status_code == 200
    check_sessions(served, READ_ACCOUNTS)
    assert read.doc["filter"]["user"] == bank.customer["_id"]  # scoped to the owner in the query itself
    replica_set.assert_quiet()


def test_ready_asks_the_server_hello_then_lists_every_collection_s_indexes(app, replica_set):
    hellos_before = len(replica_set.app_hellos())
    response = http(app, "GET", "/ready")
    served = [replica_set.serve_list_indexes(replica_set.expect("listIndexes", step.collection)) for step in READY]

    reply = response.result(WAIT)
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json() == {"engine": "mongodb", "replicaSet": "rs0", "status": "ready"}
    check_sessions(served, READY)
    (member, hello), = replica_set.app_hellos()[hellos_before:]
    assert member is replica_set.primary
    assert hello["$db"] == "admin"
    replica_set.assert_quiet()


@pytest.mark.parametrize("path", ["/health", "/", "/api/openapi.json"])
def test_routes_without_data_send_nothing(app, replica_set, path):
    assert http(app, "GET", path).result(WAIT).status_code == 200
    replica_set.assert_quiet()


def test_metrics_counts_the_outbox_backlog_in_one_read(app, replica_set):
    response = http(app, "GET", "/metrics")
    count = replica_set.expect("aggregate", "notifications").cursor([{"_id": 1, "n": 3}])

    reply = response.result(WAIT)
    assert reply.status_code == 200
    assert "ledger_notification_backlog 3.0" in reply.get_data(as_text=True)
    assert count.doc["pipeline"][0] == {"$match": {"status": {"$in": ["PENDING", "SENDING"]}}}
    check_sessions([count], [Step("aggregate", "notifications", OUTSIDE)])
    replica_set.assert_quiet()


def test_a_read_cut_by_a_network_error_is_retried_once_on_the_primary(app, replica_set, bank):
    response = http(app, "GET", f"/api/accounts/balance/{bank.source['_id']}", bank.customer_token)
    serve_auth(replica_set, bank.customer)
    first = replica_set.expect("find", "accounts").hangup()  # retryReads: the driver asks once more
    again = replica_set.expect("find", "accounts").cursor([bank.source])

    assert response.result(WAIT).status_code == 200
    assert again.doc["filter"] == first.doc["filter"]
    replica_set.assert_quiet()


@pytest.mark.parametrize("route", ["open account", "logout"])
def test_a_single_document_write_cut_by_a_network_error_is_retried_under_the_same_txn_number(
        app, replica_set, bank, route):
    if route == "open account":
        response = http(app, "POST", "/api/accounts", bank.customer_token)
        serve_auth(replica_set, bank.customer)
        name, collection, success = "insert", "accounts", 201
    else:
        response = http(app, "POST", "/api/auth/logout", bank.customer_token)
        name, collection, success = "update", "tokenblacklists", 200
    first = replica_set.expect(name, collection).hangup()
    again = replica_set.expect(name, collection).ok(n=1)

    assert response.result(WAIT).status_code == success
    # retryWrites: the server recognizes the retry by (lsid, txnNumber) and applies the write once.
    assert (again.doc["lsid"], again.doc["txnNumber"]) == (first.doc["lsid"], first.doc["txnNumber"])
    replica_set.assert_quiet()


def test_a_business_rejection_commits_the_failed_record_and_moves_nothing(app, replica_set, bank):
    bank.source["balance"] = 1000  # 10.00 available, 25 asked
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body("poor", 25))
    served = serve_auth(replica_set, bank.customer)
    served.append(replica_set.expect("find", "accounts").cursor([bank.source, bank.target]))
    served.append(replica_set.expect("insert", "transactions").ok(n=1))
    served.append(replica_set.expect("commitTransaction").ok())

    reply = response.result(WAIT)
    assert reply.status_code == 400
    assert reply.get_json()["message"].startswith("Insufficient balance")
    check_sessions(served, [*TRANSFER[:4], TRANSFER[-1]])  # no update, no ledger entries, no messages
    record = served[3].doc["documents"][0]
    assert record["status"] == "FAILED"
    assert record["failure"]["code"] == "INSUFFICIENT_FUNDS"
    replica_set.assert_quiet()


def test_a_server_that_never_answers_costs_a_bounded_wait_and_a_503(replica_set, monkeypatch):
    from ledger import db
    from tests.wire.conftest import start_app

    monkeypatch.setattr(db, "SOCKET_TIMEOUT_MS", 300)  # the client's socket timeout, shortened for the test
    app = start_app(replica_set)
    bank = Bank(app)
    response = http(app, "GET", f"/api/accounts/balance/{bank.source['_id']}", bank.customer_token)
    serve_auth(replica_set, bank.customer)
    unanswered = [replica_set.expect("find", "accounts"), replica_set.expect("find", "accounts")]  # + retryReads

    reply = response.result(WAIT)
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"
    assert not any(got.answered for got in unanswered)
