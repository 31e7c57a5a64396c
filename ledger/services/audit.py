"""The ledger is the source of truth: recompute every stored balance from the entries and compare."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ledger import db, progress


@dataclass
class AuditReport:
    accounts: int = 0
    entries: int = 0
    total_balance_minor: int = 0
    balance_by_currency: dict[str, int] = field(default_factory=dict)  # each must be 0 on its own
    problems: list[str] = field(default_factory=list)


def verify(*, show_progress: bool = False) -> AuditReport:
    """Check stored balance == credits - debits and seq == entry count for every account, and that the
    balances of each currency sum to zero (a surplus in one currency cannot hide a deficit in another).

    ``show_progress`` draws a progress bar per collection on stderr (when it is a terminal).
    """
    with db.consistent_reads() as session:  # transfers may commit while we read: one point in time for all
        return _verify(db.get_db(), session, show_progress)


def _verify(database: Any, session: Any, show_progress: bool = False) -> AuditReport:
    report = AuditReport()
    sums: dict = {}
    with ExitStack() as bars:
        entry_bar = account_bar = None
        if show_progress:  # totals are the collections' metadata counts: an estimate is enough for a bar
            entry_bar = bars.enter_context(progress.bar("ledger entries", database.ledgers.estimated_document_count(),
                                                        unit="entry"))
            account_bar = bars.enter_context(progress.bar("accounts", database.accounts.estimated_document_count(),
                                                          unit="account"))
        _sum_entries(database, session, report, sums, entry_bar)
        _check_accounts(database, session, report, sums, account_bar)
    for orphan in sums:
        report.problems.append(f"entries reference missing account {orphan}")
    for currency, total in sorted(report.balance_by_currency.items()):
        if total != 0:
            report.problems.append(f"{currency} balances sum to {total} minor units, not 0")
    return report


def _sum_entries(database: Any, session: Any, report: AuditReport, sums: dict,
                 bar: progress.Bar | None) -> None:
    for entry in database.ledgers.find({}, {"account": 1, "type": 1, "amount": 1}, session=session):
        report.entries += 1
        if bar is not None:
            bar.update()
        signed = entry["amount"] if entry["type"] == "CREDIT" else -entry["amount"]
        total, count = sums.get(entry["account"], (0, 0))
        sums[entry["account"]] = (total + signed, count + 1)
        if entry["amount"] <= 0:
            report.problems.append(f"entry {entry['_id']} has a non-positive amount {entry['amount']}")


def _check_accounts(database: Any, session: Any, report: AuditReport, sums: dict,
                    bar: progress.Bar | None) -> None:
    for account in database.accounts.find({}, {"balance": 1, "seq": 1, "currency": 1}, session=session):
        report.accounts += 1
        if bar is not None:
            bar.update()
        balance = account.get("balance", 0)
        report.total_balance_minor += balance
        currency = account.get("currency", "INR")
        report.balance_by_currency[currency] = report.balance_by_currency.get(currency, 0) + balance
        expected, count = sums.pop(account["_id"], (0, 0))
        if balance != expected:
            report.problems.append(f"account {account['_id']}: stored {balance}, ledger says {expected}")
        if account.get("seq", 0) != count:
            report.problems.append(f"account {account['_id']}: seq {account.get('seq', 0)}, entries {count}")
