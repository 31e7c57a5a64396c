"""The embedded engine: mongomock-ng made serializable, indexed and durable.

mongomock-ng speaks pymongo's API, sessions and transactions included, but it has no isolation: writes inside
an open transaction are visible to other threads, two transactions updating one document both succeed, one
transaction's abort can undo another's committed write, and even a lone ``$inc`` can lose updates when threads
interleave. Used as it is under a threaded server it would corrupt balances. It also answers every query by
walking the whole collection and keeps everything in memory only.

This module turns it into a single-node database:

* **Serializable.** One process-wide re-entrant lock is held for the whole of every transaction, from
  ``start_transaction`` to ``commit_transaction`` or ``abort_transaction`` (so a transaction sees no other
  writer and its abort restores only its own work), and around every standalone collection operation and
  cursor materialisation. Transactions run one at a time: the reason the embedded engine runs one process.
* **Indexed.** :mod:`ledger.embedded_store` keeps every declared index in memory and answers lookups and
  unique checks from it; a query no index answers is a counted full scan (:func:`no_scans` forbids them).
* **Durable** unless ``LEDGER_DATA_DIR`` is ``:memory:``: :mod:`ledger.embedded_journal` appends each commit's
  writes to a journal and the commit returns only after an fsync covers them; start-up replays the folder.
* **One owner.** The folder is locked by the process serving it; another process opening it gets a read-only
  view of what was committed when it opened (``verify-ledger`` uses that while the server runs), and its writes
  are refused with a message naming the owner.

The same wrapper counts the database commands each thread issues (only the outermost call, so helpers that
call each other internally count once), which the command-count tests and the benchmark read.
"""

from __future__ import annotations

import copy
import datetime
import functools
import gc
import logging
import operator as _operator
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import mongomock_ng
from bson import Int64, ObjectId
from mongomock_ng import collection as _collection_module
from mongomock_ng import database as _database_module
from mongomock_ng import helpers as _helpers
from mongomock_ng import session as _session_module
from mongomock_ng.filtering import filter_applies as _filter_applies
from mongomock_ng.filtering import resolve_sort_key as _resolve_sort_key
from mongomock_ng.helpers import NOTHING
from pymongo.errors import DuplicateKeyError

from ledger import embedded_journal as journal_module
from ledger.embedded_journal import EngineFailure, FolderLocked, FolderOwned
from ledger.embedded_store import (
    SCANS,
    EngineServerStore,
    IndexedCollectionStore,
    ScanForbidden,
    no_scans,
)

# Loading at least this many documents moves them out of the cyclic garbage collector's generations.
FREEZE_AFTER_LOADING = 10_000

__all__ = ["ENGINE_LOCK", "SCANS", "Engine", "EngineFailure", "FolderLocked", "FolderOwned", "ScanForbidden",
           "add_command_listener", "create_client", "no_scans", "remove_command_listener"]

log = logging.getLogger(__name__)

ENGINE_LOCK = threading.RLock()
MEMORY = ":memory:"

_state = threading.local()
_installed = False
_install_guard = threading.Lock()

# Public collection methods that touch stored data; each is one "command" as MongoDB would count it.
_COLLECTION_COMMANDS = (
    "insert_one",
    "insert_many",
    "update_one",
    "update_many",
    "replace_one",
    "delete_one",
    "delete_many",
    "find",
    "find_one",
    "find_one_and_update",
    "find_one_and_delete",
    "find_one_and_replace",
    "count_documents",
    "estimated_document_count",
    "distinct",
    "aggregate",
    "bulk_write",
    "create_index",
    "create_indexes",
    "drop_index",
    "drop_indexes",
    "index_information",
    "list_indexes",
    "drop",
    "rename",
)

CommandListener = Callable[[str, str], None]
_listeners: list[CommandListener] = []


def add_command_listener(listener: CommandListener) -> None:
    """Call ``listener(command_name, collection_name)`` for every outermost command any thread issues."""
    _listeners.append(listener)


def remove_command_listener(listener: CommandListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def _depth() -> int:
    return getattr(_state, "depth", 0)


# ------------------------------------------------------------------------------------------- the engine


class Engine:
    """One database server's worth of collections, in memory (``path`` None) or backed by a folder."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.server_store = EngineServerStore(self)
        self.journal: journal_module.Journal | None = None
        self.journaled = False
        self.read_only_reason: str | None = None
        self.lock_fd: int | None = None
        self.generation = 0
        self.snapshot_size = 0
        self.replay_seconds = 0.0
        self.replayed_records = 0
        self.discarded_bytes = 0
        self._dirty: dict[IndexedCollectionStore, dict[Any, None]] = {}
        self._meta_dirty: dict[IndexedCollectionStore, None] = {}
        self.transactions_open = 0

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str) -> Engine:
        engine = cls(path)
        started = time.perf_counter()
        fd = journal_module.acquire_lock(path)
        if fd is None:
            engine.read_only_reason = journal_module.owned_message(path)
            engine._load(owner=False)
        else:
            engine.lock_fd = fd
            try:
                engine._load(owner=True)
            except BaseException:
                os.close(fd)
                raise
            engine._settle_loaded_documents()
        engine.replay_seconds = time.perf_counter() - started
        return engine

    def _settle_loaded_documents(self) -> None:
        """Take a large loaded database out of the cyclic garbage collector's sight (``gc.freeze``).

        Every document is a plain dict of plain values: reference counting frees each when it is replaced,
        and none can be part of a reference cycle. Left in the collector's generations, they would be walked
        by every full collection, a pause that grows with the ledger (hundreds of milliseconds per million
        objects). Small folders (the tests') are left alone: freezing also keeps whatever else exists now."""
        documents = sum(len(store._documents) for store in self.server_store.collections())
        if documents >= FREEZE_AFTER_LOADING:
            gc.freeze()
            log.info("embedded engine: %d documents loaded, kept out of the garbage collector's walks", documents)

    def _load(self, owner: bool) -> None:
        path = self.path
        assert path is not None
        for _attempt in range(20):
            generation, collections_ = journal_module.read_snapshot(path)
            journal_file = journal_module.journal_path(path, generation)
            try:
                records, good, size = journal_module.read_records(journal_file)
            except FileNotFoundError:
                if not owner and journal_module.read_snapshot(path)[0] != generation:
                    continue  # the owner compacted between our two reads: read its new snapshot
                records, good, size = [], 0, 0
            break
        else:  # pragma: no cover - a server compacting 20 times while we read
            raise RuntimeError(f"could not read a consistent state of {path}")
        self.server_store._databases.clear()
        for database, name, indexes, options, created, documents in collections_:
            store = self.server_store[database][name]
            store.load_meta(indexes, options, created)
            for doc_id, document in documents:
                store.load(doc_id, document)
        for operations in records:
            self._apply(operations)
        for store in self.server_store.collections():
            store._rebuild_indexes()
            store._ready = True
        self.generation = generation
        self.replayed_records = len(records)
        self.discarded_bytes = size - good
        try:
            self.snapshot_size = os.path.getsize(os.path.join(path, journal_module.SNAPSHOT_NAME))
        except OSError:
            self.snapshot_size = 0
        if not owner:
            return
        if size > good:
            log.warning("embedded engine: discarded %d bytes at the end of %s (a record cut short or failing its "
                        "checksum: written by a crash, never acknowledged)", size - good, journal_file)
            with open(journal_file, "r+b") as handle:
                handle.truncate(good)
                os.fsync(handle.fileno())
        for stale in journal_module.old_journals(path, generation):
            os.remove(stale)
        self.journal = journal_module.Journal(journal_file)
        self.journaled = True
        if good > max(self.snapshot_size, 1024 * 1024):
            with ENGINE_LOCK:
                self.compact()

    def _apply(self, operations: list) -> None:
        databases = self.server_store
        for operation in operations:
            kind = operation[0]
            if kind == "put":
                _kind, database, name, doc_id, document = operation
                databases[database][name].load(doc_id, document)
            elif kind == "del":
                _kind, database, name, doc_id = operation
                databases[database][name].load(doc_id, None)
            elif kind == "meta":
                _kind, database, name, indexes, options, created = operation
                databases[database][name].load_meta(indexes, options, created)

    # ---------------------------------------------------------------- writes

    def check_usable(self) -> None:
        if self.journal is not None and self.journal.failure is not None:
            raise EngineFailure(f"the embedded engine stopped after a disk failure: {self.journal.failure}; "
                                f"restart it")

    def check_writable(self) -> None:
        if self.read_only_reason is not None:
            raise FolderOwned(self.read_only_reason)

    def touch(self, store: IndexedCollectionStore, doc_id: Any) -> None:
        ids = self._dirty.get(store)
        if ids is None:
            self._dirty[store] = ids = {}
        ids[doc_id] = None

    def touch_meta(self, store: IndexedCollectionStore) -> None:
        self._meta_dirty[store] = None

    def forget(self, store: IndexedCollectionStore, doc_ids: Any) -> None:
        ids = self._dirty.get(store)
        if ids:
            for doc_id in doc_ids:
                ids.pop(doc_id, None)

    def flush(self) -> tuple[journal_module.Journal, int] | None:
        """Journal the current state of everything written since the last flush; return what to wait on (the
        journal it went to, which a compaction may since have replaced, and the fsync ticket)."""
        if not self._dirty and not self._meta_dirty:
            return None
        if self.journal is None:
            self._dirty.clear()
            self._meta_dirty.clear()
            return None
        operations: list[tuple] = []
        for store in self._meta_dirty:
            operations.append(("meta", store._database_name, store.name, store.indexes, store.options,
                               store._is_force_created))
        for store, ids in self._dirty.items():
            documents = store._documents
            database, name = store._database_name, store.name
            for doc_id in ids:
                document = documents.get(doc_id)
                if document is None:
                    operations.append(("del", database, name, doc_id))
                else:
                    operations.append(("put", database, name, doc_id, document))
        self._dirty.clear()
        self._meta_dirty.clear()
        if not operations:
            return None
        journal = self.journal
        ticket = journal.append(journal_module.encode_operations(operations))
        if journal.size > max(journal_module.COMPACT_MIN_BYTES, 2 * self.snapshot_size):
            self.compact()  # syncs this journal first, so the ticket is durable when it returns
        return journal, ticket

    @staticmethod
    def wait(ticket: tuple[journal_module.Journal, int] | None) -> None:
        if ticket is not None:
            journal, position = ticket
            journal.wait(position)

    def compact(self) -> None:
        """Write a snapshot of everything and start an empty journal (under ENGINE_LOCK, no transaction open)."""
        assert self.journal is not None
        assert self.path is not None
        self.journal.sync_all()
        generation = self.generation + 1

        def collections_() -> Any:
            for store in self.server_store.collections():
                if store.is_created or store._documents:
                    yield (store._database_name, store.name, store.indexes, store.options,
                           bool(store._is_force_created), store._documents)

        started = time.perf_counter()
        self.snapshot_size = journal_module.write_snapshot(self.path, generation, collections_())
        old = self.journal
        self.journal = journal_module.Journal(journal_module.journal_path(self.path, generation))
        self.generation = generation
        old.close()
        for stale in journal_module.old_journals(self.path, generation):
            os.remove(stale)
        log.info("embedded engine: snapshot %d written (%d bytes) in %.2fs", generation, self.snapshot_size,
                 time.perf_counter() - started)
        # The documents written since the last freeze are long-lived too: collect what is garbage now (a pass
        # over the unfrozen objects only), then freeze the rest, so full collections between compactions walk
        # only what is newer (see _settle_loaded_documents). Whatever a request in another thread holds at
        # this moment is frozen with them; if it later becomes cyclic garbage it stays (bounded by what was in
        # flight at one compaction; compactions come as the journal doubles the snapshot).
        gc.collect()
        gc.freeze()

    def close(self) -> None:
        with ENGINE_LOCK:
            if self.journal is not None:
                if self.journal.failure is None:  # writes no command flushed yet (a database-level drop)
                    self.wait(self.flush())
                self.journal.close()
                self.journal = None
            self.journaled = False
            if self.lock_fd is not None and os.environ.get(journal_module.LOCK_FD_ENV) != str(self.lock_fd):
                os.close(self.lock_fd)
            self.lock_fd = None


def _engine_of_collection(collection: Any) -> Engine | None:
    return getattr(collection._db_store, "_engine", None)


def _engine_of_session(session: Any) -> Engine | None:
    return getattr(session.client._store, "_engine", None)


# ------------------------------------------------------------------------------- mongomock-ng patches


def _serialized_command(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        ticket = None
        engine = _engine_of_collection(self)
        try:
            with ENGINE_LOCK:
                outermost = _depth() == 0
                if outermost and engine is not None:
                    engine.check_usable()
                if outermost and _listeners:
                    for listener in list(_listeners):
                        listener(name, self.name)
                _state.depth = _depth() + 1
                try:
                    return method(self, *args, **kwargs)
                finally:
                    _state.depth -= 1
                    if outermost and engine is not None and engine.journaled and not engine.transactions_open:
                        ticket = engine.flush()
        finally:
            # A standalone write is acknowledged once durable; the wait happens without the lock.
            if ticket is not None:
                engine.wait(ticket)

    wrapper.__ledger_serialized__ = True
    return wrapper


def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with ENGINE_LOCK:
            _state.depth = _depth() + 1
            try:
                return method(*args, **kwargs)
            finally:
                _state.depth -= 1

    return wrapper


def _install() -> None:
    """Patch mongomock-ng's classes once per process; idempotent and thread-safe."""
    global _installed
    with _install_guard:
        if _installed:
            return
        collection_class = _collection_module.Collection
        _patch_sorted_find_one(collection_class)  # before the wrapping below: it wraps what is there
        for name in _COLLECTION_COMMANDS:
            original = getattr(collection_class, name)
            if not getattr(original, "__ledger_serialized__", False):
                setattr(collection_class, name, _serialized_command(name, original))
        cursor_class = _collection_module.Cursor
        cursor_class._compute_results = _serialized(cursor_class._compute_results)
        _patch_sessions(_session_module.ClientSession)
        _patch_lookups(collection_class)
        _patch_datetime_awareness()
        _patch_collection_access(_database_module.Database)
        _installed = True


def _patch_collection_access(database_class: type) -> None:
    """``database.accounts`` without rebuilding and comparing options each time.

    mongomock-ng's ``get_collection`` looks its Collection up and passes it through ``with_options`` with the
    database's defaults, which compares every option and hands back the same object when nothing differs.
    Asked with no options, the answer never changes, so it is remembered per database and name."""
    original = database_class.get_collection
    if getattr(original, "__ledger_cached__", False):
        return

    @functools.wraps(original)
    def get_collection(self, name, codec_options=None, read_preference=None, write_concern=None,
                       read_concern=None):
        if codec_options is None and read_preference is None and write_concern is None and read_concern is None:
            plain = self.__dict__.get("_ledger_collections")
            if plain is None:
                plain = self.__dict__["_ledger_collections"] = {}
            found = plain.get(name)
            if found is None:
                found = plain[name] = original(self, name)
            return found
        return original(self, name, codec_options, read_preference, write_concern, read_concern)

    get_collection.__ledger_cached__ = True  # type: ignore[attr-defined]
    database_class.get_collection = get_collection


def _patch_datetime_awareness() -> None:
    """mongomock-ng's ``patch_datetime_awareness_in_document`` (every inserted document, update and filter goes
    through it: naive UTC, millisecond datetimes, as MongoDB stores them), without its five ``isinstance``
    checks on every plain value. Plain dicts, lists and tuples are rebuilt here, values of the common exact
    types kept as they are, and naive or UTC datetimes truncated to the millisecond in one step; anything else
    (another time zone, a Timestamp, an OrderedDict or another dict subclass) goes to the original, so every
    answer is exactly the original's (``tests/test_embedded_engine.py`` compares the two on generated values)."""
    original = _helpers.patch_datetime_awareness_in_document
    if getattr(original, "__ledger_fast__", False):
        return
    plain = frozenset({str, int, float, bool, type(None), ObjectId, bytes, Int64})

    def stored_form(value: datetime.datetime) -> datetime.datetime | None:
        zone = value.tzinfo
        if zone is None:
            return value.replace(microsecond=value.microsecond // 1000 * 1000)
        if zone is datetime.UTC:  # what the app writes: the offset is zero, only the zone goes
            return value.replace(tzinfo=None, microsecond=value.microsecond // 1000 * 1000)
        return None  # another zone: the original's arithmetic

    _helpers.patch_datetime_awareness_in_document = _plain_walker(plain, stored_form, original)

    # And its inverse for a tz_aware client (ours): every datetime handed to a reader gets mongomock-ng's UTC.
    utc = _helpers.utc
    _helpers.make_datetime_timezone_aware_in_document = _plain_walker(
        plain, lambda value: value.replace(tzinfo=utc), _helpers.make_datetime_timezone_aware_in_document)


def _plain_walker(plain: frozenset, on_datetime: Callable[[Any], Any], original: Callable[[Any], Any]) -> Any:
    """A walk over a document like mongomock-ng's datetime walks: plain dicts, lists and tuples rebuilt (as
    lists), values of the ``plain`` types kept, datetimes given to ``on_datetime``, and anything else (or a
    datetime it answers None for) handed to ``original``, whose answer it then is."""

    def walk(value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            return {key: item if type(item) in plain else walk(item) for key, item in value.items()}
        if kind is list or kind is tuple:
            return [item if type(item) in plain else walk(item) for item in value]
        if kind in plain:
            return value
        if kind is datetime.datetime:
            answer = on_datetime(value)
            if answer is not None:
                return answer
        return original(value)

    walk.__ledger_fast__ = True  # type: ignore[attr-defined]
    walk.original = original  # type: ignore[attr-defined]
    return walk


def _patch_sessions(session_class: type) -> None:
    """Hold ENGINE_LOCK for the life of each transaction, journal its writes at commit, and wait for the fsync
    after releasing the lock; make a repeated commit succeed as MongoDB does."""
    original_start = session_class.start_transaction
    original_commit = session_class.commit_transaction
    original_abort = session_class.abort_transaction

    def start_transaction(self, *args, **kwargs):
        ENGINE_LOCK.acquire()
        try:
            engine = _engine_of_session(self)
            if engine is not None:
                engine.check_usable()
            self._ledger_committed = False
            result = original_start(self, *args, **kwargs)
            if engine is not None:
                engine.transactions_open += 1
            return result
        except BaseException:
            ENGINE_LOCK.release()
            raise

    def commit_transaction(self):
        if not self.in_transaction and getattr(self, "_ledger_committed", False):
            # MongoDB answers a retried commit of a committed transaction with success; so do we.
            _notify("commitTransaction", "admin")
            return None
        _notify("commitTransaction", "admin")
        if not self.in_transaction:
            return original_commit(self)  # raises as pymongo does; no transaction holds the lock
        engine = _engine_of_session(self)
        ticket = None
        try:
            original_commit(self)
            self._ledger_committed = True
        finally:
            if engine is not None:
                engine.transactions_open -= 1
                try:
                    ticket = engine.flush() if engine.journaled else None
                finally:
                    ENGINE_LOCK.release()
            else:
                ENGINE_LOCK.release()
        if engine is not None:
            engine.wait(ticket)
        return None

    def abort_transaction(self):
        was_open = self.in_transaction
        engine = _engine_of_session(self)
        undone = [(store, list(store._undo or ())) for store in getattr(self, "_transaction_collections", ())
                  if isinstance(store, IndexedCollectionStore)]
        ticket = None
        try:
            original_abort(self)
        finally:
            if was_open:
                try:
                    if engine is not None:
                        engine.transactions_open -= 1
                        for store, ids in undone:  # restored to what the journal already holds
                            engine.forget(store, ids)
                        ticket = engine.flush() if engine.journaled else None
                finally:
                    ENGINE_LOCK.release()
        if engine is not None:
            engine.wait(ticket)

    session_class.start_transaction = start_transaction
    session_class.commit_transaction = commit_transaction
    session_class.abort_transaction = abort_transaction


def _patch_lookups(collection_class: type) -> None:
    """Answer filters and unique checks from the store's indexes; snapshot documents before in-place changes."""
    original_iter = collection_class._iter_documents
    original_uniques = collection_class._ensure_uniques

    def _iter_documents(self, filter):
        store = self._store
        if not isinstance(store, IndexedCollectionStore):
            return original_iter(self, filter)
        ids = store.candidate_ids(filter)
        if ids is None:
            return original_iter(self, filter)  # reads store.documents: a counted full scan
        documents = store._documents
        candidates = [documents[doc_id] for doc_id in ids]
        if not candidates:
            _filter_applies(filter, {})  # an invalid filter still raises, as it would on a scan
        return (document for document in candidates if matches(filter, document))

    def _ensure_uniques(self, new_data):
        store = self._store
        if not isinstance(store, IndexedCollectionStore):
            return original_uniques(self, new_data)
        index = store.find_duplicate(new_data)
        if index is not None:
            raise DuplicateKeyError(
                "E11000 Duplicate Key Error",
                11000,
                {"keyPattern": dict(index.key),
                 "keyValue": {field: _helpers.get_value_by_dot(new_data, field) for field in index.fields}},
            )
        return None

    def _preimage(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self, existing_document, *args, **kwargs):
            store = self._store
            if isinstance(store, IndexedCollectionStore):
                store.before_change(existing_document)
            return method(self, existing_document, *args, **kwargs)

        return wrapper

    collection_class._iter_documents = _iter_documents
    collection_class._ensure_uniques = _ensure_uniques
    collection_class._update_documents = _fast_updates(collection_class._update_documents)
    collection_class._insert = _fast_inserts(collection_class._insert)
    collection_class._copy_only_fields = _fast_copies(collection_class._copy_only_fields)
    for name in ("_apply_update_document", "_apply_update_pipeline", "_apply_replace_document",
                 "_apply_empty_document"):
        setattr(collection_class, name, _preimage(getattr(collection_class, name)))


_NUMBERS = frozenset({int, float, Int64})  # the app keeps money as Int64 (always a 64-bit BSON integer)
_SET_VALUES = frozenset({str, int, float, bool, type(None), ObjectId, datetime.datetime, Int64})


def _simple_update(document: Any) -> bool:
    """An update of only ``$inc`` (by a number) and ``$set`` (to a scalar) on distinct plain top-level fields."""
    if type(document) is not dict or not document:
        return False
    seen: set = set()
    for operator, fields in document.items():
        if (operator != "$inc" and operator != "$set") or type(fields) is not dict or not fields:
            return False
        if not seen.isdisjoint(fields):  # one field under both (MongoDB refuses it as a conflict)
            return False
        seen.update(fields)
        for name, value in fields.items():
            # ASCII names and strings: what BSON can always encode (a lone surrogate cannot be, and
            # mongomock-ng refuses it), checked as cheaply as the insert path checks them.
            if (type(name) is not str or not name or not name.isascii() or name == "_id" or "." in name
                    or "$" in name or "\0" in name):
                return False
            kind = type(value)
            if operator == "$inc":
                if kind not in _NUMBERS:
                    return False
            elif (kind not in _SET_VALUES or ((kind is int or kind is Int64) and not -2**63 <= value < 2**63)
                    or (kind is str and not value.isascii())):
                return False
    return True


def _fast_updates(original: Callable[..., Any]) -> Callable[..., Any]:
    """mongomock-ng's update of matched documents, for the updates every money movement makes.

    For ``$inc``/``$set`` on top-level fields (see :func:`_simple_update`), without upsert, sort or array
    filters, on a collection without a validator: each matched document is copied, changed as mongomock-ng
    would change it (``$inc`` adds to the value or sets a missing one; ``$set`` assigns; in the update's
    order), checked against the unique indexes and stored in place of the old one, whose object stays intact
    for the undo log. mongomock-ng instead deep-copies the document, changes it in place (with another copy
    for our undo log) and compares the two. Anything else, including a ``$inc`` on a value that is not a plain
    number (mongomock-ng's answer or error is kept), goes to the original. The same answer either way:
    ``tests/test_embedded_engine.py`` runs both on generated documents and updates.
    """
    if getattr(original, "__ledger_fast__", False):
        return original

    @functools.wraps(original)
    def _update_documents(self, spec, document, upsert, multi, sort, session=None, validate=True):
        store = self._store
        if (upsert or sort or self._current_array_filters or not isinstance(store, IndexedCollectionStore)
                or store.options.get("validator") or not _simple_update(document)):
            return original(self, spec, document, upsert, multi, sort, session, validate)
        matched = list(self._iter_documents(spec))
        if not multi:
            matched = matched[:1]
        if matched:  # a read-only view refuses any matched update, one that changes nothing included
            store._check_writable()
        increments = document.get("$inc")
        if increments:
            for existing in matched:
                for name in increments:
                    current = existing.get(name, NOTHING)
                    if current is not NOTHING and type(current) not in _NUMBERS:
                        return original(self, spec, document, upsert, multi, sort, session, validate)
        modified = 0
        for existing in matched:
            changed = dict(existing)
            for name, value in existing.items():
                if type(value) not in _IMMUTABLE:
                    # The old document is the undo log's copy: the new one must share no container with
                    # it, or a later in-place change (a nested $set, a $push) would alter what an abort
                    # restores.
                    changed[name] = copy.deepcopy(value)
            for operator, fields in document.items():
                if operator == "$inc":
                    for name, delta in fields.items():
                        changed[name] = changed.get(name, 0) + delta
                else:
                    changed.update(fields)
            if changed != existing:
                self._ensure_uniques(changed)
                store[changed["_id"]] = changed
                modified += 1
            elif any(type(value) is not type(existing[name]) or repr(value) != repr(existing[name])
                     for name, value in changed.items()):
                # Equal but not the same (-0.0 became 0.0, 1 became 1.0): not a modification, yet mongomock-ng
                # leaves its in-place result stored, so do the same (remembered for a rollback as it would be).
                store.before_change(existing)
                existing.update(changed)
        return {"connectionId": self.database.client._id, "err": None, "n": len(matched),
                "nModified": modified if matched else 0, "ok": 1, "upserted": None,
                "updatedExisting": bool(matched)}

    _update_documents.__ledger_fast__ = True  # type: ignore[attr-defined]
    _update_documents.original = original  # type: ignore[attr-defined]
    return _update_documents


_PLAIN_VALUES = frozenset({bool, float, type(None), ObjectId, datetime.datetime, bytes})
_PLAIN_IDS = frozenset({ObjectId, str, int})


def _plainly_encodable(document: dict, top: bool = True) -> bool:
    """True if BSON surely carries ``document`` and mongomock-ng's field checks surely pass: ASCII keys (no
    NUL; at the top none starting with ``$``) and values of plain types (ASCII strings, 64-bit integers),
    or dicts and lists of them."""
    for key, value in document.items():
        if type(key) is not str or not key.isascii() or "\0" in key or (top and key[:1] == "$"):
            return False
        kind = type(value)  # the scalar cases inline: this runs for every field of every inserted document
        if kind in _PLAIN_VALUES:
            continue
        if kind is str:
            if not value.isascii():
                return False
        elif kind is int or kind is Int64:
            if not -2**63 <= value < 2**63:
                return False
        elif not _plain_value(value):
            return False
    return True


def _plain_value(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return value.isascii()
    if kind is int or kind is Int64:
        return -2**63 <= value < 2**63
    if kind in _PLAIN_VALUES:
        return True
    if kind is dict:
        return _plainly_encodable(value, top=False)
    if kind is list:
        return all(_plain_value(item) for item in value)
    return False


def _fast_inserts(original: Callable[..., Any]) -> Callable[..., Any]:
    """mongomock-ng's insert of one document, without the work it repeats on every call.

    For a plain dict into an indexed collection without options (no validator): the same checks in the same
    order, but the BSON check runs only when :func:`_plainly_encodable` cannot vouch for the document (then
    with driver codec options built once, not on every call), and no copy of the collection's options is
    made to find no validator. Lists (insert_many) go through the original, which inserts each document
    through this. ``tests/test_embedded_engine.py`` inserts generated documents both ways and compares.
    """
    if getattr(original, "__ledger_fast__", False):
        return original
    driver_options: dict = {}

    @functools.wraps(original)
    def _insert(self, data, session=None, ordered=True, validate=True):
        store = self._store
        if (type(data) is not dict or not isinstance(store, IndexedCollectionStore) or store.options
                or ("_id" in data and type(data["_id"]) not in _PLAIN_IDS)):
            return original(self, data, session, ordered, validate)
        _collection_module._enroll_session(session, store)
        if not _plainly_encodable(data):
            if not all(isinstance(key, str) for key in data):
                raise ValueError("Document keys must be strings")
            _collection_module._validate_data_fields(data)
            options = self._codec_options  # not hashable: remembered by identity, with the object itself
            known = driver_options.get(id(options))
            if known is None or known[0] is not options:
                known = driver_options[id(options)] = (options, options.to_pymongo())
            _collection_module.BSON.encode(data, check_keys=False, codec_options=known[1])
        if "_id" not in data:
            data["_id"] = ObjectId()
        object_id = data["_id"]
        if object_id in store:
            raise DuplicateKeyError("E11000 Duplicate Key Error", 11000,
                                    {"keyPattern": {"_id": 1}, "keyValue": {"_id": data["_id"]}})
        data = _helpers.patch_datetime_awareness_in_document(data)
        store[object_id] = data
        try:
            self._ensure_uniques(data)
        except DuplicateKeyError:
            del store[object_id]
            raise
        return data["_id"]

    _insert.__ledger_fast__ = True  # type: ignore[attr-defined]
    _insert.original = original  # type: ignore[attr-defined]
    return _insert


# Values a copy may share with the stored document: immutable, so copy.copy hands back an equal value anyway.
_IMMUTABLE = frozenset({str, int, float, bool, type(None), ObjectId, datetime.datetime, Int64, bytes})


def _fast_copies(original: Callable[..., Any]) -> Callable[..., Any]:
    """mongomock-ng's copy of a stored document for a reader (whole, or by a plain projection), for the
    documents the app stores: every value immutable, so a shallow copy is as good as its deep one.

    A projection qualifies when its keys are top-level field names and its values 0/1/True/False, all
    including or all excluding apart from ``_id``. The answer, its key order (an included ``_id`` goes last,
    as mongomock-ng puts it) and the projection dict left behind (``_id`` moved last, or added) are the
    original's; anything else goes to the original. Checked on generated documents and projections."""
    if getattr(original, "__ledger_fast__", False):
        return original

    @functools.wraps(original)
    def _copy_only_fields(self, doc, fields, container, filter=None):  # noqa: A002 - mongomock-ng's name
        if container is not dict or type(doc) is not dict:
            return original(self, doc, fields, container, filter)
        for value in doc.values():
            if type(value) not in _IMMUTABLE:
                return original(self, doc, fields, container, filter)
        if not fields:
            return dict(doc)
        if type(fields) is not dict:
            return original(self, doc, fields, container, filter)
        mode = None
        for key, value in fields.items():
            if type(key) is not str or "." in key or key[:1] == "$" or (type(value) is not int
                                                                          and type(value) is not bool):
                return original(self, doc, fields, container, filter)
            if key != "_id":
                if value not in (0, 1):
                    return original(self, doc, fields, container, filter)
                if mode is None:
                    mode = bool(value)
                elif mode != bool(value):
                    return original(self, doc, fields, container, filter)  # its error for a mixed projection
        if mode is None:
            return original(self, doc, fields, container, filter)
        id_value = fields.pop("_id", 1)
        if mode:
            copied = {key: value for key, value in doc.items() if key in fields}
        else:
            copied = {key: value for key, value in doc.items() if key not in fields}
        if id_value == 0:
            copied.pop("_id", None)
        elif "_id" in doc:
            copied["_id"] = doc["_id"]
        fields["_id"] = id_value
        return copied

    _copy_only_fields.__ledger_fast__ = True  # type: ignore[attr-defined]
    _copy_only_fields.original = original  # type: ignore[attr-defined]
    return _copy_only_fields


# Scalar classes whose MongoDB equality and order are Python's within the class (ints of either kind compare
# by value; naive datetimes as stored; no arrays, no mixed types, no bools, no floats with their NaN).
_COMPARABLE = {str: "string", ObjectId: "objectid", datetime.datetime: "date", int: "number", Int64: "number"}
_ORDER_OPERATORS = {"$gte": _operator.ge, "$gt": _operator.gt, "$lte": _operator.le, "$lt": _operator.lt}


def _class_of(value: Any) -> str | None:
    kind = _COMPARABLE.get(type(value))
    if kind == "date" and value.tzinfo is not None:
        return None
    return kind


def matches(spec: Any, document: dict) -> bool:
    """mongomock-ng's ``filter_applies(spec, document)``, one condition at a time as it goes (the first that
    fails decides), with the conditions every lookup here makes answered directly: equality, ``$in`` and
    ``$gte``/``$gt``/``$lte``/``$lt`` between scalars of one comparable class on a top-level field. Every other
    condition (operators, dotted paths, arrays, mixed types, ``$expr``...) is put to mongomock-ng on its own.
    ``tests/test_embedded_engine.py`` compares the two on generated documents and filters."""
    if type(spec) is not dict:
        return _filter_applies(spec, document)
    for key, search in spec.items():
        if type(key) is str and key[:1] != "$" and "." not in key:
            wanted = _class_of(search)
            if wanted is not None:
                value = document.get(key, NOTHING)
                if value is not NOTHING and _class_of(value) == wanted:
                    if value != search:
                        return False
                    continue
            elif type(search) is dict and len(search) == 1:
                (operator_name, operand), = search.items()
                value = document.get(key, NOTHING)
                have = _class_of(value) if value is not NOTHING else None
                if have is not None:
                    if operator_name == "$in" and type(operand) is list and operand and all(
                            _class_of(item) == have for item in operand):
                        if value not in operand:
                            return False
                        continue
                    compare = _ORDER_OPERATORS.get(operator_name)
                    if compare is not None and _class_of(operand) == have == "number":
                        if not compare(value, operand):
                            return False
                        continue
        if not _filter_applies({key: search}, document):
            return False
    return True


def _patch_sorted_find_one(collection_class: type) -> None:
    """``find_one(filter[, sort=...])`` (the outbox claim; every lookup of a user, a token, a hold) without
    materialising every match through a cursor.

    mongomock-ng computes, copies and sorts every matching document, then keeps the first. Here the index's
    candidates are sorted first (the same stable sort on the same keys, so ties keep natural order) and the
    filter runs on them in that order until one matches: the same answer, at the cost of the first match.
    """
    original = collection_class.find_one
    if getattr(original, "__ledger_sorted__", False):
        return

    @functools.wraps(original)
    def find_one(self, filter=None, *args, **kwargs):  # noqa: A002 - pymongo's parameter name
        sort = kwargs.get("sort")
        store = self._store
        if (args or set(kwargs) - {"sort", "projection", "session"}
                or not isinstance(filter, dict) or not isinstance(store, IndexedCollectionStore)
                or "$near" in repr(filter)):
            return original(self, filter, *args, **kwargs)
        spec = _helpers.patch_datetime_awareness_in_document(filter)
        documents = store._documents
        if not sort:
            # No sort: the first match in natural order, which is the order of the index's candidates.
            ids = store.candidate_ids(spec)
            if ids is None:
                return original(self, filter, *args, **kwargs)
            return _first_match(self, spec, [documents[doc_id] for doc_id in ids], kwargs.get("projection"))
        keys = list(sort.items()) if isinstance(sort, dict) else [
            (item, 1) if isinstance(item, str) else tuple(item) for item in sort]
        if any(not isinstance(key, str) or key.startswith("$") for key, _direction in keys):
            return original(self, filter, *args, **kwargs)
        ordered = store.ordered_candidates(spec, keys[0][0], keys[0][1] < 0) if len(keys) == 1 else None
        if ordered is not None:
            # Walk the index in sort order; the first document the filter accepts is the answer.
            candidates: Any = (documents[doc_id] for doc_id in ordered)
        else:
            ids = store.candidate_ids(spec)
            if ids is None:
                return original(self, filter, *args, **kwargs)
            candidates = [documents[doc_id] for doc_id in ids]
            for key, direction in reversed(keys):
                candidates.sort(key=functools.partial(_resolve_sort_key, key), reverse=direction < 0)
        return _first_match(self, spec, candidates, kwargs.get("projection"))

    find_one.__ledger_sorted__ = True
    find_one.original = original  # type: ignore[attr-defined]
    collection_class.find_one = find_one


def _first_match(collection: Any, spec: dict, candidates: Any, projection: Any) -> Any:
    """The first of ``candidates`` the filter accepts, as mongomock-ng's cursor would hand it out."""
    checked = False
    for document in candidates:
        checked = True
        if matches(spec, document):
            found = collection._copy_only_fields(document, projection, dict, filter=spec)
            if found is None:
                continue
            if collection.codec_options.tz_aware:
                found = _helpers.make_datetime_timezone_aware_in_document(found)
            document_class = collection.codec_options.document_class
            return found if document_class is dict else document_class(found)
    if not checked:
        _filter_applies(spec, {})  # an invalid filter still raises, as it would on a scan
    return None


def _notify(name: str, collection: str) -> None:
    if _depth() == 0:
        for listener in list(_listeners):
            listener(name, collection)


# ------------------------------------------------------------------------------------------- clients

_engines: dict[str, Engine] = {}
_engines_guard = threading.Lock()


def open_engine(path: str) -> Engine:
    """The engine serving ``path`` in this process (opened, and recovered, on first use).

    The owner's engine is kept for the life of the process; a read-only view (another process owns the folder)
    is opened afresh each time, so each CLI command sees the latest committed state.
    """
    _install()
    key = os.path.realpath(path)
    with _engines_guard:
        engine = _engines.get(key)
        if engine is not None and engine.read_only_reason is None:
            return engine
        with ENGINE_LOCK:
            engine = Engine.open(key)
        if engine.read_only_reason is None:
            _engines[key] = engine
        else:
            log.info("embedded engine: %s; opened a read-only view", engine.read_only_reason)
        return engine


def close_engine(path: str) -> None:
    """Close this process's engine for ``path`` (releasing the folder's lock); tests use it to 'restart'."""
    with _engines_guard:
        engine = _engines.pop(os.path.realpath(path), None)
    if engine is not None:
        engine.close()


def create_client(data_dir: str | None = None) -> mongomock_ng.MongoClient:
    """A client of the embedded engine: a new in-memory one (``data_dir`` None or ``:memory:``), or the
    process's engine for that folder."""
    _install()
    engine = Engine(None) if data_dir is None or data_dir == MEMORY else open_engine(data_dir)
    return mongomock_ng.MongoClient(tz_aware=True, _store=engine.server_store)


def engine_of(client: Any) -> Engine | None:
    store = getattr(client, "_store", None)
    return getattr(store, "_engine", None)
