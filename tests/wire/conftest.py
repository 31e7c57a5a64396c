"""Fixtures of the wire tier: a MockupDB replica set, and the real app started against it.

The app is the production one (``create_app`` with ``MONGO_URI`` naming the MockupDB members, a real pymongo
``MongoClient``); only the server is scripted. Start-up's own commands (``createIndexes`` for every declared
collection) are served here, the way a server would, so each test begins with a ready app.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from ledger import create_app, db
from tests.wire.replset import WAIT, ReplicaSet, in_thread

WIRE_TESTS = Path(__file__).parent
TEST_TIMEOUT_SECONDS = 60  # no wire test may outlive this, whatever it waits for (each wait is bounded too)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(WIRE_TESTS):
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_SECONDS))


@pytest.fixture(autouse=True)
def no_leaked_hold_sweeper() -> None:
    """A hold sweeper left running by an earlier test (an app built with ``HOLD_SWEEP_SECONDS`` > 0 that served a
    request; the sweeper has no stop) reads through its own app every interval, which points the process-wide
    client at that app's database: a wire test in flight then loses its client mid-transaction ("Can only use
    session with the MongoClient that started it", unclosed clients). Say so here instead of failing at random."""
    leaked = [thread for thread in threading.enumerate() if thread.name == "hold-sweeper" and thread.is_alive()]
    assert not leaked, ("an earlier test left a hold sweeper thread running (set HOLD_SWEEP_SECONDS=0 for apps "
                        "that serve requests in-process); it would swap the process-wide MongoClient under this test")


def start_app(replica_set: ReplicaSet, uri: str | None = None, **config: Any) -> Flask:
    """``create_app`` against the set (or ``uri``), serving its start-up: one createIndexes per collection."""
    future = in_thread(create_app, {"MONGO_URI": uri or replica_set.uri(), **config})
    for _ in db.declared_indexes():
        replica_set.serve_create_indexes(replica_set.expect("createIndexes"))
    return future.result(timeout=WAIT)


@pytest.fixture
def replica_set() -> Iterator[ReplicaSet]:
    members = ReplicaSet(1)
    try:
        yield members
    finally:
        db.reset_client()  # closes the app's client while the members still answer its endSessions
        members.stop(wait=False)


@pytest.fixture
def three_members() -> Iterator[ReplicaSet]:
    members = ReplicaSet(3)
    try:
        yield members
    finally:
        db.reset_client()
        members.stop(wait=False)


@pytest.fixture
def app(replica_set: ReplicaSet) -> Flask:
    return start_app(replica_set)


@pytest.fixture
def make_wire_app(replica_set: ReplicaSet) -> Callable[..., Flask]:
    return lambda **config: start_app(replica_set, **config)
