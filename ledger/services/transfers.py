"""Moving money: idempotent, atomic, double-spend-proof transfers and system funding.

One transfer is one multi-document transaction (``snapshot`` reads, ``majority`` commit, on the primary):

1. read both accounts (one ``find``) — existence, ownership, status, currency, balance, sequence;
2. insert the transaction record under the caller-scoped idempotency key with a fingerprint of the request
   (unique index ``(initiator, idempotencyKey)``): a duplicate key means "replay or conflict", decided after
   the transaction by reading the stored record. A business rejection is decided here too and the record is
   written as ``FAILED`` with its reason and committed, in the same transaction: no window in which a retry
   could move money that the first attempt refused;
3. debit and credit in one ``bulk_write`` of two conditional updates whose filters repeat every rule
   (owner, ``ACTIVE``, currency, ``balance >= amount``) and pin the account's sequence number as read. On
   MongoDB each update takes the document's write lock, so a concurrent transfer on the same account is a
   write conflict, retried by :func:`ledger.db.run_in_transaction`; if a filter does not match, something
   changed since the read and the whole transaction is retried the same way. Never read-check-then-write;
4. insert both ledger entries (positive amounts, ``balanceAfter``, the account's next sequence number, and
   the hash chain: ``prevHash`` is the account's ``lastHash`` as read in step 1, pinned in the step-3 filter
   and moved forward by the same update, so the chain is extended inside the transaction or not at all);
5. insert the outbox messages.
Then commit: six commands in all. The callback has no side effects outside its session.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.client_session import ClientSession
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from ledger import db, hashchain, metrics, money
from ledger.errors import (
    AccountsInactive,
    BusinessRejection,
    CurrencyMismatch,
    FundingTargetNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    LedgerError,
    ServiceUnavailable,
    TargetAccountInactive,
    TransactionPending,
    TransferAccountNotFound,
    ValidationFailed,
)
from ledger.models import Account, LedgerEntry, Transaction, to_document, utcnow
from ledger.services import notifications

log = logging.getLogger(__name__)

TRANSFER = "TRANSFER"
INITIAL_FUNDS = "INITIAL_FUNDS"
REVERSAL = "REVERSAL"
HOLD_CAPTURE = "HOLD_CAPTURE"

_ACCOUNT_READ = {"_id": 1, "user": 1, "status": 1, "currency": 1, "balance": 1, "held": 1, "seq": 1,
                 "systemCurrency": 1, "lastHash": 1, "updatedAt": 1}


@dataclass(frozen=True)
class TransferResult:
    """What the API answers: the transaction, and whether this was a replay of an earlier request."""

    transaction: dict[str, Any]
    replayed: bool


@dataclass(frozen=True)
class _Attempt:
    record: dict[str, Any]
    rejection: BusinessRejection | None


class _AccountChanged(OperationFailure):
    """A conditional update matched nothing: the account changed after our read. Retried like a conflict."""

    def __init__(self) -> None:
        super().__init__(
            "account changed during the transaction",
            code=112,
            details={"errorLabels": [db.TRANSIENT_LABEL]},
        )


class KeyAlreadyUsed(LedgerError):  # never shown: callers turn it into a replay
    """Raised inside a transaction when the caller's key already has a record (a capture or a reversal whose
    first attempt committed): the answer is that record's replay, whatever has happened to its subject since."""


def require_unused_key(session: ClientSession, initiator_id: ObjectId, key: str) -> None:
    """One indexed read of the caller's key, first thing in a transaction whose rules would otherwise refuse
    its own replay (a captured hold, a reversed transaction); raises :class:`KeyAlreadyUsed` if it is taken."""
    if db.get_db().transactions.find_one({"initiator": initiator_id, "idempotencyKey": key}, {"_id": 1},
                                         session=session) is not None:
        raise KeyAlreadyUsed()


def fingerprint(kind: str, from_account: ObjectId | str, to_account: ObjectId, amount: Decimal) -> str:
    """A stable hash of what the request asked for; 10.5 and 10.50 are the same request."""
    normalized = format(amount.normalize(), "f")
    text = f"{kind}|{from_account}|{to_account}|{normalized}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------- transfer


def transfer(initiator: dict[str, Any], from_id: ObjectId, to_id: ObjectId, amount: Decimal,
             key: str) -> TransferResult:
    """Move ``amount`` (major units) from the caller's account ``from_id`` to ``to_id``, exactly once per key."""
    if from_id == to_id:
        raise ValidationFailed("fromAccount and toAccount must be different accounts",
                               errors={"toAccount": "must differ from fromAccount"})
    db.require_indexes()
    initiator_id = initiator["_id"]
    request_fingerprint = fingerprint(TRANSFER, from_id, to_id, amount)

    def attempt(session: ClientSession) -> _Attempt:
        database = db.get_db()
        found = {a["_id"]: a for a in database.accounts.find({"_id": {"$in": [from_id, to_id]}}, _ACCOUNT_READ,
                                                             session=session)}
        source, target = found.get(from_id), found.get(to_id)
        if source is None or target is None or source["user"] != initiator_id:
            raise TransferAccountNotFound()
        amount_minor = _to_minor(amount, source["currency"])
        if source.get("held"):  # holds past their expiry stop counting now, not when a sweep gets to them
            source = {**source, "held": source["held"] - release_expired_holds(session, source["_id"], utcnow())}
        rejection = _transfer_rule_violation(source, target, amount_minor)
        record = _record(TRANSFER, source, target, amount_minor, key, initiator_id, request_fingerprint, rejection)
        database.transactions.insert_one(record, session=session)
        if rejection is not None:
            return _Attempt(record, rejection)
        debit_after, credit_after = _move(session, record, source, target, owner_id=initiator_id)
        notifications.enqueue(session, notifications.transfer_messages(
            record, initiator, target["user"], debit_after, credit_after))
        return _Attempt(record, None)

    return _execute(attempt, initiator_id, key, request_fingerprint)


def _transfer_rule_violation(source: dict, target: dict, amount_minor: int) -> BusinessRejection | None:
    if source["status"] != "ACTIVE" or target["status"] != "ACTIVE":
        return AccountsInactive()
    if source["currency"] != target["currency"]:
        return CurrencyMismatch(
            f"Currency mismatch: fromAccount is in {source['currency']}, toAccount is in {target['currency']}"
        )
    balance = available_minor(source)
    if balance < amount_minor:
        currency = source["currency"]
        return InsufficientFunds(
            f"Insufficient balance. Available balance is {money.format_plain(balance, currency)}. "
            f"Required balance is {money.format_plain(amount_minor, currency)}"
        )
    return None


# ------------------------------------------------------------------------------------ initial funds


def fund(system_user: dict[str, Any], to_id: ObjectId, amount: Decimal, key: str) -> TransferResult:
    """Credit ``to_id`` from the system user's account in its currency (created on first use)."""
    db.require_indexes()
    system_id = system_user["_id"]
    request_fingerprint = fingerprint(INITIAL_FUNDS, "system", to_id, amount)

    def attempt(session: ClientSession) -> _Attempt:
        database = db.get_db()
        found = list(database.accounts.find(
            {"$or": [{"_id": to_id}, {"user": system_id, "systemCurrency": {"$exists": True}}]},
            _ACCOUNT_READ, session=session,
        ))
        target = next((a for a in found if a["_id"] == to_id), None)
        if target is None:
            raise FundingTargetNotFound()
        if target.get("systemCurrency"):
            raise ValidationFailed("A system account cannot receive initial funds",
                                   errors={"toAccount": "is a system account"})
        currency = target["currency"]
        amount_minor = _to_minor(amount, currency)
        source = next((a for a in found if a.get("systemCurrency") == currency and a["user"] == system_id), None)
        rejection = None if target["status"] == "ACTIVE" else TargetAccountInactive()
        if source is None:  # first funding in this currency: open the system account in this transaction
            source = _system_account_template(system_id, currency)
            database.accounts.insert_one(dict(source), session=session)
        record = _record(INITIAL_FUNDS, source, target, amount_minor, key, system_id, request_fingerprint, rejection)
        database.transactions.insert_one(record, session=session)
        if rejection is not None:
            return _Attempt(record, rejection)
        _, credit_after = _move(session, record, source, target, owner_id=None)
        notifications.enqueue(session, notifications.funding_messages(record, target["user"], credit_after))
        return _Attempt(record, None)

    return _execute(attempt, system_id, key, request_fingerprint)


def _system_account_template(system_id: ObjectId, currency: str) -> dict[str, Any]:
    now = utcnow()
    return to_document(Account, user=system_id, status="ACTIVE", currency=currency, balance=0, seq=0,
                       systemUser=True, systemCurrency=currency, createdAt=now, updatedAt=now)


# ------------------------------------------------------------------------------------------ shared


def _to_minor(amount: Decimal, currency: str) -> int:
    try:
        return money.to_minor(amount, currency)
    except money.InvalidAmount as exc:
        raise ValidationFailed(str(exc), errors={"amount": str(exc)}) from exc


def _record(kind: str, source: dict, target: dict, amount_minor: int, key: str, initiator_id: ObjectId,
            request_fingerprint: str, rejection: BusinessRejection | None, **extra: Any) -> dict[str, Any]:
    now = utcnow()
    return to_document(
        Transaction,
        kind=kind,
        fromAccount=source["_id"],
        toAccount=target["_id"],
        amount=amount_minor,
        currency=source["currency"],
        status="FAILED" if rejection else "COMPLETED",
        idempotencyKey=key,
        initiator=initiator_id,
        fingerprint=request_fingerprint,
        failure=rejection.as_failure() if rejection else {},
        createdAt=now,
        updatedAt=now,
        **extra,
    )


def _sequence_filter(account: dict) -> dict[str, Any]:
    # Accounts written by the Node service have no seq until migrated; pin "still absent" for them. The chain
    # head is pinned too: the entry's prevHash is only right if no other writer moved it since our read.
    pinned: dict[str, Any] = {"seq": account["seq"]} if "seq" in account else {"seq": {"$exists": False}}
    pinned["lastHash"] = account["lastHash"] if account.get("lastHash") else {"$exists": False}
    return pinned


def _entry_time(record: dict, source: dict, target: dict) -> datetime:
    """The entries' ``createdAt``: the record's time, but never before either account's previous change.

    Servers' clocks differ by a few milliseconds; without this an account's entries could go back in time
    between consecutive sequence numbers, and a statement or a balance-at-a-time read (which select entries by
    ``createdAt``) would disagree with the order of the chain. The accounts' ``updatedAt`` is the time of
    their last entry (or later), so taking the maximum keeps every account's entries in time order.
    """
    moments = [record["createdAt"]] + [_as_utc(a["updatedAt"]) for a in (source, target) if a.get("updatedAt")]
    return max(moments)


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _entry(account: dict, entry_type: str, record: dict, balance_after: int, now: datetime) -> dict[str, Any]:
    """The fields of a ledger entry for ``account``, chained to the account's ``lastHash`` when its chain is in
    place (validated by :func:`to_document` once the account update has matched)."""
    fields: dict[str, Any] = {
        "account": account["_id"], "type": entry_type, "amount": record["amount"], "currency": record["currency"],
        "transaction": record["_id"], "balanceAfter": balance_after, "seq": account.get("seq", 0) + 1,
        "createdAt": now,
    }
    prev_hash = hashchain.chain_head(account)
    if prev_hash is not None:
        fields.update(prevHash=prev_hash, hash=hashchain.entry_hash(fields, prev_hash))
    return fields


def _account_update(amount_delta: int, now: datetime, entry: dict[str, Any], release: int = 0) -> dict[str, Any]:
    update: dict[str, Any] = {"$inc": {"balance": amount_delta, "seq": 1}, "$set": {"updatedAt": now}}
    if release:  # a captured hold stops being held as its money moves
        update["$inc"]["held"] = -release
    if "hash" in entry:
        update["$set"]["lastHash"] = entry["hash"]
    return update


def available_minor(account: dict[str, Any]) -> int:
    """Balance minus what ACTIVE holds reserve (``held``, kept in the same transactions as the holds)."""
    return account.get("balance", 0) - account.get("held", 0)


def available_filter(amount_minor: int) -> dict[str, Any]:
    """``balance - held >= amount`` as part of a conditional update's filter (``held`` absent counts as 0)."""
    return {"$expr": {"$gte": [{"$subtract": ["$balance", {"$ifNull": ["$held", 0]}]}, amount_minor]}}


def release_expired_holds(session: ClientSession, account_id: ObjectId, now: Any) -> int:
    """Mark this account's ACTIVE holds past ``expiresAt`` EXPIRED and release what they reserved.

    Runs inside the caller's transaction whenever an account that holds anything is about to be checked, so an
    expired hold never blocks money, whether or not the background sweep has visited it. Returns the amount
    released. The holds change by one conditional update; if another writer got to any of them first, the
    transaction is rerun.
    """
    database = db.get_db()
    due = list(database.holds.find({"fromAccount": account_id, "status": "ACTIVE", "expiresAt": {"$lte": now}},
                                   {"amount": 1}, session=session))
    if not due:
        return 0
    expired = database.holds.update_many(
        {"_id": {"$in": [h["_id"] for h in due]}, "status": "ACTIVE", "expiresAt": {"$lte": now}},
        {"$set": {"status": "EXPIRED", "updatedAt": now}}, session=session)
    released = sum(h["amount"] for h in due)
    changed = database.accounts.update_one({"_id": account_id, "held": {"$gte": released}},
                                           {"$inc": {"held": -released}}, session=session)
    if expired.modified_count != len(due) or changed.matched_count != 1:
        raise _AccountChanged()
    return released


def _move(session: ClientSession, record: dict, source: dict, target: dict,
          owner_id: ObjectId | None, release: int = 0) -> tuple[int, int]:
    """Debit ``source``, credit ``target``, write both ledger entries; return both balances after.

    ``release`` is what a captured hold reserved on ``source``: it stops being held as the money moves.
    """
    database = db.get_db()
    amount_minor, currency = record["amount"], record["currency"]
    now = _entry_time(record, source, target)
    debit_filter: dict[str, Any] = {"_id": source["_id"], "currency": currency, **_sequence_filter(source)}
    if owner_id is not None:  # a customer account: owned by the caller, active, funded beyond what is held
        debit_filter.update({"user": owner_id, "status": "ACTIVE", "balance": {"$gte": amount_minor},
                             **available_filter(amount_minor - release)})
    else:  # the system account, which alone may go negative
        debit_filter["systemCurrency"] = currency
    credit_filter = {"_id": target["_id"], "status": "ACTIVE", "currency": currency, **_sequence_filter(target)}
    debit_after = source.get("balance", 0) - amount_minor
    credit_after = target.get("balance", 0) + amount_minor
    debit = _entry(source, "DEBIT", record, debit_after, now)
    credit = _entry(target, "CREDIT", record, credit_after, now)
    result = database.accounts.bulk_write(
        [
            UpdateOne(debit_filter, _account_update(-amount_minor, now, debit, release=release)),
            UpdateOne(credit_filter, _account_update(amount_minor, now, credit)),
        ],
        ordered=True,
        session=session,
    )
    if result.matched_count != 2:
        raise _AccountChanged()
    entries = [to_document(LedgerEntry, **debit), to_document(LedgerEntry, **credit)]
    database.ledgers.insert_many(entries, ordered=True, session=session)
    return debit_after, credit_after


def _execute(attempt: Any, initiator_id: ObjectId, key: str, request_fingerprint: str) -> TransferResult:
    try:
        outcome: _Attempt = db.run_in_transaction(attempt, on_retry=metrics.transaction_retry)
    except (DuplicateKeyError, BulkWriteError) as exc:
        if isinstance(exc, BulkWriteError) and not _is_duplicate_key_batch(exc):
            raise
        if isinstance(exc, BulkWriteError) or not _is_idempotency_key_violation(exc):
            # Another unique index (ledger (account, seq), the outbox's dedupe key, a leftover Node index)
            # refused a write: nothing was committed, and a retry later may pass. Never a bare 500.
            metrics.transfer_outcome("conflict")
            log.error("unexpected duplicate key in a transfer: %s", exc.details)
            raise ServiceUnavailable() from exc
        metrics.transfer_outcome("replayed")
        return _replay(initiator_id, key, request_fingerprint)
    except db.TransactionRetriesExhausted as exc:
        metrics.transfer_outcome("timeout")
        raise ServiceUnavailable() from exc
    if outcome.rejection is not None:
        metrics.transfer_outcome("rejected")
        raise outcome.rejection
    metrics.transfer_outcome("completed")
    return TransferResult(outcome.record, replayed=False)


_DUPLICATE_KEY_CODES = frozenset({11000, 11001, 12582})


def _is_duplicate_key_batch(exc: BulkWriteError) -> bool:
    """A batch write (``insert_many``, ``bulk_write``) refused by a unique index."""
    errors = (exc.details or {}).get("writeErrors") or []
    return any(error.get("code") in _DUPLICATE_KEY_CODES for error in errors)


def _is_idempotency_key_violation(exc: DuplicateKeyError) -> bool:
    details = exc.details or {}
    pattern = details.get("keyPattern") or {}
    if pattern:
        # Our caller-scoped index only: the Node service's global idempotencyKey index (before migration)
        # would send us looking for a record under this caller that does not exist.
        return "initiator" in pattern and "idempotencyKey" in pattern
    index_name = "initiator_1_idempotencyKey_1"
    return index_name in str(details.get("errmsg", "")) or index_name in str(exc)


def _replay(initiator_id: ObjectId, key: str, request_fingerprint: str) -> TransferResult:
    stored = db.get_db().transactions.find_one({"initiator": initiator_id, "idempotencyKey": key})
    if stored is None or stored.get("status") == "PENDING":
        # The first request's transaction has not committed yet (or just aborted): ask the client to retry.
        raise TransactionPending()
    if stored.get("fingerprint") != request_fingerprint:
        raise IdempotencyConflict()
    if stored.get("status") == "FAILED":
        raise BusinessRejection.replay_of(stored.get("failure") or {})
    return TransferResult(stored, replayed=True)
