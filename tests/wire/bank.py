"""The documents a scripted server holds for a wire test, and the command scripts of the app's routes.

A script is a list of :class:`Step`: the command, the collection, and where it must run relative to the
request's transaction (:data:`OUTSIDE`, :data:`RETRYABLE`, :data:`FIRST`, :data:`INSIDE`, :data:`COMMIT`,
:data:`ABORT`). :func:`check_sessions` checks a served sequence against those rules; docs/wire-protocol.md
is the same table written for a reviewer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from flask import Flask

from ledger import db
from tests.wire.replset import Received, ReplicaSet

OUTSIDE = "outside"  # no transaction: no txnNumber, no autocommit, no read/write concern of its own
RETRYABLE = "retryable"  # a retryable single-document write: lsid + txnNumber, never autocommit
FIRST = "first"  # opens the transaction: startTransaction, autocommit false, readConcern snapshot
INSIDE = "inside"  # later in the same transaction: same lsid and txnNumber, no concerns of its own
COMMIT = "commit"  # commitTransaction, same lsid and txnNumber, writeConcern majority + our wtimeout
ABORT = "abort"  # abortTransaction, same lsid and txnNumber

WTIMEOUT_MS = db.TRANSACTION_WRITE_CONCERN.document["wtimeout"]


@dataclass(frozen=True)
class Step:
    name: str
    collection: str | None
    where: str


AUTH = [Step("find", "tokenblacklists", OUTSIDE), Step("find", "users", OUTSIDE)]
TRANSFER = [*AUTH,
            Step("find", "accounts", FIRST),
            Step("insert", "transactions", INSIDE),
            Step("update", "accounts", INSIDE),
            Step("insert", "ledgers", INSIDE),
            Step("insert", "notifications", INSIDE),
            Step("commitTransaction", None, COMMIT)]
FUNDING = TRANSFER  # the same six commands (the system account exists)
FIRST_FUNDING_IN_CURRENCY = [*TRANSFER[:3], Step("insert", "accounts", INSIDE), *TRANSFER[3:]]
REGISTER = [Step("insert", "users", FIRST), Step("insert", "notifications", INSIDE),
            Step("commitTransaction", None, COMMIT)]
LOGIN = [Step("find", "users", OUTSIDE)]
LOGOUT = [Step("update", "tokenblacklists", RETRYABLE)]
OPEN_ACCOUNT = [*AUTH, Step("insert", "accounts", RETRYABLE)]
READ_ACCOUNTS = [*AUTH, Step("find", "accounts", OUTSIDE)]
READY = [Step("listIndexes", name, OUTSIDE) for name in db.declared_indexes()]  # after the app's hello
REPLAY_READ = [Step("find", "transactions", OUTSIDE)]


def check_sessions(served: list[Received], script: list[Step]) -> None:
    """``served`` is ``script``, command for command, and each runs where its step says."""
    assert [(got.name, got.collection) for got in served] == [(s.name, s.collection) for s in script], (
        "command script differs:\n  sent     " + repr([(g.name, g.collection) for g in served])
        + "\n  expected " + repr([(s.name, s.collection) for s in script]))
    transaction: tuple[Any, Any] | None = None
    for got, step in zip(served, script, strict=True):
        doc = got.doc
        assert "$readPreference" not in doc or doc["$readPreference"].get("mode") == "primary", got
        assert got.member.role == "PRIMARY", f"{got!r} reached a {got.member.role}"
        if step.where == OUTSIDE:
            for name in ("txnNumber", "autocommit", "startTransaction", "readConcern", "writeConcern"):
                assert name not in doc, f"{got.name} {got.collection} carries {name}: {doc}"
        elif step.where == RETRYABLE:
            assert "lsid" in doc, f"not a retryable write: {doc}"
            assert "txnNumber" in doc, f"not a retryable write: {doc}"
            for name in ("autocommit", "startTransaction", "readConcern"):
                assert name not in doc, f"{got.name} {got.collection} carries {name}: {doc}"
        elif step.where == FIRST:
            assert doc.get("startTransaction") is True, doc
            assert doc.get("autocommit") is False, doc
            assert doc.get("readConcern") == {"level": "snapshot"}, doc
            assert "writeConcern" not in doc, doc
            transaction = (doc["lsid"], doc["txnNumber"])
        else:
            assert transaction is not None, f"{got.name} outside any transaction"
            assert (doc.get("lsid"), doc.get("txnNumber")) == transaction, f"not the same transaction: {doc}"
            assert doc.get("autocommit") is False, doc
            assert "startTransaction" not in doc, doc
            assert "readConcern" not in doc, doc
            if step.where == INSIDE:
                assert "writeConcern" not in doc, doc
            else:
                assert got.doc["$db"] == "admin", doc
            if step.where == COMMIT:
                assert doc.get("writeConcern") == {"w": "majority", "wtimeout": WTIMEOUT_MS}, doc


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Bank:
    """What the scripted server "holds": a customer, the system user, accounts; and the tokens to act as them."""

    app: Flask
    customer: dict[str, Any] = field(default_factory=lambda: {
        "_id": ObjectId(), "email": "asha@example.test", "name": "Asha", "systemUser": False})
    system: dict[str, Any] = field(default_factory=lambda: {
        "_id": ObjectId(), "email": "system@example.test", "name": "Ledger System", "systemUser": True})
    accounts: dict[ObjectId, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ledger.services.auth import issue_token

        with self.app.app_context():
            self.customer_token = issue_token(self.customer["_id"])
            self.system_token = issue_token(self.system["_id"])
        # The source and the system account have chained entries (``lastHash`` is their last entry's hash);
        # the target has none yet, so its first entry chains to the genesis value.
        self.source = self.add_account(self.customer["_id"], balance=100_000, seq=7, lastHash="a1" * 32,
                                       updatedAt=datetime(2026, 3, 1, 10, 0, tzinfo=UTC))
        self.target = self.add_account(ObjectId(), balance=0, seq=0)
        self.system_account = self.add_account(self.system["_id"], balance=-100_000, seq=3, systemCurrency="INR",
                                               systemUser=True, lastHash="5e" * 32)

    def add_account(self, owner: ObjectId, **fields: Any) -> dict[str, Any]:
        account = {"_id": ObjectId(), "user": owner, "status": "ACTIVE", "currency": "INR", "balance": 0, "seq": 0,
                   **fields}
        self.accounts[account["_id"]] = account
        return account

    def user(self, token: str) -> dict[str, Any]:
        return self.system if token == self.system_token else self.customer

    def transfer_body(self, key: str, amount: Any = 25) -> dict[str, Any]:
        return {"fromAccount": str(self.source["_id"]), "toAccount": str(self.target["_id"]), "amount": amount,
                "idempotencyKey": key}

    def funding_body(self, key: str, amount: Any = 25) -> dict[str, Any]:
        return {"toAccount": str(self.target["_id"]), "amount": amount, "idempotencyKey": key}


Answer = Callable[[Received], Any]


def serve_auth(replica_set: ReplicaSet, user: dict[str, Any]) -> list[Received]:
    return [replica_set.expect("find", "tokenblacklists").cursor([]),
            replica_set.expect("find", "users").cursor([user])]


def serve_attempt(replica_set: ReplicaSet, bank: Bank, *, funding: bool = False,
                  inject: dict[int, Answer] | None = None, skip_read: bool = False) -> list[Received]:
    """Serve one attempt of a transfer's (or funding's) transaction, commit included; answer ``inject[i]`` at
    step ``i`` (0: the accounts read ... 5: the commit) instead of success, and stop after it. ``skip_read``:
    the test served the accounts read (and what followed it) itself; start at the record's insert."""
    inject = inject or {}
    read = [bank.target, bank.system_account] if funding else [bank.source, bank.target]
    steps: list[tuple[str, str | None, Answer]] = [
        ("find", "accounts", lambda got: got.cursor(read)),
        ("insert", "transactions", lambda got: got.ok(n=1)),
        ("update", "accounts", lambda got: got.ok(n=2, nModified=2)),
        ("insert", "ledgers", lambda got: got.ok(n=2)),
        ("insert", "notifications", lambda got: got.ok(n=len(got.doc["documents"]))),
        ("commitTransaction", None, lambda got: got.ok()),
    ]
    served = []
    for index, (name, collection, answer) in enumerate(steps):
        if skip_read and index == 0:
            continue
        got = replica_set.expect(name, collection)
        served.append(got)
        if index in inject:
            inject[index](got)
            return served
        answer(got)
    return served


def serve_abort(replica_set: ReplicaSet) -> Received:
    return replica_set.expect("abortTransaction").ok()


IDEMPOTENCY_INDEX = "initiator_1_idempotencyKey_1"


def duplicate_key(got: Received, index: str = IDEMPOTENCY_INDEX, key_pattern: dict[str, int] | None = None) -> Received:
    """Answer an insert with E11000 exactly as MongoDB 7.0 reports it: errmsg, ``keyPattern``, ``keyValue``."""
    document = got.doc["documents"][0]
    pattern = key_pattern if key_pattern is not None else {"initiator": 1, "idempotencyKey": 1}
    value = {field: document.get(field) for field in pattern}
    shown = ", ".join(f"{field}: {value[field]!r}" for field in pattern)
    errmsg = (f"E11000 duplicate key error collection: {got.doc['$db']}.{got.collection} index: {index} "
              f"dup key: {{ {shown} }}")
    return got.write_error(11000, errmsg, keyPattern=pattern, keyValue=value)


def attempt_of(served: list[Received]) -> tuple[Any, Any]:
    """The (lsid, txnNumber) of a served transaction attempt."""
    first = served[0].doc
    return first["lsid"], first["txnNumber"]


# ------------------------------------------------------------------------------------- holds and reversals

# Each money-moving route of Part two is one transaction with the transfer's guarantees: its first command opens
# it (snapshot), every later one is inside, the commit is majority with our wtimeout, and nothing is sent outside
# it but the authentication reads.
HOLD_CREATE = [*AUTH,
               Step("find", "accounts", FIRST),
               Step("insert", "holds", INSIDE),
               Step("update", "accounts", INSIDE),  # held += amount, on balance - held >= amount
               Step("commitTransaction", None, COMMIT)]
HOLD_CAPTURE = [*AUTH,
                Step("find", "transactions", FIRST),  # the caller's key: a replay?
                Step("find", "holds", INSIDE),
                Step("find", "accounts", INSIDE),
                Step("insert", "transactions", INSIDE),
                Step("update", "holds", INSIDE),  # ACTIVE and unexpired -> CAPTURED: the race's one winner
                Step("update", "accounts", INSIDE),  # debit (releasing the hold) and credit
                Step("insert", "ledgers", INSIDE),
                Step("insert", "notifications", INSIDE),
                Step("commitTransaction", None, COMMIT)]
HOLD_VOID = [*AUTH,
             Step("find", "holds", FIRST),
             Step("update", "holds", INSIDE),  # ACTIVE and unexpired -> VOIDED
             Step("update", "accounts", INSIDE),  # held -= amount
             Step("commitTransaction", None, COMMIT)]
REVERSE = [*AUTH,
           Step("find", "transactions", FIRST),  # the caller's key: a replay?
           Step("find", "transactions", INSIDE),  # the original
           Step("find", "accounts", INSIDE),
           Step("insert", "transactions", INSIDE),
           Step("update", "transactions", INSIDE),  # the original COMPLETED -> REVERSED: the race's one winner
           Step("update", "accounts", INSIDE),
           Step("insert", "ledgers", INSIDE),
           Step("insert", "notifications", INSIDE),
           Step("commitTransaction", None, COMMIT)]

Scripted = list[tuple[str, str | None, Answer]]


def serve_steps(replica_set: ReplicaSet, steps: Scripted, inject: dict[int, Answer] | None = None) -> list[Received]:
    """Serve one attempt of a scripted transaction; answer ``inject[i]`` at step ``i`` instead, and stop there."""
    inject = inject or {}
    served = []
    for index, (name, collection, answer) in enumerate(steps):
        got = replica_set.expect(name, collection)
        served.append(got)
        if index in inject:
            inject[index](got)
            return served
        answer(got)
    return served


def wrote(got: Received) -> Received:
    """Success for an insert or update of any number of documents."""
    count = len(got.doc.get("documents") or got.doc.get("updates") or [])
    return got.ok(n=count, nModified=count) if got.name == "update" else got.ok(n=count)
