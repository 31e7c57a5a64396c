"""The database layer: one client per process, engine selection, indexes and the transaction helper.

``MONGO_URI`` set selects real MongoDB, which must be a replica set (multi-document transactions need one).
``MONGO_URI`` unset selects the embedded engine (:mod:`ledger.embedded`): in memory, one process, data lost on
exit. Either way the rest of the code sees pymongo's API.

The client is created lazily on first use, so a gunicorn master that imports the app never holds a client
its forked workers would inherit; each worker builds its own after fork.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from flask import Flask, current_app
from pymongo import IndexModel, MongoClient, ReadPreference, uri_parser
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from ledger import embedded

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DB_NAME = "banking-ledger"
TRANSACTION_READ_CONCERN = ReadConcern("snapshot")
# wtimeout bounds the wait for a majority acknowledgement (a lagging or lost secondary): pymongo turns the
# timeout into UnknownTransactionCommitResult, which run_in_transaction retries until its deadline, then 503.
TRANSACTION_WRITE_CONCERN = WriteConcern("majority", wtimeout=5000)
# No single socket read may hang a request thread for ever (a silently dead connection).
SOCKET_TIMEOUT_MS = 20000
INDEX_RECHECK_SECONDS = 5.0

TRANSIENT_LABEL = "TransientTransactionError"
UNKNOWN_COMMIT_LABEL = "UnknownTransactionCommitResult"


class DatabaseUnavailable(RuntimeError):
    """The database cannot serve this request now (no primary, timeout, retries exhausted)."""


class NotAReplicaSet(RuntimeError):
    """MONGO_URI points at a server that is not a replica set member: transactions are impossible."""


class TransactionRetriesExhausted(DatabaseUnavailable):
    """A transaction kept hitting transient errors until its time budget ran out."""


class _ClientHolder:
    """Process-wide client, created on first use and recreated in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: Any = None
        self._key: tuple[str | None, str | None, int] | None = None

    def get(self, uri: str | None, data_dir: str | None = None) -> Any:
        key = (uri, None if uri else data_dir, os.getpid())
        client = self._client
        if client is not None and self._key == key:
            return client
        with self._lock:
            if self._client is None or self._key != key:
                self._client = _create_client(uri, data_dir)
                self._key = key
            return self._client

    def reset(self) -> None:
        with self._lock:
            if self._client is not None and self._key is not None and self._key[0] is not None:
                self._client.close()
            self._client = None
            self._key = None


_holder = _ClientHolder()


def _create_client(uri: str | None, data_dir: str | None = None) -> Any:
    if uri is None:
        return embedded.create_client(data_dir)
    return MongoClient(
        uri,
        tz_aware=True,
        connect=False,
        retryWrites=True,
        retryReads=True,
        serverSelectionTimeoutMS=5000,
        socketTimeoutMS=SOCKET_TIMEOUT_MS,
        appname="banking-ledger",
    )


def is_embedded(app: Flask | None = None) -> bool:
    app = app or current_app
    return not app.config.get("MONGO_URI")


def get_client(app: Flask | None = None) -> Any:
    app = app or current_app
    return _holder.get(app.config.get("MONGO_URI"), app.config.get("LEDGER_DATA_DIR"))


def database_name(app: Flask | None = None) -> str:
    app = app or current_app
    if app.config.get("MONGO_DB_NAME"):
        return app.config["MONGO_DB_NAME"]
    uri = app.config.get("MONGO_URI")
    if uri:
        named = _uri_database(uri)
        if named:
            return named
    return DEFAULT_DB_NAME


@functools.lru_cache(maxsize=8)
def _uri_database(uri: str) -> str | None:
    # get_db() runs several times per request: parse the URI once (~85 us; a mongodb+srv URI also does DNS).
    return uri_parser.parse_uri(uri).get("database")


def get_db(app: Flask | None = None) -> Database:
    app = app or current_app._get_current_object()  # the app itself: the two calls below read its config
    return get_client(app)[database_name(app)]


def write_refusal(app: Flask | None = None) -> str | None:
    """Why this process must not write, or None: on the embedded engine, another process (a running server)
    owns the data folder and this one has a read-only view of it. CLI commands that write check this first."""
    app = app or current_app
    if not is_embedded(app):
        return None
    engine = embedded.engine_of(get_client(app))
    return engine.read_only_reason if engine is not None else None


def reset_client() -> None:
    """Forget the process's client (tests use this to start each app on an empty embedded database)."""
    _holder.reset()


# --------------------------------------------------------------------------------------------- indexes


def declared_indexes() -> dict[str, list[IndexModel]]:
    """Every index the models declare, keyed by collection name."""
    from ledger.models import ALL_MODELS

    result: dict[str, list[IndexModel]] = {}
    for model in ALL_MODELS:
        result[model._get_collection_name()] = [
            IndexModel(spec["fields"], **{k: v for k, v in spec.items() if k != "fields"})
            for spec in model._meta["index_specs"]
        ]
    return result


def ensure_indexes(db: Database) -> None:
    """Create the declared indexes (idempotent; existing indexes with the same definition are kept)."""
    for collection_name, models in declared_indexes().items():
        if models:
            db[collection_name].create_indexes(models)


_INDEX_OPTIONS = ("unique", "sparse", "expireAfterSeconds")


def _index_signature(keys: Any, options: dict[str, Any]) -> tuple:
    """Keys plus the options that change behaviour: a non-unique index on the same keys is not the index."""
    # 1 and 1.0 (mongosh sends doubles) compare and hash equal, so the directions need no normalizing.
    key_tuple = tuple((field, direction) for field, direction in (keys.items() if hasattr(keys, "items") else keys))
    return key_tuple, tuple(bool(options.get(name)) if name != "expireAfterSeconds" else options.get(name)
                            for name in _INDEX_OPTIONS)


def mark_indexes_ready(app: Flask) -> None:
    app.extensions["ledger.indexes"] = {"ready": True, "checked": time.monotonic()}


def require_indexes(app: Flask | None = None) -> None:
    """Refuse (503) writes whose safety rests on unique indexes until every declared index exists.

    Without ``(initiator, idempotencyKey)`` two requests with one key could both move money; without the
    unique email two concurrent sign-ups could share an address. Start-up marks the indexes ready once it has
    created them; until then (database unreachable at boot, or a Node-era database not yet migrated) this
    looks again at most every INDEX_RECHECK_SECONDS, so the service opens by itself once they appear. When the
    indexes are ready it costs no database command.
    """
    app = app or current_app
    state = app.extensions.setdefault("ledger.indexes", {"ready": False, "checked": float("-inf")})
    if state["ready"]:
        return
    now = time.monotonic()
    if now - state["checked"] >= INDEX_RECHECK_SECONDS:
        state["checked"] = now
        try:
            state["ready"] = not missing_indexes(get_db(app))
        except PyMongoError:
            state["ready"] = False
    if not state["ready"]:
        raise DatabaseUnavailable("the database indexes are not in place yet")


def missing_indexes(db: Database) -> list[str]:
    """Names of declared indexes the database does not have (same keys, uniqueness, sparseness and TTL)."""
    missing = []
    for collection_name, models in declared_indexes().items():
        present = {_index_signature(info["key"], info) for info in db[collection_name].index_information().values()}
        for model in models:
            if _index_signature(model.document["key"], model.document) not in present:
                missing.append(f"{collection_name}.{model.document['name']}")
    return missing


# ----------------------------------------------------------------------------------- engine checks


def check_replica_set(client: MongoClient) -> dict:
    """Return ``hello`` of a real server; raise if it is not a replica-set member with a primary."""
    try:
        hello = client.admin.command("hello")
    except ConnectionFailure as exc:
        raise DatabaseUnavailable("the database did not answer") from exc
    if hello.get("isreplicaset") and not hello.get("setName"):
        raise DatabaseUnavailable("the replica set member is not initiated yet (run rs.initiate())")
    if not hello.get("setName") and hello.get("msg") != "isdbgrid":
        raise NotAReplicaSet(
            "MONGO_URI points at a standalone MongoDB server: multi-document transactions need a replica set "
            "(start mongod with --replSet and run rs.initiate(), or use the docker-compose.yml replica set)"
        )
    if hello.get("setName") and not hello.get("isWritablePrimary"):
        # With a replicaSet= URI the command goes to the primary; a member that is not writable means there is
        # none, or a directConnection URI names a secondary. Either way writes would fail.
        raise DatabaseUnavailable("the replica set has no writable primary here")
    return hello


def readiness(app: Flask) -> tuple[bool, dict]:
    """What ``GET /ready`` reports: engine, replica-set state and index presence."""
    report: dict[str, Any] = {"engine": "embedded" if is_embedded(app) else "mongodb"}
    try:
        if not is_embedded(app):
            hello = check_replica_set(get_client(app))
            report["replicaSet"] = hello.get("setName") or "mongos"
        missing = missing_indexes(get_db(app))
    except (DatabaseUnavailable, NotAReplicaSet) as exc:
        report["error"] = str(exc)
        return False, report
    except PyMongoError:
        report["error"] = "the database did not answer"
        return False, report
    if missing:
        report["error"] = "indexes missing"
        report["missingIndexes"] = missing
        return False, report
    return True, report


# ------------------------------------------------------------------------------------- transactions


def _has_label(exc: BaseException, label: str) -> bool:
    return isinstance(exc, PyMongoError) and exc.has_error_label(label)


def run_in_transaction(
    callback: Callable[[ClientSession], T],
    *,
    app: Flask | None = None,
    timeout_seconds: float | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Run ``callback(session)`` in one multi-document transaction and commit it; return its result.

    Every multi-document write goes through here. The transaction reads at ``snapshot``, commits with
    ``majority`` and runs on the primary. ``TransientTransactionError`` (a write conflict, a primary step-down)
    reruns the whole callback after a jittered backoff; ``UnknownTransactionCommitResult`` retries only the
    commit, which MongoDB makes idempotent, after the same backoff. Both stop once ``timeout_seconds`` have
    passed, raising :class:`TransactionRetriesExhausted`, which is also raised at once for ``MaxTimeMSExpired``
    (the server's time limit: retrying would expire again). Any other exception aborts the transaction and
    propagates.

    The callback may run several times, so it must have no side effects outside the session: no email, no
    counters, no caching of what it read.
    """
    app = app or current_app
    timeout = timeout_seconds if timeout_seconds is not None else app.config["TRANSACTION_TIMEOUT_SECONDS"]
    deadline = time.monotonic() + timeout
    client = get_client(app)
    attempt = 0
    with client.start_session() as session:
        while True:
            attempt += 1
            session.start_transaction(
                read_concern=TRANSACTION_READ_CONCERN,
                write_concern=TRANSACTION_WRITE_CONCERN,
                read_preference=ReadPreference.PRIMARY,
            )
            try:
                result = callback(session)
            except BaseException as exc:
                _abort_quietly(session)
                if _has_label(exc, TRANSIENT_LABEL):
                    _backoff_or_give_up(attempt, deadline, exc, on_retry, "transient")
                    continue
                if _is_max_time_expired(exc):  # the server's time limit: a retry later will do, not a 500
                    raise TransactionRetriesExhausted("the server's time limit expired") from exc
                raise
            if _commit_with_retry(session, deadline, on_retry):
                return result
            _backoff_or_give_up(attempt, deadline, None, on_retry, "transient-commit")


def _commit_with_retry(
    session: ClientSession, deadline: float, on_retry: Callable[[str], None] | None
) -> bool:
    """Commit; True once committed, False if the whole transaction must be rerun."""
    retries = 0
    while True:
        try:
            session.commit_transaction()
            return True
        except PyMongoError as exc:
            if _has_label(exc, UNKNOWN_COMMIT_LABEL) and not _is_max_time_expired(exc):
                # Paced like a rerun: a server answering at once (not after its wtimeout) is not hammered.
                retries += 1
                _backoff_or_give_up(retries, deadline, exc, on_retry, "unknown-commit",
                                    give_up="commit outcome unknown after retries")
                continue
            if _has_label(exc, TRANSIENT_LABEL):
                _abort_quietly(session)
                if time.monotonic() >= deadline:
                    raise TransactionRetriesExhausted("transaction kept conflicting") from exc
                return False
            _abort_quietly(session)
            if _is_max_time_expired(exc):
                # Retrying would expire again (pymongo's with_transaction gives up here too); the outcome is
                # unknown, so the client gets a 503 and its same-key retry replays or completes the transfer.
                raise TransactionRetriesExhausted("commit outcome unknown: the server's time limit expired") from exc
            raise


def _is_max_time_expired(exc: BaseException) -> bool:
    return isinstance(exc, OperationFailure) and exc.code == 50


def _abort_quietly(session: ClientSession) -> None:
    if session.in_transaction:
        try:
            session.abort_transaction()
        except PyMongoError:  # pragma: no cover - the server aborts on its own after a failed command
            log.debug("abort_transaction failed; the server will abort the transaction itself")


def _backoff_or_give_up(
    attempt: int,
    deadline: float,
    exc: BaseException | None,
    on_retry: Callable[[str], None] | None,
    reason: str,
    give_up: str = "transaction kept conflicting",
) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TransactionRetriesExhausted(give_up) from exc
    if on_retry:
        on_retry(reason)
    # Full jitter, growing with the attempt number, capped and never past the deadline.
    delay = min(remaining, random.uniform(0, min(0.5, 0.005 * (2 ** min(attempt, 8)))))
    time.sleep(delay)


@contextlib.contextmanager
def consistent_reads(app: Flask | None = None) -> Iterator[ClientSession]:
    """A session whose reads all see one point in time, for audits that scan several collections.

    On MongoDB this is a snapshot session (server 5.0+; the scan must finish within
    ``minSnapshotHistoryWindowInSeconds``, 300 s by default); on the embedded engine, a transaction, which
    holds the engine's lock so no write lands between the reads. Read only: nothing is committed.
    """
    app = app or current_app
    client = get_client(app)
    if is_embedded(app):
        with client.start_session() as session:
            session.start_transaction()
            try:
                yield session
            finally:
                _abort_quietly(session)
    else:
        with client.start_session(snapshot=True) as session:
            yield session


# ------------------------------------------------------------------------------------- app wiring


class _SharedClient:
    """The process client as mongoengine sees it, never closed by it.

    Each lookup goes to :data:`_holder` (so the client is this process's), but mongoengine caches the database
    and collections it gets on first use: after :func:`reset_client`, call :func:`bind_models` again.
    ``mongoengine.disconnect`` closes the client it holds, and closing mongomock-ng's client wipes every
    database; the service's client belongs to :data:`_holder`, so ``close`` here does nothing.
    """

    def __init__(self, uri: str | None, data_dir: str | None = None) -> None:
        self._uri = uri
        self._data_dir = data_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(_holder.get(self._uri, self._data_dir), name)

    def __getitem__(self, name: str) -> Any:
        return _holder.get(self._uri, self._data_dir)[name]

    def close(self) -> None:
        return None


def bind_models(app: Flask) -> None:
    """Bind the mongoengine documents (``Model.objects``) to this app's client and database.

    The service reads and writes through pymongo with sessions; this binding exists so the schema classes
    can also be queried (scripts, the immutability guarantees of ``LedgerEntry``). mongoengine's default
    connection is process-wide, so the app bound last wins; binding is lazy and opens no connection.
    """
    import mongoengine

    uri = app.config.get("MONGO_URI")
    mongoengine.disconnect()  # forget a previous binding (and the collections documents cached from it)
    mongoengine.register_connection(
        mongoengine.DEFAULT_CONNECTION_NAME,
        db=database_name(app),
        mongo_client_class=lambda **_settings: _SharedClient(uri, app.config.get("LEDGER_DATA_DIR")),
    )


def init_app(app: Flask) -> None:
    """Check the engine, create the indexes and announce where the data lives."""
    bind_models(app)
    if is_embedded(app):
        data_dir = app.config.get("LEDGER_DATA_DIR") or embedded.MEMORY
        if data_dir == embedded.MEMORY:
            log.warning(
                "MONGO_URI is not set and LEDGER_DATA_DIR is :memory:: using the EMBEDDED in-memory engine. Data "
                "lives in this process only and is LOST ON EXIT; run a single worker."
            )
        else:
            engine = embedded.engine_of(get_client(app))
            if engine is not None and engine.read_only_reason:
                log.warning("embedded engine: %s; this process has a READ-ONLY view", engine.read_only_reason)
            else:
                log.warning(
                    "MONGO_URI is not set: using the EMBEDDED engine in %s (durable, one process owns it; run a "
                    "single worker). Set MONGO_URI to a MongoDB replica set for several processes or machines.",
                    os.path.abspath(data_dir),
                )
    else:
        # NotAReplicaSet stops start-up with its message; DatabaseUnavailable goes to the caller, which
        # finishes start-up (indexes, system user) in the background once the database answers.
        check_replica_set(get_client(app))
    try:
        ensure_indexes(get_db(app))
        mark_indexes_ready(app)
    except OperationFailure as exc:
        # A database the Node service wrote cannot take the (account, seq) unique index until it is migrated.
        # Start anyway, so `flask --app wsgi migrate-node-db` can run; /ready answers 503 until the indexes exist.
        log.error("indexes could not be created (%s); if this database was written by the Node service, run "
                  "`flask --app wsgi migrate-node-db`. /ready reports 503 until they exist", exc)
