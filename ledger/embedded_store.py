"""The embedded engine's storage: mongomock-ng's stores with real indexes, an undo log and a write set.

mongomock-ng keeps each collection as an ordered dict and answers every query, unique check, TTL sweep and
transaction snapshot by walking (or copying) all of it, so everything grew with the ledger. The classes here
replace its stores:

* **Indexes.** Every declared index (and ``_id``) is kept in memory: for each prefix of the index's keys, a map
  from key values to the ids holding them, updated on every write. :func:`candidate_ids` answers a filter that
  pins ``_id``, or the leading keys of an index, by equality or ``$in``, from those maps; the full filter then
  runs on the candidates only. Anything else falls back to a counted full scan (:data:`SCANS`), which tests
  can forbid with :func:`no_scans`.
* **Unique checks** look the new document's key up in the index instead of comparing it with every document.
* **TTL indexes** keep their documents ordered by expiry time, so a sweep looks at the expired ones only.
* **Transactions** keep an undo log of the documents they touch (the pre-image of each, taken before
  mongomock-ng changes it in place) instead of copying the collection.
* **Write set.** When the engine has a journal (:mod:`ledger.embedded_journal`), every document written since
  the last flush is remembered, so a commit can journal the documents it changed.

Every method here runs under the engine's lock (:data:`ledger.embedded.ENGINE_LOCK`).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import mongomock_ng
from bson import ObjectId
from mongomock_ng import helpers
from mongomock_ng import store as _store_module
from mongomock_ng.filtering import filter_applies
from mongomock_ng.helpers import NOTHING
from sortedcontainers import SortedList

ABSENT = object()

# Full scans per collection name since the process started (the fallback when no index answers a filter).
SCANS: collections.Counter[str] = collections.Counter()
_scan_guard = threading.local()

# Values whose Python equality and hashing agree with MongoDB's for an equality lookup (a candidate set may be
# a superset, e.g. True == 1, because the full filter runs on every candidate; it must never miss a document).
_LOOKUP_TYPES = (str, int, float, bool, ObjectId, datetime.datetime, type(None))
_MAX_LOOKUP_KEYS = 1000


class ScanForbidden(AssertionError):
    """A full collection scan happened inside :func:`no_scans`."""


@contextlib.contextmanager
def no_scans() -> Iterator[None]:
    """Raise :class:`ScanForbidden` if this thread's operations scan a whole collection meanwhile."""
    previous = getattr(_scan_guard, "forbidden", False)
    _scan_guard.forbidden = True
    try:
        yield
    finally:
        _scan_guard.forbidden = previous


def record_scan(collection_name: str) -> None:
    SCANS[collection_name] += 1
    if getattr(_scan_guard, "forbidden", False):
        raise ScanForbidden(f"a full scan of the {collection_name!r} collection (no index answers the filter)")


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return ("\0doc", tuple((k, _hashable(v)) for k, v in value.items()))
        if isinstance(value, (list, tuple)):
            return ("\0arr", tuple(_hashable(v) for v in value))
        return ("\0repr", repr(value))


def _naive_utc(value: datetime.datetime) -> datetime.datetime:
    # Stored datetimes are naive UTC at millisecond precision (mongomock-ng patches every write that way).
    return helpers.patch_datetime_awareness_in_document(value)


class Index:
    """One declared index: for each prefix length p, a map from the first p key values to the ids holding them."""

    __slots__ = ("by_id", "fields", "key", "maps", "name", "partial", "plannable", "sparse", "unique")

    def __init__(self, name: str, spec: dict) -> None:
        self.name = name
        self.key = [tuple(item) for item in spec["key"]]
        self.fields = tuple(field for field, _direction in self.key)
        self.unique = bool(spec.get("unique"))
        self.sparse = bool(spec.get("sparse"))
        self.partial = spec.get("partialFilterExpression")
        # Only plain ascending/descending keys on top-level fields answer queries; others are kept for uniqueness.
        self.plannable = self.partial is None and all(
            "." not in field and direction in (1, -1) for field, direction in self.key)
        self.maps: list[dict[tuple, dict[Any, None]]] = [{} for _ in self.fields]
        self.by_id: dict[Any, tuple] = {}

    def entries(self, document: dict) -> tuple | None:
        """The index keys of ``document`` (several if a key is an array), None if the index leaves it out."""
        if self.partial is not None and not filter_applies(self.partial, document):
            return None
        values = []
        has_array = False
        for field in self.fields:
            value = (document.get(field, NOTHING) if "." not in field
                     else helpers.get_value_by_dot(document, field))
            if value is NOTHING:
                if self.sparse:
                    return None
                value = None
            elif isinstance(value, (list, tuple)):
                has_array = True
            values.append(value)
        if self.sparse and all(v is None for v in values):
            return None
        if has_array:
            expanded = [list(v) if isinstance(v, (list, tuple)) else [v] for v in values]
            return tuple({tuple(_hashable(v) for v in combo): None for combo in itertools.product(*expanded)})
        return (tuple(_hashable(v) for v in values),)

    def put(self, doc_id: Any, document: dict) -> None:
        new = self.entries(document)
        old = self.by_id.get(doc_id)
        if old == new:
            return
        if old is not None:
            self._unlink(doc_id, old)
        if new is not None:
            self.by_id[doc_id] = new
            for entry in new:
                for length, mapping in enumerate(self.maps, start=1):
                    bucket = mapping.get(entry[:length])
                    if bucket is None:
                        mapping[entry[:length]] = bucket = {}
                    bucket[doc_id] = None
        else:
            self.by_id.pop(doc_id, None)

    def remove(self, doc_id: Any) -> None:
        old = self.by_id.pop(doc_id, None)
        if old is not None:
            self._unlink(doc_id, old)

    def _unlink(self, doc_id: Any, entries: tuple) -> None:
        for entry in entries:
            for length, mapping in enumerate(self.maps, start=1):
                prefix = entry[:length]
                bucket = mapping.get(prefix)
                if bucket is not None:
                    bucket.pop(doc_id, None)
                    if not bucket:
                        del mapping[prefix]

    def holders(self, entry: tuple) -> dict[Any, None]:
        return self.maps[-1].get(entry) or {}


class TtlIndex:
    """Documents of one TTL index ordered by the time they expire."""

    __slots__ = ("by_id", "expire_after", "field", "order", "serial")

    def __init__(self, spec: dict) -> None:
        self.field = spec["key"][0][0]
        self.expire_after = datetime.timedelta(seconds=int(spec["expireAfterSeconds"]))
        self.order: SortedList = SortedList()
        self.by_id: dict[Any, tuple] = {}
        self.serial = itertools.count()

    def put(self, doc_id: Any, document: dict) -> None:
        self.remove(doc_id)
        value = helpers.get_value_by_dot(document, self.field)
        if isinstance(value, list):
            dates = [v for v in value if isinstance(v, datetime.datetime)]
            value = min((_naive_utc(v) for v in dates), default=None)
        if isinstance(value, datetime.datetime):
            item = (_naive_utc(value) + self.expire_after, next(self.serial), doc_id)
            self.by_id[doc_id] = item
            self.order.add(item)

    def remove(self, doc_id: Any) -> None:
        item = self.by_id.pop(doc_id, None)
        if item is not None:
            self.order.remove(item)

    def expired(self, now: datetime.datetime) -> list:
        result = []
        for when, _serial, doc_id in self.order:
            if when > now:
                break
            result.append(doc_id)
        return result


def _ttl_spec_usable(spec: dict) -> bool:
    if spec.get("expireAfterSeconds") is None or len(spec["key"]) != 1:
        return False
    try:
        int(spec["expireAfterSeconds"])
    except (TypeError, ValueError):
        return False
    return True


class IndexedCollectionStore(_store_module.CollectionStore):
    """A collection whose documents are indexed, whose transactions keep an undo log, and which journals."""

    def __init__(self, name: str, engine: Any = None, database_name: str = "") -> None:
        self._engine = engine
        self._database_name = database_name
        self._index_objects: dict[str, Index] = {}
        self._ttl_objects: dict[str, TtlIndex] = {}
        self._positions: dict[Any, int] = {}
        self._next_position = itertools.count()
        self._undo: dict[Any, tuple] | None = None
        self._undo_meta: tuple | None = None
        self._ready = False
        super().__init__(name)
        self._ready = True

    # ------------------------------------------------------------------ index definitions

    @property
    def indexes(self) -> dict:
        return self.__dict__["_index_definitions"]

    @indexes.setter
    def indexes(self, value: dict) -> None:
        if self.__dict__.get("_ready"):
            self._check_writable()
            self._save_meta_for_undo()
        self.__dict__["_index_definitions"] = value
        if self.__dict__.get("_ready"):
            self._rebuild_indexes()
            self._meta_changed()

    def _rebuild_indexes(self) -> None:
        self._index_objects = {}
        self._ttl_objects = {}
        for name, spec in self.indexes.items():
            self._build_index(name, spec)

    def _build_index(self, name: str, spec: dict) -> None:
        index = Index(name, spec)
        for doc_id, document in self._documents.items():
            index.put(doc_id, document)
        self._index_objects[name] = index
        if _ttl_spec_usable(spec):
            ttl = TtlIndex(spec)
            for doc_id, document in self._documents.items():
                ttl.put(doc_id, document)
            self._ttl_objects[name] = ttl

    def create_index(self, index_name: str, index_dict: dict) -> None:
        if self.indexes.get(index_name) == index_dict:
            return  # already there (ensure_indexes at every start-up): nothing changes, nothing to journal
        self._check_writable()
        self._save_meta_for_undo()
        self.indexes[index_name] = index_dict
        if index_dict.get("expireAfterSeconds") is not None:
            self._ttl_indexes[index_name] = index_dict
        self._build_index(index_name, index_dict)
        self._meta_changed()

    def drop_index(self, index_name: str) -> None:
        self._check_writable()
        self._save_meta_for_undo()
        self._remove_expired_documents()
        del self.indexes[index_name]
        self._ttl_indexes.pop(index_name, None)
        self._index_objects.pop(index_name, None)
        self._ttl_objects.pop(index_name, None)
        self._meta_changed()

    def create(self, **options: Any) -> None:
        self._check_writable()
        super().create(**options)
        self._meta_changed()

    def drop(self) -> None:
        self._check_writable()
        if self._engine is not None and self._engine.journaled:
            for doc_id in self._documents:
                self._engine.touch(self, doc_id)
        self._documents = collections.OrderedDict()
        self._positions = {}
        self.__dict__["_index_definitions"] = {}
        self._index_objects = {}
        self._ttl_objects = {}
        self._ttl_indexes = {}
        self._is_force_created = False
        self.options = {}
        self._meta_changed()

    def _check_writable(self) -> None:
        if self._engine is not None and self._engine.read_only_reason is not None:
            self._engine.check_writable()

    def _meta_changed(self) -> None:
        if self._engine is not None and self._engine.journaled:
            self._engine.touch_meta(self)

    # ------------------------------------------------------------------ documents

    def __contains__(self, key: Any) -> bool:
        self._remove_expired_documents()
        return key in self._documents

    def __getitem__(self, key: Any) -> dict:
        self._remove_expired_documents()
        return self._documents[key]

    def __setitem__(self, key: Any, value: dict) -> None:
        self._check_writable()
        documents = self._documents
        if self._undo is not None and key not in self._undo:
            self._undo[key] = (documents.get(key, ABSENT), self._positions.get(key))
        if key not in documents:
            self._positions[key] = next(self._next_position)
        documents[key] = value
        for index in self._index_objects.values():
            index.put(key, value)
        for ttl in self._ttl_objects.values():
            ttl.put(key, value)
        if self._engine is not None and self._engine.journaled:
            self._engine.touch(self, key)

    def __delitem__(self, key: Any) -> None:
        self._check_writable()
        documents = self._documents
        if self._undo is not None and key not in self._undo:
            self._undo[key] = (documents[key], self._positions.get(key))
        del documents[key]
        self._positions.pop(key, None)
        for index in self._index_objects.values():
            index.remove(key)
        for ttl in self._ttl_objects.values():
            ttl.remove(key)
        if self._engine is not None and self._engine.journaled:
            self._engine.touch(self, key)

    def __len__(self) -> int:
        self._remove_expired_documents()
        return len(self._documents)

    @property
    def is_empty(self) -> bool:
        self._remove_expired_documents()
        return not self._documents

    @property
    def documents(self) -> Iterator[dict]:
        self._remove_expired_documents()
        record_scan(self.name)
        yield from list(self._documents.values())

    def before_change(self, document: dict) -> None:
        """Called before mongomock-ng changes a stored document in place: remember it for the undo log."""
        self._check_writable()
        if self._undo is None:
            return
        doc_id = document.get("_id")
        if isinstance(doc_id, dict):
            doc_id = helpers.hashdict(doc_id)
        if doc_id not in self._undo and self._documents.get(doc_id) is document:
            self._undo[doc_id] = (helpers._clone_document(document), self._positions.get(doc_id))

    def _remove_expired_documents(self) -> None:
        if not self._ttl_objects or (self._engine is not None and self._engine.read_only_reason is not None):
            return
        now = mongomock_ng.utcnow()
        if now.tzinfo is not None:
            now = now.astimezone(datetime.UTC).replace(tzinfo=None)
        for ttl in list(self._ttl_objects.values()):
            if ttl.order and ttl.order[0][0] <= now:
                for doc_id in ttl.expired(now):
                    if doc_id in self._documents:
                        del self[doc_id]

    # ------------------------------------------------------------------ lookups

    def candidate_ids(self, spec: Any) -> list | None:
        """Ids of the documents that may match ``spec``, in natural order; None when no index answers it."""
        self._remove_expired_documents()
        ids = self._plan(spec)
        if ids is None:
            return None
        if len(ids) > 1:
            positions = self._positions
            ids = sorted(ids, key=lambda doc_id: positions.get(doc_id, -1))
        return ids

    def _plan(self, spec: Any) -> list | None:
        if not isinstance(spec, dict):
            return None
        alternatives = spec.get("$or")
        if isinstance(alternatives, list) and alternatives:
            common = {field: condition for field, condition in spec.items() if field != "$or"}
            ids = self._plan_conjunction(common)
            if ids is not None:
                return ids
            union: dict[Any, None] = {}
            for branch in alternatives:  # as MongoDB plans an $or: each branch on its own index
                if not isinstance(branch, dict):
                    return None
                ids = self._plan({**common, **branch})
                if ids is None:
                    return None
                union.update(dict.fromkeys(ids))
            return list(union)
        return self._plan_conjunction(spec)

    def _plan_conjunction(self, spec: dict) -> list | None:
        pinned: dict[str, list] = {}
        for field, condition in spec.items():
            if field.startswith("$"):
                continue  # $and, $nor, $expr... only narrow what the other fields select
            values = _lookup_values(condition)
            if values is not None:
                pinned[field] = values
        if "_id" in pinned:
            documents = self._documents
            keys = [helpers.hashdict(v) if isinstance(v, dict) else v for v in pinned["_id"]]
            return [key for key in dict.fromkeys(keys) if key in documents]
        best: Index | None = None
        best_length = 0
        for index in self._index_objects.values():
            if not index.plannable:
                continue
            length = 0
            for field in index.fields:
                values = pinned.get(field)
                if values is None or (index.sparse and any(v is None for v in values)):
                    break
                length += 1
            if length > best_length or (length == best_length and length and index.unique and best
                                        and not best.unique):
                best, best_length = index, length
        if best is None:
            return None
        combos = 1
        for field in best.fields[:best_length]:
            combos *= len(pinned[field])
        if combos > _MAX_LOOKUP_KEYS:
            return None
        mapping = best.maps[best_length - 1]
        result: dict[Any, None] = {}
        for combo in itertools.product(*(pinned[field] for field in best.fields[:best_length])):
            bucket = mapping.get(tuple(_hashable(v) for v in combo))
            if bucket:
                result.update(bucket)
        if best_length < len(best.fields):
            # A range on the index's next key (the outbox claim: status, then nextAttemptAt <= now) leaves out
            # the documents whose key is outside it, from the index entries alone.
            ranges = _range_conditions(spec.get(best.fields[best_length]))
            if ranges:
                by_id = best.by_id
                return [doc_id for doc_id in result if _may_satisfy(by_id.get(doc_id), best_length, ranges)]
        return list(result)

    def find_duplicate(self, document: dict) -> Index | None:
        """The unique index ``document`` would violate (another document holds its key), else None."""
        doc_id = document.get("_id")
        if isinstance(doc_id, dict):
            doc_id = helpers.hashdict(doc_id)
        for index in self._index_objects.values():
            if not index.unique:
                continue
            entries = index.entries(document)
            if entries is None:
                continue
            for entry in entries:
                for holder in index.holders(entry):
                    if holder != doc_id:
                        return index
        return None

    # ------------------------------------------------------------------ transactions

    def begin_transaction(self) -> None:
        self._undo = {}
        self._undo_meta = None

    def _save_meta_for_undo(self) -> None:
        if self._undo is not None and self._undo_meta is None:
            self._undo_meta = (copy.deepcopy(self.indexes), copy.deepcopy(self._ttl_indexes))

    def commit_transaction(self) -> None:
        self._undo = None
        self._undo_meta = None

    def abort_transaction(self) -> None:
        undo, self._undo = self._undo, None
        meta, self._undo_meta = self._undo_meta, None
        if not undo and meta is None:
            return
        documents = self._documents
        reorder = False
        for doc_id, (preimage, position) in (undo or {}).items():
            if preimage is ABSENT:
                if doc_id in documents:
                    del self[doc_id]
            else:
                reorder = reorder or doc_id not in documents
                self[doc_id] = preimage
                if position is not None:
                    self._positions[doc_id] = position
        if reorder:  # a deleted document came back: put it back where it was in natural order
            positions = self._positions
            self._documents = collections.OrderedDict(
                sorted(documents.items(), key=lambda item: positions.get(item[0], -1)))
        if meta is not None:
            self._ttl_indexes = meta[1]
            self.indexes = meta[0]

    # ------------------------------------------------------------------ replay and snapshots

    def load(self, doc_id: Any, document: dict | None) -> None:
        """Apply one journaled document (None: deleted) without checks or journaling."""
        if document is None:
            if doc_id in self._documents:
                del self._documents[doc_id]
                self._positions.pop(doc_id, None)
        else:
            if doc_id not in self._documents:
                self._positions[doc_id] = next(self._next_position)
            self._documents[doc_id] = document

    def load_meta(self, indexes: dict, options: dict, created: bool) -> None:
        self.__dict__["_index_definitions"] = indexes
        self._ttl_indexes = {name: spec for name, spec in indexes.items()
                             if spec.get("expireAfterSeconds") is not None}
        self.options = options
        self._is_force_created = created


def _lookup_values(condition: Any) -> list | None:
    """The values an equality (or ``$in``) condition pins a field to, or None if it does not pin it."""
    if isinstance(condition, dict):
        if len(condition) != 1:
            return None
        (operator, operand), = condition.items()
        if operator == "$eq":
            values = [operand]
        elif operator == "$in" and isinstance(operand, (list, tuple)) and operand:
            values = list(operand)
        else:
            return None
    else:
        values = [condition]
    result = []
    for value in values:
        if not isinstance(value, _LOOKUP_TYPES):
            return None
        if isinstance(value, datetime.datetime):
            value = _naive_utc(value)
        result.append(value)
    return result


_RANGE_OPERATORS = {
    "$gt": lambda value, bound: value > bound,
    "$gte": lambda value, bound: value >= bound,
    "$lt": lambda value, bound: value < bound,
    "$lte": lambda value, bound: value <= bound,
}


def _comparable_class(value: Any) -> type | None:
    if isinstance(value, datetime.datetime):
        return datetime.datetime
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # NaN aside
        return float
    return None


def _range_conditions(condition: Any) -> list | None:
    """[(test, bound)] for a condition made only of $gt/$gte/$lt/$lte on dates, or only on numbers."""
    if not isinstance(condition, dict) or not condition or not set(condition) <= set(_RANGE_OPERATORS):
        return None
    classes = {_comparable_class(bound) for bound in condition.values()}
    if len(classes) != 1 or None in classes:
        return None
    return [(_RANGE_OPERATORS[operator], _naive_utc(bound) if isinstance(bound, datetime.datetime) else bound)
            for operator, bound in condition.items()]


def _may_satisfy(entries: tuple | None, position: int, ranges: list) -> bool:
    """False only when the document surely fails the range: one index entry (no array: each bound could be met
    by a different element), whose value is of the bounds' type and outside them."""
    if entries is None or len(entries) != 1:
        return True
    value = entries[0][position]
    bound_class = _comparable_class(ranges[0][1])
    if _comparable_class(value) is not bound_class:
        return True
    return all(test(value, bound) for test, bound in ranges)


class EngineDatabaseStore(_store_module.DatabaseStore):
    def __init__(self, engine: Any, name: str) -> None:
        super().__init__()
        self._engine = engine
        self._name = name

    def __getitem__(self, col_name: str) -> IndexedCollectionStore:
        try:
            return self._collections[col_name]
        except KeyError:
            col = self._collections[col_name] = IndexedCollectionStore(col_name, self._engine, self._name)
            return col

    def rename(self, name: str, new_name: str) -> None:
        old = self[name]
        new = self[new_name]
        new.load_meta(old.indexes, old.options, old._is_force_created)
        for doc_id, document in old._documents.items():
            new[doc_id] = document
        new.indexes = dict(new.indexes)
        old.drop()


class EngineServerStore(_store_module.ServerStore):
    def __init__(self, engine: Any = None) -> None:
        super().__init__()
        self._engine = engine

    def __getitem__(self, db_name: str) -> EngineDatabaseStore:
        try:
            return self._databases[db_name]
        except KeyError:
            db = self._databases[db_name] = EngineDatabaseStore(self._engine, db_name)
            return db

    def collections(self) -> Iterator[IndexedCollectionStore]:
        for database in list(self._databases.values()):
            yield from list(database._collections.values())
