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
import heapq
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


# Index key values that are their own key (hashable, and _hashable hands them back unchanged).
_SCALAR_KEYS = frozenset({str, int, float, bool, type(None), ObjectId, datetime.datetime})


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

    __slots__ = ("by_id", "fields", "key", "maps", "name", "ordered", "ordered_items", "partial", "plannable",
                 "simple", "sparse", "unique")

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
        self.simple = self.partial is None and all("." not in field for field in self.fields)
        self.maps: list[dict[tuple, dict[Any, None]]] = [{} for _ in self.fields]
        self.by_id: dict[Any, tuple] = {}
        # For a compound index, the documents of each full-but-last prefix ordered by the last key's value (then
        # natural order), so a sort on that key (an account's history by seq, the outbox by nextAttemptAt)
        # walks them in order. A bucket holding a value of another class, an array or a missing key is
        # marked (class None) and not walked.
        self.ordered: dict[tuple, list] = {}  # prefix -> [SortedList of (value, position, id), class, odd ids]
        self.ordered_items: dict[Any, tuple] = {}  # id -> (prefix, item or None)

    def entries(self, document: dict) -> tuple | None:
        """The index keys of ``document`` (several if a key is an array), None if the index leaves it out."""
        if self.simple:
            # The usual case, answered without the general path's per-value work: every key a top-level field
            # holding a scalar (its own index key, what _hashable returns for it) or missing (None's key; a
            # sparse index leaves the document out).
            get = document.get
            fields = self.fields
            if len(fields) == 1:
                value = get(fields[0], NOTHING)
                if type(value) in _SCALAR_KEYS:
                    return None if value is None and self.sparse else ((value,),)
                if value is NOTHING:
                    return None if self.sparse else ((None,),)
            else:
                values = [get(field, NOTHING) for field in fields]
                for position, value in enumerate(values):
                    if type(value) not in _SCALAR_KEYS:
                        if value is not NOTHING:
                            break
                        if self.sparse:
                            return None
                        values[position] = None
                else:
                    if self.sparse and all(value is None for value in values):
                        return None
                    return (tuple(values),)
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

    def put(self, doc_id: Any, document: dict, position: int = 0) -> None:
        new = self.entries(document)
        old = self.by_id.get(doc_id)
        if old == new and (doc_id not in self.ordered_items or self._ordered_position(doc_id) == position):
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
            if len(self.fields) > 1 and self.plannable:
                self._order(doc_id, new, position)
        else:
            self.by_id.pop(doc_id, None)

    def remove(self, doc_id: Any) -> None:
        old = self.by_id.pop(doc_id, None)
        if old is not None:
            self._unlink(doc_id, old)

    def load(self, documents: dict, positions: dict) -> None:
        """Index every document of an empty index at once (start-up, index creation): the same result as
        ``put`` for each, faster for plain keys (top-level, scalar values)."""
        if self.partial is not None or any("." in field for field in self.fields) or not self.plannable:
            for doc_id, document in documents.items():
                self.put(doc_id, document, positions.get(doc_id, 0))
            return
        fields, sparse, by_id, maps = self.fields, self.sparse, self.by_id, self.maps
        compound = len(fields) > 1
        pending: dict[tuple, list] = {}
        awkward = (list, tuple, dict)
        first = fields[0]
        for doc_id, document in documents.items():
            if compound:
                values = tuple([document.get(field, NOTHING) for field in fields])
            else:
                values = (document.get(first, NOTHING),)
            try:
                hash(values)
                plain = True
                for v in values:
                    if v is NOTHING or isinstance(v, awkward):
                        plain = False
                        break
            except TypeError:
                plain = False
            if not plain:
                self.put(doc_id, document, positions.get(doc_id, 0))  # missing keys, arrays: the slow path
                continue
            if sparse and all(v is None for v in values):
                continue
            by_id[doc_id] = (values,)
            for length in range(1, len(fields) + 1):
                prefix = values[:length] if compound else values
                bucket = maps[length - 1].get(prefix)
                if bucket is None:
                    maps[length - 1][prefix] = bucket = {}
                bucket[doc_id] = None
            if compound:
                prefix = values[:-1]
                value = values[-1]
                if prefix in self.ordered:  # the slow path already started this bucket
                    self._order(doc_id, (values,), positions.get(doc_id, 0))
                    continue
                item = (value, positions.get(doc_id, 0), doc_id)
                group = pending.get(prefix)
                if group is None:
                    pending[prefix] = group = []
                group.append(item)
        for prefix, items in pending.items():
            classes = {sortable_class(item[0]) for item in items}
            if len(classes) == 1 and None not in classes and prefix not in self.ordered:
                self.ordered[prefix] = [SortedList(items), classes.pop(), set()]
                for item in items:
                    self.ordered_items[item[2]] = ((prefix,), item)
            else:  # mixed classes, or the slow path met this prefix too: one at a time, in natural order
                for item in sorted(items, key=lambda item: item[1]):
                    self._order(item[2], ((*prefix, item[0]),), item[1])

    def _ordered_position(self, doc_id: Any) -> int | None:
        _prefixes, item = self.ordered_items[doc_id]
        return item[1] if item is not None else None

    def _order(self, doc_id: Any, entries: tuple, position: int) -> None:
        prefixes = {entry[:-1] for entry in entries}
        if len(entries) == 1:
            value = entries[0][-1]
            value_class = sortable_class(value)
        else:  # an array key: several entries (and mongomock-ng sorts arrays by their first element)
            value, value_class = None, None
        for prefix in prefixes:
            ordered = self.ordered.get(prefix)
            if ordered is None:
                self.ordered[prefix] = ordered = [SortedList(), value_class, set()]
            if ordered[1] is None and not ordered[0] and not ordered[2]:
                ordered[1] = value_class
            if value_class is None or value_class is not ordered[1]:
                ordered[2].add(doc_id)
            else:
                item = (value, position, doc_id)
                ordered[0].add(item)
                self.ordered_items[doc_id] = ((prefix,), item)
                return
        self.ordered_items[doc_id] = (tuple(prefixes), None)

    def _unorder(self, doc_id: Any) -> None:
        placed = self.ordered_items.pop(doc_id, None)
        if placed is None:
            return
        prefixes, item = placed
        for one in prefixes:
            ordered = self.ordered.get(one)
            if ordered is None:
                continue
            if item is not None:
                ordered[0].discard(item)
            ordered[2].discard(doc_id)
            if not ordered[0] and not ordered[2]:
                del self.ordered[one]

    def walk(self, prefix: tuple, ranges: list, descending: bool) -> tuple[type, Any] | None:
        """(class, iterator of (value, position, id)) of one prefix's documents in sort order, or None."""
        ordered = self.ordered.get(prefix)
        if ordered is None:
            return object, iter(())
        items, value_class, odd = ordered
        if odd:
            return None
        minimum = maximum = None
        inclusive = [True, True]
        for operator, bound in ranges:
            if sortable_class(bound) is not value_class:
                return None
            if operator in ("$gt", "$gte"):
                minimum = (bound, float("inf")) if operator == "$gt" else (bound,)
            else:
                maximum = (bound, float("inf")) if operator == "$lte" else (bound,)
                inclusive[1] = operator == "$lte"
        selected = items.irange(minimum, maximum, inclusive=tuple(inclusive))
        if not descending:
            return value_class, selected
        return value_class, _descending_runs(items.irange(minimum, maximum, inclusive=tuple(inclusive),
                                                          reverse=True))

    def _unlink(self, doc_id: Any, entries: tuple) -> None:
        if self.ordered_items:
            self._unorder(doc_id)
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


def sortable_class(value: Any) -> type | None:
    """The class of values Python orders as mongomock-ng's sort does (one BSON type), or None."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, (int, float)):
        return float if value == value else None  # NaN aside
    for kind in (datetime.datetime, str, ObjectId):
        if isinstance(value, kind):
            return kind
    return None


def _descending_runs(reverse_items: Any) -> Iterator[tuple]:
    """Items in descending value order, equal values in natural (ascending position) order, as a stable
    descending sort leaves them."""
    run: list = []
    for item in reverse_items:
        if run and item[0] != run[0][0]:
            yield from reversed(run)
            run = []
        run.append(item)
    yield from reversed(run)


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
        index.load(self._documents, self._positions)
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
        if key not in documents and key not in self._positions:
            self._positions[key] = next(self._next_position)
        documents[key] = value
        position = self._positions[key]
        for index in self._index_objects.values():
            index.put(key, value, position)
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

    def ordered_candidates(self, spec: Any, field: str, descending: bool) -> Iterator | None:
        """Ids that may match ``spec``, in the order a stable sort on ``field`` leaves them (ties in natural
        order), produced lazily from the ordered index buckets; None when that cannot be done exactly."""
        if not isinstance(spec, dict) or field == "_id":
            return None
        self._remove_expired_documents()
        alternatives = spec.get("$or")
        if alternatives is not None:
            if not isinstance(alternatives, list) or not alternatives:
                return None
            common = {key: condition for key, condition in spec.items() if key != "$or"}
            if not all(isinstance(branch, dict) for branch in alternatives):
                return None
            branches = [{**common, **branch} for branch in alternatives]
        else:
            branches = [spec]
        streams = []
        classes = set()
        for branch in branches:
            walked = self._walk_branch(branch, field, descending)
            if walked is None:
                return None
            value_class, stream = walked
            if value_class is not object:
                classes.add(value_class)
            streams.append(stream)
        if len(classes) > 1:
            return None
        if len(streams) == 1:
            return (item[2] for item in streams[0])
        key = (lambda item: (item[0], -item[1])) if descending else (lambda item: (item[0], item[1]))
        merged = heapq.merge(*streams, key=key, reverse=descending)
        return _unique(item[2] for item in merged)

    def _walk_branch(self, branch: dict, field: str, descending: bool) -> tuple[type, Any] | None:
        ranges = _range_conditions(branch.get(field)) if field in branch else []
        if ranges is None:
            ranges = []  # another condition on the sort key: the filter checks it
        pinned = {key: _lookup_values(condition) for key, condition in branch.items() if not key.startswith("$")}
        for index in self._index_objects.values():
            if len(index.fields) < 2 or not index.plannable or index.fields[-1] != field:
                continue
            values = [pinned.get(key) for key in index.fields[:-1]]
            if any(v is None or len(v) != 1 or (index.sparse and v[0] is None) for v in values):
                continue
            prefix = tuple(_hashable(v[0]) for v in values)
            bounds = [(operator, bound) for operator, bound in _raw_ranges(branch.get(field))] if ranges else []
            return index.walk(prefix, bounds, descending)
        # No ordered bucket: sort this branch's candidates, if their values are all of one class.
        ids = self._plan(branch)
        if ids is None:
            return None
        documents, positions = self._documents, self._positions
        items = []
        value_class = object
        for doc_id in ids:
            value = documents[doc_id].get(field, NOTHING)
            item_class = sortable_class(value)
            if item_class is None or (value_class is not object and item_class is not value_class):
                return None
            value_class = item_class
            items.append((value, positions.get(doc_id, -1), doc_id))
        if descending:
            items.sort(key=lambda item: (item[0], -item[1]), reverse=True)
        else:
            items.sort(key=lambda item: (item[0], item[1]))
        return value_class, iter(items)

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
                if position is not None:
                    self._positions[doc_id] = position
                self[doc_id] = preimage
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


def _raw_ranges(condition: Any) -> list:
    """[(operator, bound)] of a range condition, dates made naive UTC as stored."""
    return [(operator, _naive_utc(bound) if isinstance(bound, datetime.datetime) else bound)
            for operator, bound in condition.items()]


def _unique(ids: Iterator) -> Iterator:
    seen = set()
    for doc_id in ids:
        key = _hashable(doc_id)
        if key not in seen:
            seen.add(key)
            yield doc_id


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
