"""Proving the ledger: every check an auditor runs, streamed over the data in index order.

The ledger is the source of truth. :func:`verify` reads everything at one point in time
(:func:`ledger.db.consistent_reads`) in two merge passes, each over cursors sorted by an index, so memory stays
bounded by one account's running state and one transaction's entries, whatever the size of the ledger:

1. **accounts ⋈ entries** — ``accounts`` by ``_id`` beside ``ledgers`` by ``(account, seq)``. Per account:
   sequence numbers 1, 2, 3, ... without gaps; positive integer amounts in the account's currency;
   ``balanceAfter`` equal to the running total; ``createdAt`` never going backwards; every entry's ``prevHash``
   equal to the previous entry's ``hash`` (:data:`~ledger.hashchain.GENESIS` for seq 1) and its ``hash`` equal
   to the recomputed one; the account's stored ``balance`` == credits − debits, its ``seq`` == its number of
   entries and its ``lastHash`` == the last entry's hash. Entries naming no account are reported. Per
   currency, all balances (system accounts included) sum to 0.
2. **transactions ⋈ entries** — ``transactions`` by ``_id`` beside ``ledgers`` by ``transaction``: a
   ``COMPLETED`` (or ``REVERSED``) transaction has exactly one DEBIT on its ``fromAccount`` and one CREDIT on
   its ``toAccount``, both of its amount; a ``FAILED`` or ``PENDING`` one has none; no entry names a
   transaction that does not exist.

Each problem names the check, the account, the sequence number and/or the transaction, and what differs.
Only the first ``keep`` problems are held in memory (all of them are counted, and each is passed to
``on_problem`` as it is found, which is how the CLI prints every one).

3. **holds** — each account's ``held`` equals the sum of its ``ACTIVE`` holds and never exceeds its balance
   (so ``0 <= availableBalance <= balance``). Memory grows with the accounts holding something, not the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from ledger import db, hashchain

SETTLED_STATUSES = ("COMPLETED", "REVERSED")  # the transfer happened: its two entries exist
DEFAULT_KEEP = 100


@dataclass(frozen=True)
class Problem:
    """One finding: which check failed, where, and what differs."""

    check: str
    detail: str
    account: ObjectId | None = None
    seq: int | None = None
    transaction: ObjectId | None = None

    def __str__(self) -> str:
        where = []
        if self.account is not None:
            where.append(f"account {self.account}")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        if self.transaction is not None:
            where.append(f"transaction {self.transaction}")
        return f"{self.check}: {' '.join(where) + ': ' if where else ''}{self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "account": str(self.account) if self.account is not None else None,
            "seq": self.seq,
            "transaction": str(self.transaction) if self.transaction is not None else None,
            "message": self.detail,
        }


ProblemSink = Callable[[Problem], None]


@dataclass
class AuditReport:
    accounts: int = 0
    entries: int = 0
    transactions: int = 0
    total_balance_minor: int = 0
    balance_by_currency: dict[str, int] = field(default_factory=dict)  # each must be 0 on its own
    problems: list[Problem] = field(default_factory=list)  # the first ``keep``
    problem_count: int = 0
    keep: int = DEFAULT_KEEP
    on_problem: ProblemSink | None = None

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, check: str, detail: str, *, account: ObjectId | None = None, seq: int | None = None,
            transaction: ObjectId | None = None) -> None:
        problem = Problem(check, detail, account, seq, transaction)
        self.problem_count += 1
        if len(self.problems) < self.keep:
            self.problems.append(problem)
        if self.on_problem is not None:
            self.on_problem(problem)

    def checked(self) -> dict[str, int]:
        return {"accounts": self.accounts, "entries": self.entries, "transactions": self.transactions,
                "currencies": len(self.balance_by_currency)}


def verify(*, keep: int = DEFAULT_KEEP, on_problem: ProblemSink | None = None,
           on_progress: Callable[[str, int], None] | None = None) -> AuditReport:
    """Run every check over the whole ledger at one point in time; see the module docstring.

    ``on_progress(phase, n)`` is called with the running count of each document read (for a progress bar).
    """
    report = AuditReport(keep=keep, on_problem=on_problem)
    with db.consistent_reads() as session:  # transfers may commit while we read: one point in time for all
        database = db.get_db()
        _check_accounts_and_chains(database, session, report, on_progress)
        _check_transactions(database, session, report, on_progress)
        _check_holds(database, session, report)
    for currency, total in sorted(report.balance_by_currency.items()):
        if total != 0:
            report.add("currency-sum", f"{currency} balances sum to {total} minor units, not 0")
    return report


def _progress(callback: Callable[[str, int], None] | None, phase: str, count: int) -> None:
    if callback is not None:
        callback(phase, count)


# ------------------------------------------------------------------------- pass 1: accounts and chains


_ACCOUNT_FIELDS = {"balance": 1, "seq": 1, "currency": 1, "lastHash": 1, "systemCurrency": 1}


def _grouped(cursor: Iterator[dict[str, Any]], key: str) -> Iterator[tuple[Any, list[dict[str, Any]]]]:
    """Consecutive documents with the same ``key``, for a cursor sorted by it (a transaction's two entries)."""
    current: Any = None
    group: list[dict[str, Any]] = []
    for document in cursor:
        value = document.get(key)
        if group and value != current:
            yield current, group
            group = []
        current = value
        group.append(document)
    if group:
        yield current, group


class _Peekable:
    def __init__(self, iterator: Iterator[dict[str, Any]]) -> None:
        self._iterator = iterator
        self._next: dict[str, Any] | None = None
        self._done = False

    def peek(self) -> dict[str, Any] | None:
        if self._next is None and not self._done:
            self._next = next(self._iterator, None)
            self._done = self._next is None
        return self._next

    def pop(self) -> dict[str, Any] | None:
        document = self.peek()
        self._next = None
        return document


def _check_accounts_and_chains(database: Any, session: Any, report: AuditReport,
                               on_progress: Callable[[str, int], None] | None) -> None:
    entries = _Peekable(iter(database.ledgers.find({}, sort=[("account", 1), ("seq", 1)], session=session)))
    for account in database.accounts.find({}, _ACCOUNT_FIELDS, sort=[("_id", 1)], session=session):
        report.accounts += 1
        _progress(on_progress, "accounts", report.accounts)
        # Entries sorted before this account name an account that does not exist.
        while (entry := entries.peek()) is not None and _before(entry.get("account"), account["_id"]):
            _orphan_entry(entries.pop(), report)
        chain = _ChainCheck(account, report)
        while (entry := entries.peek()) is not None and entry.get("account") == account["_id"]:
            chain.add(entries.pop())
            _progress(on_progress, "entries", report.entries)
        chain.finish()
    while (entry := entries.peek()) is not None:
        _orphan_entry(entries.pop(), report)


def _before(entry_account: Any, account_id: ObjectId) -> bool:
    if not isinstance(entry_account, ObjectId):
        return True  # not an id at all: sorts apart from every account; reported as an orphan
    return entry_account < account_id


def _orphan_entry(entry: dict[str, Any], report: AuditReport) -> None:
    report.entries += 1
    account = entry.get("account")
    report.add("orphan-entry", f"entry {entry['_id']} names an account that does not exist",
               account=account if isinstance(account, ObjectId) else None, seq=_int_or_none(entry.get("seq")),
               transaction=entry.get("transaction") if isinstance(entry.get("transaction"), ObjectId) else None)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _ChainCheck:
    """The running state of one account's walk through its entries, in ``seq`` order."""

    def __init__(self, account: dict[str, Any], report: AuditReport) -> None:
        self.account = account
        self.id = account["_id"]
        self.currency = account.get("currency", "INR")
        self.report = report
        self.expected_seq = 1
        self.count = 0
        self.net = 0  # credits - debits, never resynchronised: what the stored balance must equal
        self.running: int | None = 0  # what the next balanceAfter builds on (resynchronised after a finding)
        self.prev_hash: str | None = hashchain.GENESIS
        self.last_created: datetime | None = None
        self.unchained = 0
        self.first_unchained: int | None = None

    def _add(self, check: str, detail: str, seq: int | None) -> None:
        self.report.add(check, detail, account=self.id, seq=seq)

    def add(self, entry: dict[str, Any]) -> None:
        self.report.entries += 1
        self.count += 1
        seq = _int_or_none(entry.get("seq"))
        self._sequence(entry, seq)
        signed = self._amount(entry, seq)
        self._balance_after(entry, seq, signed)
        self._created_at(entry, seq)
        self._chain(entry, seq)

    def _sequence(self, entry: dict[str, Any], seq: int | None) -> None:
        if seq is None:
            self._add("sequence", f"entry {entry['_id']} has no integer seq ({entry.get('seq')!r})", None)
            return
        if seq != self.expected_seq:
            if seq > self.expected_seq:
                missing = (f"seq {self.expected_seq}" if seq == self.expected_seq + 1
                           else f"seqs {self.expected_seq}..{seq - 1}")
                self._add("sequence", f"{missing} missing: entries deleted or never written", seq)
            else:
                self._add("sequence", f"seq {seq} repeats or goes back (expected {self.expected_seq})", seq)
            # A gap breaks the chain and the running total at this point; judge the rest on its own terms.
            self.prev_hash = None
            self.running = None
        self.expected_seq = seq + 1

    def _amount(self, entry: dict[str, Any], seq: int | None) -> int:
        amount, entry_type = entry.get("amount"), entry.get("type")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            self._add("amount", f"amount {amount!r} is not a positive integer of minor units", seq)
            amount = amount if isinstance(amount, int) and not isinstance(amount, bool) else 0
        if entry_type not in ("DEBIT", "CREDIT"):
            self._add("type", f"type {entry_type!r} is neither DEBIT nor CREDIT", seq)
            return 0
        if entry.get("currency") != self.currency:
            self._add("currency", f"entry currency {entry.get('currency')!r}, account currency {self.currency}",
                      seq)
        signed = amount if entry_type == "CREDIT" else -amount
        self.net += signed
        return signed

    def _balance_after(self, entry: dict[str, Any], seq: int | None, signed: int) -> None:
        stored = entry.get("balanceAfter")
        expected = None if self.running is None else self.running + signed
        if expected is not None and stored != expected:
            self._add("balanceAfter", f"balanceAfter {stored!r}, but the entries up to here give {expected}", seq)
        # Continue from what is stored, so one changed entry is reported once, not at every later entry.
        self.running = stored if isinstance(stored, int) and not isinstance(stored, bool) else None

    def _created_at(self, entry: dict[str, Any], seq: int | None) -> None:
        created = entry.get("createdAt")
        if not isinstance(created, datetime):
            self._add("createdAt", f"createdAt {created!r} is not a date", seq)
            return
        created = created.replace(tzinfo=UTC) if created.tzinfo is None else created
        if self.last_created is not None and created < self.last_created:
            self._add("createdAt", f"createdAt {hashchain.iso_millis(created)} is earlier than the previous "
                                   f"entry's {hashchain.iso_millis(self.last_created)}", seq)
        self.last_created = created

    def _chain(self, entry: dict[str, Any], seq: int | None) -> None:
        stored_hash, prev_hash = entry.get("hash"), entry.get("prevHash")
        if stored_hash is None and prev_hash is None:
            self.unchained += 1
            if self.first_unchained is None:
                self.first_unchained = seq
            self.prev_hash = None
            return
        if self.prev_hash is not None and prev_hash != self.prev_hash:
            self._add("link", f"prevHash {_short(prev_hash)} is not the previous entry's hash "
                              f"{_short(self.prev_hash)}", seq)
        try:
            recomputed = hashchain.entry_hash(entry, prev_hash if isinstance(prev_hash, str) else "")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            self._add("hash", f"the entry cannot be serialised canonically ({type(exc).__name__}: {exc})", seq)
            recomputed = None
        if recomputed is not None and recomputed != stored_hash:
            self._add("hash", f"stored hash {_short(stored_hash)} differs from the recomputed "
                              f"{_short(recomputed)}: a field of this entry was changed", seq)
        self.prev_hash = stored_hash if isinstance(stored_hash, str) else None

    def finish(self) -> None:
        account, report = self.account, self.report
        balance = account.get("balance", 0)
        report.total_balance_minor += balance if isinstance(balance, int) else 0
        if isinstance(balance, int):
            report.balance_by_currency[self.currency] = report.balance_by_currency.get(self.currency, 0) + balance
        if balance != self.net:
            self._add("balance", f"stored balance {balance!r}, entries give {self.net} (credits - debits)", None)
        if account.get("seq", 0) != self.count:
            self._add("seq", f"account seq {account.get('seq', 0)!r}, but it has {self.count} entries", None)
        if self.unchained:
            self._add("chain-missing", f"{self.unchained} entries have no hash yet (from seq "
                                       f"{self.first_unchained}); run `ledger backfill-ledger-chain`",
                      self.first_unchained)
        head = account.get("lastHash")
        if head is not None and self.count and head != self.prev_hash and self.prev_hash is not None:
            self._add("lastHash", f"account lastHash {_short(head)} is not its last entry's hash "
                                  f"{_short(self.prev_hash)} (entries removed from the end?)", None)
        elif head is not None and not self.count:
            self._add("lastHash", f"account has lastHash {_short(head)} but no entries", None)


def _short(value: Any) -> str:
    return value[:16] + "…" if isinstance(value, str) and len(value) > 16 else repr(value)


# ----------------------------------------------------------------- pass 2: transactions and their entries


def _check_transactions(database: Any, session: Any, report: AuditReport,
                        on_progress: Callable[[str, int], None] | None) -> None:
    fields = {"transaction": 1, "account": 1, "type": 1, "amount": 1, "seq": 1}
    groups = _Peekable(({"transaction": key, "entries": group} for key, group in
                        _grouped(iter(database.ledgers.find({}, fields, sort=[("transaction", 1)],
                                                            session=session)), "transaction")))
    projection = {"status": 1, "amount": 1, "fromAccount": 1, "toAccount": 1}
    for record in database.transactions.find({}, projection, sort=[("_id", 1)], session=session):
        report.transactions += 1
        _progress(on_progress, "transactions", report.transactions)
        while (group := groups.peek()) is not None and _before(group["transaction"], record["_id"]):
            for entry in groups.pop()["entries"]:
                report.add("orphan-entry", f"entry {entry['_id']} names a transaction that does not exist",
                           account=entry.get("account"), seq=_int_or_none(entry.get("seq")),
                           transaction=entry.get("transaction"))
        entries = groups.pop()["entries"] if group is not None and group["transaction"] == record["_id"] else []
        _check_transaction(record, entries, report)
    while (group := groups.pop()) is not None:
        for entry in group["entries"]:
            report.add("orphan-entry", f"entry {entry['_id']} names a transaction that does not exist",
                       account=entry.get("account"), seq=_int_or_none(entry.get("seq")),
                       transaction=entry.get("transaction"))


def _check_transaction(record: dict[str, Any], entries: list[dict[str, Any]], report: AuditReport) -> None:
    txn_id, status = record["_id"], record.get("status")
    if status not in SETTLED_STATUSES:
        for entry in entries:
            report.add("transaction", f"{status} transaction has a {entry.get('type')} entry; it must have none",
                       account=entry.get("account"), seq=_int_or_none(entry.get("seq")), transaction=txn_id)
        return
    debits = [e for e in entries if e.get("type") == "DEBIT"]
    credits = [e for e in entries if e.get("type") == "CREDIT"]
    if len(debits) != 1 or len(credits) != 1 or len(entries) != 2:
        report.add("transaction", f"{status} transaction has {len(debits)} DEBIT and {len(credits)} CREDIT "
                                  f"entries ({len(entries)} in all); it must have exactly one of each",
                   transaction=txn_id)
    for entry, side, account_field in [*((d, "DEBIT", "fromAccount") for d in debits),
                                       *((c, "CREDIT", "toAccount") for c in credits)]:
        seq = _int_or_none(entry.get("seq"))
        if entry.get("amount") != record.get("amount"):
            report.add("transaction", f"{side} amount {entry.get('amount')!r}, transaction amount "
                                      f"{record.get('amount')!r}", account=entry.get("account"), seq=seq,
                       transaction=txn_id)
        if entry.get("account") != record.get(account_field):
            report.add("transaction", f"{side} is on account {entry.get('account')}, the transaction's "
                                      f"{account_field} is {record.get(account_field)}",
                       account=entry.get("account"), seq=seq, transaction=txn_id)


# ------------------------------------------------------------------------------------ pass 3: holds


def _check_holds(database: Any, session: Any, report: AuditReport) -> None:
    """Each account's ``held`` equals what its ACTIVE holds reserve, and never exceeds its balance.

    ``accounts`` by ``_id`` beside the ACTIVE ``holds`` by ``fromAccount`` (a prefix of their index), so memory
    stays bounded by one account's holds.
    """
    holds = _Peekable(iter(database.holds.find({"status": "ACTIVE"}, {"fromAccount": 1, "amount": 1},
                                               sort=[("fromAccount", 1)], session=session)))
    for account in database.accounts.find({}, {"held": 1, "balance": 1}, sort=[("_id", 1)], session=session):
        while (hold := holds.peek()) is not None and _before(hold["fromAccount"], account["_id"]):
            holds.pop()
            report.add("held", f"ACTIVE hold {hold['_id']} is on an account that does not exist",
                       account=hold["fromAccount"])
        reserved = 0
        while (hold := holds.peek()) is not None and hold["fromAccount"] == account["_id"]:
            reserved += holds.pop()["amount"]
        held = account.get("held") or 0
        if held != reserved:
            report.add("held", f"held {held}, its ACTIVE holds reserve {reserved}", account=account["_id"])
        if held > 0 and held > account.get("balance", 0):
            report.add("held", f"held {held} exceeds the balance {account.get('balance', 0)}",
                       account=account["_id"])
    while (hold := holds.pop()) is not None:
        report.add("held", f"ACTIVE hold {hold['_id']} is on an account that does not exist",
                   account=hold["fromAccount"])
