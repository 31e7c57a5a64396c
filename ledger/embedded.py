"""The embedded engine: mongomock-ng made serializable.

mongomock-ng speaks pymongo's API, sessions and transactions included, but it has no isolation: writes inside
an open transaction are visible to other threads, two transactions updating one document both succeed, one
transaction's abort can undo another's committed write, and even a lone ``$inc`` can lose updates when threads
interleave. Used as it is under a threaded server it would corrupt balances.

This module turns it into a single-writer database. One process-wide re-entrant lock is held

* for the whole of every transaction, from ``start_transaction`` to ``commit_transaction`` or
  ``abort_transaction`` (so a transaction sees no other writer and its abort restores only its own work), and
* around every standalone collection operation and cursor materialisation.

Transactions are therefore serializable, at the cost of running one at a time: fine for tests, demos and a
single-process development server, and the reason the embedded engine needs exactly one gunicorn worker.

The same wrapper counts the database commands each thread issues (only the outermost call, so helpers that
call each other internally count once), which the command-count tests and the benchmark read.
"""

from __future__ import annotations

import collections
import copy
import functools
import threading
from collections.abc import Callable
from typing import Any

import mongomock_ng
from mongomock_ng import collection as _collection_module
from mongomock_ng import session as _session_module
from mongomock_ng import store as _store_module
from mongomock_ng.filtering import filter_applies as _filter_applies
from mongomock_ng.helpers import _clone_document

ENGINE_LOCK = threading.RLock()

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


def _serialized_command(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with ENGINE_LOCK:
            outermost = _depth() == 0
            if outermost and _listeners:
                for listener in list(_listeners):
                    listener(name, self.name)
            _state.depth = _depth() + 1
            try:
                return method(self, *args, **kwargs)
            finally:
                _state.depth -= 1

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
    """Wrap mongomock-ng's classes once per process; idempotent and thread-safe."""
    global _installed
    with _install_guard:
        if _installed:
            return
        collection_class = _collection_module.Collection
        for name in _COLLECTION_COMMANDS:
            original = getattr(collection_class, name)
            if not getattr(original, "__ledger_serialized__", False):
                setattr(collection_class, name, _serialized_command(name, original))
        cursor_class = _collection_module.Cursor
        cursor_class._compute_results = _serialized(cursor_class._compute_results)
        _patch_sessions(_session_module.ClientSession)
        _patch_snapshots(_store_module.CollectionStore, collection_class)
        _installed = True


def _patch_sessions(session_class: type) -> None:
    """Hold ENGINE_LOCK for the life of each transaction; make a repeated commit succeed as MongoDB does."""
    original_start = session_class.start_transaction
    original_commit = session_class.commit_transaction
    original_abort = session_class.abort_transaction

    def start_transaction(self, *args, **kwargs):
        ENGINE_LOCK.acquire()
        try:
            self._ledger_committed = False
            return original_start(self, *args, **kwargs)
        except BaseException:
            ENGINE_LOCK.release()
            raise

    def commit_transaction(self):
        if not self.in_transaction and getattr(self, "_ledger_committed", False):
            # MongoDB answers a retried commit of a committed transaction with success; so do we.
            _notify("commitTransaction", "admin")
            return None
        _notify("commitTransaction", "admin")
        original_commit(self)
        self._ledger_committed = True
        ENGINE_LOCK.release()
        return None

    def abort_transaction(self):
        was_open = self.in_transaction
        try:
            original_abort(self)
        finally:
            if was_open:
                ENGINE_LOCK.release()

    session_class.start_transaction = start_transaction
    session_class.commit_transaction = commit_transaction
    session_class.abort_transaction = abort_transaction


def _patch_snapshots(store_class: type, collection_class: type) -> None:
    """Make a transaction's rollback snapshot cost O(documents it updates), not a deep copy of the collection.

    mongomock-ng deep-copies every collection a transaction touches when it first touches it, so each transfer
    copied the whole ledger, outbox and transaction history (its cost grew with every transfer ever made).
    Under ENGINE_LOCK only the transaction itself writes, and the only in-place change mongomock-ng makes to a
    stored document is an update (inserts and deletes add or remove dict entries). So the snapshot is a shallow
    copy of the collection (same order, same document objects) plus a deep copy of each document taken just
    before the transaction first updates it; abort puts those back.
    """
    original_commit = store_class.commit_transaction
    original_abort = store_class.abort_transaction
    original_update = collection_class._update_documents

    def begin_transaction(self):
        self._saved_documents = collections.OrderedDict(self._documents)
        self._saved_indexes = copy.deepcopy(self.indexes)
        self._saved_ttl_indexes = copy.deepcopy(self._ttl_indexes)
        self._ledger_preimages = {}

    def commit_transaction(self):
        self._ledger_preimages = None
        original_commit(self)

    def abort_transaction(self):
        preimages = getattr(self, "_ledger_preimages", None)
        if self._saved_documents is not None and preimages:
            for document_id, preimage in preimages.items():
                if document_id in self._saved_documents:
                    self._saved_documents[document_id] = preimage
        self._ledger_preimages = None
        original_abort(self)

    def _update_documents(self, spec, document, *args, **kwargs):
        preimages = getattr(self._store, "_ledger_preimages", None)
        if preimages is not None:
            for stored in list(self._store.documents):
                if stored["_id"] not in preimages and _filter_applies(spec, stored):
                    preimages[stored["_id"]] = _clone_document(stored)
        return original_update(self, spec, document, *args, **kwargs)

    store_class.begin_transaction = begin_transaction
    store_class.commit_transaction = commit_transaction
    store_class.abort_transaction = abort_transaction
    collection_class._update_documents = _update_documents


def _notify(name: str, collection: str) -> None:
    if _depth() == 0:
        for listener in list(_listeners):
            listener(name, collection)


def create_client() -> mongomock_ng.MongoClient:
    """A new in-memory client whose operations are serialized process-wide."""
    _install()
    return mongomock_ng.MongoClient(tz_aware=True)
