"""Reading the ledger: an account's entries, statements, the balance at an instant, one transaction.

Every read is scoped to the caller: an account or transaction the caller may not see does not exist (404, the
same as an absent one). Every read is bounded by an index and does work proportional to what it returns,
never to the account's history:

* **entries** — newest first, keyset-paginated on the account's ``seq`` (index ``(account, seq)``): one range
  read of ``limit + 1`` entries, plus one batched ``$in`` read of their transactions (counterparty, kind). The
  cursor is ``seq`` sealed with an HMAC bound to the account, so it is opaque, cannot be forged or moved to
  another account, and survives new transfers: new entries get higher ``seq`` and only appear on a fresh first
  page, so walking the pages returns every entry exactly once;
* **statement** and **balance at an instant** — index ``(account, createdAt, seq)``: the last entry before an
  instant is one index key away, and its ``balanceAfter`` is the balance then (never a sum over history).
  Entries' ``createdAt`` never goes back along an account's ``seq`` (the transfer guarantees it), so a window
  of time is a contiguous run of the chain and ``opening + credits - debits == closing`` exactly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from bson import ObjectId
from flask import current_app

from ledger import db, hashchain
from ledger.errors import TransactionNotFound, ValidationFailed
from ledger.models import utcnow
from ledger.services.accounts import get_account

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_STATEMENT_DAYS = 366
LOOKUP_CHUNK = 1000  # transaction ids per $in read on a statement

_ENTRY_FIELDS = {"account": 1, "type": 1, "amount": 1, "currency": 1, "balanceAfter": 1, "seq": 1,
                 "transaction": 1, "createdAt": 1, "prevHash": 1, "hash": 1}
_TRANSACTION_LOOKUP = {"fromAccount": 1, "toAccount": 1, "kind": 1}


@dataclass(frozen=True)
class EntriesPage:
    account: dict[str, Any]
    entries: list[dict[str, Any]]  # each with "counterparty" and "kind" filled in
    next_cursor: str | None


@dataclass(frozen=True)
class Statement:
    account: dict[str, Any]
    start: date
    end: date
    opening_balance: int
    closing_balance: int
    total_debits: int
    total_credits: int
    opening_hash: str | None
    closing_hash: str | None
    entries: list[dict[str, Any]]  # oldest first, with "counterparty" and "kind"


# ------------------------------------------------------------------------------------------- entries


def list_entries(owner_id: ObjectId, account_id: ObjectId, limit: int, cursor: str | None) -> EntriesPage:
    """One page of the account's entries, newest first; ``cursor`` is a previous page's ``next_cursor``."""
    account = get_account(owner_id, account_id)
    query: dict[str, Any] = {"account": account_id}
    if cursor is not None:
        query["seq"] = {"$lt": decode_cursor(account_id, cursor)}
    found = list(db.get_db().ledgers.find(query, _ENTRY_FIELDS, sort=[("seq", -1)], limit=limit + 1,
                                          batch_size=limit + 1))
    page = found[:limit]
    next_cursor = encode_cursor(account_id, page[-1]["seq"]) if len(found) > limit else None
    return EntriesPage(account, _with_counterparties(page), next_cursor)


def _cursor_key() -> bytes:
    secret = str(current_app.config["JWT_SECRET_KEY"]).encode("utf-8")
    return hmac.new(secret, b"banking-ledger/entries-cursor/v1", hashlib.sha256).digest()


_CURSOR_VERSION = b"\x01"
_CURSOR_PATTERN = re.compile(r"^[A-Za-z0-9_-]{34}$")  # 25 bytes: version, seq (8), MAC (16)


def encode_cursor(account_id: ObjectId, seq: int) -> str:
    """An opaque cursor meaning "entries of ``account_id`` before ``seq``", sealed with an HMAC."""
    payload = _CURSOR_VERSION + seq.to_bytes(8, "big")
    mac = hmac.new(_cursor_key(), account_id.binary + payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode("ascii")


def decode_cursor(account_id: ObjectId, cursor: str) -> int:
    """The ``seq`` a cursor names, or a 400 if we did not issue it for this very account."""
    invalid = ValidationFailed("cursor is not valid for this account",
                               errors={"cursor": "pass the nextCursor of the previous page, unchanged"})
    if not isinstance(cursor, str) or not _CURSOR_PATTERN.match(cursor):
        raise invalid
    raw = base64.urlsafe_b64decode(cursor + "==")
    payload, mac = raw[:9], raw[9:]
    expected = hmac.new(_cursor_key(), account_id.binary + payload, hashlib.sha256).digest()[:16]
    # The re-encoding check refuses the other spellings of the same bytes (unused bits of the last character).
    if (payload[:1] != _CURSOR_VERSION or not hmac.compare_digest(mac, expected)
            or base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != cursor):
        raise invalid
    return int.from_bytes(payload[1:], "big")


def _with_counterparties(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill in each entry's ``counterparty`` and ``kind`` from its transaction: batched ``$in`` reads."""
    ids = list(dict.fromkeys(e["transaction"] for e in entries))
    records: dict[ObjectId, dict[str, Any]] = {}
    for chunk in _chunks(ids, LOOKUP_CHUNK):
        for record in db.get_db().transactions.find({"_id": {"$in": chunk}}, _TRANSACTION_LOOKUP,
                                                    batch_size=len(chunk)):
            records[record["_id"]] = record
    result = []
    for entry in entries:
        record = records.get(entry["transaction"], {})
        other = record.get("toAccount") if entry["type"] == "DEBIT" else record.get("fromAccount")
        result.append({**entry, "counterparty": other, "kind": record.get("kind")})
    return result


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ----------------------------------------------------------------------------------------- statement


def statement(owner_id: ObjectId, account_id: ObjectId, start: date, end: date) -> Statement:
    """The statement of whole UTC days ``start``..``end`` inclusive (validated by the caller)."""
    account = get_account(owner_id, account_id)
    ledgers = db.get_db().ledgers
    window_start = datetime.combine(start, time(), UTC)
    in_window: dict[str, Any] = {"$gte": window_start}
    if end < date.max:
        in_window["$lt"] = datetime.combine(end + timedelta(days=1), time(), UTC)
    before = ledgers.find_one({"account": account_id, "createdAt": {"$lt": window_start}},
                              {"balanceAfter": 1, "hash": 1}, sort=[("createdAt", -1), ("seq", -1)])
    entries = list(ledgers.find({"account": account_id, "createdAt": in_window}, _ENTRY_FIELDS,
                                sort=[("createdAt", 1), ("seq", 1)]))
    opening = before["balanceAfter"] if before else 0
    opening_hash = (before.get("hash") if before else hashchain.GENESIS)
    closing = entries[-1]["balanceAfter"] if entries else opening
    closing_hash = entries[-1].get("hash") if entries else opening_hash
    debits = sum(e["amount"] for e in entries if e["type"] == "DEBIT")
    credits = sum(e["amount"] for e in entries if e["type"] == "CREDIT")
    if opening + credits - debits != closing:  # only a ledger edited behind our back can get here
        log.error("statement of account %s %s..%s does not add up: opening %s + credits %s - debits %s != %s; "
                  "run verify-ledger", account_id, start, end, opening, credits, debits, closing)
    return Statement(account, start, end, opening, closing, debits, credits, opening_hash, closing_hash,
                     _with_counterparties(entries))


def statement_window(start: date, end: date) -> None:
    """The statement rules: ``start <= end``, at most :data:`MAX_STATEMENT_DAYS` days counted inclusively."""
    if start > end:
        raise ValidationFailed("from must not be after to", errors={"from": "must not be after to"})
    if (end - start).days + 1 > MAX_STATEMENT_DAYS:
        raise ValidationFailed(f"A statement covers at most {MAX_STATEMENT_DAYS} days",
                               errors={"to": f"at most {MAX_STATEMENT_DAYS} days after from, inclusive"})


# ---------------------------------------------------------------------------------------- balance at


def balance_at(owner_id: ObjectId, account_id: ObjectId, at: datetime) -> tuple[dict[str, Any], int]:
    """``(account, balance in minor units right after its last entry at or before ``at``)``; 0 before any."""
    if at > utcnow() + timedelta(milliseconds=1):
        raise ValidationFailed("at must not be in the future", errors={"at": "must not be in the future"})
    account = get_account(owner_id, account_id)
    last = db.get_db().ledgers.find_one({"account": account_id, "createdAt": {"$lte": at}}, {"balanceAfter": 1},
                                        sort=[("createdAt", -1), ("seq", -1)])
    return account, (last["balanceAfter"] if last else 0)


# --------------------------------------------------------------------------------------- transaction


def get_transaction(user_id: ObjectId, transaction_id: ObjectId) -> dict[str, Any]:
    """The transaction, for its initiator or the owner of either account; 404 for anyone else."""
    database = db.get_db()
    record = database.transactions.find_one({"_id": transaction_id})
    if record is None:
        raise TransactionNotFound()
    if record.get("initiator") == user_id:
        return record
    parties = [a for a in (record.get("fromAccount"), record.get("toAccount")) if a is not None]
    if database.accounts.find_one({"_id": {"$in": parties}, "user": user_id}, {"_id": 1}) is None:
        raise TransactionNotFound()
    return record
