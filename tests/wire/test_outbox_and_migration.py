"""The outbox sender's claim and record, and the Node migration's index changes, at the command level.

* A claim is one retryable ``findAndModify`` (``new: true``) that takes a due ``PENDING`` message or an expired
  ``SENDING`` lease, sets the lease and counts the attempt; a network error is retried by the driver under the
  same ``txnNumber``, so the server applies the claim once. The outcome is an ``update`` fenced on the exact
  ``claimedUntil`` the claim's answer carried: a sender whose lease was taken over records nothing.
* The migration drops exactly the Node service's global ``idempotencyKey`` index, its 3-day TTL on
  ``createdAt`` and the unique raw ``token``, and then creates exactly ``declared_indexes()``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Int64, ObjectId

from ledger import db
from ledger.services import outbox
from tests.wire.bank import OUTSIDE, RETRYABLE, Step, check_sessions
from tests.wire.replset import WAIT, Received, ReplicaSet, in_thread


def drain(app) -> Any:
    def run():
        with app.app_context():
            return outbox.drain(app)

    return in_thread(run)


def message(**fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    return {"_id": ObjectId(), "kind": "credit_notice", "userId": ObjectId(), "status": "SENDING", "attempts": 1,
            "dedupeKey": f"credit_notice:{ObjectId()}", "nextAttemptAt": now, "createdAt": now,
            "claimedUntil": now + timedelta(seconds=120),
            "context": {"transactionId": str(ObjectId()), "amount": "INR 25.00", "currency": "INR",
                        "fromAccount": str(ObjectId()), "toAccount": str(ObjectId()), "balanceAfter": "INR 25.00",
                        "at": "2026-03-01T10:00:00.000Z", "fromName": "Asha"}, **fields}


def claimed(got: Received, document: dict[str, Any] | None) -> Received:
    return got.ok(value=document, lastErrorObject={"n": int(document is not None),
                                                    "updatedExisting": document is not None})


def serve_delivery(replica_set: ReplicaSet, document: dict[str, Any], record_matches: int) -> list[Received]:
    claim = claimed(replica_set.expect("findAndModify", "notifications"), document)
    lookup = replica_set.expect("find", "users").cursor([{"_id": document["userId"], "email": "r@example.test",
                                                          "name": "R"}])
    record = replica_set.expect("update", "notifications").ok(n=record_matches, nModified=record_matches)
    done = claimed(replica_set.expect("findAndModify", "notifications"), None)
    return [claim, lookup, record, done]


def test_a_claim_is_one_retryable_find_and_modify_and_the_record_is_fenced_on_its_lease(app, replica_set):
    document = message()
    report = drain(app)
    served = serve_delivery(replica_set, document, record_matches=1)

    assert report.result(WAIT).logged == 1
    check_sessions(served, [Step("findAndModify", "notifications", RETRYABLE), Step("find", "users", OUTSIDE),
                            Step("update", "notifications", RETRYABLE),
                            Step("findAndModify", "notifications", RETRYABLE)])
    claim = served[0].doc
    assert claim["new"] is True
    assert claim["sort"] == {"nextAttemptAt": 1}
    pending, expired = claim["query"]["$or"]
    assert pending["status"] == "PENDING"
    assert set(pending["nextAttemptAt"]) == {"$lte"}
    assert expired["status"] == "SENDING"
    assert set(expired["claimedUntil"]) == {"$lte"}
    assert claim["update"]["$set"]["status"] == "SENDING"
    assert claim["update"]["$inc"] == {"attempts": 1}
    (record,) = served[2].doc["updates"]
    lease = document["claimedUntil"].replace(tzinfo=None)  # MockupDB decodes BSON dates naive (UTC)
    assert record["q"] == {"_id": document["_id"], "status": "SENDING", "claimedUntil": lease}
    assert record["u"]["$set"]["status"] == "LOGGED"
    replica_set.assert_quiet()


def test_a_sender_whose_lease_was_taken_over_records_nothing(app, replica_set):
    report = drain(app)
    serve_delivery(replica_set, message(), record_matches=0)  # another sender re-claimed it meanwhile

    outcome = report.result(WAIT)
    assert outcome.lost_leases == 1
    assert outcome.logged == 0


def test_a_claim_cut_by_a_network_error_is_retried_under_the_same_txn_number(app, replica_set):
    document = message()
    report = drain(app)
    first = replica_set.expect("findAndModify", "notifications").hangup()
    retried = replica_set.expect("findAndModify", "notifications")
    assert (retried.doc["lsid"], retried.doc["txnNumber"]) == (first.doc["lsid"], first.doc["txnNumber"])
    claimed(retried, document)
    replica_set.expect("find", "users").cursor([{"_id": document["userId"], "email": "r@example.test", "name": "R"}])
    replica_set.expect("update", "notifications").ok(n=1, nModified=1)
    claimed(replica_set.expect("findAndModify", "notifications"), None)

    assert report.result(WAIT).logged == 1


NODE_INDEXES = {
    "transactions": [{"v": 2, "key": {"idempotencyKey": 1}, "name": "idempotencyKey_1", "unique": True}],
    "tokenblacklists": [{"v": 2, "key": {"createdAt": 1}, "name": "createdAt_1", "expireAfterSeconds": 259200},
                        {"v": 2, "key": {"token": 1}, "name": "token_1", "unique": True}],
}


def test_the_migration_drops_exactly_node_s_indexes_and_creates_exactly_the_declared_ones(app, replica_set):
    from ledger.migrate import migrate

    replica_set.indexes.clear()  # an unmigrated Node database: only Node's indexes
    for collection, indexes in NODE_INDEXES.items():
        replica_set.indexes[collection] = [{k: v for k, v in index.items() if k != "v"} for index in indexes]
    dropped: list[tuple[str, str]] = []

    def run():
        with app.app_context():
            return migrate(db.get_db(app), echo=lambda _line: None)

    def empty_node_database(got: Received) -> None:
        if got.name == "listIndexes":
            replica_set.serve_list_indexes(got)
        elif got.name == "dropIndexes":
            dropped.append((got.collection, got.doc["index"]))
            replica_set.indexes[got.collection] = [index for index in replica_set.indexes[got.collection]
                                                   if index["name"] != got.doc["index"]]
            got.ok(nIndexesWas=2)
        elif got.name == "createIndexes":
            replica_set.serve_create_indexes(got)
        elif got.name in {"find", "aggregate"}:
            got.cursor([])
        elif got.name == "count":
            got.ok(n=Int64(0))
        elif got.name == "distinct":
            got.ok(values=[])
        else:
            raise AssertionError(f"the migration of an empty database sent {got!r}")

    report = in_thread(run)
    served = replica_set.serve_until(report, empty_node_database)

    assert report.result(WAIT).changes["Node indexes dropped"] == 3
    assert sorted(dropped) == [("tokenblacklists", "createdAt_1"), ("tokenblacklists", "token_1"),
                               ("transactions", "idempotencyKey_1")]
    created = {got.collection: [dict(index) for index in got.doc["indexes"]]
               for got in served if got.name == "createIndexes"}
    assert created == {name: [model.document for model in models]
                       for name, models in db.declared_indexes().items()}
    assert all(got.member is replica_set.primary for got in served)
    assert served.index(next(g for g in served if g.name == "dropIndexes")) < served.index(
        next(g for g in served if g.name == "createIndexes"))


def test_the_ledger_audit_reads_every_collection_at_one_snapshot(app, replica_set):
    from bson import Timestamp

    from ledger.services import audit

    def run():
        with app.app_context():
            return audit.verify()

    account = ObjectId()
    point_in_time = Timestamp(1_767_000_000, 7)
    report = in_thread(run)
    entries = replica_set.expect("find", "ledgers")
    namespace = f"{entries.doc['$db']}.ledgers"
    entries.ok(cursor={"id": Int64(0), "ns": namespace, "atClusterTime": point_in_time,
                       "firstBatch": [{"_id": ObjectId(), "account": account, "type": "CREDIT", "amount": 5}]})
    accounts = replica_set.expect("find", "accounts").cursor([{"_id": account, "balance": 5, "seq": 1,
                                                              "currency": "INR"}])

    outcome = report.result(WAIT)
    assert entries.doc["readConcern"] == {"level": "snapshot"}
    # The second read is pinned to the first one's point in time: transfers committing between them are unseen.
    assert accounts.doc["readConcern"] == {"level": "snapshot", "atClusterTime": point_in_time}
    assert accounts.doc["lsid"] == entries.doc["lsid"]
    for read in (entries, accounts):
        assert "txnNumber" not in read.doc  # a snapshot session, not a transaction: nothing to commit
    assert outcome.problems == ["INR balances sum to 5 minor units, not 0"]
    replica_set.assert_quiet()


def test_the_migration_converts_an_account_s_entries_and_balance_in_one_majority_transaction(app, replica_set):
    from ledger.migrate import migrate
    from tests.wire.bank import COMMIT, FIRST, INSIDE

    account = {"_id": ObjectId(), "user": ObjectId(), "status": "ACTIVE", "currency": "INR"}  # Node: no balance
    entry = {"_id": ObjectId(), "account": account["_id"], "type": "CREDIT", "amount": 10.5,
             "transaction": ObjectId(), "createdAt": datetime(2025, 1, 2, tzinfo=UTC)}
    node_data = {"accounts": [account], "ledgers": [entry]}

    def run():
        with app.app_context():
            return migrate(db.get_db(app), echo=lambda _line: None)

    def one_node_account(got: Received) -> None:
        rows = node_data.get(got.collection or "", [])
        if got.name == "listIndexes":
            replica_set.serve_list_indexes(got)
        elif got.name == "createIndexes":
            replica_set.serve_create_indexes(got)
        elif got.name == "find":
            got.cursor(rows)
        elif got.name == "aggregate":  # count_documents
            got.cursor([{"_id": 1, "n": len(rows)}] if rows else [])
        elif got.name == "count":
            got.ok(n=Int64(len(rows)))
        elif got.name == "distinct":
            got.ok(values=[account["_id"]])
        elif got.name == "update":
            got.ok(n=len(got.doc["updates"]), nModified=len(got.doc["updates"]))
        elif got.name == "commitTransaction":
            got.ok()
        else:
            raise AssertionError(f"unexpected {got!r}")

    report = in_thread(run)
    served = replica_set.serve_until(report, one_node_account)

    assert report.result(WAIT).changes["ledger entries converted"] == 1
    writes = [got for got in served if got.name in {"update", "commitTransaction", "insert", "delete"}]
    check_sessions(writes, [Step("update", "ledgers", FIRST), Step("update", "accounts", INSIDE),
                            Step("commitTransaction", None, COMMIT)])
    (converted,) = writes[0].doc["updates"]
    assert converted["q"] == {"_id": entry["_id"], "seq": {"$exists": False}}  # never converted twice
    assert {k: converted["u"]["$set"][k] for k in ("amount", "seq", "balanceAfter")} == {
        "amount": 1050, "seq": 1, "balanceAfter": 1050}
    (stored,) = writes[1].doc["updates"]
    assert stored["q"] == {"_id": account["_id"]}
    assert stored["u"]["$set"] == {"balance": 1050, "seq": 1}
