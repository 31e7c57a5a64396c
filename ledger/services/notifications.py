"""The notification outbox: what to tell whom, written in the same transaction as the event.

Builders return outbox documents; :func:`enqueue` inserts them with the caller's session, so an aborted
transfer leaves no message and a committed one cannot lose its mail. Delivery happens after commit, elsewhere
(:mod:`ledger.mailer`). A document names its recipient by user id; the address is looked up at delivery, which
keeps the transfer's own database work constant.
"""

from __future__ import annotations

from typing import Any

from pymongo.client_session import ClientSession

from ledger import db
from ledger.jsonio import iso_utc
from ledger.models import Notification, to_document, utcnow
from ledger.money import format_money

WELCOME = "welcome"
TRANSFER_RECEIPT = "transfer_receipt"
CREDIT_NOTICE = "credit_notice"
FUNDING_CREDIT_NOTICE = "funding_credit_notice"
REVERSAL_NOTICE = "reversal_notice"


def _message(kind: str, user_id: Any, dedupe_key: str, context: dict[str, Any], *,
             to: str | None = None, name: str | None = None) -> dict[str, Any]:
    now = utcnow()
    return to_document(Notification, kind=kind, userId=user_id, to=to, recipientName=name, context=context,
                       dedupeKey=dedupe_key, status="PENDING", attempts=0, nextAttemptAt=now, createdAt=now)


def welcome(user: dict[str, Any]) -> dict[str, Any]:
    return _message(WELCOME, user["_id"], f"{WELCOME}:{user['_id']}", {}, to=user["email"], name=user["name"])


def transfer_messages(txn: dict[str, Any], sender: dict[str, Any], receiver_user_id: Any,
                      debit_balance_after: int, credit_balance_after: int) -> list[dict[str, Any]]:
    """A receipt for the sender and a credit notice for the receiving account's owner.

    The credit notice names the sender (already in hand), so the transfer needs no extra read; the receiver's
    own address and name are looked up at delivery.
    """
    common = _transfer_context(txn)
    receipt = _message(TRANSFER_RECEIPT, sender["_id"], f"{TRANSFER_RECEIPT}:{txn['_id']}",
                       {**common, "balanceAfter": format_money(debit_balance_after, txn["currency"])},
                       to=sender.get("email"), name=sender.get("name"))
    notice = _message(CREDIT_NOTICE, receiver_user_id, f"{CREDIT_NOTICE}:{txn['_id']}",
                      {**common, "balanceAfter": format_money(credit_balance_after, txn["currency"]),
                       "fromName": sender.get("name")})
    return [receipt, notice]


def funding_messages(txn: dict[str, Any], receiver_user_id: Any, credit_balance_after: int) -> list[dict[str, Any]]:
    context = {**_transfer_context(txn), "balanceAfter": format_money(credit_balance_after, txn["currency"])}
    return [_message(FUNDING_CREDIT_NOTICE, receiver_user_id, f"{FUNDING_CREDIT_NOTICE}:{txn['_id']}", context)]


def reversal_messages(txn: dict[str, Any], debited_user_id: Any, credited_user_id: Any,
                      debit_balance_after: int, credit_balance_after: int) -> list[dict[str, Any]]:
    """A notice to both parties of the reversed transaction (the system user's own account gets none)."""
    common = {**_transfer_context(txn), "reverses": str(txn["reverses"]), "reason": txn.get("reason") or ""}
    sides = [(debited_user_id, "debited", debit_balance_after), (credited_user_id, "credited", credit_balance_after)]
    return [
        _message(REVERSAL_NOTICE, user_id, f"{REVERSAL_NOTICE}:{txn['_id']}:{side}",
                 {**common, "side": side, "balanceAfter": format_money(balance_after, txn["currency"])})
        for user_id, side, balance_after in sides
        if user_id != txn["initiator"]
    ]


def _transfer_context(txn: dict[str, Any]) -> dict[str, Any]:
    return {
        "transactionId": str(txn["_id"]),
        "fromAccount": str(txn["fromAccount"]),
        "toAccount": str(txn["toAccount"]),
        "amount": format_money(txn["amount"], txn["currency"]),
        "currency": txn["currency"],
        "at": iso_utc(txn["createdAt"]),
    }


def enqueue(session: ClientSession, messages: list[dict[str, Any]]) -> None:
    """Insert outbox messages inside the caller's transaction (one command)."""
    if messages:
        db.get_db().notifications.insert_many(messages, session=session)
