"""The embedded engine on disk: one owner per folder, a write-ahead journal with group commit, snapshots.

Folder layout (``LEDGER_DATA_DIR``)::

    LOCK              flock()ed by the process that owns the folder; says who (pid, host, start time)
    snapshot          the whole database at one journal boundary (absent until the first compaction)
    journal.<N>       records appended since snapshot N was written
    jwt-secret        the development JWT secret (see config.py)

A journal record is ``length (4 bytes) | crc32 (4 bytes) | payload``; the payload is a list of operations:
the new state of every document a commit (or a standalone write) changed, and the definition of every
collection whose indexes or options changed. A record of document writes is BSON (``BSN1`` then one BSON
document), which the driver's C extension encodes and decodes in microseconds; a record defining a collection,
or holding a value BSON cannot carry exactly, is a pickle (older folders hold only pickles: both are read).

A commit appends its record under the engine lock, then waits (without the lock) until an fsync covers it:
whoever finds no fsync running starts one for everything appended so far, so concurrent commits share a flush
(group commit). If an fsync fails the engine is poisoned:
that commit and every later operation fail, and only a restart (which replays what reached the disk) serves
again.

Start-up loads the snapshot and replays the journal. A record cut short or failing its checksum ends the
journal: it was never acknowledged (its fsync had not returned), so it is discarded and the file truncated
there, with a warning. Compaction writes a new snapshot (temp file, fsync, rename, fsync the folder), then
starts an empty journal and deletes the old one.

Pickled records and snapshot headers mean the folder is as trusted as the code that reads it (anyone who can
write it can change every balance anyway); pickle hands back exactly the objects that were committed. BSON
hands back equal values: documents as dicts, naive UTC datetimes (the store keeps them so), and 64-bit
integers as plain ints (a type decoder undoes the driver's ``Int64`` wrapper, which BSON also puts on any
plain int beyond 32 bits). So an ``Int64`` the app stored (a LongField) comes back from a journal record as
an equal ``int``, where a snapshot keeps it an ``Int64``: the same value, arithmetic, comparisons, order and
JSON, told apart only by ``type()`` or a ``$type: "long"`` query, which nothing here makes. Decoding them
all as ``Int64`` instead would turn every large plain int into one.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import pickle
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import bson
from bson.codec_options import CodecOptions, TypeDecoder, TypeRegistry
from bson.errors import InvalidDocument
from bson.int64 import Int64
from bson.objectid import ObjectId
from pymongo.errors import ConnectionFailure

log = logging.getLogger(__name__)

LOCK_NAME = "LOCK"
SNAPSHOT_NAME = "snapshot"
JOURNAL_PREFIX = "journal."
LOCK_FD_ENV = "LEDGER_DATA_LOCK_FD"
_HEADER = struct.Struct("<II")
_SNAPSHOT_MAGIC = b"LEDGERSNAP1\n"
# Compact when the journal is this large and larger than the last snapshot (so compaction cost stays
# proportional to the writes since the last one).
COMPACT_MIN_BYTES = 64 * 1024 * 1024


class EngineFailure(ConnectionFailure):
    """The engine cannot guarantee durability any more (an fsync failed): restart it."""


class FolderOwned(ConnectionFailure):
    """The data folder belongs to another running process; this one has a read-only view."""


class FolderLocked(RuntimeError):
    """A server cannot start: another process owns the data folder."""


# --------------------------------------------------------------------------------------------- the lock


def _describe_holder(path: str) -> str:
    try:
        with open(os.path.join(path, LOCK_NAME), encoding="utf-8") as handle:
            info = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('started')})"


def owned_message(path: str) -> str:
    return (f"the data folder {path} is in use by a running server ({_describe_holder(path)}): stop it first; "
            f"read-only commands such as verify-ledger work meanwhile")


def _inherited_lock(path: str) -> int | None:
    """The lock fd a gunicorn master took for this folder and its worker inherited, if that is what we have."""
    raw = os.environ.get(LOCK_FD_ENV, "")
    if not raw.isdigit():
        return None
    fd = int(raw)
    try:
        held = os.fstat(fd)
        on_disk = os.stat(os.path.join(path, LOCK_NAME))
    except OSError:
        return None
    if (held.st_dev, held.st_ino) != (on_disk.st_dev, on_disk.st_ino):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # same open file: succeeds if our master holds it
    except OSError:
        return None
    return fd


def acquire_lock(path: str) -> int | None:
    """Own ``path``: return the locked fd, or None if another live process holds it."""
    os.makedirs(path, exist_ok=True)
    inherited = _inherited_lock(path)
    if inherited is not None:
        return inherited
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            return None
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


def _usable_folder(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise FolderLocked(f"cannot start: the data folder {os.path.abspath(path)} is not writable ({exc.strerror}); "
                           f"set LEDGER_DATA_DIR to a writable folder (a volume in a container), or to :memory: "
                           f"to keep nothing") from exc


def lock_for_server(path: str) -> int:
    """Take the folder's lock for a server about to start (a gunicorn master), or raise naming the holder.

    The fd is inheritable and its number is exported in ``LEDGER_DATA_LOCK_FD``, so the workers the master
    forks own the folder through it, and the lock lives exactly as long as the master (or, after a kill -9 of
    the master alone, its last worker).
    """
    _usable_folder(path)
    fd = acquire_lock(path)
    if fd is None:
        raise FolderLocked(f"cannot start: {owned_message(path)}")
    os.set_inheritable(fd, True)
    os.environ[LOCK_FD_ENV] = str(fd)
    return fd


# ------------------------------------------------------------------------------------------ the journal

_BSON_TAG = b"BSN1"  # a pickle (protocol 2 and later) starts with b"\x80": the two cannot be confused


class _PlainInt(TypeDecoder):
    bson_type = Int64

    def transform_bson(self, value: Any) -> int:
        return int(value)


_CODEC = CodecOptions(document_class=dict, tz_aware=False, type_registry=TypeRegistry([_PlainInt()]))
_BSON_IDS = (ObjectId, str, int)


def encode_operations(operations: list[tuple]) -> bytes:
    """One record's payload: BSON when every operation is a document write BSON carries exactly, else pickle."""
    if all(op[0] != "meta" and type(op[3]) in _BSON_IDS for op in operations):
        try:
            return _BSON_TAG + bson.encode({"o": operations}, codec_options=_CODEC)
        except (InvalidDocument, OverflowError, TypeError, ValueError):
            pass  # e.g. a Decimal or a set in a document: pickle keeps it as it is
    return pickle.dumps(operations, protocol=pickle.HIGHEST_PROTOCOL)


def decode_operations(payload: bytes) -> list[tuple]:
    if payload[:len(_BSON_TAG)] == _BSON_TAG:
        return [tuple(op) for op in bson.decode(payload[len(_BSON_TAG):], codec_options=_CODEC)["o"]]
    return pickle.loads(payload)  # noqa: S301 - our own folder, see the module docstring



def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: str) -> tuple[list[Any], int, int]:
    """(decoded payloads, offset of the end of the last good record, file size)."""
    with open(path, "rb") as handle:
        data = handle.read()
    records = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        payload = data[start:start + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            break
        try:
            records.append(decode_operations(payload))
        except Exception:  # a payload that passes its checksum but does not decode: treat as corrupt
            break
        offset = start + length
    return records, offset, len(data)


class Journal:
    """An append-only file with group-committed fsyncs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self.fd).st_size
        self._written = 0  # bytes appended by this object (sequence numbers for waiters)
        self._durable = 0
        self._syncing = False
        self._condition = threading.Condition()
        self.failure: BaseException | None = None
        self.fsyncs = 0

    def append(self, payload: bytes) -> int:
        """Write one record (called under the engine lock); returns the ticket to wait on."""
        if self.failure is not None:
            raise EngineFailure(f"the embedded engine stopped after a disk failure: {self.failure}")
        record = _frame(payload)
        try:
            written = os.write(self.fd, record)
            if written != len(record):
                raise OSError(errno.EIO, f"short write to the journal ({written} of {len(record)} bytes)")
        except OSError as exc:
            self.failure = exc
            raise EngineFailure(f"could not write the journal: {exc}") from exc
        self.size += len(record)
        with self._condition:
            self._written += len(record)
            return self._written

    def wait(self, ticket: int) -> None:
        """Return once an fsync covering ``ticket`` has completed; raise if the disk failed."""
        condition = self._condition
        with condition:
            while True:
                if self.failure is not None:
                    raise EngineFailure(f"the embedded engine stopped after a disk failure: {self.failure}")
                if self._durable >= ticket:
                    return
                if not self._syncing:
                    break
                condition.wait()
            self._syncing = True
            target = self._written
        error: BaseException | None = None
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            error = exc
        with condition:
            self._syncing = False
            self.fsyncs += 1
            if error is not None:
                self.failure = error
                log.critical("fsync of the journal failed (%s): the embedded engine refuses every operation "
                             "until restarted", error)
            else:
                self._durable = max(self._durable, target)
            condition.notify_all()
            if error is not None:
                raise EngineFailure(f"fsync of the journal failed: {error}") from error

    def sync_all(self) -> None:
        with self._condition:
            target = self._written
        if target:
            self.wait(target)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


# ------------------------------------------------------------------------------------------ snapshots


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(path: str, generation: int, collections: Iterator[tuple]) -> int:
    """Write ``collections`` (db, name, indexes, options, created, documents) atomically; return its size."""
    final = os.path.join(path, SNAPSHOT_NAME)
    temporary = final + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(_SNAPSHOT_MAGIC)

        def dump(item: Any) -> None:  # one self-contained pickle per item (no memo shared between items)
            pickle.dump(item, handle, protocol=pickle.HIGHEST_PROTOCOL)

        dump({"generation": generation})
        for database, name, indexes, options, created, documents in collections:
            dump(("collection", database, name, indexes, options, created, len(documents)))
            items = list(documents.items())
            for start in range(0, len(items), 5000):
                dump(items[start:start + 5000])
        dump(("end",))
        handle.flush()
        os.fsync(handle.fileno())
        size = handle.tell()
    os.replace(temporary, final)
    _fsync_dir(path)
    return size


def read_snapshot(path: str) -> tuple[int, list[tuple]]:
    """(generation, [(db, name, indexes, options, created, [(id, doc), ...]), ...]); (0, []) if none."""
    final = os.path.join(path, SNAPSHOT_NAME)
    try:
        handle = open(final, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return 0, []
    with handle:
        if handle.read(len(_SNAPSHOT_MAGIC)) != _SNAPSHOT_MAGIC:
            raise RuntimeError(f"{final} is not a ledger snapshot")
        def load() -> Any:
            return pickle.load(handle)  # noqa: S301 - our own folder, see the module docstring

        header = load()
        result = []
        while True:
            item = load()
            if item[0] == "end":
                break
            _kind, database, name, indexes, options, created, count = item
            documents: list = []
            while len(documents) < count:
                documents.extend(load())
            result.append((database, name, indexes, options, created, documents))
    return header["generation"], result


def journal_path(path: str, generation: int) -> str:
    return os.path.join(path, f"{JOURNAL_PREFIX}{generation}")


def old_journals(path: str, keep_from: int) -> list[str]:
    stale = []
    for name in os.listdir(path):
        suffix = name[len(JOURNAL_PREFIX):]
        if name.startswith(JOURNAL_PREFIX) and suffix.isdigit() and int(suffix) < keep_from:
            stale.append(os.path.join(path, name))
    return stale

