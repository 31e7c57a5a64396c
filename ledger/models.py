"""The schema of record: mongoengine documents, with the Node service's collection names.

These classes say what a stored document looks like (fields, choices, validation) and which indexes each
collection has, as the Node service's Mongoose models did. Reads and writes go through pymongo with explicit
sessions (mongoengine cannot join a client session); the services build documents with :func:`to_document`,
which validates against these classes first, so nothing reaches the database that the schema would refuse.

Money fields hold integer minor units (paise for INR). Ledger entries are immutable: the model refuses every
update and delete, and no code path issues one.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import mongoengine as me
from bson import Int64, ObjectId

ACCOUNT_STATUSES = ("ACTIVE", "FROZEN", "CLOSED")
TRANSACTION_STATUSES = ("PENDING", "COMPLETED", "FAILED", "REVERSED")
TRANSACTION_KINDS = ("TRANSFER", "INITIAL_FUNDS", "REVERSAL", "HOLD_CAPTURE")
HOLD_STATUSES = ("ACTIVE", "CAPTURED", "VOIDED", "EXPIRED", "FAILED")  # FAILED: a refused request, recorded
ENTRY_TYPES = ("DEBIT", "CREDIT")
NOTIFICATION_STATUSES = ("PENDING", "SENDING", "SENT", "LOGGED", "PARKED")


def utcnow() -> datetime:
    """Now, in UTC, truncated to milliseconds (what BSON dates store)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class ImmutableLedgerError(RuntimeError):
    """Raised on any attempt to change or remove a ledger entry."""


class _Base(me.Document):
    meta = {"abstract": True, "auto_create_index": False, "strict": False}


class User(_Base):
    email = me.StringField(required=True, max_length=254)
    name = me.StringField(required=True, max_length=200)
    password = me.StringField(required=True)  # bcrypt hash, never the password
    systemUser = me.BooleanField(default=False)
    createdAt = me.DateTimeField(required=True)
    updatedAt = me.DateTimeField(required=True)

    meta = {
        "collection": "users",
        "indexes": [{"fields": ["email"], "unique": True}],
    }


class Account(_Base):
    user = me.ObjectIdField(required=True)
    status = me.StringField(required=True, choices=ACCOUNT_STATUSES, default="ACTIVE")
    currency = me.StringField(required=True, min_length=3, max_length=3, default="INR")
    balance = me.LongField(required=True, default=0)  # minor units
    held = me.LongField(min_value=0)  # minor units reserved by ACTIVE holds (absent: nothing ever held)
    seq = me.LongField(required=True, default=0)  # number of ledger entries on this account
    lastHash = me.StringField(regex=r"^[0-9a-f]{64}$")  # hash of the last entry: the head of its hash chain
    systemUser = me.BooleanField(default=False)
    # Present only on the system user's accounts: one system account per currency (unique, sparse).
    systemCurrency = me.StringField(min_length=3, max_length=3)
    createdAt = me.DateTimeField(required=True)
    updatedAt = me.DateTimeField(required=True)

    meta = {
        "collection": "accounts",
        "indexes": [
            {"fields": ["user"]},
            {"fields": ["user", "status"]},
            {"fields": ["systemCurrency"], "unique": True, "sparse": True},
        ],
    }


class Transaction(_Base):
    kind = me.StringField(required=True, choices=TRANSACTION_KINDS)
    fromAccount = me.ObjectIdField(required=True)
    toAccount = me.ObjectIdField(required=True)
    amount = me.LongField(required=True, min_value=1)  # minor units
    currency = me.StringField(min_length=3, max_length=3)
    status = me.StringField(required=True, choices=TRANSACTION_STATUSES)
    idempotencyKey = me.StringField(required=True, min_length=1, max_length=255)
    initiator = me.ObjectIdField(required=True)  # idempotency keys are scoped to the calling user
    fingerprint = me.StringField(required=True)  # hash of the request the key was first used with
    failure = me.DictField()  # {"code", "message", "httpStatus"} for FAILED attempts
    reverses = me.ObjectIdField()  # on a REVERSAL: the transaction it reverses
    reversedBy = me.ObjectIdField()  # on a REVERSED transaction: its reversal (set once, by a conditional update)
    reason = me.StringField(max_length=500)  # a reversal's reason, as the operator gave it
    hold = me.ObjectIdField()  # on a HOLD_CAPTURE: the hold it captured
    createdAt = me.DateTimeField(required=True)
    updatedAt = me.DateTimeField(required=True)

    meta = {
        "collection": "transactions",
        "indexes": [
            {"fields": ["initiator", "idempotencyKey"], "unique": True},
            {"fields": ["fromAccount"]},
            {"fields": ["toAccount"]},
        ],
    }


class Hold(_Base):
    """Money reserved on ``fromAccount`` for ``toAccount``: counted in the account's ``held`` while ACTIVE."""

    fromAccount = me.ObjectIdField(required=True)
    toAccount = me.ObjectIdField(required=True)
    owner = me.ObjectIdField(required=True)  # the user owning fromAccount, who alone captures and voids
    amount = me.LongField(required=True, min_value=1)  # minor units
    currency = me.StringField(required=True, min_length=3, max_length=3)
    status = me.StringField(required=True, choices=HOLD_STATUSES)
    expiresAt = me.DateTimeField(required=True)
    idempotencyKey = me.StringField(required=True, min_length=1, max_length=255)
    initiator = me.ObjectIdField(required=True)
    fingerprint = me.StringField(required=True)
    failure = me.DictField()
    capturedAmount = me.LongField(min_value=1)
    captureTransaction = me.ObjectIdField()
    createdAt = me.DateTimeField(required=True)
    updatedAt = me.DateTimeField(required=True)

    meta = {
        "collection": "holds",
        "indexes": [
            {"fields": ["initiator", "idempotencyKey"], "unique": True},
            {"fields": ["fromAccount", "status", "expiresAt"]},  # an account's active holds; its due ones
            {"fields": ["status", "expiresAt"]},  # the expiry sweep
            {"fields": ["toAccount"]},
        ],
    }


class _ImmutableQuerySet(me.QuerySet):
    def update(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableLedgerError("ledger entries are immutable: update refused")

    def update_one(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableLedgerError("ledger entries are immutable: update refused")

    def modify(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableLedgerError("ledger entries are immutable: modify refused")

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableLedgerError("ledger entries are immutable: delete refused")


class LedgerEntry(_Base):
    account = me.ObjectIdField(required=True)
    type = me.StringField(required=True, choices=ENTRY_TYPES)
    amount = me.LongField(required=True, min_value=1)  # minor units, always positive; type gives direction
    currency = me.StringField(required=True, min_length=3, max_length=3)
    transaction = me.ObjectIdField(required=True)
    balanceAfter = me.LongField(required=True)
    seq = me.LongField(required=True, min_value=1)  # the account's entry number, 1, 2, 3, ...
    createdAt = me.DateTimeField(required=True)  # never earlier than the account's previous entry
    # The hash chain (ledger.hashchain): absent only on entries written before it existed, until backfilled.
    prevHash = me.StringField(regex=r"^[0-9a-f]{64}$")
    hash = me.StringField(regex=r"^[0-9a-f]{64}$")

    meta = {
        "collection": "ledgers",
        "queryset_class": _ImmutableQuerySet,
        "indexes": [
            {"fields": ["account", "seq"], "unique": True},
            {"fields": ["transaction"]},
            # Statements and balance-at-a-time: the last entry at or before an instant, one index key away.
            {"fields": ["account", "createdAt", "seq"]},
        ],
    }

    def save(self, *args: Any, **kwargs: Any) -> Any:
        if self.pk is not None and not self._created:
            raise ImmutableLedgerError("ledger entries are immutable: save of an existing entry refused")
        return super().save(*args, **kwargs)

    def update(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableLedgerError("ledger entries are immutable: update refused")

    def modify(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableLedgerError("ledger entries are immutable: modify refused")

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableLedgerError("ledger entries are immutable: delete refused")


class TokenBlacklist(_Base):
    tokenHash = me.StringField(required=True)  # SHA-256 of the JWT, never the token itself
    userId = me.StringField()
    expiresAt = me.DateTimeField(required=True)  # the token's own exp: the entry lives exactly as long
    createdAt = me.DateTimeField(required=True)

    meta = {
        "collection": "tokenblacklists",
        "indexes": [
            {"fields": ["tokenHash"], "unique": True, "sparse": True},
            {"fields": ["expiresAt"], "expireAfterSeconds": 0},
        ],
    }


class Notification(_Base):
    """The transactional outbox: written in the same transaction as what it announces."""

    kind = me.StringField(required=True)
    userId = me.ObjectIdField(required=True)  # the recipient; address and name are read at delivery
    to = me.StringField()
    recipientName = me.StringField()
    context = me.DictField()
    dedupeKey = me.StringField(required=True)  # one message per (event, recipient, kind)
    status = me.StringField(required=True, choices=NOTIFICATION_STATUSES, default="PENDING")
    attempts = me.IntField(default=0)
    nextAttemptAt = me.DateTimeField(required=True)
    claimedUntil = me.DateTimeField()
    leaseExpiries = me.IntField()  # claims that took over an expired lease (the sender crashed mid-delivery)
    interruptions = me.IntField()  # fresh SMTP connections lost while this message was being sent
    requeuedAt = me.DateTimeField()  # last `flask outbox requeue`
    lastError = me.StringField()
    sentAt = me.DateTimeField()
    createdAt = me.DateTimeField(required=True)

    meta = {
        "collection": "notifications",
        "indexes": [
            {"fields": ["dedupeKey"], "unique": True},
            {"fields": ["status", "nextAttemptAt"]},
        ],
    }


ALL_MODELS: tuple[type[_Base], ...] = (User, Account, Transaction, LedgerEntry, TokenBlacklist, Notification, Hold)


def to_document(model: type[_Base], **fields: Any) -> dict[str, Any]:
    """Validate ``fields`` against ``model`` and return the BSON-ready dict to insert (with an ``_id``).

    Valid input takes a fast path that applies each field's own mongoengine conversion, default, validation
    and ``to_mongo`` without building a document instance (which cost about 0.3 ms per document, five
    documents per transfer). Anything the fast path would refuse goes through mongoengine's document, so the
    error raised is exactly mongoengine's; ``tests/test_to_document.py`` checks both paths give identical
    documents.
    """
    fields.setdefault("id", ObjectId())
    document = _validated_fast(model, fields)
    if document is None:
        document = _validated_by_instance(model, fields)
    return document


def _validated_by_instance(model: type[_Base], fields: dict[str, Any]) -> dict[str, Any]:
    instance = model(**fields)
    instance.validate()
    return instance.to_mongo().to_dict()


_GENERIC = object()  # a compiled check's answer for "not the usual case: ask the field itself"
_FLAT_LEAVES = frozenset({str, int, float, bool, type(None)})


@functools.cache
def _schema(model: type[_Base]) -> tuple[frozenset[str], tuple[tuple[str, str, Any, Any], ...]]:
    fields = tuple((name, model._fields[name].db_field, model._fields[name], _compiled_check(model._fields[name]))
                   for name in model._fields_ordered)
    return frozenset(model._fields), fields


def _compiled_check(field: me.fields.BaseField) -> Any:
    """A precompiled stand-in for ``field.to_mongo(field.to_python(v))`` after ``field._validate(v)``, for
    values of the field's usual exact type (``str``, ``int``, ``bool``, ``datetime``, ``ObjectId``, a flat
    ``dict`` of such leaves).

    It returns the stored value when mongoengine would accept ``v`` and store exactly that, and ``_GENERIC``
    otherwise (another type, a subclass, a value out of bounds), which sends the value through the field's
    own methods. Fields with their own validation callable, a regex or a type not listed get no compiled
    check (None) and always go through the field.
    """
    if field.validation is not None:
        return None
    kind = type(field)
    choices: frozenset[Any] | None = None
    if field.choices:
        listed = list(field.choices)
        if isinstance(listed[0], list | tuple):  # (value, label) pairs: mongoengine checks the values
            listed = [choice for choice, _label in listed]
        choices = frozenset(listed)
    if kind is me.StringField and field.regex is None:
        shortest, longest = field.min_length, field.max_length

        def string(value: Any) -> Any:
            if type(value) is str and (longest is None or len(value) <= longest) \
                    and (shortest is None or len(value) >= shortest) and (choices is None or value in choices):
                return value
            return _GENERIC

        return string
    if choices is not None:
        return None
    if kind is me.LongField or kind is me.IntField:
        low, high, stored_as = field.min_value, field.max_value, Int64 if kind is me.LongField else int

        def integer(value: Any) -> Any:
            if type(value) is int and (low is None or value >= low) and (high is None or value <= high):
                return stored_as(value)
            return _GENERIC

        return integer
    if kind is me.DictField and field.field is None:
        required = field.required

        def flat_dict(value: Any) -> Any:
            # A DictField without a declared item field converts and stores a flat dict of these leaves as a
            # copy of itself; it refuses non-string keys and keys starting with "$" (and, if required, {}).
            if type(value) is not dict or (required and not value):
                return _GENERIC
            for key, item in value.items():
                if type(key) is not str or key.startswith("$") or type(item) not in _FLAT_LEAVES:
                    return _GENERIC
            return dict(value)

        return flat_dict
    exact = {me.ObjectIdField: ObjectId, me.BooleanField: bool, me.DateTimeField: datetime}.get(kind)
    if exact is None:
        return None

    def same(value: Any) -> Any:
        return value if type(value) is exact else _GENERIC

    return same


def _validated_fast(model: type[_Base], fields: dict[str, Any]) -> dict[str, Any] | None:
    """The document mongoengine would build from ``fields``, or None if any field is missing or invalid.

    Mirrors ``Document.__init__`` (``to_python`` on given values; ``None`` or absent takes the default),
    ``validate()`` (``field._validate`` on every set value; ``required`` on unset ones) and ``to_mongo()``.
    Values of a field's usual type take its precompiled check (:func:`_compiled_check`); anything else runs
    the field's own conversion and validation.
    """
    names, schema = _schema(model)
    if not names.issuperset(fields):
        return None
    document: dict[str, Any] = {}
    get = fields.get
    try:
        for name, db_field, field, check in schema:
            value = get(name)
            if value is not None:
                if check is not None:
                    stored = check(value)
                    if stored is not _GENERIC:
                        document[db_field] = stored
                        continue
                value = field.to_python(value)
            elif not field.null and field.default is not None:
                value = field.default() if callable(field.default) else field.default
            if value is None:
                if field.required and not getattr(field, "_auto_gen", False):
                    return None
                if field.null:
                    document[db_field] = None
                continue
            field._validate(value)
            stored = field.to_mongo(value)
            if stored is not None or field.null:
                document[db_field] = stored
    except (me.ValidationError, ValueError, TypeError, AttributeError, AssertionError):
        return None
    return document
