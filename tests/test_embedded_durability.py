"""The embedded engine on disk: recovery, torn tails, compaction, fsync failure, the folder's one owner."""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import random
import threading
from decimal import Decimal

import mongomock_ng
import pytest
from bson import Int64, ObjectId
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from ledger import embedded
from ledger import embedded_journal as journal


@pytest.fixture
def folder(tmp_path):
    path = str(tmp_path / "data")
    yield path
    embedded.close_engine(path)


def _restart(path: str):
    embedded.close_engine(path)
    return embedded.create_client(path)


def _collection(client):
    return client["bank"]["things"]


def _journal_file(path: str) -> str:
    names = [name for name in os.listdir(path) if name.startswith(journal.JOURNAL_PREFIX)]
    assert len(names) == 1, names
    return os.path.join(path, names[0])


def _write_history(client) -> dict:
    things = _collection(client)
    things.create_indexes([IndexModel([("k", ASCENDING)], unique=True)])
    things.insert_many([{"_id": n, "k": n, "v": 0} for n in range(20)])
    with client.start_session() as session:
        session.start_transaction()
        things.update_one({"_id": 3}, {"$inc": {"v": 5}}, session=session)
        things.delete_one({"_id": 4}, session=session)
        session.commit_transaction()
    with client.start_session() as session:  # aborted: must leave no trace after a restart
        session.start_transaction()
        things.update_one({"_id": 5}, {"$inc": {"v": 100}}, session=session)
        things.insert_one({"_id": 99, "k": 99}, session=session)
        session.abort_transaction()
    things.update_many({"k": {"$gte": 18}}, {"$set": {"v": 7}})
    return {doc["_id"]: doc for doc in things.find({})}


def test_a_restart_recovers_every_committed_write_and_the_indexes(folder):
    expected = _write_history(embedded.create_client(folder))
    things = _collection(_restart(folder))
    assert {doc["_id"]: doc for doc in things.find({})} == expected
    assert [doc["_id"] for doc in things.find({})] == list(expected)  # natural order too
    with pytest.raises(DuplicateKeyError):
        things.insert_one({"k": 7})
    with embedded.no_scans():
        assert things.find_one({"k": 3})["v"] == 5


@pytest.mark.parametrize("damage", ["cut", "garbage", "bad-checksum"])
def test_a_torn_or_corrupt_tail_is_discarded_and_logged(folder, damage, caplog):
    client = embedded.create_client(folder)
    things = _collection(client)
    things.insert_one({"_id": "kept", "v": 1})
    size_before = os.path.getsize(_journal_file(folder))
    things.insert_one({"_id": "torn", "v": 2})
    embedded.close_engine(folder)
    path = _journal_file(folder)
    with open(path, "r+b") as handle:
        data = handle.read()
        if damage == "cut":  # the crash hit mid-record
            handle.truncate(size_before + random.randint(1, len(data) - size_before - 1))
        elif damage == "garbage":
            handle.write(os.urandom(37))
        else:
            handle.seek(len(data) - 1)
            handle.write(bytes([data[-1] ^ 0xFF]))
    caplog.set_level(logging.WARNING, logger="ledger.embedded_journal")
    caplog.set_level(logging.WARNING, logger="ledger.embedded")
    things = _collection(embedded.create_client(folder))
    ids = [doc["_id"] for doc in things.find({})]
    assert ids == (["kept", "torn"] if damage == "garbage" else ["kept"])
    assert "discarded" in caplog.text
    things.insert_one({"_id": "after", "v": 3})  # the journal goes on from the last good record
    assert [doc["_id"] for doc in _collection(_restart(folder)).find({})][-1] == "after"


def test_compaction_writes_a_snapshot_and_starts_a_new_journal(folder, monkeypatch):
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 4096)
    client = embedded.create_client(folder)
    things = _collection(client)
    things.create_indexes([IndexModel([("k", ASCENDING)], unique=True)])
    for n in range(300):
        things.insert_one({"_id": n, "k": n, "pad": "x" * 50})
    things.delete_many({"_id": {"$in": list(range(0, 300, 3))}})
    engine = embedded.engine_of(client)
    assert engine.generation >= 1
    assert os.path.exists(os.path.join(folder, journal.SNAPSHOT_NAME))
    assert sorted(os.listdir(folder)) == sorted(["LOCK", "snapshot", f"journal.{engine.generation}"])
    expected = list(things.find({}))
    things = _collection(_restart(folder))
    assert list(things.find({})) == expected
    with pytest.raises(DuplicateKeyError):
        things.insert_one({"k": 1})


def test_a_failed_fsync_fails_the_write_and_every_later_operation(folder, monkeypatch):
    things = _collection(embedded.create_client(folder))
    things.insert_one({"_id": 1})

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal.os, "fdatasync", broken)
    with pytest.raises(embedded.EngineFailure):
        things.insert_one({"_id": 2})
    monkeypatch.undo()
    with pytest.raises(embedded.EngineFailure):
        things.find_one({"_id": 1})
    assert [doc["_id"] for doc in _collection(_restart(folder)).find({})] in ([1], [1, 2])


def test_a_second_opener_gets_a_read_only_view_and_its_writes_are_refused(folder):
    owner = embedded.create_client(folder)
    _collection(owner).insert_one({"_id": 1, "v": 1})
    # As another process would: a fresh open of the folder finds the lock taken and gets a read-only view.
    viewer = mongomock_ng.MongoClient(tz_aware=True, _store=embedded.Engine.open(folder).server_store)
    assert embedded.engine_of(viewer).read_only_reason
    assert f"pid {os.getpid()}" in embedded.engine_of(viewer).read_only_reason
    assert _collection(viewer).find_one({"_id": 1})["v"] == 1
    with pytest.raises(embedded.FolderOwned, match="in use by a running server"):
        _collection(viewer).insert_one({"_id": 2})
    with pytest.raises(embedded.FolderOwned):
        _collection(viewer).update_one({"_id": 1}, {"$set": {"v": 2}})
    assert _collection(viewer).find_one({"_id": 1})["v"] == 1  # the refused update changed nothing
    with pytest.raises(journal.FolderLocked, match=f"pid {os.getpid()}"):
        journal.lock_for_server(folder)


def test_a_commit_that_triggers_compaction_is_acknowledged(folder, monkeypatch):
    # Every flush compacts: the commit waits on the journal it was written to, which compaction synced and
    # replaced; it must return, not wait for a flush of the new journal that may never come.
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 1)
    client = embedded.create_client(folder)
    done = threading.Event()

    def write() -> None:
        things = _collection(client)
        things.insert_one({"_id": "a"})
        with client.start_session() as session:
            session.start_transaction()
            things.insert_one({"_id": "b"}, session=session)
            session.commit_transaction()
        done.set()

    worker = threading.Thread(target=write, daemon=True)
    worker.start()
    assert done.wait(20), "a write whose flush compacted never returned"
    assert embedded.engine_of(client).generation >= 1
    assert [doc["_id"] for doc in _collection(_restart(folder)).find({})] == ["a", "b"]


def test_a_snapshot_of_several_large_collections_loads_back_identical(folder):
    client = embedded.create_client(folder)
    database = client["bank"]
    database.big.create_indexes([IndexModel([("k", ASCENDING)], unique=True)])
    database.big.insert_many([{"_id": n, "k": n, "shared": {"nested": [n, str(n)]}} for n in range(12_345)])
    database.small.insert_many([{"_id": f"s{n}", "when": datetime.datetime(2026, 1, 1, 0, 0, n)} for n in range(7)])
    client["other"].more.insert_one({"_id": "x", "v": [1, 2, 3]})
    engine = embedded.engine_of(client)
    with embedded.ENGINE_LOCK:
        engine.compact()
    expected = {(db_name, name): list(client[db_name][name].find({}))
                for db_name, name in (("bank", "big"), ("bank", "small"), ("other", "more"))}
    reopened = _restart(folder)
    assert embedded.engine_of(reopened).replayed_records == 0  # all of it came from the snapshot
    for (db_name, name), documents in expected.items():
        assert list(reopened[db_name][name].find({})) == documents
    with pytest.raises(DuplicateKeyError):
        reopened["bank"].big.insert_one({"k": 12_000})


def test_a_commit_without_a_transaction_fails_and_leaves_the_engine_journaling(folder):
    from pymongo.errors import InvalidOperation

    client = embedded.create_client(folder)
    with client.start_session() as session, pytest.raises(InvalidOperation):
        session.commit_transaction()
    assert embedded.engine_of(client).transactions_open == 0
    _collection(client).insert_one({"_id": "after"})  # journaled and durable as usual
    assert _collection(_restart(folder)).find_one({"_id": "after"}) is not None


def test_a_renamed_collection_keeps_its_documents_and_indexes_across_a_restart(folder):
    client = embedded.create_client(folder)
    database = client["bank"]
    database.old.create_indexes([IndexModel([("k", ASCENDING)], unique=True)])
    database.old.insert_many([{"_id": n, "k": n} for n in range(5)])
    database.old.rename("new")
    reopened = _restart(folder)["bank"]
    assert [doc["_id"] for doc in reopened.new.find({})] == [0, 1, 2, 3, 4]
    assert reopened.old.count_documents({}) == 0
    with pytest.raises(DuplicateKeyError):
        reopened.new.insert_one({"k": 3})


def _typed(value):
    """A value with every type spelled out (``==`` alone calls ``Int64(5)`` equal to ``5``)."""
    if isinstance(value, dict):
        return (type(value).__name__, [(key, _typed(item)) for key, item in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_typed(item) for item in value])
    return (type(value).__name__, value)


def test_journal_records_of_document_writes_are_bson_and_decode_to_the_same_values():
    stamp = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000)  # as the store keeps it: naive UTC, milliseconds
    document = {"_id": ObjectId(), "user": ObjectId(), "balance": 2**40, "small": 5, "negative": -2**35,
                "rate": 1.5, "ok": True, "none": None, "when": stamp, "tags": ["a", {"nested": [1, 2**62]}],
                "raw": b"\x00\x01", "name": "Zoë ✓"}
    operations = [("put", "bank", "accounts", document["_id"], document), ("del", "bank", "ledgers", "key-1"),
                  ("put", "bank", "counters", 7, {"_id": 7, "n": 1})]
    payload = journal.encode_operations(operations)
    assert payload.startswith(b"BSN1")
    assert _typed(journal.decode_operations(payload)) == _typed(operations)


def test_an_int64_comes_back_from_a_journal_record_as_an_equal_int():
    """What the journal's docstring says: an Int64 (a LongField) is replayed as an int of the same value,
    serialised the same way; only its type differs."""
    import json

    document = {"_id": "acc", "balance": Int64(2**40), "held": Int64(5), "plain": 2**40}
    (operation,) = journal.decode_operations(journal.encode_operations([("put", "b", "c", "acc", document)]))
    replayed = operation[4]
    assert replayed == document
    assert {name: type(value) for name, value in replayed.items()} == {
        "_id": str, "balance": int, "held": int, "plain": int}
    assert json.dumps(replayed) == json.dumps(document)


@pytest.mark.parametrize("operations", [
    [("put", "bank", "things", "x", {"_id": "x", "amount": Decimal("1.10")})],  # BSON has no Decimal
    [("put", "bank", "things", "x", {"_id": "x", "big": 2**70})],  # beyond 64 bits
    [("meta", "bank", "things", {"_id_": {"key": [("_id", 1)]}}, {}, True)],  # a collection's definition
    [("del", "bank", "things", ("tuple", "id"))],  # an id BSON would hand back as a list
], ids=["decimal", "huge-int", "meta", "tuple-id"])
def test_a_record_bson_cannot_carry_exactly_is_pickled_and_still_read(operations):
    payload = journal.encode_operations(operations)
    assert payload[:1] == b"\x80"
    assert _typed(journal.decode_operations(payload)) == _typed(operations)


def test_a_folder_written_with_pickled_records_still_opens(folder):
    client = embedded.create_client(folder)
    _collection(client).insert_one({"_id": "kept", "n": 1})
    embedded.close_engine(folder)
    path = _journal_file(folder)
    records, _good, _size = journal.read_records(path)
    with open(path, "wb") as handle:  # the same records as an older version wrote them: pickles
        for operations in records:
            handle.write(journal._frame(pickle.dumps(operations, protocol=pickle.HIGHEST_PROTOCOL)))
    client = embedded.create_client(folder)
    assert _collection(client).find_one({"_id": "kept"}) == {"_id": "kept", "n": 1}


@pytest.mark.parametrize(("threshold", "frozen"), [(3, True), (1000, False)])
def test_a_large_loaded_database_is_taken_out_of_the_garbage_collectors_walks(folder, monkeypatch, threshold,
                                                                             frozen):
    client = embedded.create_client(folder)
    _collection(client).insert_many([{"n": n} for n in range(5)])
    embedded.close_engine(folder)
    calls = []
    monkeypatch.setattr(embedded, "FREEZE_AFTER_LOADING", threshold)
    monkeypatch.setattr(embedded.gc, "freeze", lambda: calls.append("freeze"))
    client = embedded.create_client(folder)
    assert _collection(client).count_documents({}) == 5
    assert calls == (["freeze"] if frozen else [])


def test_compaction_collects_then_freezes_what_is_left(folder, monkeypatch):
    calls = []
    monkeypatch.setattr(embedded.gc, "collect", lambda *args: calls.append("collect"))
    monkeypatch.setattr(embedded.gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 4096)
    client = embedded.create_client(folder)
    for n in range(200):
        _collection(client).insert_one({"_id": n, "pad": "x" * 50})
    assert embedded.engine_of(client).generation >= 1
    assert calls[:2] == ["collect", "freeze"]
    assert calls == ["collect", "freeze"] * (len(calls) // 2)
