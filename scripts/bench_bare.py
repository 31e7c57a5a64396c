"""Bare Flask answering the benchmark's routes with JSON of the same shape: the framework's floor.

``scripts/bench`` serves ``app`` under gunicorn exactly as it serves the service (same ``gunicorn.conf.py``,
workers, threads, access log) for the ``GET /health`` comparison, and ``scripts/bench_inprocess.py overhead``
calls it through the Flask test client beside the service. No extensions, no hooks, the default JSON
provider: whatever the service costs beyond this is its own (hooks, authentication, limits, validation,
serialisation) or the storage engine's.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request


def build_bare_app() -> Flask:
    bare = Flask("bare")

    @bare.get("/health")
    def health() -> Any:
        return jsonify({"status": "ok"})

    @bare.get("/api/accounts/balance/<account_id>")
    def balance(account_id: str) -> Any:
        return jsonify({"accountId": account_id, "balance": 100})

    @bare.post("/api/transactions")
    def transfer() -> Any:
        body = request.get_json()
        return jsonify({"message": "Transaction processed successfully", "transaction": {
            "_id": "0" * 24, "kind": "TRANSFER", "fromAccount": body["fromAccount"], "toAccount": body["toAccount"],
            "amount": body["amount"], "currency": "INR", "status": "COMPLETED", "idempotencyKey":
            body["idempotencyKey"], "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z",
        }})

    return bare


app = build_bare_app()
