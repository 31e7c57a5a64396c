"""A MongoDB replica set made of MockupDB servers on 127.0.0.1, and what a test needs to serve the app from it.

Each member answers ``hello``/``isMaster`` by itself, from the set's current state (primary, secondary,
uninitiated ``RSGhost``), so the driver's monitors and handshakes never involve the test. Every other command
any member receives goes into one queue, in arrival order, and waits there until the test answers it:
:meth:`ReplicaSet.expect` takes the next one, checks its name, collection and that it reached the primary, and
returns it for the test to inspect (``.doc``) and answer (``.ok()``, ``.error()``, ``.hangup()``).

The app runs its HTTP request in another thread (:func:`in_thread`), blocked on the socket until the test
answers; every wait here is bounded (:data:`WAIT`), so a wrong script fails the test instead of hanging it.
``receives()`` is used without a matcher: MockupDB's prototype matchers do not understand OP_MSG document
sequences, so commands are matched here by name and collection.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from bson import Int64, ObjectId
from flask import Flask
from mockupdb import MockupDB, OpMsg

WAIT = 10.0  # seconds one step may take before the test fails
SET_NAME = "rs0"
DATABASE = "ledger-wire"
MAX_WIRE_VERSION = 21  # MongoDB 7.0

PRIMARY, SECONDARY, GHOST = "PRIMARY", "SECONDARY", "RSGhost"
HELLO_NAMES = frozenset({"hello", "ismaster"})
# Sent by the driver itself when a client closes: answered automatically so a closing client never waits.
HOUSEKEEPING = frozenset({"endSessions"})

# Error replies as a MongoDB 7.0 primary sends them.
WRITE_CONFLICT = {"code": 112, "codeName": "WriteConflict", "errorLabels": ["TransientTransactionError"]}
NO_SUCH_TRANSACTION = {"code": 251, "codeName": "NoSuchTransaction", "errorLabels": ["TransientTransactionError"]}
MAX_TIME_EXPIRED = {"code": 50, "codeName": "MaxTimeMSExpired"}
NOT_WRITABLE_PRIMARY = {"code": 10107, "codeName": "NotWritablePrimary"}
PRIMARY_STEPPED_DOWN = {"code": 189, "codeName": "PrimarySteppedDown"}
INTERRUPTED_AT_SHUTDOWN = {"code": 11600, "codeName": "InterruptedAtShutdown"}


class Received:
    """One command a member received, waiting for the test's answer."""

    def __init__(self, member: Member, request: OpMsg) -> None:
        self.member = member
        self.request = request
        self.doc: dict[str, Any] = dict(request.doc)
        self.name: str = request.command_name
        target = self.doc.get(self.name)
        self.collection: str | None = target if isinstance(target, str) else None
        self.answered = False

    def __repr__(self) -> str:
        return f"<{self.name} {self.collection or ''} on {self.member.host}: {self.doc!r}>"

    @property
    def in_transaction(self) -> bool:
        return "txnNumber" in self.doc and self.doc.get("autocommit") is False

    def ok(self, reply: dict[str, Any] | None = None, **fields: Any) -> Received:
        self.answered = True
        self.request.replies({"ok": 1, **(reply or {}), **fields})
        return self

    def cursor(self, docs: Iterable[dict[str, Any]]) -> Received:
        """Answer a find/listIndexes/aggregate with one final batch."""
        namespace = f"{self.doc['$db']}.{self.collection}"
        return self.ok(cursor={"id": Int64(0), "ns": namespace, "firstBatch": list(docs)})

    def error(self, spec: dict[str, Any], errmsg: str = "injected by the test", **extra: Any) -> Received:
        self.answered = True
        self.request.replies({"ok": 0, "errmsg": errmsg, **spec, **extra})
        return self

    def write_error(self, code: int, errmsg: str, **details: Any) -> Received:
        """A write command's per-document error (a duplicate key is reported this way)."""
        return self.ok(n=0, writeErrors=[{"index": 0, "code": code, "errmsg": errmsg, **details}])

    def hangup(self) -> Received:
        """Close the connection without an answer: a network error for the driver."""
        self.answered = True
        self.request.hangup()
        return self


class Member:
    """One MockupDB server playing a replica set member."""

    def __init__(self, replica_set: ReplicaSet, role: str) -> None:
        self.replica_set = replica_set
        self.role = role
        self.app_hellos: list[dict[str, Any]] = []
        self.server = MockupDB(request_timeout=WAIT)
        self.server._address = ("127.0.0.1", None)  # loopback only (MockupDB's default name is "localhost")
        port = self.server.run()
        self.host = f"127.0.0.1:{port}"
        # MockupDB gives the most recently added responder precedence: the catch-all goes first.
        self.server.autoresponds(self._enqueue)
        self.server.autoresponds(self._housekeeping)
        self.server.autoresponds(self._hello)

    def __repr__(self) -> str:
        return f"<member {self.host} {self.role}>"

    def _enqueue(self, request: OpMsg) -> bool:
        self.replica_set.queue.put(Received(self, request))
        return True

    def _housekeeping(self, request: OpMsg) -> bool:
        if request.command_name in HOUSEKEEPING:
            return request.replies({"ok": 1})
        return False

    def _hello(self, request: OpMsg) -> bool:
        if (request.command_name or "").lower() not in HELLO_NAMES:
            return False
        if "lsid" in request.doc:  # the app's own hello (check_replica_set); monitors and handshakes carry none
            self.app_hellos.append(dict(request.doc))
        return request.replies(self.hello())

    def hello(self) -> dict[str, Any]:
        replica_set = self.replica_set
        doc: dict[str, Any] = {
            "ok": 1, "helloOk": True, "minWireVersion": 0, "maxWireVersion": MAX_WIRE_VERSION,
            "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000,
            "logicalSessionTimeoutMinutes": 30, "localTime": datetime.now(UTC), "connectionId": 1,
        }
        if self.role == GHOST:  # started with --replSet, rs.initiate() not run yet
            return {**doc, "isWritablePrimary": False, "ismaster": False, "secondary": False, "isreplicaset": True}
        primary = replica_set.primary_or_none
        doc.update({
            "setName": SET_NAME, "setVersion": 1, "me": self.host,
            "hosts": [member.host for member in replica_set.members if member.role != GHOST],
            "isWritablePrimary": self.role == PRIMARY, "ismaster": self.role == PRIMARY,
            "secondary": self.role == SECONDARY,
        })
        if primary is not None:
            doc["primary"] = primary.host
        if self.role == PRIMARY:
            doc["electionId"] = ObjectId(f"7fffffff{replica_set.term:016x}")
        return doc

    def stop(self) -> None:
        self.server.stop()


class ReplicaSet:
    """``size`` members; the first is primary, the others secondaries."""

    def __init__(self, size: int = 1) -> None:
        self.queue: queue.Queue[Received] = queue.Queue()
        self.term = 1
        self.members: list[Member] = []
        for index in range(size):
            self.members.append(Member(self, PRIMARY if index == 0 else SECONDARY))
        self.seen: list[Received] = []
        self.indexes: dict[str, list[dict[str, Any]]] = {}  # what createIndexes asked for, per collection

    # ------------------------------------------------------------------------------------------ topology

    def uri(self, database: str = DATABASE) -> str:
        hosts = ",".join(member.host for member in self.members)
        return f"mongodb://{hosts}/{database}?replicaSet={SET_NAME}"

    @property
    def primary_or_none(self) -> Member | None:
        return next((member for member in self.members if member.role == PRIMARY), None)

    @property
    def primary(self) -> Member:
        member = self.primary_or_none
        assert member is not None, "the replica set has no primary"
        return member

    def elect(self, member: Member | None) -> None:
        """Make ``member`` the primary (None: no primary at all); every other initiated member is a secondary."""
        self.term += 1
        for each in self.members:
            if each.role != GHOST:
                each.role = SECONDARY
        if member is not None:
            member.role = PRIMARY

    def app_hellos(self) -> list[tuple[Member, dict[str, Any]]]:
        return [(member, doc) for member in self.members for doc in member.app_hellos]

    # ------------------------------------------------------------------------------------------ commands

    def receive(self, timeout: float = WAIT) -> Received:
        try:
            got = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the app sent no command within {timeout} s") from None
        self.seen.append(got)
        return got

    def expect(self, name: str, collection: str | None = None, *, member: Member | None = None,
               timeout: float = WAIT) -> Received:
        """The next command: named ``name`` (on ``collection``), received by ``member`` (default: the primary)."""
        got = self.receive(timeout)
        wanted = f"{name} {collection or ''}".strip()
        assert (got.name, got.collection) == (name, collection if collection is not None else got.collection), (
            f"expected {wanted}, the app sent {got!r}")
        target = member or self.primary
        assert got.member is target, f"{wanted} reached {got.member}, not {target}"
        return got

    def assert_quiet(self, seconds: float = 0.3) -> None:
        """Nothing more reaches any member for ``seconds``."""
        try:
            got = self.queue.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected command {got!r}")

    def serve_until(self, future: Future, handler: Callable[[Received], None], *, limit: int = 500) -> list[Received]:
        """Answer every command with ``handler`` until ``future`` is done (at most ``limit`` commands)."""
        served: list[Received] = []
        while not future.done():
            try:
                got = self.queue.get(timeout=0.05)
            except queue.Empty:
                continue
            self.seen.append(got)
            served.append(got)
            assert len(served) <= limit, f"more than {limit} commands: {served[-3:]}"
            handler(got)
        return served

    # ------------------------------------------------------------------------------------------ indexes

    def serve_create_indexes(self, got: Received) -> Received:
        """Answer a createIndexes and remember the indexes, as the server would."""
        assert got.name == "createIndexes", got
        stored = self.indexes.setdefault(got.collection or "", [])
        for index in got.doc["indexes"]:
            if all(existing["name"] != index["name"] for existing in stored):
                stored.append(dict(index))
        return got.ok(numIndexesBefore=1, numIndexesAfter=1 + len(stored), createdCollectionAutomatically=True)

    def serve_list_indexes(self, got: Received) -> Received:
        assert got.name == "listIndexes", got
        docs = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]
        docs += [{"v": 2, **index} for index in self.indexes.get(got.collection or "", [])]
        return got.cursor(docs)

    def stop(self, wait: bool = True) -> None:
        """Stop every member. Each stop closes its sockets at once, then waits up to a second for MockupDB's
        accept loop to notice: the members stop side by side, and ``wait=False`` leaves that wait behind."""
        stoppers = [threading.Thread(target=member.stop, name="wire-member-stop", daemon=True)
                    for member in self.members]
        for stopper in stoppers:
            stopper.start()
        if wait:
            for stopper in stoppers:
                stopper.join(timeout=WAIT)


def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run ``function`` in a daemon thread; the returned future carries its result or exception."""
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the test through the future
            future.set_exception(exc)

    threading.Thread(target=run, name="wire-app-call", daemon=True).start()
    return future


def http(app: Flask, method: str, path: str, token: str | None = None, *, json: Any = None,
         headers: dict[str, str] | None = None) -> Future:
    """Send one request through the app's test client in another thread; a future of the response."""
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    client = app.test_client(use_cookies=False)
    return in_thread(client.open, path, method=method, json=json, headers=all_headers)
