"""Documents to wire JSON: ids as hex strings, money in exact major units, dates ISO-8601 with ``Z``."""

from __future__ import annotations

from typing import Any

from ledger.money import to_major


def account_json(account: dict[str, Any]) -> dict[str, Any]:
    return {
        "_id": str(account["_id"]),
        "user": str(account["user"]),
        "status": account["status"],
        "currency": account["currency"],
        "balance": to_major(account.get("balance", 0), account["currency"]),
        "availableBalance": available_balance(account),
        "createdAt": account.get("createdAt"),
        "updatedAt": account.get("updatedAt"),
    }


def transaction_json(txn: dict[str, Any]) -> dict[str, Any]:
    currency = txn.get("currency") or "INR"
    return {
        "_id": str(txn["_id"]),
        "fromAccount": str(txn["fromAccount"]),
        "toAccount": str(txn["toAccount"]),
        "amount": to_major(txn["amount"], currency),
        "currency": currency,
        "kind": txn.get("kind") or "TRANSFER",
        "status": txn["status"],
        "idempotencyKey": txn["idempotencyKey"],
        "createdAt": txn.get("createdAt"),
        "updatedAt": txn.get("updatedAt"),
        **{name: str(txn[name]) for name in _LINKS if txn.get(name) is not None},
    }


_LINKS = ("reverses", "reversedBy", "hold")


def hold_json(hold: dict[str, Any], status: str) -> dict[str, Any]:
    """A hold as the API shows it; ``status`` is the effective one (an ACTIVE hold past expiry is EXPIRED)."""
    currency = hold["currency"]
    body = {
        "_id": str(hold["_id"]),
        "fromAccount": str(hold["fromAccount"]),
        "toAccount": str(hold["toAccount"]),
        "amount": to_major(hold["amount"], currency),
        "currency": currency,
        "status": status,
        "expiresAt": hold["expiresAt"],
        "createdAt": hold.get("createdAt"),
        "updatedAt": hold.get("updatedAt"),
    }
    if hold.get("capturedAmount") is not None:
        body["capturedAmount"] = to_major(hold["capturedAmount"], currency)
    return body


def available_balance(account: dict[str, Any]) -> Any:
    """Balance minus what unexpired holds reserve, in major units (``available`` when the service computed it;
    an account that was never read with its holds, such as a new one, holds nothing)."""
    return to_major(account.get("available", account.get("balance", 0)), account["currency"])


def _id(value: Any) -> str | None:
    return str(value) if value is not None else None


def entry_json(entry: dict[str, Any]) -> dict[str, Any]:
    """A ledger entry as Part two shows it; ``counterparty`` and ``kind`` come from its transaction."""
    currency = entry["currency"]
    return {
        "_id": str(entry["_id"]),
        "account": str(entry["account"]),
        "type": entry["type"],
        "amount": to_major(entry["amount"], currency),
        "currency": currency,
        "balanceAfter": to_major(entry["balanceAfter"], currency),
        "seq": entry["seq"],
        "transaction": str(entry["transaction"]),
        "counterparty": _id(entry.get("counterparty")),
        "kind": entry.get("kind"),
        "createdAt": entry.get("createdAt"),
        "prevHash": entry.get("prevHash"),
        "hash": entry.get("hash"),
    }
