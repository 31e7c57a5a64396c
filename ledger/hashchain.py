"""The hash chain of ledger entries: the canonical serialisation and the hash, in one small pure module.

Every ledger entry carries ``prevHash`` (the ``hash`` of the previous entry on the same account, or
:data:`GENESIS` for the account's first entry) and ``hash``, the SHA-256 of the entry's canonical line::

    account|seq|type|amount|currency|balanceAfter|transaction|createdAt|prevHash

* ``account``, ``transaction``: the ObjectId as 24 lower-case hex digits;
* ``seq``, ``amount``, ``balanceAfter``: base-10 integers in **minor units** (paise, cents), no leading zeros,
  ``-`` for a negative ``balanceAfter`` (only a system account goes negative); ``amount`` is always positive;
* ``type``: ``DEBIT`` or ``CREDIT``; ``currency``: the ISO-4217 code in upper case;
* ``createdAt``: UTC, milliseconds, ``Z`` (``2026-03-01T10:00:00.000Z``), as BSON stores it;
* ``prevHash``: 64 lower-case hex digits.

The line is encoded as UTF-8 (it is plain ASCII) without a trailing newline; ``hash`` is the lower-case hex
SHA-256 of those bytes. No field can contain ``|``. ``docs/hash-chain.md`` shows the recomputation in a few
lines of Python and of shell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
CHAIN_FIELDS = ("account", "seq", "type", "amount", "currency", "balanceAfter", "transaction", "createdAt")


def iso_millis(moment: datetime) -> str:
    """``2026-03-01T10:00:00.000Z``: UTC, milliseconds truncated, ``Z``. A naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}.{moment.microsecond // 1000:03d}Z")


def canonical_line(entry: Mapping[str, Any], prev_hash: str) -> str:
    """The canonical serialisation of ``entry`` (a stored ledger document) chained to ``prev_hash``."""
    return "|".join((
        str(entry["account"]).lower(),
        _integer(entry["seq"]),
        str(entry["type"]),
        _integer(entry["amount"]),
        str(entry["currency"]),
        _integer(entry["balanceAfter"]),
        str(entry["transaction"]).lower(),
        iso_millis(entry["createdAt"]),
        prev_hash,
    ))


def entry_hash(entry: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 (lower-case hex) of the canonical line of ``entry`` chained to ``prev_hash``."""
    return hashlib.sha256(canonical_line(entry, prev_hash).encode("utf-8")).hexdigest()


def chain_head(account: Mapping[str, Any]) -> str | None:
    """The ``prevHash`` the account's next entry gets, or None while its existing entries are not chained yet.

    An account stores the hash of its last entry as ``lastHash``. An account without entries starts at
    :data:`GENESIS`. An account that has entries but no ``lastHash`` was written before the chain existed (or
    migrated from the Node service) and waits for ``flask --app wsgi backfill-ledger-chain``; until then its
    new entries are written unchained too, and the backfill chains them all in order.
    """
    if account.get("lastHash"):
        return str(account["lastHash"])
    if not account.get("seq"):
        return GENESIS
    return None


def _integer(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        # Anything but an integer (a Node-era double, a tampered string) cannot be serialised canonically:
        # render it visibly different from every integer, so the recomputed hash can never match.
        return f"!{value!r}"
    return str(value)
