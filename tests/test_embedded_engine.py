"""The embedded engine's indexes, unique checks, TTL and transactions agree with a plain scan.

Every filter answered from an index must return exactly what mongomock-ng's full scan (``filter_applies`` on
every document, in natural order) returns; unique indexes must refuse exactly the duplicates; an aborted
transaction must leave documents, indexes and natural order as they were. Hypothesis generates the documents
(missing fields, nulls, arrays, mixed types, aware and naive datetimes) and the filters.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime
import itertools

import pytest
from bson import SON, Decimal128, Int64, ObjectId, Regex, Timestamp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mongomock_ng import helpers
from mongomock_ng.filtering import filter_applies
from mongomock_ng.helpers import NOTHING
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from ledger import embedded

_BASE = datetime.datetime(2026, 1, 1, 12, 0, 0)
_IDS = itertools.count()

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([1.0, 2.5, -0.0]),
    st.sampled_from(["a", "b", "B", ""]),
    st.sampled_from([ObjectId("000000000000000000000001"), ObjectId("000000000000000000000002")]),
    st.integers(min_value=0, max_value=3).map(lambda n: _BASE + datetime.timedelta(seconds=n)),
    st.integers(min_value=0, max_value=3).map(
        lambda n: (_BASE + datetime.timedelta(seconds=n)).replace(tzinfo=datetime.UTC)),
)
stored_values = st.one_of(values, st.lists(values, max_size=3))
documents = st.fixed_dictionaries({}, optional={"a": stored_values, "b": stored_values, "c": values})


def _conditions() -> st.SearchStrategy:
    return st.one_of(
        values,
        values.map(lambda v: {"$eq": v}),
        st.lists(values, min_size=1, max_size=3).map(lambda vs: {"$in": vs}),
        values.map(lambda v: {"$ne": v}),
        st.integers(min_value=-3, max_value=3).map(lambda v: {"$gte": v}),
        st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), values, min_size=1, max_size=2),
        st.lists(values, max_size=2),  # whole-array equality
    )


filters = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), _conditions(), max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), _conditions(), min_size=1, max_size=2),
             min_size=1, max_size=3).map(lambda branches: {"$or": branches}),
)


def _fresh_collection(indexes: list[IndexModel], docs: list | None = None, late: bool = False):
    """A new collection holding ``docs``; its indexes built before the inserts, or (``late``) over them, as a
    restart or a new index builds them."""
    client = embedded.create_client(embedded.MEMORY)
    collection = client["engine-test"][f"c{next(_IDS)}"]
    if indexes and not late:
        collection.create_indexes(indexes)
    for doc in docs or ():
        collection.insert_one(dict(doc))
    if indexes and late:
        collection.create_indexes(indexes)
    return collection


def _scan(collection, query: dict) -> list:
    # What mongomock-ng's plain scan returns: every stored document the filter (with datetimes made naive UTC,
    # as its cursor does) applies to, in natural order.
    query = helpers.patch_datetime_awareness_in_document(query)
    stored = list(collection._store._documents.values())
    return [doc.get("_id") for doc in stored if filter_applies(query, doc)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(documents, max_size=12), query=filters, late=st.booleans())
def test_indexed_answers_equal_a_full_scan(docs, query, late):
    collection = _fresh_collection([IndexModel([("a", ASCENDING)]), IndexModel([("a", ASCENDING), ("b", ASCENDING)]),
                                    IndexModel([("c", ASCENDING)], sparse=True)], docs, late)
    # Update some documents in place, so the index must follow changes mongomock-ng makes to stored objects.
    collection.update_many({"c": 1}, {"$set": {"a": "b"}})
    try:
        expected = _scan(collection, query)
    except Exception as exc:  # an invalid filter must fail the same way through the index
        with pytest.raises(type(exc)):
            list(collection.find(query))
        return
    assert [doc["_id"] for doc in collection.find(query)] == expected
    assert collection.count_documents(query) == len(expected)


sorts = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "_id"]), st.sampled_from([1, -1])),
                 min_size=1, max_size=2, unique_by=lambda item: item[0])


# Mostly one class per key, so the index's ordered buckets (not only the fallback sort) are exercised.
ordered_documents = st.fixed_dictionaries(
    {"a": st.sampled_from(["x", "y"]), "b": st.one_of(st.integers(0, 4), st.integers(0, 4).map(
        lambda n: _BASE + datetime.timedelta(seconds=n)))},
    optional={"c": st.integers(0, 2)})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(st.one_of(documents, ordered_documents, ordered_documents), max_size=14), query=filters,
       sort=sorts, abort=st.booleans(), late=st.booleans())
def test_find_one_with_a_sort_equals_the_first_of_the_sorted_scan(docs, query, sort, abort, late):
    collection = _fresh_collection([IndexModel([("a", ASCENDING), ("b", ASCENDING)])], docs, late)
    collection.update_many({"c": 1}, {"$set": {"b": 2}})  # moves documents within the ordered buckets
    collection.delete_many({"c": 2})
    if abort:  # an aborted transaction must leave the ordered buckets as they were
        with collection.database.client.start_session() as session:
            session.start_transaction()
            collection.update_many({"a": "x"}, {"$set": {"b": 3}}, session=session)
            collection.insert_one({"a": "y", "b": 0}, session=session)
            session.abort_transaction()
    try:
        expected = list(collection.find(query, sort=sort, limit=1))  # mongomock-ng's own path
    except Exception as exc:
        with pytest.raises(type(exc)):
            collection.find_one(query, sort=sort)
        return
    assert collection.find_one(query, sort=sort) == (expected[0] if expected else None)


def test_lookups_on_declared_indexes_never_scan():
    collection = _fresh_collection([IndexModel([("user", ASCENDING), ("status", ASCENDING)])])
    collection.insert_many([{"user": n % 3, "status": "ACTIVE" if n % 2 else "FROZEN"} for n in range(30)])
    with embedded.no_scans():
        assert collection.count_documents({"user": 1}) == 10
        assert collection.count_documents({"user": {"$in": [1, 2]}, "status": "ACTIVE"}) == 10
        first = collection.find_one({"user": 2})
        assert collection.find_one({"_id": first["_id"]})["user"] == 2
        collection.update_one({"_id": first["_id"], "status": first["status"]}, {"$set": {"status": "CLOSED"}})
        assert collection.count_documents({"user": 2, "status": "CLOSED"}) == 1
        with pytest.raises(embedded.ScanForbidden):
            collection.find_one({"status": "ACTIVE"})  # no index leads with status
    before = embedded.SCANS[collection.name]
    assert collection.count_documents({"status": "ACTIVE"}) == 15
    assert embedded.SCANS[collection.name] == before + 1  # the fallback is counted


@settings(max_examples=150, deadline=None)
@given(docs=st.lists(documents, max_size=10), candidate=documents, sparse=st.booleans())
def test_unique_indexes_refuse_exactly_the_duplicates(docs, candidate, sparse):
    collection = _fresh_collection([IndexModel([("a", ASCENDING), ("b", ASCENDING)], unique=True, sparse=sparse)])
    for doc in docs:
        with contextlib.suppress(DuplicateKeyError):
            collection.insert_one(dict(doc))
    stored = list(collection._store._documents.values())
    index = collection._store._index_objects["a_1_b_1"]
    new_entries = index.entries(helpers.patch_datetime_awareness_in_document(candidate)) or ()  # as stored
    clash = any(set(new_entries) & set(index.entries(doc) or ()) for doc in stored)
    if clash:
        with pytest.raises(DuplicateKeyError):
            collection.insert_one(dict(candidate))
    else:
        collection.insert_one(dict(candidate))


def test_an_aborted_transaction_restores_documents_indexes_and_order():
    collection = _fresh_collection([IndexModel([("k", ASCENDING)], unique=True)])
    collection.insert_many([{"_id": n, "k": n, "v": 0} for n in range(5)])
    client = collection.database.client
    with client.start_session() as session:
        session.start_transaction()
        collection.update_one({"_id": 1}, {"$set": {"k": 10, "v": 1}}, session=session)
        collection.delete_one({"_id": 2}, session=session)
        collection.insert_one({"_id": 9, "k": 2}, session=session)  # takes the deleted document's key
        session.abort_transaction()
    assert [doc["_id"] for doc in collection.find({})] == [0, 1, 2, 3, 4]
    assert collection.find_one({"k": 1})["_id"] == 1
    assert collection.find_one({"k": 10}) is None
    assert collection.find_one({"k": 2})["_id"] == 2
    assert collection.find_one({"_id": 9}) is None
    with pytest.raises(DuplicateKeyError):
        collection.insert_one({"k": 1})


def test_ttl_indexes_expire_documents_without_scanning(monkeypatch):
    import mongomock_ng

    collection = _fresh_collection([IndexModel([("expiresAt", ASCENDING)], expireAfterSeconds=0),
                                    IndexModel([("tokenHash", ASCENDING)], unique=True, sparse=True)])
    now = datetime.datetime.now(datetime.UTC)
    collection.insert_many([{"tokenHash": f"t{n}", "expiresAt": now + datetime.timedelta(minutes=n)}
                            for n in range(1, 4)])
    monkeypatch.setattr(mongomock_ng, "utcnow", lambda: now + datetime.timedelta(minutes=2, seconds=1))
    with embedded.no_scans():
        assert collection.find_one({"tokenHash": "t1"}) is None
        assert collection.find_one({"tokenHash": "t2"}) is None
        assert collection.find_one({"tokenHash": "t3"}) is not None


def test_the_outbox_claim_walks_the_index_in_order_and_stops_at_the_first_match(monkeypatch):
    from ledger.embedded_store import IndexedCollectionStore

    collection = _fresh_collection([IndexModel([("status", ASCENDING), ("nextAttemptAt", ASCENDING)])])
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    backlog = [{"status": "PENDING", "nextAttemptAt": now - datetime.timedelta(seconds=n)} for n in range(2000)]
    backlog += [{"status": "PENDING", "nextAttemptAt": now + datetime.timedelta(hours=1)}] * 5  # not due yet
    collection.insert_many([dict(doc) for doc in backlog])
    claim = {"$or": [{"status": "PENDING", "nextAttemptAt": {"$lte": now}},
                     {"status": "SENDING", "claimedUntil": {"$lte": now}}]}
    store = collection._store
    assert isinstance(store, IndexedCollectionStore)
    assert store.ordered_candidates(claim, "nextAttemptAt", False) is not None
    checked = []
    original = embedded._filter_applies
    monkeypatch.setattr(embedded, "_filter_applies", lambda spec, doc: checked.append(1) or original(spec, doc))
    with embedded.no_scans():
        claimed = collection.find_one_and_update(claim, {"$set": {"status": "SENDING"}},
                                                 sort=[("nextAttemptAt", 1)])
    assert claimed["nextAttemptAt"] == (now - datetime.timedelta(seconds=1999)).replace(tzinfo=datetime.UTC)
    assert len(checked) <= 3  # the oldest due message, not the whole backlog


# ------------------------------------------------------------- mongomock-ng's datetime patch, made cheaper

_ZONES = [None, datetime.UTC, datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
          datetime.timezone(datetime.timedelta(hours=-3))]
patch_leaves = st.one_of(
    values,
    st.sampled_from([b"raw", 10**20, -1, True, "x" * 3]),
    st.builds(lambda seconds, micros, zone: (_BASE + datetime.timedelta(seconds=seconds, microseconds=micros))
              .replace(tzinfo=zone),
              st.integers(min_value=-10**6, max_value=10**6), st.integers(min_value=0, max_value=999_999),
              st.sampled_from(_ZONES)),
    st.sampled_from([Timestamp(5, 1), Regex("^a", "i"), Decimal128("1.5"), Int64(7)]),
)
patch_values = st.recursive(patch_leaves, lambda children: st.one_of(
    st.lists(children, max_size=3),
    st.lists(children, max_size=3).map(tuple),
    st.dictionaries(st.sampled_from(["a", "b", "$in", "c.d"]), children, max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=3).map(collections.OrderedDict),
    st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=3).map(SON),
), max_leaves=12)


def _shape(value):
    """A value with its container types spelled out (== alone would call a dict equal to an OrderedDict)."""
    if isinstance(value, dict):
        return (type(value).__name__, [(key, _shape(item)) for key, item in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_shape(item) for item in value])
    if isinstance(value, datetime.datetime):
        return ("datetime", value, value.tzinfo)
    return (type(value).__name__, value)


@settings(max_examples=400, deadline=None)
@given(value=patch_values, name=st.sampled_from(["patch_datetime_awareness_in_document",
                                                 "make_datetime_timezone_aware_in_document"]))
def test_the_faster_datetime_patches_answer_exactly_as_mongomock_does(value, name):
    embedded._install()
    fast = getattr(helpers, name)
    assert getattr(fast, "__ledger_fast__", False)
    answer = _shape(fast(value))
    setattr(helpers, name, fast.original)  # its recursion must reach itself, not us
    try:
        expected = _shape(fast.original(value))
    finally:
        setattr(helpers, name, fast)
    assert answer == expected


# ------------------------------------------------------------- the fast path for $inc/$set updates

_update_values = st.one_of(values, st.sampled_from([10**20, -7, 0.25, [1, 2], {"x": 1}]))
_update_fields = st.sampled_from(["a", "b", "u", "n", "_id", "a.b", "$x"])
# Non-ASCII names and strings (a lone surrogate BSON cannot encode) are not for the fast path: it must hand
# them to mongomock-ng, whose answer (or error) stands.
_plain_fields = st.sampled_from(["a", "b", "u", "n", "m", "é", "\ud800"])
_set_values = st.one_of(values, st.sampled_from(["é", "\ud800", "x\ud800"]))
# Mostly updates the fast path takes ($inc by numbers, $set to scalars, plain fields), then anything at all.
simple_updates = st.fixed_dictionaries({}, optional={
    "$inc": st.dictionaries(_plain_fields, st.one_of(st.integers(-3, 3), st.integers(-3, 3).map(Int64),
                                                     st.sampled_from([0.5, -1.5])), min_size=1, max_size=2),
    "$set": st.dictionaries(_plain_fields, _set_values, min_size=1, max_size=3),
}).filter(bool)
# Updates mongomock-ng makes in place, inside nested values: after a fast update of the same document they
# must not reach the copy the undo log keeps.
nested_updates = st.sampled_from([{"$set": {"m.x": 9}}, {"$push": {"l": 9}}, {"$set": {"m.x": 8}, "$inc": {"n": 1}},
                                  {"$pull": {"l": 1}}, {"$unset": {"m.x": ""}}])
updates = st.one_of(
    simple_updates, simple_updates, simple_updates, nested_updates,
    st.fixed_dictionaries({}, optional={
        "$inc": st.dictionaries(_update_fields, st.one_of(st.integers(-3, 3), st.sampled_from([0.5, True])),
                                min_size=1, max_size=2),
        "$set": st.dictionaries(_update_fields, _update_values, min_size=1, max_size=3),
    }),
    st.dictionaries(st.sampled_from(["$inc", "$set", "$unset", "$max"]), st.dictionaries(
        _update_fields, _update_values, max_size=2), max_size=2),
)
update_documents = st.fixed_dictionaries(
    {"n": st.one_of(st.integers(-3, 3), st.integers(-3, 3).map(Int64), st.sampled_from([1.5, None, "1", True]))},
    optional={"a": values, "b": values, "u": st.integers(0, 3),
              "m": st.fixed_dictionaries({"x": values}), "l": st.lists(st.integers(0, 2), max_size=3)})


def _outcome(collection, action):
    try:
        answer = action()
        raw = dict(answer.raw_result) if answer is not None else {}
        raw.pop("connectionId", None)  # each collection here has a client of its own
        result = ("ok", raw)
    except Exception as exc:  # noqa: BLE001 - the two paths must fail alike
        result = ("error", type(exc).__name__)
    result = (*result, [sorted(doc.items(), key=lambda item: item[0]) for doc in collection._store._documents.values()],
              [list(doc) for doc in collection._store._documents.values()])  # values, and key order
    return repr(result)


@example(docs=[{"n": 0, "a": None}], query={}, update=[{"$unset": {"_id": None}, "$inc": {"a": None}}], many=False,
         in_transaction=False)
@example(docs=[{"n": 0, "m": {"x": 1}, "l": [1]}], query={}, update=[{"$inc": {"n": 1}}, {"$set": {"m.x": 9}},
                                                                     {"$push": {"l": 9}}],
         many=False, in_transaction=True)  # an abort must give back the nested values as they were
@example(docs=[{"n": 0}], query={}, update=[{"$set": {"a": "\ud800"}}], many=False, in_transaction=False)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(update_documents, max_size=6), query=filters, update=st.lists(updates, min_size=1, max_size=3),
       many=st.booleans(), in_transaction=st.booleans())
def test_the_fast_update_path_answers_and_stores_exactly_what_mongomock_does(docs, query, update, many,
                                                                           in_transaction):
    """One to three updates in a row (in a transaction then aborted, or not): every answer, every stored
    document and what an abort restores are mongomock-ng's."""
    collection_class = type(_fresh_collection([]))
    fast = collection_class._update_documents
    assert getattr(fast, "__ledger_fast__", False)
    indexes = [IndexModel([("u", ASCENDING)], unique=True, sparse=True), IndexModel([("a", ASCENDING)])]
    numbered, taken = [], set()
    for number, doc in enumerate(docs):  # unique "u" values to start with; the updates may collide them
        doc = dict(doc, _id=number)
        if "u" in doc:
            if doc["u"] in taken:
                del doc["u"]
            else:
                taken.add(doc["u"])
        numbered.append(doc)
    outcomes = []
    for implementation in (fast, fast.original):
        collection = _fresh_collection(indexes, numbered)
        collection_class._update_documents = implementation
        try:
            method = collection.update_many if many else collection.update_one
            if in_transaction:  # the undo log must restore what either path changed
                with collection.database.client.start_session() as session:
                    session.start_transaction()
                    steps = [_outcome(collection, lambda method=method, step=step: method(query, step,
                                                                                          session=session))
                             for step in update]
                    session.abort_transaction()
                outcomes.append((steps, _outcome(collection, lambda: None)))
            else:
                outcomes.append([_outcome(collection, lambda method=method, step=step: method(query, step))
                                 for step in update])
        finally:
            collection_class._update_documents = fast
        # The index followed the change. (mongomock-ng can leave a document without _id: a failing update
        # that unset it in place before its error, on both paths alike.)
        assert [doc.get("_id") for doc in collection.find({"a": {"$exists": True}})] == _scan(
            collection, {"a": {"$exists": True}})
    assert outcomes[0] == outcomes[1], (docs, query, update, many, in_transaction)


@pytest.mark.parametrize("update", [{"$set": {"n": 5}}, {"$set": {"n": 6}}, {"$inc": {"n": 0}}, {"$inc": {"n": 1}}],
                         ids=["set-same", "set-other", "inc-zero", "inc-one"])
def test_a_read_only_view_refuses_every_matched_update_on_both_paths(tmp_path, update) -> None:
    """A folder another process owns is read-only here: an update that matches a document is refused, even
    one that would change nothing, as mongomock-ng's path refuses it; one that matches nothing is not."""
    import os

    import mongomock_ng

    owner = embedded.create_client(str(tmp_path))
    owner["t"]["c"].insert_one({"_id": 1, "n": 5})
    view = embedded.Engine.open(os.path.realpath(tmp_path))
    assert view.read_only_reason is not None
    collection = mongomock_ng.MongoClient(tz_aware=True, _store=view.server_store)["t"]["c"]
    collection_class = type(collection)
    fast = collection_class._update_documents
    assert getattr(fast, "__ledger_fast__", False)
    for implementation in (fast, fast.original):
        collection_class._update_documents = implementation
        try:
            with pytest.raises(embedded.FolderOwned):
                collection.update_one({"_id": 1}, update)
            assert collection.update_one({"_id": 2}, update).matched_count == 0
        finally:
            collection_class._update_documents = fast
    assert owner["t"]["c"].find_one({"_id": 1}) == {"_id": 1, "n": 5}


# ------------------------------------------------------------- the fast path for inserts

_insert_keys = st.sampled_from(["a", "b", "u", "$x", "a\0b", "é", "a.b", "_id"])
_insert_leaves = st.one_of(
    values, st.sampled_from([10**20, -2**63, 2**63, Int64(5), Int64(2**63), "naïve", "\ud800", b"bytes",
                             Decimal128("2.5"), (1, 2), frozenset({1}), Regex("^x")]),
)
_insert_values = st.recursive(_insert_leaves, lambda children: st.one_of(
    st.lists(children, max_size=2),
    st.dictionaries(_insert_keys, children, max_size=2),
    st.dictionaries(_insert_keys, children, max_size=2).map(collections.OrderedDict),
), max_leaves=6)
insert_documents = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "u", "n"]), values, max_size=4),  # what the app writes
    st.dictionaries(_insert_keys, _insert_values, max_size=4),
)


def _typed_documents(collection, generated_ids: bool) -> str:
    stored = []
    for doc in collection._store._documents.values():
        shown = {key: value for key, value in doc.items() if not (generated_ids and key == "_id")}
        stored.append(_shape(shown))
    return repr(stored)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(insert_documents, min_size=1, max_size=4), many=st.booleans())
@example(docs=[{"_id": "a"}, {"_id": "a"}], many=False)
@example(docs=[{"_id": "a"}, {"_id": "a"}], many=True)
@example(docs=[{"a": "\ud800"}], many=False)
@example(docs=[{"a": "\ud800"}], many=True)
@example(docs=[{"a": "naïve ✓"}], many=False)
@example(docs=[{"a": "naïve ✓"}], many=True)
@example(docs=[{"a": 2**63}], many=False)
@example(docs=[{"a": 2**63}], many=True)
@example(docs=[{"a": -2**63 - 1}], many=False)
@example(docs=[{"a": Int64(2**63)}], many=False)
@example(docs=[{"a": Int64(-5)}], many=False)
@example(docs=[{"a": -2**63 - 1}], many=True)
@example(docs=[{"$x": 1}], many=False)
@example(docs=[{"$x": 1}], many=True)
@example(docs=[{"a": {"b\0": 1}}], many=False)
@example(docs=[{"a": {"b\0": 1}}], many=True)
@example(docs=[{"a": [{"$in": 1}]}], many=False)
@example(docs=[{"a": [{"$in": 1}]}], many=True)
@example(docs=[{"u": 1}, {"u": 1}], many=False)
@example(docs=[{"u": 1}, {"u": 1}], many=True)
@example(docs=[{"a\0": 1}], many=False)
@example(docs=[{"a\0": 1}], many=True)
@example(docs=[{"é": 1}], many=False)
@example(docs=[{"é": 1}], many=True)
@example(docs=[{"_id": 7, "u": 2}, {"_id": 8, "u": 2}], many=False)
@example(docs=[{"_id": 7, "u": 2}, {"_id": 8, "u": 2}], many=True)
@example(docs=[{"a": (1, 2)}], many=False)
@example(docs=[{"a": (1, 2)}], many=True)
def test_the_fast_insert_path_accepts_refuses_and_stores_exactly_what_mongomock_does(docs, many):
    collection_class = type(_fresh_collection([]))
    fast = collection_class._insert
    assert getattr(fast, "__ledger_fast__", False)
    outcomes = []
    for implementation in (fast, fast.original):
        collection = _fresh_collection([IndexModel([("u", ASCENDING)], unique=True, sparse=True)])
        collection_class._insert = implementation
        copies = [copy.deepcopy(doc) for doc in docs]
        try:
            if many:
                collection.insert_many(copies)
            else:
                for doc in copies:
                    collection.insert_one(doc)
            result = "ok"
        except Exception as exc:  # noqa: BLE001 - both paths must refuse alike
            result = type(exc).__name__
        finally:
            collection_class._insert = fast
        generated = any("_id" not in doc for doc in docs)
        outcomes.append((result, _typed_documents(collection, generated),
                         [sorted(key for key in doc if key != "_id") for doc in copies],
                         ["_id" in doc for doc in copies]))
    assert outcomes[0] == outcomes[1]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(documents, max_size=10), query=filters,
       projection=st.sampled_from([None, {"a": 1}, {"a": 0}, {"_id": 0, "b": 1}, {"a": 1, "b": 0}]),
       late=st.booleans())
def test_find_one_without_a_sort_equals_mongomocks_first_match(docs, query, projection, late):
    collection = _fresh_collection([IndexModel([("a", ASCENDING)]), IndexModel([("c", ASCENDING)], sparse=True)],
                                   docs, late)
    original = type(collection).find_one.original
    try:
        expected = original(collection, query, projection=projection)
    except Exception as exc:  # noqa: BLE001 - an invalid filter or projection must fail the same way
        with pytest.raises(type(exc)):
            collection.find_one(query, projection=projection)
        return
    assert collection.find_one(query, projection=projection) == expected


# ------------------------------------------------------------- the fast path for copies handed to readers

projections = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["a", "b", "c", "_id"]), st.sampled_from([0, 1, True, False]), max_size=4),
    st.dictionaries(st.sampled_from(["a", "b", "_id", "c.d", "$x"]),
                    st.sampled_from([0, 1, True, False, 2, "$a", {"$slice": 1}]), max_size=3),
    st.lists(st.sampled_from(["a", "b", "_id"]), max_size=2),
)
copy_documents = st.one_of(
    st.fixed_dictionaries({"_id": st.integers(0, 3)}, optional={"a": values, "b": values, "c": values}),
    st.fixed_dictionaries({}, optional={"a": st.lists(values, max_size=2), "b": st.just({"d": 1}), "c": values}),
)


@settings(max_examples=600, deadline=None)
@given(doc=copy_documents, projection=projections)
def test_the_fast_copy_for_readers_equals_mongomocks_copy(doc, projection):
    collection = _fresh_collection([])
    fast = type(collection)._copy_only_fields
    assert getattr(fast, "__ledger_fast__", False)
    outcomes = []
    for implementation in (fast, fast.original):
        fields = copy.deepcopy(projection)
        try:
            answer = implementation(collection, doc, fields, dict)
            outcome = ("ok", _shape(answer), list(answer or ()))
        except Exception as exc:  # noqa: BLE001 - both must refuse alike
            outcome = ("error", type(exc).__name__)
        outcomes.append((outcome, repr(fields)))
    assert outcomes[0] == outcomes[1]
    if outcomes[0][0][0] == "ok" and outcomes[0][0][1] is not None:  # a copy, never the stored object itself
        assert fast(collection, doc, copy.deepcopy(projection), dict) is not doc


# ------------------------------------------------------------- filters answered without mongomock-ng's matcher

# A small pool, so a document and a filter often hold equal, close or same-class values.
match_values = st.sampled_from([1, 2, Int64(2), 2.0, True, False, None, "a", "b", ObjectId("000000000000000000000001"),
                                _BASE, _BASE.replace(tzinfo=datetime.UTC), [1, 2]])
match_conditions = st.one_of(
    match_values,
    st.lists(match_values, min_size=1, max_size=3).map(lambda items: {"$in": items}),
    st.tuples(st.sampled_from(["$gte", "$gt", "$lte", "$lt", "$ne", "$exists"]), match_values).map(
        lambda pair: {pair[0]: pair[1]}),
    st.just({"$in": []}), st.just({"$in": "not a list"}), st.just({"$bogus": 1}),
    st.just({"$gte": 1, "$lt": 3}), st.lists(match_values, max_size=2),
)
match_filters = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "c", "_id", "a.x"]), match_conditions, max_size=4),
    st.dictionaries(st.sampled_from(["a", "b"]), match_conditions, max_size=2).map(
        lambda spec: {**spec, "$expr": {"$gte": [{"$subtract": ["$a", {"$ifNull": ["$b", 0]}]}, 0]}}),
    st.dictionaries(st.sampled_from(["a", "$or", "$bogus"]), st.just([{"a": 1}, {"b": "a"}]), max_size=2),
)
match_documents = st.fixed_dictionaries({"_id": st.sampled_from([ObjectId("000000000000000000000001"), "x", 3])},
                                        optional={"a": match_values, "b": match_values,
                                                  "c": st.lists(match_values, max_size=2)})


@settings(max_examples=1500, deadline=None)
@given(spec=match_filters, document=match_documents)
def test_filters_answered_directly_agree_with_mongomocks_matcher(spec, document):
    try:
        expected = ("ok", filter_applies(spec, document))
    except Exception as exc:  # noqa: BLE001 - an invalid filter must fail alike
        expected = ("error", type(exc).__name__)
    try:
        answer = ("ok", embedded.matches(spec, document))
    except Exception as exc:  # noqa: BLE001
        answer = ("error", type(exc).__name__)
    assert answer == expected


_POOL = [1, 2, Int64(2), 2.0, True, False, None, "a", "b", ObjectId("000000000000000000000001"), _BASE,
         _BASE.replace(tzinfo=datetime.UTC), [1, 2], {"x": 1}]


def _every_condition():
    yield from _POOL
    for operator_name in ("$gte", "$gt", "$lte", "$lt", "$ne", "$exists", "$eq", "$bogus"):
        for operand in _POOL:
            yield {operator_name: operand}
    for first in _POOL:
        for second in _POOL:
            yield {"$in": [first, second]}
    yield from ({"$in": []}, {"$in": "a"}, {"$gte": 1, "$lt": 3})


def test_every_single_condition_is_answered_as_mongomock_answers_it():
    """Every condition on every kind of stored value (or none): the direct answers and mongomock-ng's agree."""
    disagreements = []
    for stored in [*_POOL, NOTHING]:
        document = {"_id": 1} if stored is NOTHING else {"_id": 1, "a": stored}
        for condition in _every_condition():
            spec = {"a": condition}
            outcomes = []
            for judge in (filter_applies, embedded.matches):
                try:
                    outcomes.append(("ok", judge(spec, document)))
                except Exception as exc:  # noqa: BLE001 - an invalid condition must fail alike
                    outcomes.append(("error", type(exc).__name__))
            if outcomes[0] != outcomes[1]:
                disagreements.append((stored, condition, outcomes))
    assert not disagreements


@settings(max_examples=800, deadline=None)
@given(document=st.fixed_dictionaries({}, optional={"a": stored_values, "b": stored_values, "c": stored_values}),
       fields=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2, unique=True),
       sparse=st.booleans())
def test_index_keys_of_plain_fields_equal_the_general_paths(document, fields, sparse):
    from ledger.embedded_store import Index

    index = Index("probe", {"key": [(field, ASCENDING) for field in fields], "sparse": sparse})
    assert index.simple
    fast = index.entries(document)
    index.simple = False  # the general path, as for a dotted or partial index
    assert fast == index.entries(document)
