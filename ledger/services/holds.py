"""Holds: reserve money now, capture (all or part) or void it later — the two-phase transfer of card payments.

An ACTIVE hold's amount is counted in its account's ``held`` field, changed in the same transaction as the
hold, so ``availableBalance = balance - held`` is one read, and every debit filter (transfers included) checks
``balance - held >= amount`` in its one conditional update.

Capture, void and expiry are each one conditional update of the hold on ``status: ACTIVE`` and
``expiresAt`` (in the future for capture and void, past for expiry): whichever lands first wins, the others
match nothing and answer 409 with the status that won. Expiry is exact without a sweep: a hold past
``expiresAt`` is shown as ``EXPIRED``, cannot be captured or voided, and stops counting — reads subtract it
and the next write on the account releases it in its own transaction. The background sweep
(:func:`expire_due`) only tidies up.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from bson import ObjectId
from flask import Flask
from pymongo.client_session import ClientSession
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ledger import db, metrics
from ledger.errors import (
    AccountNotFound,
    AccountsInactive,
    BusinessRejection,
    HoldConflict,
    HoldNotFound,
    IdempotencyConflict,
    ServiceUnavailable,
    TransactionPending,
    TransferAccountNotFound,
    ValidationFailed,
)
from ledger.models import Hold, to_document, utcnow
from ledger.services import notifications
from ledger.services.transfers import (
    _ACCOUNT_READ,
    HOLD_CAPTURE,
    KeyAlreadyUsed,
    _AccountChanged,
    _Attempt,
    _is_duplicate_key_batch,
    _is_idempotency_key_violation,
    _move,
    _record,
    _replay,
    _to_minor,
    _transfer_rule_violation,
    available_filter,
    fingerprint,
    release_expired_holds,
    require_unused_key,
)

log = logging.getLogger(__name__)

DEFAULT_EXPIRY_SECONDS = 86_400
MIN_EXPIRY_SECONDS = 60
MAX_EXPIRY_SECONDS = 604_800
SWEEP_BATCH = 200


@dataclass(frozen=True)
class HoldResult:
    hold: dict[str, Any]
    replayed: bool


@dataclass(frozen=True)
class CaptureResult:
    hold: dict[str, Any]
    transaction: dict[str, Any]
    replayed: bool


def effective_status(hold: dict[str, Any], now: datetime | None = None) -> str:
    """The stored status, except that an ACTIVE hold past its expiry is EXPIRED from that instant."""
    if hold["status"] == "ACTIVE" and hold["expiresAt"] <= (now or utcnow()):
        return "EXPIRED"
    return hold["status"]


# ------------------------------------------------------------------------------------------ create


def create(caller: dict[str, Any], from_id: ObjectId, to_id: ObjectId, amount: Decimal, key: str,
           expires_in: int) -> HoldResult:
    if from_id == to_id:
        raise ValidationFailed("fromAccount and toAccount must be different accounts",
                               errors={"toAccount": "must differ from fromAccount"})
    db.require_indexes()
    caller_id = caller["_id"]
    request_fingerprint = hashlib.sha256(
        f"{fingerprint('HOLD', from_id, to_id, amount)}|{expires_in}".encode()).hexdigest()

    def attempt(session: ClientSession) -> _Attempt:
        database = db.get_db()
        found = {a["_id"]: a for a in database.accounts.find({"_id": {"$in": [from_id, to_id]}}, _ACCOUNT_READ,
                                                             session=session)}
        source, target = found.get(from_id), found.get(to_id)
        if source is None or target is None or source["user"] != caller_id or source.get("systemCurrency"):
            raise TransferAccountNotFound()
        amount_minor = _to_minor(amount, source["currency"])
        now = utcnow()
        if source.get("held"):
            source = {**source, "held": source["held"] - release_expired_holds(session, from_id, now)}
        rejection = _transfer_rule_violation(source, target, amount_minor)
        hold = to_document(
            Hold, fromAccount=from_id, toAccount=to_id, owner=caller_id, amount=amount_minor,
            currency=source["currency"], status="FAILED" if rejection else "ACTIVE",
            expiresAt=now + timedelta(seconds=expires_in), idempotencyKey=key, initiator=caller_id,
            fingerprint=request_fingerprint, failure=rejection.as_failure() if rejection else {},
            createdAt=now, updatedAt=now,
        )
        database.holds.insert_one(hold, session=session)
        if rejection is not None:
            return _Attempt(hold, rejection)
        reserved = database.accounts.update_one(
            {"_id": from_id, "user": caller_id, "status": "ACTIVE", "currency": source["currency"],
             **available_filter(amount_minor)},
            {"$inc": {"held": amount_minor}, "$set": {"updatedAt": now}}, session=session)
        if reserved.matched_count != 1:
            raise _AccountChanged()
        return _Attempt(hold, None)

    try:
        outcome: _Attempt = db.run_in_transaction(attempt, on_retry=metrics.transaction_retry)
    except DuplicateKeyError as exc:
        if not _is_idempotency_key_violation(exc):
            log.error("unexpected duplicate key creating a hold: %s", exc.details)
            raise ServiceUnavailable() from exc
        return _replay_hold(caller_id, key, request_fingerprint)
    except db.TransactionRetriesExhausted as exc:
        raise ServiceUnavailable() from exc
    if outcome.rejection is not None:
        raise outcome.rejection
    return HoldResult(outcome.record, replayed=False)


def _replay_hold(caller_id: ObjectId, key: str, request_fingerprint: str) -> HoldResult:
    stored = db.get_db().holds.find_one({"initiator": caller_id, "idempotencyKey": key})
    if stored is None:
        raise TransactionPending()
    if stored.get("fingerprint") != request_fingerprint:
        raise IdempotencyConflict()
    if stored["status"] == "FAILED":
        raise BusinessRejection.replay_of(stored.get("failure") or {})
    return HoldResult(stored, replayed=True)


# ----------------------------------------------------------------------------------------- capture


def capture(caller: dict[str, Any], hold_id: ObjectId, amount: Decimal | None, key: str) -> CaptureResult:
    db.require_indexes()
    caller_id = caller["_id"]
    wanted = "all" if amount is None else format(amount.normalize(), "f")
    request_fingerprint = hashlib.sha256(f"{HOLD_CAPTURE}|{hold_id}|{wanted}".encode()).hexdigest()
    captured_hold: dict[str, dict[str, Any]] = {}  # the hold as this attempt left it (no read after commit)

    def attempt(session: ClientSession) -> _Attempt:
        database = db.get_db()
        require_unused_key(session, caller_id, key)
        hold = _owned_hold(database, caller_id, hold_id, session)
        now = utcnow()
        status = effective_status(hold, now)
        if status != "ACTIVE":
            raise HoldConflict(f"Hold is {status}")
        captured = hold["amount"] if amount is None else _to_minor(amount, hold["currency"])
        if captured > hold["amount"]:
            raise ValidationFailed("amount must not exceed the held amount",
                                   errors={"amount": "must not exceed the held amount"})
        found = {a["_id"]: a for a in database.accounts.find(
            {"_id": {"$in": [hold["fromAccount"], hold["toAccount"]]}}, _ACCOUNT_READ, session=session)}
        source, target = found.get(hold["fromAccount"]), found.get(hold["toAccount"])
        if source is None or target is None:
            raise TransferAccountNotFound()
        if source["status"] != "ACTIVE" or target["status"] != "ACTIVE":
            raise AccountsInactive()
        record = _record(HOLD_CAPTURE, source, target, captured, key, caller_id, request_fingerprint, None,
                         hold=hold_id)
        database.transactions.insert_one(record, session=session)
        won = database.holds.update_one(
            {"_id": hold_id, "status": "ACTIVE", "expiresAt": {"$gt": now}},
            {"$set": {"status": "CAPTURED", "capturedAmount": captured, "captureTransaction": record["_id"],
                      "updatedAt": now}}, session=session)
        if won.matched_count != 1:
            raise _AccountChanged()  # voided, captured or expired since our read: rerun and answer 409
        captured_hold["hold"] = {**hold, "status": "CAPTURED", "capturedAmount": captured,
                                 "captureTransaction": record["_id"], "updatedAt": now}
        debit_after, credit_after = _move(session, record, source, target, owner_id=caller_id,
                                          release=hold["amount"])
        notifications.enqueue(session, notifications.transfer_messages(
            record, caller, target["user"], debit_after, credit_after))
        return _Attempt(record, None)

    try:
        outcome: _Attempt = db.run_in_transaction(attempt, on_retry=metrics.transaction_retry)
    except BulkWriteError as exc:
        if not _is_duplicate_key_batch(exc):
            raise
        log.error("unexpected duplicate key capturing a hold: %s", exc.details)
        raise ServiceUnavailable() from exc
    except (KeyAlreadyUsed, DuplicateKeyError) as exc:
        if isinstance(exc, DuplicateKeyError) and not _is_idempotency_key_violation(exc):
            log.error("unexpected duplicate key capturing a hold: %s", exc.details)
            raise ServiceUnavailable() from exc
        replay = _replay(caller_id, key, request_fingerprint)
        stored_hold = db.get_db().holds.find_one({"_id": replay.transaction["hold"]})
        return CaptureResult(stored_hold, replay.transaction, replayed=True)
    except db.TransactionRetriesExhausted as exc:
        raise ServiceUnavailable() from exc
    return CaptureResult(captured_hold["hold"], outcome.record, replayed=False)


# -------------------------------------------------------------------------------------------- void


def void(caller: dict[str, Any], hold_id: ObjectId) -> dict[str, Any]:
    db.require_indexes()
    caller_id = caller["_id"]

    def attempt(session: ClientSession) -> dict[str, Any]:
        database = db.get_db()
        hold = _owned_hold(database, caller_id, hold_id, session)
        now = utcnow()
        status = effective_status(hold, now)
        if status != "ACTIVE":
            raise HoldConflict(f"Hold is {status}")
        won = database.holds.update_one({"_id": hold_id, "status": "ACTIVE", "expiresAt": {"$gt": now}},
                                        {"$set": {"status": "VOIDED", "updatedAt": now}}, session=session)
        if won.matched_count != 1:
            raise _AccountChanged()
        released = database.accounts.update_one({"_id": hold["fromAccount"], "held": {"$gte": hold["amount"]}},
                                                {"$inc": {"held": -hold["amount"]}}, session=session)
        if released.matched_count != 1:
            raise _AccountChanged()
        return {**hold, "status": "VOIDED", "updatedAt": now}

    try:
        return db.run_in_transaction(attempt, on_retry=metrics.transaction_retry)
    except db.TransactionRetriesExhausted as exc:
        raise ServiceUnavailable() from exc


# ------------------------------------------------------------------------------------------- reads


def _owned_hold(database: Any, caller_id: ObjectId, hold_id: ObjectId, session: Any = None) -> dict[str, Any]:
    hold = database.holds.find_one({"_id": hold_id}, session=session)
    if hold is None or hold["owner"] != caller_id or hold["status"] == "FAILED":
        raise HoldNotFound()
    return hold


def get(caller: dict[str, Any], hold_id: ObjectId) -> dict[str, Any]:
    """A hold, to the owner of either account; anyone else (or a refused request's record) sees 404."""
    database = db.get_db()
    hold = database.holds.find_one({"_id": hold_id})
    if hold is None or hold["status"] == "FAILED":
        raise HoldNotFound()
    if hold["owner"] != caller["_id"] and database.accounts.find_one(
            {"_id": hold["toAccount"], "user": caller["_id"]}, {"_id": 1}) is None:
        raise HoldNotFound()
    return hold


def list_active(caller: dict[str, Any], account_id: ObjectId | None) -> list[dict[str, Any]]:
    """The account's holds that still reserve money (one indexed range read), soonest expiry first."""
    database = db.get_db()
    if account_id is None or database.accounts.find_one({"_id": account_id, "user": caller["_id"]},
                                                        {"_id": 1}) is None:
        raise AccountNotFound()
    return list(database.holds.find(
        {"fromAccount": account_id, "status": "ACTIVE", "expiresAt": {"$gt": utcnow()}}).sort("expiresAt", 1))


def available_balance(account: dict[str, Any], now: datetime | None = None) -> int:
    """``balance - held``, less nothing for holds already past expiry (exact before the sweep visits them).

    An account that holds nothing costs no read; one that does costs one indexed read of its due holds,
    normally empty.
    """
    held = account.get("held") or 0
    if held:
        due = db.get_db().holds.find({"fromAccount": account["_id"], "status": "ACTIVE",
                                      "expiresAt": {"$lte": now or utcnow()}}, {"amount": 1})
        held -= sum(h["amount"] for h in due)
    return account.get("balance", 0) - held


# ------------------------------------------------------------------------------------------- sweep


def expire_due(now: datetime | None = None, limit: int = SWEEP_BATCH) -> int:
    """Mark holds past expiry EXPIRED and release their reservations, one account per transaction.

    Returns how many accounts had something released.
    """
    now = now or utcnow()
    due = db.get_db().holds.find({"status": "ACTIVE", "expiresAt": {"$lte": now}},
                                 {"fromAccount": 1}).sort("expiresAt", 1).limit(limit)
    accounts = list(dict.fromkeys(h["fromAccount"] for h in due))
    expired = 0
    for account_id in accounts:
        def attempt(session: ClientSession, account_id: ObjectId = account_id) -> int:
            return release_expired_holds(session, account_id, now)

        expired += 1 if db.run_in_transaction(attempt) else 0
    return expired


class HoldSweeper:
    """A daemon thread that runs :func:`expire_due` every ``HOLD_SWEEP_SECONDS`` in the serving process."""

    def __init__(self, app: Flask, interval: float) -> None:
        self.app, self.interval, self.pid = app, interval, os.getpid()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="hold-sweeper", daemon=True)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.app.app_context():
                    expire_due()
            except Exception:  # noqa: BLE001 - the sweep is tidying only; expiry is exact without it
                log.exception("hold sweep failed (will retry)")

    def stop(self) -> None:
        self._stop.set()


def install_sweeper(app: Flask) -> None:
    """Start the sweeper with the first request each serving process handles (never in CLI commands)."""
    interval = float(app.config.get("HOLD_SWEEP_SECONDS") or 0)
    if interval <= 0:
        return
    state: dict[str, HoldSweeper] = {}
    guard = threading.Lock()

    @app.before_request
    def _ensure_sweeper() -> None:
        sweeper = state.get("sweeper")
        if sweeper is not None and sweeper.pid == os.getpid():
            return
        with guard:
            sweeper = state.get("sweeper")
            if sweeper is None or sweeper.pid != os.getpid():
                state["sweeper"] = HoldSweeper(app, interval)
                state["sweeper"].thread.start()
                atexit.register(state["sweeper"].stop)
