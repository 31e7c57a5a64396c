"""``to_document``'s fast path builds exactly the document mongoengine builds, and refuses what it refuses.

``ledger.models.to_document`` validates through each field's own mongoengine code without building a document
instance (a profile of the transfer path showed the instance as our largest cost). These tests hold it to the
instance path: same keys in the same order, same values of the same types, and for invalid input the very
same exception.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import mongoengine as me
import pytest
from bson import Int64, ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import models
from ledger.models import (
    Account,
    LedgerEntry,
    Notification,
    TokenBlacklist,
    Transaction,
    User,
    _validated_by_instance,
    to_document,
)

NOW = datetime(2026, 3, 1, 10, 0, 0, 123000, tzinfo=UTC)

VALID: list[tuple[type, dict[str, Any]]] = [
    (User, {"email": "a@example.test", "name": "Ada", "password": "$2b$10$hash", "systemUser": False,
            "createdAt": NOW, "updatedAt": NOW}),
    (User, {"email": "s@example.test", "name": "System", "password": "$2b$10$hash", "systemUser": True,
            "createdAt": NOW, "updatedAt": NOW}),
    (Account, {"user": ObjectId(), "status": "ACTIVE", "currency": "INR", "balance": 0, "seq": 0,
               "createdAt": NOW, "updatedAt": NOW}),
    (Account, {"user": ObjectId(), "status": "ACTIVE", "currency": "JPY", "balance": -5, "seq": 3,
               "systemUser": True, "systemCurrency": "JPY", "createdAt": NOW, "updatedAt": NOW}),
    (Account, {"user": str(ObjectId()), "createdAt": NOW, "updatedAt": NOW}),  # defaults; id given as text
    (Transaction, {"kind": "TRANSFER", "fromAccount": ObjectId(), "toAccount": ObjectId(), "amount": 1050,
                   "currency": "INR", "status": "COMPLETED", "idempotencyKey": "k-1", "initiator": ObjectId(),
                   "fingerprint": "f" * 64, "failure": {}, "createdAt": NOW, "updatedAt": NOW}),
    (Transaction, {"kind": "INITIAL_FUNDS", "fromAccount": ObjectId(), "toAccount": ObjectId(), "amount": 10**14,
                   "currency": "USD", "status": "FAILED", "idempotencyKey": "x" * 255, "initiator": ObjectId(),
                   "fingerprint": "f", "failure": {"code": "INSUFFICIENT_FUNDS", "message": "m", "httpStatus": 400},
                   "createdAt": NOW, "updatedAt": NOW}),
    (LedgerEntry, {"account": ObjectId(), "type": "DEBIT", "amount": 1, "currency": "INR",
                   "transaction": ObjectId(), "balanceAfter": -1, "seq": 1, "createdAt": NOW}),
    (TokenBlacklist, {"tokenHash": "h" * 64, "expiresAt": NOW, "userId": None, "createdAt": NOW}),
    (TokenBlacklist, {"tokenHash": "h" * 64, "expiresAt": NOW, "userId": "abc", "createdAt": NOW}),
    (Notification, {"kind": "transfer_receipt", "userId": ObjectId(), "to": None, "recipientName": None,
                    "context": {"amount": "INR 1,234.50", "nested": {"list": [1, "two"]}},
                    "dedupeKey": "transfer_receipt:1", "status": "PENDING", "attempts": 0,
                    "nextAttemptAt": NOW, "createdAt": NOW}),
    (Notification, {"kind": "welcome", "userId": ObjectId(), "to": "a@example.test", "recipientName": "Ada",
                    "context": {}, "dedupeKey": "welcome:1", "nextAttemptAt": NOW, "createdAt": NOW}),
]

INVALID: list[tuple[type, dict[str, Any]]] = [
    (User, {"email": "a@example.test", "name": "Ada", "createdAt": NOW, "updatedAt": NOW}),  # no password
    (Account, {"user": ObjectId(), "status": "OPEN", "createdAt": NOW, "updatedAt": NOW}),  # not a status
    (Account, {"user": ObjectId(), "currency": "RUPEE", "createdAt": NOW, "updatedAt": NOW}),
    (Account, {"user": "not-an-id", "createdAt": NOW, "updatedAt": NOW}),
    (Transaction, {"kind": "TRANSFER", "fromAccount": ObjectId(), "toAccount": ObjectId(), "amount": 0,
                   "status": "COMPLETED", "idempotencyKey": "k", "initiator": ObjectId(), "fingerprint": "f",
                   "createdAt": NOW, "updatedAt": NOW}),
    (Transaction, {"kind": "TRANSFER", "fromAccount": ObjectId(), "toAccount": ObjectId(), "amount": 5,
                   "status": "COMPLETED", "idempotencyKey": "", "initiator": ObjectId(), "fingerprint": "f",
                   "createdAt": NOW, "updatedAt": NOW}),
    (LedgerEntry, {"account": ObjectId(), "type": "SIDEWAYS", "amount": 1, "currency": "INR",
                   "transaction": ObjectId(), "balanceAfter": 0, "seq": 1, "createdAt": NOW}),
    (LedgerEntry, {"account": ObjectId(), "type": "DEBIT", "amount": 1, "currency": "INR",
                   "transaction": ObjectId(), "balanceAfter": 0, "seq": 0, "createdAt": NOW}),
    (TokenBlacklist, {"tokenHash": "h", "expiresAt": "tomorrow", "createdAt": NOW}),
    (Notification, {"kind": "welcome", "userId": ObjectId(), "dedupeKey": "d", "status": "LOST",
                    "nextAttemptAt": NOW, "createdAt": NOW}),
    (User, {"email": "a@example.test", "name": "Ada", "password": "p", "createdAt": NOW, "updatedAt": NOW,
            "admin": True}),  # a field the schema does not have
]


def _typed(value: Any) -> Any:
    """The value with every leaf's exact type, and every mapping's key order, made comparable."""
    if isinstance(value, dict):
        return [("dict", key, _typed(item)) for key, item in value.items()]
    if isinstance(value, list | tuple):
        return [type(value).__name__, *(_typed(item) for item in value)]
    return type(value).__name__, value


@pytest.mark.parametrize(("model", "fields"), VALID, ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_the_fast_path_builds_the_document_mongoengine_builds(model: type, fields: dict[str, Any]) -> None:
    given = {**fields, "id": ObjectId()}

    fast = models._validated_fast(model, dict(given))
    reference = _validated_by_instance(model, dict(given))

    assert fast is not None
    assert _typed(fast) == _typed(reference)


def test_money_fields_are_stored_as_int64_as_before() -> None:
    entry = to_document(LedgerEntry, account=ObjectId(), type="CREDIT", amount=5, currency="INR",
                        transaction=ObjectId(), balanceAfter=5, seq=1, createdAt=NOW)

    assert type(entry["amount"]) is Int64
    assert list(entry)[0] == "_id"


@pytest.mark.parametrize(("model", "fields"), INVALID, ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_invalid_fields_raise_exactly_what_mongoengine_raises(model: type, fields: dict[str, Any]) -> None:
    given = {**fields, "id": ObjectId()}
    with pytest.raises((me.ValidationError, me.errors.FieldDoesNotExist)) as reference:
        _validated_by_instance(model, dict(given))

    assert models._validated_fast(model, dict(given)) is None
    with pytest.raises(type(reference.value)) as raised:
        to_document(model, **given)
    assert str(raised.value) == str(reference.value)


# ------------------------------------------------------------------------ generated: fast path == mongoengine


class _Text(str):
    """A str subclass: mongoengine accepts it; the compiled checks must leave it to the field."""


def _values_for(field: me.fields.BaseField) -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                       st.text(max_size=5), st.builds(_Text, st.text(max_size=3)))
    anything = st.one_of(
        leaves,
        st.integers(-3, 3),
        st.builds(Int64, st.integers(-(2**63), 2**63 - 1)),
        st.text(max_size=300),
        st.text(alphabet="0123456789abcdef", min_size=24, max_size=24),  # an ObjectId as text
        st.builds(ObjectId),
        st.datetimes(timezones=st.just(UTC)),
        st.datetimes(),
        st.dictionaries(st.one_of(st.text(max_size=4), st.sampled_from(["$set", "a.b", "ok"]), st.integers(0, 2)),
                        st.one_of(leaves, st.dictionaries(st.text(max_size=3), leaves, max_size=2)), max_size=4),
        st.lists(leaves, max_size=3),
        st.binary(max_size=4),
    )
    # Mostly the field's own kind of value (so whole documents are often valid), now and then anything.
    return st.integers(0, 9).flatmap(lambda roll: _typical(field) if roll < 8 else anything)


def _typical(field: me.fields.BaseField) -> st.SearchStrategy[Any]:
    """Values of the field's own type, near and across its bounds: what the services pass."""
    if field.choices:
        return st.sampled_from(list(field.choices))
    if isinstance(field, me.StringField):
        low, high = field.min_length or 0, field.max_length or 40
        return st.text(min_size=max(0, low - 1), max_size=min(high + 1, 300))
    if isinstance(field, me.IntField):
        low = field.min_value if field.min_value is not None else -5
        return st.integers(low - 2, low + 10**15)
    if isinstance(field, me.DictField):
        return st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=6), st.integers(), st.none()),
                               max_size=6)
    return {me.ObjectIdField: st.builds(ObjectId), me.BooleanField: st.booleans(),
            me.DateTimeField: st.datetimes(timezones=st.just(UTC))}.get(type(field), st.none())


@st.composite
def _model_and_fields(draw: st.DrawFn) -> tuple[type, dict[str, Any]]:
    model = draw(st.sampled_from(list(models.ALL_MODELS)))
    fields: dict[str, Any] = {"id": draw(st.one_of(st.builds(ObjectId), _values_for(model._fields["id"])))}
    for name in model._fields_ordered:
        if name != "id" and draw(st.integers(0, 9)) > 0:  # now and then leave a field out
            fields[name] = draw(_values_for(model._fields[name]))
    return model, fields


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_model_and_fields())
def test_generated_fields_the_fast_path_accepts_are_stored_exactly_as_mongoengine_stores_them(
        case: tuple[type, dict[str, Any]]) -> None:
    model, fields = case
    try:
        reference = _validated_by_instance(model, dict(fields))
    except Exception:  # noqa: BLE001 - whatever mongoengine refuses, and however, the fast path must refuse
        reference = None

    fast = models._validated_fast(model, dict(fields))

    if reference is None:
        assert fast is None
    elif fast is not None:  # None only sends valid input through mongoengine itself, which is always allowed
        assert _typed(fast) == _typed(reference)
