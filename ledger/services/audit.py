"""The ledger is the source of truth: recompute every stored balance from the entries and compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger import db


@dataclass
class AuditReport:
    accounts: int = 0
    entries: int = 0
    total_balance_minor: int = 0
    balance_by_currency: dict[str, int] = field(default_factory=dict)  # each must be 0 on its own
    problems: list[str] = field(default_factory=list)


def verify() -> AuditReport:
    """Check stored balance == credits - debits and seq == entry count for every account, and that the
    balances of each currency sum to zero (a surplus in one currency cannot hide a deficit in another)."""
    with db.consistent_reads() as session:  # transfers may commit while we read: one point in time for all
        return _verify(db.get_db(), session)


def _verify(database: Any, session: Any) -> AuditReport:
    report = AuditReport()
    sums: dict = {}
    for entry in database.ledgers.find({}, {"account": 1, "type": 1, "amount": 1}, session=session):
        report.entries += 1
        signed = entry["amount"] if entry["type"] == "CREDIT" else -entry["amount"]
        total, count = sums.get(entry["account"], (0, 0))
        sums[entry["account"]] = (total + signed, count + 1)
        if entry["amount"] <= 0:
            report.problems.append(f"entry {entry['_id']} has a non-positive amount {entry['amount']}")
    for account in database.accounts.find({}, {"balance": 1, "seq": 1, "currency": 1}, session=session):
        report.accounts += 1
        balance = account.get("balance", 0)
        report.total_balance_minor += balance
        currency = account.get("currency", "INR")
        report.balance_by_currency[currency] = report.balance_by_currency.get(currency, 0) + balance
        expected, count = sums.pop(account["_id"], (0, 0))
        if balance != expected:
            report.problems.append(f"account {account['_id']}: stored {balance}, ledger says {expected}")
        if account.get("seq", 0) != count:
            report.problems.append(f"account {account['_id']}: seq {account.get('seq', 0)}, entries {count}")
    for orphan in sums:
        report.problems.append(f"entries reference missing account {orphan}")
    for currency, total in sorted(report.balance_by_currency.items()):
        if total != 0:
            report.problems.append(f"{currency} balances sum to {total} minor units, not 0")
    _verify_holds(database, session, report)
    return report


def _verify_holds(database: Any, session: Any, report: AuditReport) -> None:
    """Each account's ``held`` equals what its ACTIVE holds reserve, and never exceeds its balance."""
    reserved: dict = {}
    for hold in database.holds.find({"status": "ACTIVE"}, {"fromAccount": 1, "amount": 1}, session=session):
        reserved[hold["fromAccount"]] = reserved.get(hold["fromAccount"], 0) + hold["amount"]
    for account in database.accounts.find({"held": {"$gt": 0}}, {"held": 1, "balance": 1}, session=session):
        held, expected = account["held"], reserved.pop(account["_id"], 0)
        if held != expected:
            report.problems.append(f"account {account['_id']}: held {held}, active holds reserve {expected}")
        if held > account.get("balance", 0):
            report.problems.append(f"account {account['_id']}: held {held} exceeds balance {account['balance']}")
    for account_id, amount in reserved.items():
        report.problems.append(f"account {account_id}: active holds reserve {amount}, held is 0")
