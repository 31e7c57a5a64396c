"""Give an account a long history fast, by writing ledger entries straight into the database.

Ten thousand transfers over HTTP would take minutes; ``seed_history`` writes the same documents a run of
transfers would leave — transaction records and both ledger entries of each, with consecutive sequence numbers
running ``balanceAfter`` and the hash chain — with a few ``insert_many`` calls, then sets each account's
``balance``, ``seq`` and ``lastHash`` to match, so ``verify-ledger`` still finds every balance equal to its entries.

Both engines check the unique indexes through the index as the documents go in, so the indexes stay in place.
"""

from __future__ import annotations

import uuid
from typing import Any

from bson import ObjectId
from flask import Flask

from ledger import db, hashchain
from ledger.models import utcnow


def seed_history(app: Flask, first_id: str, second_id: str, entries: int, amount_minor: int = 1) -> None:
    """Write ``entries`` completed transfers alternating between two accounts of one owner.

    Transfer ``i`` goes first → second when ``i`` is even and back when it is odd, so each account gains
    ``entries`` ledger entries and, for an even count, ends with the balance it started with. The first account
    must hold at least ``amount_minor``.
    """
    if entries <= 0:
        return
    database = db.get_db(app)
    accounts = {a["_id"]: a for a in database.accounts.find({"_id": {"$in": [ObjectId(first_id),
                                                                                 ObjectId(second_id)]}})}
    first, second = accounts[ObjectId(first_id)], accounts[ObjectId(second_id)]
    if first["user"] != second["user"] or first["currency"] != second["currency"]:
        raise ValueError("seed_history needs two accounts of one owner in one currency")
    state = {a["_id"]: {"balance": a["balance"], "seq": a.get("seq", 0), "lastHash": hashchain.chain_head(a)}
             for a in (first, second)}
    currency, owner = first["currency"], first["user"]
    batch = uuid.uuid4().hex[:8]
    now = utcnow()
    transactions: list[dict[str, Any]] = []
    ledgers: list[dict[str, Any]] = []
    for i in range(entries):
        source, target = (first, second) if i % 2 == 0 else (second, first)
        txn_id = ObjectId()
        transactions.append({
            "_id": txn_id, "kind": "TRANSFER", "fromAccount": source["_id"], "toAccount": target["_id"],
            "amount": amount_minor, "currency": currency, "status": "COMPLETED",
            "idempotencyKey": f"seed-{batch}-{i}", "initiator": owner, "fingerprint": f"seed-{batch}-{i}",
            "failure": {}, "createdAt": now, "updatedAt": now,
        })
        for account, entry_type, delta in ((source, "DEBIT", -amount_minor), (target, "CREDIT", amount_minor)):
            account_state = state[account["_id"]]
            account_state["balance"] += delta
            account_state["seq"] += 1
            if account_state["balance"] < 0:
                raise ValueError("seed_history would overdraw an account: fund the first one")
            entry = {
                "_id": ObjectId(), "account": account["_id"], "type": entry_type, "amount": amount_minor,
                "currency": currency, "transaction": txn_id, "balanceAfter": account_state["balance"],
                "seq": account_state["seq"], "createdAt": now,
            }
            if account_state["lastHash"] is not None:
                entry["prevHash"] = account_state["lastHash"]
                entry["hash"] = account_state["lastHash"] = hashchain.entry_hash(entry, entry["prevHash"])
            ledgers.append(entry)
    database.transactions.insert_many(transactions, ordered=False)
    database.ledgers.insert_many(ledgers, ordered=False)
    for account_id, account_state in state.items():
        head = account_state.pop("lastHash")
        database.accounts.update_one({"_id": account_id}, {"$set": {**account_state, "updatedAt": now,
                                                                    **({"lastHash": head} if head else {})}})
