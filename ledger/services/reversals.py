"""Reversing a completed transfer or funding: a new ``REVERSAL`` transaction, never an edit of the old one.

One database transaction (``snapshot`` reads, ``majority`` commit) does everything or nothing:

1. look for a record under the caller's key (a replay answers what the first request answered, even after
   the original has become ``REVERSED`` by that very request);
2. read the original and both accounts; an original that is not a ``COMPLETED`` transfer or funding is a 409;
   holds past their expiry on the debited (customer) account are released first, as a transfer does, so they
   never refuse a reversal the sweep has not reached yet;
3. insert the reversal record (``REVERSAL``, from the original's ``toAccount`` back to its ``fromAccount``,
   ``reverses`` linking back); a reversal the money rules refuse (an inactive account, a recipient who no
   longer holds the amount) is recorded ``FAILED`` and replayed like any rejection;
4. mark the original ``REVERSED`` with ``reversedBy``, by one conditional update on ``status: COMPLETED`` and
   no ``reversedBy``: of any number of concurrent reversals, with any keys, one update matches; the others
   rerun, read ``REVERSED`` and answer 409;
5. move the money with the transfer's own conditional updates (the recipient's ``balance >= amount`` is in
   the debit filter, so a reversal never drives a customer negative), write both entries and the notices.
"""

from __future__ import annotations

import hashlib
from typing import Any

from bson import ObjectId
from pymongo.client_session import ClientSession

from ledger import db
from ledger.errors import TransactionNotFound, TransactionNotReversible
from ledger.models import utcnow
from ledger.services import notifications
from ledger.services.transfers import (
    _ACCOUNT_READ,
    REVERSAL,
    KeyAlreadyUsed,
    TransferResult,
    _AccountChanged,
    _Attempt,
    _execute,
    _move,
    _record,
    _replay,
    _transfer_rule_violation,
    release_expired_holds,
    require_unused_key,
)

REVERSIBLE_KINDS = ("TRANSFER", "INITIAL_FUNDS")


def reversal_fingerprint(original_id: ObjectId, reason: str | None) -> str:
    return hashlib.sha256(f"{REVERSAL}|{original_id}|{reason or ''}".encode()).hexdigest()


def reverse(system_user: dict[str, Any], original_id: ObjectId, key: str, reason: str | None) -> TransferResult:
    db.require_indexes()
    system_id = system_user["_id"]
    request_fingerprint = reversal_fingerprint(original_id, reason)

    def attempt(session: ClientSession) -> _Attempt:
        database = db.get_db()
        require_unused_key(session, system_id, key)
        original = database.transactions.find_one({"_id": original_id}, session=session)
        if original is None:
            raise TransactionNotFound()
        _require_reversible(original)
        found = {a["_id"]: a for a in database.accounts.find(
            {"_id": {"$in": [original["toAccount"], original["fromAccount"]]}}, _ACCOUNT_READ, session=session)}
        source, target = found.get(original["toAccount"]), found.get(original["fromAccount"])
        if source is None or target is None:  # the ledger references accounts that must exist
            raise TransactionNotReversible("Transaction cannot be reversed: an account it moved money between "
                                           "no longer exists")
        amount_minor = original["amount"]
        is_customer = not source.get("systemCurrency")
        if is_customer and source.get("held"):  # holds past expiry stop counting now, as for a transfer
            source = {**source, "held": source["held"] - release_expired_holds(session, source["_id"], utcnow())}
        rejection = _transfer_rule_violation(source, target, amount_minor if is_customer else 0)
        record = _record(REVERSAL, source, target, amount_minor, key, system_id, request_fingerprint, rejection,
                         reverses=original["_id"], reason=reason)
        database.transactions.insert_one(record, session=session)
        if rejection is not None:
            return _Attempt(record, rejection)
        marked = database.transactions.update_one(
            {"_id": original["_id"], "status": "COMPLETED", "reversedBy": {"$exists": False}},
            {"$set": {"status": "REVERSED", "reversedBy": record["_id"], "updatedAt": record["createdAt"]}},
            session=session,
        )
        if marked.matched_count != 1:
            raise _AccountChanged()  # reversed by someone else since our read: rerun and answer 409
        debit_after, credit_after = _move(session, record, source, target,
                                          owner_id=source["user"] if is_customer else None)
        notifications.enqueue(session, notifications.reversal_messages(
            record, source["user"], target["user"], debit_after, credit_after))
        return _Attempt(record, None)

    try:
        return _execute(attempt, system_id, key, request_fingerprint)
    except KeyAlreadyUsed:
        return _replay(system_id, key, request_fingerprint)


def _require_reversible(original: dict[str, Any]) -> None:
    if original.get("kind") == REVERSAL:
        raise TransactionNotReversible("Transaction cannot be reversed: it is itself a reversal")
    if original.get("status") == "REVERSED":
        raise TransactionNotReversible("Transaction cannot be reversed: it has already been reversed")
    if original.get("status") != "COMPLETED" or original.get("kind", "TRANSFER") not in REVERSIBLE_KINDS:
        raise TransactionNotReversible(
            f"Transaction cannot be reversed: only COMPLETED transfers can, and it is {original.get('status')}")

