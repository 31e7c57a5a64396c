"""Give entries written before the hash chain existed their ``prevHash``/``hash``: idempotent and resumable.

``flask --app wsgi backfill-ledger-chain`` (and ``migrate-node-db``, after converting the Node entries) walks
every account whose chain head (``lastHash``) is not set yet and that has entries, in ``seq`` order:

* an entry that already carries a hash (from the transfer path, or from an earlier, interrupted run) is
  checked — its ``prevHash`` must be the previous entry's hash and its hash must recompute — and then built
  upon. A mismatch stops the account: the backfill never chains over an entry that was changed, since that
  would launder the change into a valid-looking chain. ``verify-ledger`` names the entry;
* an entry without one gets both, by a conditional update whose filter requires ``hash`` to be absent (so it
  can only ever add the two fields, once, and never touches anything else of the entry);
* the account's ``lastHash`` is set in the same transaction as the last batch, on condition that the
  account's ``seq`` is still the last entry seen: if a transfer appended an (unchained) entry meanwhile, the
  account is walked again and that entry is chained too. From then on transfers chain the account's entries.

Writes happen in transactions of up to :data:`BATCH` entries; interrupting the command loses at most the
batch in flight, and running it again continues where it stopped. A second full run changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.client_session import ClientSession

from ledger import db, hashchain

BATCH = 500
MAX_PASSES = 5  # an account receiving transfers while it is backfilled is walked again, this many times at most

Echo = Callable[[str], None]


class _Moved(RuntimeError):
    """The account or one of its entries changed while we chained it: walk it again."""


@dataclass
class BackfillReport:
    accounts_chained: int = 0
    entries_hashed: int = 0
    refused: list[str] = field(default_factory=list)  # accounts left alone, and why

    @property
    def ok(self) -> bool:
        return not self.refused


def accounts_to_chain(database: Any) -> list[ObjectId]:
    """Accounts that have entries but no chain head yet (a filter on two fields of a small collection)."""
    query = {"lastHash": {"$exists": False}, "seq": {"$gt": 0}}
    return [a["_id"] for a in database.accounts.find(query, {"_id": 1}, sort=[("_id", 1)])]


def backfill(*, dry_run: bool = False, echo: Echo | None = None,
             on_account: Callable[[ObjectId], None] | None = None) -> BackfillReport:
    """Chain every unchained account (see the module docstring); ``dry_run`` counts without writing."""
    database = db.get_db()
    report = BackfillReport()
    for account_id in accounts_to_chain(database):
        _backfill_account(database, account_id, report, dry_run)
        if on_account is not None:
            on_account(account_id)
    if echo is not None:
        verb = "would hash" if dry_run else "hashed"
        echo(f"hash chain: {verb} {report.entries_hashed} entries on {report.accounts_chained} accounts")
        for reason in report.refused:
            echo(f"REFUSED: {reason}")
    return report


def _backfill_account(database: Any, account_id: ObjectId, report: BackfillReport, dry_run: bool) -> None:
    for _ in range(MAX_PASSES):
        try:
            hashed = _walk(database, account_id, report, dry_run)
        except _Moved:
            continue
        if hashed is not None:
            report.entries_hashed += hashed
            report.accounts_chained += 1
        return
    report.refused.append(f"account {account_id}: kept changing during {MAX_PASSES} passes; run the command again")


def _walk(database: Any, account_id: ObjectId, report: BackfillReport, dry_run: bool) -> int | None:
    """Chain one account; the number of entries hashed, or None when the account is refused."""
    account = database.accounts.find_one({"_id": account_id}, {"seq": 1, "lastHash": 1})
    if account is None or account.get("lastHash"):
        return 0  # gone, or chained meanwhile (by a concurrent run)
    prev_hash, expected_seq, hashed = hashchain.GENESIS, 1, 0
    pending: list[UpdateOne] = []
    for entry in database.ledgers.find({"account": account_id}, sort=[("seq", 1)]):
        seq = entry.get("seq")
        where = f"account {account_id} seq {seq}"
        if seq != expected_seq:
            report.refused.append(f"{where}: expected seq {expected_seq}; entries are missing or out of order")
            return None
        expected_seq += 1
        if entry.get("hash") is not None or entry.get("prevHash") is not None:
            if entry.get("prevHash") != prev_hash or hashchain.entry_hash(entry, prev_hash) != entry.get("hash"):
                report.refused.append(f"{where}: its stored hash does not recompute; not chaining over it")
                return None
            prev_hash = entry["hash"]
            continue
        entry_hash = hashchain.entry_hash(entry, prev_hash)
        pending.append(UpdateOne({"_id": entry["_id"], "hash": {"$exists": False}, "prevHash": {"$exists": False}},
                                 {"$set": {"prevHash": prev_hash, "hash": entry_hash}}))
        prev_hash = entry_hash
        hashed += 1
        if len(pending) >= BATCH and not dry_run:
            _write(database, pending, None)
            pending = []
    last_seq = expected_seq - 1
    if last_seq != account.get("seq", 0):
        raise _Moved()  # a transfer landed between our two reads
    if not dry_run:
        _write(database, pending, (account_id, last_seq, prev_hash))
    return hashed


def _write(database: Any, updates: list[UpdateOne], head: tuple[ObjectId, int, str] | None) -> None:
    def write(session: ClientSession) -> None:
        if updates:
            result = database.ledgers.bulk_write(updates, ordered=True, session=session)
            if result.matched_count != len(updates):
                raise _Moved()
        if head is not None:
            account_id, last_seq, last_hash = head
            moved = database.accounts.update_one(
                {"_id": account_id, "seq": last_seq, "lastHash": {"$exists": False}},
                {"$set": {"lastHash": last_hash}}, session=session)
            if moved.matched_count != 1:
                raise _Moved()

    db.run_in_transaction(write)
