"""Take over a database the Node service wrote: ``flask --app wsgi migrate-node-db [--dry-run]``.

What the Node/Mongoose service left (see the README, "Upgrading from the Node service") differs from what this
service reads and writes. The migration, in this order:

1. **Indexes out of the way.** Drops the Node indexes that would break this service: the *global* unique
   ``transactions.idempotencyKey`` (keys are now scoped to the caller), the 3-day TTL on
   ``tokenblacklists.createdAt`` (a revocation must last until the token's own expiry) and the unique
   ``tokenblacklists.token`` (new entries store no raw token, so every one of them would index as ``null``).
2. **System accounts.** For each user with ``systemUser: true``, one account per currency becomes the system
   account (``systemCurrency``, ``systemUser: true``): the one already flagged ``systemUser: true``, else the
   oldest (the Node service funded from ``findOne({user})``, i.e. the first one).
3. **Ledger entries and balances**, account by account: amounts become integer minor units of the account's
   currency; the Node funding defect (a *negative* DEBIT on the system account) is repaired to a positive
   amount; entries get ``seq`` 1, 2, 3, ... in ``_id`` order (Node ledger entries have no ``createdAt``; an
   ObjectId starts with its creation second) with ``balanceAfter`` and ``createdAt`` (the ``_id``'s time); the
   account gets ``balance`` = credits − debits and ``seq`` = its number of entries. Then each account's entries
   get their hash chain (``prevHash``/``hash``, :mod:`ledger.services.backfill`) and the account its ``lastHash``.
4. **Transactions**: ``amount`` in minor units, ``kind`` (``INITIAL_FUNDS`` when the source is a system
   account), ``currency`` (the source account's), ``initiator`` (the source account's owner) and the request
   ``fingerprint``, so a Node client retrying a request with its old key gets the replay. A ``PENDING``
   transaction with no ledger entries never moved money: it becomes ``FAILED`` with a reason, so its key replays
   that outcome instead of ever moving money later.
5. **Blocklist**: each raw-token entry becomes a SHA-256 ``tokenHash`` with ``expiresAt`` = the token's own
   ``exp`` (read without verifying the signature) plus the clock-skew margin a logout gets; entries already
   expired or undecodable are dropped, since they revoke nothing. The raw token is removed.
6. **Indexes in**: the declared indexes (:func:`ledger.db.ensure_indexes`), then the ledger is verified
   (:func:`ledger.services.audit.verify`).

Amounts: ``Decimal(str(x))`` of the stored double (the shortest decimal that round-trips, so ``10.1`` is
exactly ``10.10``), scaled to minor units and rounded **half up** (away from zero) when the double has more
decimals than the currency allows; every such amount is reported. The debit and the credit of one transfer
hold the same double, so they round identically and the ledger still balances.

Safety. Run it with the Node service stopped and before this service takes traffic (``/ready`` answers 503
until the declared indexes exist, which they cannot while Node-era entries lack ``seq``). Every step can be
interrupted and re-run: a document is converted once, by one atomic single-document update whose filter
requires the Node-era shape (an entry without ``seq``, a transaction without ``kind``, a blocklist entry with a
raw ``token``), so a re-run converts only what is left and a second full run changes nothing. An account's
entries and its balance are written in transactions (:func:`ledger.db.run_in_transaction`) of up to
``ENTRY_BATCH`` entries, the last of which also writes the balance: an interrupted account resumes from its
last converted entry, and no account ever shows a balance that disagrees with its converted entries.
``--dry-run`` reads everything, reports what it would do and writes nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import click
import jwt
from bson import Decimal128, ObjectId
from flask import current_app
from flask.cli import with_appcontext
from pymongo import UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure

from ledger import db, progress
from ledger.money import CURRENCY_EXPONENTS, DEFAULT_CURRENCY
from ledger.security import token_hash
from ledger.services.auth import REVOCATION_CLOCK_MARGIN
from ledger.services.transfers import INITIAL_FUNDS, TRANSFER, fingerprint

ENTRY_BATCH = 500  # ledger entries written per transaction
DOCUMENT_BATCH = 500  # transactions / blocklist entries per bulk write

INCOMPLETE_FAILURE = {
    "code": "INCOMPLETE_BEFORE_MIGRATION",
    "message": "This transaction never completed in the previous service and moved no money; "
               "send the transfer again with a new idempotencyKey",
    "httpStatus": 400,
}
NODE_FAILED_FAILURE = {
    "code": "FAILED_BEFORE_MIGRATION",
    "message": "This transaction failed in the previous service and moved no money; "
               "send the transfer again with a new idempotencyKey",
    "httpStatus": 400,
}

Echo = Callable[[str], None]


class UnusableAmount(ValueError):
    """A stored amount that is not a finite number."""


class _ConcurrentChange(RuntimeError):
    """A document changed between our read and our write: someone else is migrating or writing."""


@dataclass
class MigrationReport:
    """What a run did (or, in a dry run, would do), and every inconsistency it met."""

    dry_run: bool
    changes: Counter = field(default_factory=Counter)  # what was (would be) written, by kind
    repaired: list[str] = field(default_factory=list)  # inconsistencies in the Node data, repaired
    unresolved: list[str] = field(default_factory=list)  # left as found: an operator must look
    notes: list[str] = field(default_factory=list)  # facts worth knowing, nothing wrong
    verification: list[str] = field(default_factory=list)  # problems ledger.services.audit.verify found
    total_balance_minor: int | None = None

    @property
    def changed(self) -> bool:
        return sum(self.changes.values()) > 0

    @property
    def ok(self) -> bool:
        return not self.unresolved and not self.verification


def major_to_minor(value: Any, currency: str) -> tuple[int, Decimal, bool]:
    """Convert a stored major-unit number to ``(minor units, exact major Decimal, exact?)``.

    ``exact`` is False when the number has more decimals than ``currency`` allows; the result is then rounded
    half up (away from zero), so ``-x`` always converts to minus the conversion of ``x``.
    """
    if isinstance(value, bool):
        raise UnusableAmount(f"{value!r} is not a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnusableAmount(f"{value!r} is not a finite number")
        major = Decimal(str(value))
    elif isinstance(value, int):
        major = Decimal(value)
    elif isinstance(value, Decimal128):
        major = value.to_decimal()
        if not major.is_finite():
            raise UnusableAmount(f"{value!r} is not a finite number")
    else:
        raise UnusableAmount(f"{value!r} is not a number")
    scaled = major.scaleb(CURRENCY_EXPONENTS[currency])
    minor = scaled.to_integral_value(rounding=ROUND_HALF_UP)
    return int(minor), major, minor == scaled


def _signed(entry_type: str, amount_minor: int) -> int:
    return amount_minor if entry_type == "CREDIT" else -amount_minor


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class NodeMigration:
    """One run of the migration over ``database``. Use :func:`migrate`."""

    def __init__(self, database: Database, *, dry_run: bool, progress_every: int, echo: Echo,
                 show_progress: bool = False) -> None:
        self.db = database
        self.dry_run = dry_run
        self.progress_every = max(1, progress_every)
        self._echo = echo
        self.show_progress = show_progress
        self._bars: dict[str, progress.Bar] = {}
        self.report = MigrationReport(dry_run=dry_run)
        self.accounts: dict[ObjectId, dict[str, Any]] = {}
        self.system_users: set[ObjectId] = set()
        self.system_accounts: set[ObjectId] = set()
        self.unsupported: set[ObjectId] = set()
        self.projected_balances: dict[ObjectId, int] = {}
        self._last_progress: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------ driver

    def run(self) -> MigrationReport:
        mode = "DRY RUN: nothing will be written" if self.dry_run else "writing changes"
        self.echo(f"Migrating database '{self.db.name}' from the Node service ({mode})")
        try:
            self._load()
            self._drop_node_indexes()
            self._mark_system_accounts()
            self._migrate_ledgers()
            self._chain_ledgers()
            self._migrate_transactions()
            self._migrate_blocklist()
            self._create_indexes()
            self._verify()
            self._summarize()
        finally:
            self._close_bars()
        return self.report

    def echo(self, text: str) -> None:
        self._close_bars()  # a line printed into a bar being drawn would garble both
        self._echo(text)

    def _close_bars(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def _progress(self, label: str, done: int, total: int, *, final: bool = False) -> None:
        """With ``show_progress``, a bar per label on stderr (:mod:`ledger.progress`: a terminal only).
        Otherwise print ``done/total`` each time ``done`` crosses another multiple of ``progress_every``."""
        if self.show_progress:
            bar = self._bars.get(label)
            if bar is None:
                bar = self._bars[label] = progress.Bar(label, total, unit="doc")
            bar.reach(done)
            return
        last = self._last_progress.get(label, 0)
        if total and (done // self.progress_every > last // self.progress_every or (final and done != last)):
            self.echo(f"  {label}: {done}/{total}")
            self._last_progress[label] = done

    # ------------------------------------------------------------------------------------------ 0. load

    def _load(self) -> None:
        database = self.db
        self.system_users = {u["_id"] for u in database.users.find({"systemUser": True}, {"_id": 1})}
        projection = {"user": 1, "currency": 1, "status": 1, "balance": 1, "seq": 1, "systemUser": 1,
                      "systemCurrency": 1}
        for account in database.accounts.find({}, projection, sort=[("_id", 1)]):
            self.accounts[account["_id"]] = account
            currency = account.get("currency") or DEFAULT_CURRENCY
            if currency not in CURRENCY_EXPONENTS:
                self.unsupported.add(account["_id"])
                self.report.unresolved.append(
                    f"account {account['_id']}: currency {currency!r} is not supported; its entries and "
                    f"transfers are left unconverted")
            if account.get("user") in self.system_users:
                self.system_accounts.add(account["_id"])
            elif account.get("systemUser") is True and not account.get("systemCurrency"):
                self.report.notes.append(
                    f"account {account['_id']} carries systemUser: true but its owner is not a system user; "
                    f"it stays an ordinary account")
        counts = {
            "users": database.users.estimated_document_count(),
            "accounts": len(self.accounts),
            "transactions": database.transactions.estimated_document_count(),
            "ledger entries": database.ledgers.estimated_document_count(),
            "blocklist entries": database.tokenblacklists.estimated_document_count(),
        }
        self.echo("Found " + ", ".join(f"{n} {name}" for name, n in counts.items())
                  + f" ({len(self.system_users)} system user(s))")
        if not self.system_users:
            self.report.notes.append("no user has systemUser: true, so no account is treated as a system account")

    def _currency(self, account_id: ObjectId | None) -> str | None:
        account = self.accounts.get(account_id) if account_id is not None else None
        if account is None:
            return None
        return account.get("currency") or DEFAULT_CURRENCY

    # --------------------------------------------------------------------------------- 1. Node indexes

    def _drop_node_indexes(self) -> None:
        self.echo("Step 1/6: Node indexes this service cannot live with")
        unwanted = [
            ("transactions", [("idempotencyKey", 1)], False,
             "global unique idempotency key (keys are now scoped to the calling user)"),
            ("tokenblacklists", [("createdAt", 1)], True,
             "3-day TTL on createdAt (revocations now last until the token's own expiry)"),
            ("tokenblacklists", [("token", 1)], False,
             "unique raw token (the blocklist now stores hashes; raw tokens are removed)"),
        ]
        for collection, key, needs_ttl, why in unwanted:
            for name, info in self.db[collection].index_information().items():
                if [tuple(k) for k in info["key"]] != key or name == "_id_":
                    continue
                if needs_ttl and "expireAfterSeconds" not in info:
                    continue
                self.echo(f"  {'would drop' if self.dry_run else 'dropping'} {collection}.{name}: {why}")
                if not self.dry_run:
                    self.db[collection].drop_index(name)
                self.report.changes["Node indexes dropped"] += 1

    # -------------------------------------------------------------------------------- 2. system accounts

    def _mark_system_accounts(self) -> None:
        self.echo("Step 2/6: system accounts")
        marked_by_currency = {a["systemCurrency"]: a for a in self.accounts.values() if a.get("systemCurrency")}
        by_user_currency: dict[tuple[ObjectId, str], list[dict[str, Any]]] = {}
        for account_id in sorted(self.system_accounts):
            account = self.accounts[account_id]
            if account.get("systemCurrency") or account_id in self.unsupported:
                continue
            key = (account["user"], account.get("currency") or DEFAULT_CURRENCY)
            by_user_currency.setdefault(key, []).append(account)
        for (user_id, currency), candidates in by_user_currency.items():
            flagged = [a for a in candidates if a.get("systemUser") is True]
            chosen = (flagged or candidates)[0]
            others = [str(a["_id"]) for a in candidates if a is not chosen]
            existing = marked_by_currency.get(currency)
            if existing is not None:
                if existing.get("user") == user_id and not self._is_unused(existing["_id"]):
                    # This user's system account for the currency already exists (an earlier run marked it).
                    self.report.notes.append(
                        f"system user {user_id} has other {currency} accounts "
                        f"({', '.join(str(a['_id']) for a in candidates)}); {existing['_id']} is its system "
                        f"account, the others stay ordinary accounts")
                    continue
                if existing.get("user") == user_id:
                    # Typically created by this service's start-up bootstrap before the migration ran.
                    self._replace_system_account(existing, chosen, currency)
                else:
                    self.report.unresolved.append(
                        f"account {chosen['_id']} (system user {user_id}, {currency}) cannot become the "
                        f"{currency} system account: account {existing['_id']} of user {existing.get('user')} "
                        f"already is (set SYSTEM_USER_EMAIL to the Node system user's email)")
                    continue
            else:
                self._apply_system_mark(chosen, currency)
            marked_by_currency[currency] = chosen
            if others:
                self.report.notes.append(
                    f"system user {user_id} has other {currency} accounts ({', '.join(others)}); "
                    f"{chosen['_id']} is its system account, the others stay ordinary accounts")

    def _is_unused(self, account_id: ObjectId) -> bool:
        account = self.accounts[account_id]
        if account.get("balance", 0) != 0 or account.get("seq", 0) != 0:
            return False
        if self.db.ledgers.find_one({"account": account_id}, {"_id": 1}) is not None:
            return False
        query = {"$or": [{"fromAccount": account_id}, {"toAccount": account_id}]}
        return self.db.transactions.find_one(query, {"_id": 1}) is None

    def _apply_system_mark(self, account: dict[str, Any], currency: str) -> None:
        self.echo(f"  {'would mark' if self.dry_run else 'marking'} account {account['_id']} as the "
                  f"{currency} system account")
        if not self.dry_run:
            self.db.accounts.update_one(
                {"_id": account["_id"], "systemCurrency": {"$exists": False}},
                {"$set": {"systemUser": True, "systemCurrency": currency}},
            )
        account.update(systemUser=True, systemCurrency=currency)
        self.report.changes["system accounts marked"] += 1

    def _replace_system_account(self, empty: dict[str, Any], chosen: dict[str, Any], currency: str) -> None:
        self.report.repaired.append(
            f"an empty {currency} system account {empty['_id']} (created before the migration, e.g. by start-up) "
            f"is removed; the Node account {chosen['_id']}, which holds the funding history, takes its place")
        if not self.dry_run:
            def swap(session: ClientSession) -> None:
                removed = self.db.accounts.delete_one(
                    {"_id": empty["_id"], "systemCurrency": currency, "seq": {"$in": [0, None]}}, session=session)
                if removed.deleted_count != 1:
                    raise _ConcurrentChange(f"account {empty['_id']} changed during the migration")
                self.db.accounts.update_one(
                    {"_id": chosen["_id"], "systemCurrency": {"$exists": False}},
                    {"$set": {"systemUser": True, "systemCurrency": currency}}, session=session)

            db.run_in_transaction(swap)
        self.accounts.pop(empty["_id"], None)
        chosen.update(systemUser=True, systemCurrency=currency)
        self.report.changes["empty system accounts replaced"] += 1
        self.report.changes["system accounts marked"] += 1

    # ------------------------------------------------------------------------- 3. entries and balances

    def _migrate_ledgers(self) -> None:
        self.echo("Step 3/6: ledger entries and balances")
        pending_accounts = set(self.db.ledgers.distinct("account", {"seq": {"$exists": False}}))
        for orphan in sorted(pending_accounts - set(self.accounts)):
            self.report.unresolved.append(f"ledger entries reference account {orphan}, which does not exist")
        to_process = sorted(
            account_id for account_id, account in self.accounts.items()
            if account_id in pending_accounts or "balance" not in account or "seq" not in account
            or "currency" not in account
        )
        total_entries = self.db.ledgers.count_documents({"seq": {"$exists": False}})
        self.echo(f"  {len(to_process)} account(s) to bring up to date, {total_entries} Node-era entries")
        converted = 0
        for index, account_id in enumerate(to_process, start=1):
            if account_id not in self.unsupported:
                converted += self._migrate_account(account_id)
            self._progress("ledger entries", converted, total_entries)
            self._progress("accounts", index, len(to_process))
        self._progress("ledger entries", converted, total_entries, final=True)

    def _migrate_account(self, account_id: ObjectId) -> int:
        """Convert one account's entries and store its balance; return the number of entries converted."""
        account = self.accounts[account_id]
        currency = account.get("currency") or DEFAULT_CURRENCY
        is_system = account_id in self.system_accounts
        entries = list(self.db.ledgers.find(
            {"account": account_id},
            {"type": 1, "amount": 1, "seq": 1, "balanceAfter": 1, "createdAt": 1, "transaction": 1},
            sort=[("_id", 1)],
        ))
        running = 0
        node_balance = Decimal(0)
        updates: list[UpdateOne] = []
        for number, entry in enumerate(entries, start=1):
            where = f"account {account_id}, entry {entry['_id']}"
            if entry.get("type") not in ("DEBIT", "CREDIT"):
                return self._give_up(account_id, f"{where}: type {entry.get('type')!r} is neither DEBIT nor CREDIT")
            if "seq" in entry:  # converted by an interrupted earlier run
                if entry["seq"] != number or not isinstance(entry["amount"], int):
                    return self._give_up(account_id, f"{where}: already carries seq {entry['seq']}, expected "
                                                     f"{number}; entries are out of order")
                running += _signed(entry["type"], entry["amount"])
                if entry.get("balanceAfter") != running:
                    return self._give_up(account_id, f"{where}: balanceAfter {entry.get('balanceAfter')} "
                                                     f"disagrees with the entries before it ({running})")
                continue
            try:
                amount_minor, major, exact = major_to_minor(entry.get("amount"), currency)
            except UnusableAmount as exc:
                return self._give_up(account_id, f"{where}: amount {exc}")
            node_balance += major if entry["type"] == "CREDIT" else -major
            if not exact:
                self.report.repaired.append(
                    f"{where}: amount {major} has more decimals than {currency} allows; stored as "
                    f"{amount_minor} minor units (rounded half up)")
            if entry["type"] == "DEBIT" and amount_minor < 0 and is_system:
                amount_minor = -amount_minor
                self.report.repaired.append(
                    f"{where}: negative system DEBIT {major} (the Node funding defect) made positive")
                self.report.changes["negative system debits repaired"] += 1
            elif amount_minor <= 0:
                self.report.unresolved.append(f"{where}: {entry['type']} amount {major} is not positive; "
                                              f"converted as it is")
            running += _signed(entry["type"], amount_minor)
            created_at = entry.get("createdAt") or entry["_id"].generation_time
            updates.append(UpdateOne(
                {"_id": entry["_id"], "seq": {"$exists": False}},
                {"$set": {"amount": amount_minor, "currency": currency, "seq": number, "balanceAfter": running,
                          "createdAt": created_at}},
            ))
        account_set: dict[str, Any] = {"balance": running, "seq": len(entries)}
        if "currency" not in account:
            account_set["currency"] = currency
        if running < 0 and not is_system:
            self.report.unresolved.append(f"account {account_id}: customer balance would be negative ({running} "
                                          f"minor units)")
        if is_system and updates and node_balance != 0:
            self.report.notes.append(
                f"system account {account_id}: the Node service computed {node_balance} {currency}; "
                f"the repaired ledger gives {Decimal(running).scaleb(-CURRENCY_EXPONENTS[currency])}")
        account_unchanged = all(account.get(k) == v for k, v in account_set.items())
        if not updates and account_unchanged:
            self.projected_balances[account_id] = running
            return 0
        if not self.dry_run:
            try:
                self._write_account(account_id, updates, account_set)
            except _ConcurrentChange as exc:
                return self._give_up(account_id, str(exc))
        self.projected_balances[account_id] = running
        self.report.changes["ledger entries converted"] += len(updates)
        if not account_unchanged:
            self.report.changes["account balances stored"] += 1
        return len(updates)

    def _write_account(self, account_id: ObjectId, updates: list[UpdateOne], account_set: dict[str, Any]) -> None:
        batches = list(_chunks(updates, ENTRY_BATCH)) or [[]]
        for number, batch in enumerate(batches, start=1):
            last = number == len(batches)

            def write(session: ClientSession, batch: list[UpdateOne] = batch, last: bool = last) -> None:
                if batch:
                    result = self.db.ledgers.bulk_write(batch, ordered=True, session=session)
                    if result.matched_count != len(batch):
                        raise _ConcurrentChange(f"account {account_id}: entries changed during the migration; "
                                                f"re-run it")
                if last:
                    self.db.accounts.update_one({"_id": account_id}, {"$set": account_set}, session=session)

            db.run_in_transaction(write)

    def _give_up(self, account_id: ObjectId, reason: str) -> int:
        self.report.unresolved.append(f"{reason} (account {account_id} left unmigrated)")
        self.unsupported.add(account_id)
        return 0

    def _chain_ledgers(self) -> None:
        """The converted entries get their hash chain (:mod:`ledger.services.backfill`), account by account."""
        from ledger.services.backfill import backfill

        self.echo("Step 3/6 (continued): hash chains of the ledger entries")
        if self.dry_run:
            self.report.notes.append("the hash chains are computed after the entries are converted; a dry run "
                                     "cannot show their count")
            return
        result = backfill(echo=self.echo)
        self.report.changes["ledger entries hashed"] += result.entries_hashed
        self.report.unresolved.extend(result.refused)

    # ---------------------------------------------------------------------------------- 4. transactions

    def _migrate_transactions(self) -> None:
        self.echo("Step 4/6: transactions")
        query = {"kind": {"$exists": False}}
        total = self.db.transactions.count_documents(query)
        done = 0
        batch: list[dict[str, Any]] = []
        for record in self.db.transactions.find(query, sort=[("_id", 1)]):
            batch.append(record)
            if len(batch) >= DOCUMENT_BATCH:
                done += self._migrate_transaction_batch(batch)
                batch = []
                self._progress("transactions", done, total)
        if batch:
            done += self._migrate_transaction_batch(batch)
        self._progress("transactions", done, total, final=True)

    def _migrate_transaction_batch(self, records: list[dict[str, Any]]) -> int:
        entries: dict[ObjectId, list[dict[str, Any]]] = {}
        ids = [r["_id"] for r in records]
        for entry in self.db.ledgers.find({"transaction": {"$in": ids}},
                                          {"transaction": 1, "type": 1, "account": 1, "amount": 1, "seq": 1}):
            entries.setdefault(entry["transaction"], []).append(entry)
        operations = []
        for record in records:
            update = self._transaction_update(record, entries.get(record["_id"], []))
            if update is not None:
                operations.append(UpdateOne({"_id": record["_id"], "kind": {"$exists": False}}, {"$set": update}))
        if operations and not self.dry_run:
            self.db.transactions.bulk_write(operations, ordered=False)
        self.report.changes["transactions converted"] += len(operations)
        return len(records)

    def _transaction_update(self, record: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        where = f"transaction {record['_id']}"
        from_id, to_id = record.get("fromAccount"), record.get("toAccount")
        if from_id in self.unsupported or to_id in self.unsupported:
            self.report.unresolved.append(f"{where}: an account it names was left unmigrated; left as it is")
            return None
        currency = self._currency(from_id) or self._currency(to_id)
        if currency is None:
            self.report.unresolved.append(f"{where}: neither fromAccount nor toAccount exists; currency "
                                          f"{DEFAULT_CURRENCY} assumed")
            currency = DEFAULT_CURRENCY
        elif from_id not in self.accounts:
            self.report.unresolved.append(f"{where}: fromAccount {from_id} does not exist; no initiator recorded")
        to_currency = self._currency(to_id)
        if to_currency is not None and to_currency != currency:
            self.report.notes.append(f"{where}: moves {currency} into a {to_currency} account (the Node service did "
                                     f"not check currencies)")
        try:
            amount_minor, major, exact = major_to_minor(record.get("amount"), currency)
        except UnusableAmount as exc:
            self.report.unresolved.append(f"{where}: amount {exc}; left as it is")
            return None
        if not exact:
            self.report.repaired.append(f"{where}: amount {major} has more decimals than {currency} allows; "
                                        f"stored as {amount_minor} minor units (rounded half up)")
        if amount_minor <= 0:
            self.report.unresolved.append(f"{where}: amount {major} is not positive")
        is_funding = from_id in self.system_accounts
        kind = INITIAL_FUNDS if is_funding else TRANSFER
        update: dict[str, Any] = {
            "kind": kind,
            "currency": currency,
            "amount": amount_minor,
            "fingerprint": fingerprint(kind, "system" if is_funding else from_id, to_id, major),
        }
        owner = (self.accounts.get(from_id) or {}).get("user")
        if owner is not None:
            update["initiator"] = owner
        update.update(self._status_repair(record, entries, where))
        return update

    def _status_repair(self, record: dict[str, Any], entries: list[dict[str, Any]], where: str) -> dict[str, Any]:
        status = record.get("status")
        debits = [e for e in entries if e.get("type") == "DEBIT"]
        credits = [e for e in entries if e.get("type") == "CREDIT"]
        complete = len(debits) == 1 and len(credits) == 1 and len(entries) == 2
        now = datetime.now(UTC)
        if status == "PENDING" and not entries:
            self.report.repaired.append(f"{where}: PENDING with no ledger entries (never completed) marked FAILED")
            return {"status": "FAILED", "failure": dict(INCOMPLETE_FAILURE), "updatedAt": now}
        if status == "PENDING" and complete:
            self.report.repaired.append(f"{where}: PENDING although both ledger entries exist; marked COMPLETED")
            return {"status": "COMPLETED", "updatedAt": now}
        if status == "FAILED" and not record.get("failure"):
            return {"failure": dict(NODE_FAILED_FAILURE)}
        if status == "COMPLETED" and not complete:
            self.report.unresolved.append(f"{where}: COMPLETED but has {len(debits)} DEBIT and {len(credits)} "
                                          f"CREDIT entries")
        elif status == "PENDING":
            self.report.unresolved.append(f"{where}: PENDING with {len(entries)} ledger entries; left PENDING")
        elif complete:
            self._check_entries(record, debits[0], credits[0], where)
        return {}

    def _check_entries(self, record: dict[str, Any], debit: dict, credit: dict, where: str) -> None:
        if debit.get("account") != record.get("fromAccount") or credit.get("account") != record.get("toAccount"):
            self.report.unresolved.append(f"{where}: its ledger entries name other accounts than the transaction")

    # ------------------------------------------------------------------------------------- 5. blocklist

    def _migrate_blocklist(self) -> None:
        self.echo("Step 5/6: token blocklist")
        query = {"token": {"$exists": True}}
        total = self.db.tokenblacklists.count_documents(query)
        now = datetime.now(UTC)
        done = 0
        for entry in self.db.tokenblacklists.find(query, {"token": 1, "createdAt": 1}, sort=[("_id", 1)]):
            done += 1
            self._migrate_blocklist_entry(entry, now)
            self._progress("blocklist entries", done, total)
        self._progress("blocklist entries", done, total, final=True)

    def _migrate_blocklist_entry(self, entry: dict[str, Any], now: datetime) -> None:
        raw = entry.get("token")
        expires_at = None
        payload: dict[str, Any] = {}
        if isinstance(raw, str):
            try:
                payload = jwt.decode(raw, options={"verify_signature": False})
            except jwt.PyJWTError:
                payload = {}
            exp = payload.get("exp")
            if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
                expires_at = datetime.fromtimestamp(int(exp), tz=UTC)
        if expires_at is None or expires_at <= now:
            reason = "undecodable or without exp" if expires_at is None else "already expired"
            self.report.changes[f"blocklist entries dropped ({reason})"] += 1
            if not self.dry_run:
                self.db.tokenblacklists.delete_one({"_id": entry["_id"], "token": {"$exists": True}})
            return
        hashed = token_hash(raw)
        # Same rule as a logout today: the entry outlives the token by the clock-skew margin.
        update: dict[str, Any] = {"tokenHash": hashed, "expiresAt": expires_at + REVOCATION_CLOCK_MARGIN}
        if payload.get("userId") is not None:
            update["userId"] = str(payload["userId"])
        if not entry.get("createdAt"):
            update["createdAt"] = now
        self.report.changes["blocklist entries hashed"] += 1
        if self.dry_run:
            return
        duplicate = self.db.tokenblacklists.find_one({"tokenHash": hashed, "_id": {"$ne": entry["_id"]}}, {"_id": 1})
        if duplicate is None:
            try:
                self.db.tokenblacklists.update_one({"_id": entry["_id"], "token": {"$exists": True}},
                                                   {"$set": update, "$unset": {"token": ""}})
                return
            except DuplicateKeyError:
                pass
        # The token is already revoked by hash: the raw copy adds nothing.
        self.db.tokenblacklists.delete_one({"_id": entry["_id"], "token": {"$exists": True}})

    # ------------------------------------------------------------------------------ 6. indexes, verify

    def _create_indexes(self) -> None:
        self.echo("Step 6/6: declared indexes and verification")
        missing = db.missing_indexes(self.db)
        if not missing:
            return
        self.echo(f"  {'would create' if self.dry_run else 'creating'} {', '.join(missing)}")
        self.report.changes["indexes created"] += len(missing)
        if self.dry_run:
            return
        try:
            db.ensure_indexes(self.db)
        except OperationFailure as exc:
            self.report.unresolved.append(f"the declared indexes could not be created: {exc}")

    def _verify(self) -> None:
        if self.dry_run:
            projected = dict(self.projected_balances)
            for account_id, account in self.accounts.items():
                if account_id not in projected:
                    projected[account_id] = account.get("balance", 0) if isinstance(account.get("balance"), int) else 0
            self.report.total_balance_minor = sum(projected.values())
            return
        from ledger.services.audit import verify

        audit = verify()
        self.report.verification.extend(str(problem) for problem in audit.problems)
        if audit.problem_count > len(audit.problems):
            self.report.verification.append(f"... {audit.problem_count - len(audit.problems)} more problem(s): "
                                            f"run `ledger verify`")
        self.report.total_balance_minor = audit.total_balance_minor
        if audit.total_balance_minor != 0:
            self.report.verification.append(f"the balances sum to {audit.total_balance_minor}, not 0")

    def _summarize(self) -> None:
        report, echo = self.report, self.echo
        for title, lines in (("REPAIRED", report.repaired), ("UNRESOLVED", report.unresolved),
                             ("NOTE", report.notes), ("VERIFY", report.verification)):
            for line in lines:
                echo(f"{title}: {line}")
        verb = "would change" if self.dry_run else "changed"
        if report.changed:
            echo(f"Summary ({verb}):")
            for name, count in sorted(report.changes.items()):
                if count:
                    echo(f"  {name}: {count}")
        else:
            echo("Nothing to migrate: the database is already in this service's format; nothing was changed.")
        echo(f"Inconsistencies: {len(report.repaired)} repaired, {len(report.unresolved)} unresolved")
        label = "projected sum of balances" if self.dry_run else "sum of balances"
        echo(f"{label} (minor units): {report.total_balance_minor}")
        if not self.dry_run:
            echo("ledger verification: " + ("OK" if not report.verification else "FAILED"))


def migrate(database: Database, *, dry_run: bool = False, progress_every: int = 1000,
            echo: Echo = print, show_progress: bool = False) -> MigrationReport:
    """Migrate ``database`` in place (needs an app context: transactions use the app's client)."""
    return NodeMigration(database, dry_run=dry_run, progress_every=progress_every, echo=echo,
                         show_progress=show_progress).run()


@click.command("migrate-node-db")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option("--progress-every", default=1000, show_default=True, type=click.IntRange(min=1),
              help="When stderr is not a terminal (a log), print progress every N documents; "
                   "on a terminal progress bars are drawn instead.")
@with_appcontext
def migrate_node_db(dry_run: bool, progress_every: int) -> None:
    """Convert a database written by the Node service (idempotent; stop the Node service first)."""
    refusal = db.write_refusal()
    if refusal and not dry_run:
        raise click.ClickException(refusal)
    if db.is_embedded() and current_app.config.get("LEDGER_DATA_DIR", ":memory:") == ":memory:":
        click.echo("warning: MONGO_URI is not set, so this migrates the embedded in-memory database of this "
                   "process (empty, and lost on exit). Set MONGO_URI to the Node service's database.")
    report = migrate(db.get_db(), dry_run=dry_run, progress_every=progress_every, echo=click.echo,
                     show_progress=progress.enabled())
    if not report.ok:
        raise SystemExit(1)
