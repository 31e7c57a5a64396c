"""Readiness and operational figures."""

from __future__ import annotations

from flask import Flask
from pymongo.errors import PyMongoError

from ledger import db


def readiness(app: Flask) -> tuple[bool, dict]:
    return db.readiness(app)


def outbox_backlog(app: Flask) -> int:
    """How many notifications wait for delivery; -1 when the database does not answer."""
    try:
        return db.get_db(app).notifications.count_documents({"status": {"$in": ["PENDING", "SENDING"]}})
    except PyMongoError:
        return -1
