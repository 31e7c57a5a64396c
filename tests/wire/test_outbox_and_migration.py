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
    """A message as the claim's answer shows it: the document BEFORE the claim's update (due and PENDING)."""
    now = datetime.now(UTC).replace(microsecond=0)
    return {"_id": ObjectId(), "kind": "credit_notice", "userId": ObjectId(), "status": "PENDING", "attempts": 0,
            "dedupeKey": f"credit_notice:{ObjectId()}", "nextAttemptAt": now, "createdAt": now,
            "context": {"transactionId": str(ObjectId()), "amount": "INR 25.00", "currency": "INR",
                        "fromAccount": str(ObjectId()), "toAccount": str(ObjectId()), "balanceAfter": "INR 25.00",
                        "at": "2026-03-01T10:00:00.000Z", "fromName": "Asha"}, **fields}


def abandoned(expiries: int = 0) -> dict[str, Any]:
    """A message whose sender died mid-delivery: SENDING, its lease over."""
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    return message(status="SENDING", attempts=1, claimedUntil=past, **({"leaseExpiries": expiries} if expiries
                                                                        else {}))


def claimed(got: Received, document: dict[str, Any] | None) -> Received:
    return got.ok(value=document, lastErrorObject={"n": int(document is not None),
                                                    "updatedExisting": document is not None})


def lease_of(claim: Received) -> datetime:
    """The lease the claim set (as MockupDB decodes it): every later write of this sender is fenced on it."""
    return claim.doc["update"]["$set"]["claimedUntil"]


def serve_lookup(replica_set: ReplicaSet, document: dict[str, Any]) -> Received:
    return replica_set.expect("find", "users").cursor([{"_id": document["userId"], "email": "r@example.test",
                                                        "name": "R"}])


def serve_delivery(replica_set: ReplicaSet, document: dict[str, Any], record_matches: int) -> list[Received]:
    claim = claimed(replica_set.expect("findAndModify", "notifications"), document)
    lookup = serve_lookup(replica_set, document)
    record = replica_set.expect("update", "notifications").ok(n=record_matches, nModified=record_matches)
    done = claimed(replica_set.expect("findAndModify", "notifications"), None)
    return [claim, lookup, record, done]


DELIVERY = [Step("findAndModify", "notifications", RETRYABLE), Step("find", "users", OUTSIDE),
            Step("update", "notifications", RETRYABLE), Step("findAndModify", "notifications", RETRYABLE)]


def test_a_claim_is_one_retryable_find_and_modify_and_the_record_is_fenced_on_its_lease(app, replica_set):
    document = message()
    report = drain(app)
    served = serve_delivery(replica_set, document, record_matches=1)

    assert report.result(WAIT).logged == 1
    check_sessions(served, DELIVERY)
    claim = served[0].doc
    # The answer is the document as it was before the claim: only that shows whether a lease was taken over.
    assert claim["new"] is False
    assert claim["sort"] == {"nextAttemptAt": 1}
    pending, expired = claim["query"]["$or"]
    assert pending["status"] == "PENDING"
    assert set(pending["nextAttemptAt"]) == {"$lte"}
    assert expired["status"] == "SENDING"
    assert set(expired["claimedUntil"]) == {"$lte"}
    assert set(claim["update"]) == {"$set", "$inc"}
    assert claim["update"]["$set"]["status"] == "SENDING"
    assert claim["update"]["$inc"] == {"attempts": 1}
    assert lease_of(served[0]) > expired["claimedUntil"]["$lte"]
    (record,) = served[2].doc["updates"]
    assert record["q"] == {"_id": document["_id"], "status": "SENDING", "claimedUntil": lease_of(served[0])}
    assert record["u"]["$set"]["status"] == "LOGGED"
    # The pass goes on until nothing is due, taking only what was due when it started: a drain always ends.
    assert served[3].doc["query"]["$or"][0] == pending
    replica_set.assert_quiet()


def test_taking_over_an_expired_lease_counts_it_fenced_on_the_new_lease_then_delivers(app, replica_set):
    document = abandoned()
    report = drain(app)
    claim = claimed(replica_set.expect("findAndModify", "notifications"), document)
    counted = replica_set.expect("update", "notifications").ok(n=1, nModified=1)
    served = [claim, counted, serve_lookup(replica_set, document),
              replica_set.expect("update", "notifications").ok(n=1, nModified=1),
              claimed(replica_set.expect("findAndModify", "notifications"), None)]

    assert report.result(WAIT).logged == 1
    check_sessions(served, [DELIVERY[0], Step("update", "notifications", RETRYABLE), *DELIVERY[1:]])
    (count,) = counted.doc["updates"]
    assert count["q"] == {"_id": document["_id"], "status": "SENDING", "claimedUntil": lease_of(claim)}
    assert count["u"] == {"$inc": {"leaseExpiries": 1}}
    (record,) = served[3].doc["updates"]
    assert record["q"] == {"_id": document["_id"], "status": "SENDING", "claimedUntil": lease_of(claim)}
    replica_set.assert_quiet()


def test_a_message_whose_leases_kept_expiring_is_parked_without_another_delivery(app, replica_set):
    document = abandoned(expiries=2)  # this takeover is the third: OUTBOX_MAX_LEASE_EXPIRIES
    report = drain(app)
    claim = claimed(replica_set.expect("findAndModify", "notifications"), document)
    replica_set.expect("update", "notifications").ok(n=1, nModified=1)  # leaseExpiries: 3
    park = replica_set.expect("update", "notifications").ok(n=1, nModified=1)  # no users read: nothing rendered
    claimed(replica_set.expect("findAndModify", "notifications"), None)

    assert report.result(WAIT).parked == 1
    (parked,) = park.doc["updates"]
    assert parked["q"] == {"_id": document["_id"], "status": "SENDING", "claimedUntil": lease_of(claim)}
    assert parked["u"]["$set"]["status"] == "PARKED"
    assert parked["u"]["$set"]["lastError"].startswith("LeaseExpired")
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
    assert retried.doc["update"] == first.doc["update"]  # the same lease: the server applies the claim once
    claimed(retried, document)
    serve_lookup(replica_set, document)
    record = replica_set.expect("update", "notifications").ok(n=1, nModified=1)
    claimed(replica_set.expect("findAndModify", "notifications"), None)

    assert report.result(WAIT).logged == 1
    assert record.doc["updates"][0]["q"]["claimedUntil"] == lease_of(retried)
    replica_set.assert_quiet()


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


def funded_ledger() -> dict[str, list[dict[str, Any]]]:
    """A consistent ledger: one funding of 5.00 from the INR system account, and a hold of 2.00 on it."""
    from ledger import hashchain

    system, customer, funding = ObjectId(), ObjectId(), ObjectId()
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    entries = []
    for account, kind, after in [(system, "DEBIT", -500), (customer, "CREDIT", 500)]:
        entry = {"_id": ObjectId(), "account": account, "type": kind, "amount": 500, "currency": "INR",
                 "transaction": funding, "balanceAfter": after, "seq": 1, "createdAt": at,
                 "prevHash": hashchain.GENESIS}
        entries.append({**entry, "hash": hashchain.entry_hash(entry, hashchain.GENESIS)})
    return {
        "accounts": [
            {"_id": system, "balance": -500, "seq": 1, "currency": "INR", "systemCurrency": "INR",
             "lastHash": entries[0]["hash"]},
            {"_id": customer, "balance": 500, "seq": 1, "currency": "INR", "lastHash": entries[1]["hash"],
             "held": 200},
        ],
        "ledgers": entries,
        "transactions": [{"_id": funding, "status": "COMPLETED", "amount": 500, "fromAccount": system,
                          "toAccount": customer}],
        "holds": [{"_id": ObjectId(), "fromAccount": customer, "amount": 200}],
    }


def test_the_ledger_audit_streams_every_collection_in_index_order_at_one_snapshot(app, replica_set):
    from bson import Timestamp

    from ledger.services import audit

    def run():
        with app.app_context():
            return audit.verify()

    data = funded_ledger()
    point_in_time = Timestamp(1_767_000_000, 7)

    def at_one_point_in_time(got: Received) -> None:
        assert got.name == "find", got
        rows = sorted(data[got.collection or ""], key=lambda row: tuple(row[k] for k in got.doc["sort"]))
        namespace = f"{got.doc['$db']}.{got.collection}"
        got.ok(cursor={"id": Int64(0), "ns": namespace, "atClusterTime": point_in_time, "firstBatch": rows})

    report = in_thread(run)
    reads = replica_set.serve_until(report, at_one_point_in_time)

    outcome = report.result(WAIT)
    assert outcome.problems == []
    assert outcome.checked() == {"accounts": 2, "entries": 2, "transactions": 1, "currencies": 1}
    # Three merge passes, each over cursors sorted by an index: memory stays bounded whatever the ledger's size.
    assert [(got.collection, dict(got.doc["sort"])) for got in reads] == [
        ("accounts", {"_id": 1}), ("ledgers", {"account": 1, "seq": 1}),
        ("transactions", {"_id": 1}), ("ledgers", {"transaction": 1}),
        ("accounts", {"_id": 1}), ("holds", {"fromAccount": 1})]
    assert reads[-1].doc["filter"] == {"status": "ACTIVE"}
    assert reads[0].doc["readConcern"] == {"level": "snapshot"}
    # Every later read is pinned to the first one's point in time: transfers committing meanwhile are unseen.
    for read in reads[1:]:
        assert read.doc["readConcern"] == {"level": "snapshot", "atClusterTime": point_in_time}, read
    assert len({repr(read.doc["lsid"]) for read in reads}) == 1
    for read in reads:
        assert "txnNumber" not in read.doc  # a snapshot session, not a transaction: nothing to commit
        assert read.member is replica_set.primary
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
