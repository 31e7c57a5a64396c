"""Indexes as the server receives them at start-up, and ``/ready`` as the server's answers make it.

* start-up sends one ``createIndexes`` per collection, on the primary, outside any transaction, and what it
  asks for is exactly ``declared_indexes()``: names, keys, ``unique``, ``sparse``, partial filters and the
  blocklist's TTL (``expireAfterSeconds: 0``);
* until the server has acknowledged them (a Node-era database refuses the unique ``(account, seq)`` index),
  the app still starts, ``/ready`` answers 503 naming what is missing, and transfers and sign-ups answer 503
  before any transaction starts; once ``listIndexes`` shows them, both open by themselves;
* ``/ready`` is 503 on a standalone server, on an uninitiated member (``RSGhost``), on a secondary reached
  directly, and 200 on the primary.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from bson import ObjectId

from ledger import create_app, db
from tests.wire.bank import READY, TRANSFER, Bank, check_sessions, serve_attempt, serve_auth
from tests.wire.replset import GHOST, SECONDARY, WAIT, ReplicaSet, http, in_thread

# The indexes the service's safety rests on, written out independently of the models.
REQUIRED = {
    ("users", "email_1"): {"key": {"email": 1}, "unique": True},
    ("transactions", "initiator_1_idempotencyKey_1"): {"key": {"initiator": 1, "idempotencyKey": 1}, "unique": True},
    ("ledgers", "account_1_seq_1"): {"key": {"account": 1, "seq": 1}, "unique": True},
    ("accounts", "systemCurrency_1"): {"key": {"systemCurrency": 1}, "unique": True, "sparse": True},
    ("tokenblacklists", "tokenHash_1"): {"key": {"tokenHash": 1}, "unique": True, "sparse": True},
    ("tokenblacklists", "expiresAt_1"): {"key": {"expiresAt": 1}, "expireAfterSeconds": 0},
    ("notifications", "dedupeKey_1"): {"key": {"dedupeKey": 1}, "unique": True},
}


def sent_indexes(replica_set: ReplicaSet) -> dict[str, list[dict[str, Any]]]:
    return {got.collection: [dict(index) for index in got.doc["indexes"]]
            for got in replica_set.seen if got.name == "createIndexes"}


def test_start_up_creates_exactly_the_declared_indexes_on_the_primary(app, replica_set):
    sent = sent_indexes(replica_set)
    declared = {name: [model.document for model in models] for name, models in db.declared_indexes().items()}

    assert sent == declared  # every option, in order: names, keys, unique, sparse, partial filters, TTL
    for (collection, name), options in REQUIRED.items():
        (index,) = [index for index in sent[collection] if index["name"] == name]
        assert {field: index.get(field) for field in options} == options, (collection, name)
    for got in replica_set.seen:
        assert got.member is replica_set.primary
        assert "txnNumber" not in got.doc
        assert "autocommit" not in got.doc
    assert replica_set.app_hellos(), "start-up never checked the replica set"


def start_refused(replica_set: ReplicaSet, refuse: str = "ledgers") -> Any:
    """Start the app on a server that refuses one collection's indexes, as a Node-era database does."""
    future = in_thread(create_app, {"MONGO_URI": replica_set.uri()})
    for _ in db.declared_indexes():
        got = replica_set.expect("createIndexes")
        if got.collection == refuse:
            got.error({"code": 11000, "codeName": "DuplicateKey"},
                      "Index build failed: E11000 duplicate key error collection: ledger-wire.ledgers index: "
                      "account_1_seq_1 dup key: { account: ObjectId('65f1c0ffee0123456789abcd'), seq: null }")
            break  # ensure_indexes stops at the first refusal
        replica_set.serve_create_indexes(got)
    return future.result(timeout=WAIT)


def ready(app, replica_set: ReplicaSet, *, direct: bool = False):
    response = http(app, "GET", "/ready")
    served = [replica_set.serve_list_indexes(replica_set.expect("listIndexes", step.collection)) for step in READY]
    if not direct:  # a directConnection client marks its reads primaryPreferred, as the driver spec says
        check_sessions(served, READY)
    return response.result(WAIT)


class FrozenClock:
    """``db``'s view of time, moved by the test (the index recheck interval without real waiting)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def test_until_the_indexes_are_acknowledged_ready_is_503_and_money_waits(replica_set, monkeypatch):
    clock = FrozenClock()
    monkeypatch.setattr(db, "time", clock)
    app = start_refused(replica_set)
    bank = Bank(app)

    reply = ready(app, replica_set)
    assert reply.status_code == 503
    assert reply.get_json()["error"] == "indexes missing"
    assert "ledgers.account_1_seq_1" in reply.get_json()["missingIndexes"]
    assert "tokenblacklists.expiresAt_1" in reply.get_json()["missingIndexes"]

    # A transfer: authentication, one look at the indexes, then 503 before any transaction starts.
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body("early"))
    serve_auth(replica_set, bank.customer)
    looked = [replica_set.serve_list_indexes(replica_set.expect("listIndexes", s.collection)) for s in READY]
    early = response.result(WAIT)
    assert early.status_code == 503
    assert early.headers["Retry-After"] == "2"
    check_sessions(looked, READY)
    # Within the recheck interval the refusal costs no command at all.
    signup = http(app, "POST", "/api/auth/register", json={"email": "e@example.test", "password": "password-123",
                                                           "name": "E"})
    assert signup.result(WAIT).status_code == 503
    replica_set.assert_quiet()

    # The migration creates them; the service opens by itself at its next look.
    for collection, models in db.declared_indexes().items():
        replica_set.indexes[collection] = [model.document for model in models]
    assert ready(app, replica_set).status_code == 200
    clock.now += db.INDEX_RECHECK_SECONDS
    response = http(app, "POST", "/api/transactions", bank.customer_token, json=bank.transfer_body("later"))
    serve_auth(replica_set, bank.customer)
    for step in READY:
        replica_set.serve_list_indexes(replica_set.expect("listIndexes", step.collection))
    attempt = serve_attempt(replica_set, bank)  # now it moves money
    assert response.result(WAIT).status_code == 200
    check_sessions(attempt, TRANSFER[2:])


def test_ready_is_200_on_the_primary_of_three(three_members):
    from tests.wire.conftest import start_app

    app = start_app(three_members)
    assert ready(app, three_members).status_code == 200
    (member, _), = three_members.app_hellos()[1:]
    assert member is three_members.primary


@pytest.mark.parametrize("role", [SECONDARY, GHOST])
def test_ready_is_503_on_a_secondary_or_an_uninitiated_member_reached_directly(replica_set, role):
    from tests.wire.conftest import start_app

    member = replica_set.members[0]
    app = start_app(replica_set, uri=f"mongodb://{member.host}/ledger-wire?directConnection=true")
    member.role = role  # stepped down, or wiped and restarted with --replSet before rs.initiate()

    reply = http(app, "GET", "/ready").result(WAIT)

    assert reply.status_code == 503
    expected = ("the replica set member is not initiated yet (run rs.initiate())" if role == GHOST
                else "the replica set has no writable primary here")
    assert reply.get_json()["error"] == expected
    replica_set.assert_quiet()  # nothing but hello: no index listing on a member that cannot serve
    member.role = "PRIMARY"
    assert ready(app, replica_set, direct=True).status_code == 200


def test_ready_refuses_a_standalone_server_and_start_up_stops(replica_set):
    member = replica_set.members[0]
    member.hello = lambda: {"ok": 1, "isWritablePrimary": True, "ismaster": True, "helloOk": True,  # type: ignore
                            "minWireVersion": 0, "maxWireVersion": 21, "maxBsonObjectSize": 16 * 1024 * 1024,
                            "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000,
                            "logicalSessionTimeoutMinutes": 30}
    uri = f"mongodb://{member.host}/ledger-wire"

    with pytest.raises(db.NotAReplicaSet, match="standalone"):
        create_app({"MONGO_URI": uri})
    replica_set.assert_quiet()


def test_ready_names_a_missing_ttl_index(app, replica_set):
    replica_set.indexes["tokenblacklists"] = [index for index in replica_set.indexes["tokenblacklists"]
                                              if index["name"] != "expiresAt_1"]

    reply = ready(app, replica_set)

    assert reply.status_code == 503
    assert reply.get_json()["missingIndexes"] == ["tokenblacklists.expiresAt_1"]


def test_ready_does_not_take_a_non_unique_index_for_the_unique_one(app, replica_set):
    (index,) = [i for i in replica_set.indexes["transactions"] if i["name"] == "initiator_1_idempotencyKey_1"]
    index.pop("unique")

    reply = ready(app, replica_set)

    assert reply.status_code == 503
    assert reply.get_json()["missingIndexes"] == ["transactions.initiator_1_idempotencyKey_1"]


def test_ready_accepts_a_mongos_in_front_of_a_sharded_cluster(replica_set):
    from tests.wire.conftest import start_app

    member = replica_set.members[0]
    member.hello = lambda: {"ok": 1, "isWritablePrimary": True, "ismaster": True, "helloOk": True,  # type: ignore
                            "msg": "isdbgrid", "minWireVersion": 0, "maxWireVersion": 21,
                            "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000,
                            "maxWriteBatchSize": 100_000, "logicalSessionTimeoutMinutes": 30}
    app = start_app(replica_set, uri=f"mongodb://{member.host}/ledger-wire")

    reply = ready(app, replica_set)

    assert reply.status_code == 200
    assert reply.get_json()["replicaSet"] == "mongos"


@pytest.mark.parametrize("present", [False, True], ids=["first-start", "restart"])
def test_start_up_bootstraps_the_system_user_and_its_account_in_one_transaction_once(replica_set, present):
    from tests.wire.bank import COMMIT, FIRST, INSIDE, OUTSIDE, Step

    config = {"MONGO_URI": replica_set.uri(), "SYSTEM_USER_EMAIL": "system@example.test",
              "SYSTEM_USER_PASSWORD": "system-password-1", "SYSTEM_USER_NAME": "Ledger System"}
    future = in_thread(create_app, config)
    for _ in db.declared_indexes():
        replica_set.serve_create_indexes(replica_set.expect("createIndexes"))
    existing = {"_id": ObjectId(), "email": "system@example.test", "name": "Ledger System", "systemUser": True}
    lookup = replica_set.expect("find", "users").cursor([existing] if present else [])
    if present:  # idempotent: its INR system account is looked up, nothing is written
        served = [lookup, replica_set.expect("find", "accounts").cursor([{"_id": ObjectId()}])]
        script = [Step("find", "users", OUTSIDE), Step("find", "accounts", OUTSIDE)]
    else:
        served = [lookup, replica_set.expect("insert", "users").ok(n=1),
                  replica_set.expect("insert", "accounts").ok(n=1), replica_set.expect("commitTransaction").ok()]
        script = [Step("find", "users", OUTSIDE), Step("insert", "users", FIRST), Step("insert", "accounts", INSIDE),
                  Step("commitTransaction", None, COMMIT)]

    future.result(timeout=WAIT)
    check_sessions(served, script)
    if not present:
        user, account = served[1].doc["documents"][0], served[2].doc["documents"][0]
        assert user["systemUser"] is True
        assert (account["user"], account["systemCurrency"], account["balance"]) == (user["_id"], "INR", 0)
    replica_set.assert_quiet()
