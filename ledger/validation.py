"""Field validation, each rule written once and used by every route.

Every function takes the raw JSON value and returns a clean primitive or raises
:class:`~ledger.errors.ValidationFailed` naming the field. Type checks come first, so an operator-injection
attempt such as ``{"$ne": null}`` is a 400 and never reaches a query.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId

from ledger import money
from ledger.errors import ValidationFailed

# Pragmatic address check: one @, a dotted domain, no spaces or control characters; plus-addressing allowed.
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
OBJECT_ID_PATTERN = r"^[0-9a-fA-F]{24}$"  # also the ObjectId schema of /api/openapi.json
_OBJECT_ID = re.compile(OBJECT_ID_PATTERN)
PASSWORD_MIN_BYTES = 6
PASSWORD_MAX_BYTES = 72  # bcrypt reads no further; longer would be silently truncated
NAME_MAX_LENGTH = 200
IDEMPOTENCY_KEY_MAX_LENGTH = 255


def _fail(field: str, text: str) -> ValidationFailed:
    return ValidationFailed(text, errors={field: text})


def email(value: Any, field: str = "email") -> str:
    if not isinstance(value, str):
        raise _fail(field, "email must be a string")
    cleaned = value.strip().lower()
    if len(cleaned) > 254 or not _EMAIL.match(cleaned):
        raise _fail(field, "Invalid email address")
    return cleaned


def password(value: Any, field: str = "password") -> str:
    if not isinstance(value, str):
        raise _fail(field, "password must be a string")
    size = len(value.encode("utf-8"))
    if size < PASSWORD_MIN_BYTES:
        raise _fail(field, f"Password must be at least {PASSWORD_MIN_BYTES} characters long")
    if size > PASSWORD_MAX_BYTES:
        raise _fail(field, f"Password must be at most {PASSWORD_MAX_BYTES} bytes long")
    if "\x00" in value:
        raise _fail(field, "Password must not contain NUL characters")
    return value


def login_password(value: Any, field: str = "password") -> str:
    """At login only the type is checked: a wrong password is a 401, never a hint about the rules."""
    if not isinstance(value, str):
        raise _fail(field, "password must be a string")
    return value


def name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str):
        raise _fail(field, "name must be a string")
    cleaned = value.strip()
    if not cleaned:
        raise _fail(field, "Name is required")
    if len(cleaned) > NAME_MAX_LENGTH:
        raise _fail(field, f"Name must be at most {NAME_MAX_LENGTH} characters long")
    if any(_is_control(ch) for ch in cleaned):
        raise _fail(field, "Name must not contain control characters")
    return cleaned


def _is_control(ch: str) -> bool:
    """C0/C1 controls, format characters and Unicode line/paragraph separators (U+0085, U+2028, U+2029)."""
    return unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"}


def object_id(value: Any, field: str) -> ObjectId:
    if not isinstance(value, str) or not _OBJECT_ID.match(value):
        raise _fail(field, f"{field} must be a 24-character hexadecimal id")
    try:
        return ObjectId(value)
    except InvalidId as exc:  # pragma: no cover - the pattern already guarantees validity
        raise _fail(field, f"{field} must be a 24-character hexadecimal id") from exc


def maybe_object_id(value: str) -> ObjectId | None:
    """A path segment as an ObjectId, or None when it cannot be one (the route then answers 404)."""
    if isinstance(value, str) and _OBJECT_ID.match(value):
        return ObjectId(value)
    return None


_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # code points below 32, and 127


def idempotency_key(value: Any, field: str = "idempotencyKey") -> str:
    if not isinstance(value, str):
        raise _fail(field, "idempotencyKey must be a string")
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX_LENGTH:
        raise _fail(field, f"idempotencyKey must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} characters long")
    if _KEY_CONTROL.search(value):
        raise _fail(field, "idempotencyKey must not contain control characters")
    return value


def amount(value: Any, field: str = "amount") -> Decimal:
    try:
        return money.parse_amount(value)
    except money.InvalidAmount as exc:
        raise _fail(field, str(exc)) from exc


def currency(value: Any, field: str = "currency") -> str:
    try:
        return money.normalize_currency(value)
    except money.UnsupportedCurrency as exc:
        raise _fail(field, str(exc)) from exc


REASON_MAX_LENGTH = 500


def reason(value: Any, field: str = "reason") -> str | None:
    """An operator's free-text reason: optional, text of at most 500 characters, no control characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(field, f"{field} must be a string")
    if len(value) > REASON_MAX_LENGTH:
        raise _fail(field, f"{field} must be at most {REASON_MAX_LENGTH} characters")
    if any(_is_control(ch) for ch in value):
        raise _fail(field, f"{field} must not contain control characters")
    return value.strip() or None


def is_missing(value: Any) -> bool:
    """Missing or empty, as the Node service's ``if (!field)`` check saw it (0 and false count as given)."""
    return value is None or (isinstance(value, str) and value == "")


def require_fields(body: dict[str, Any], fields: tuple[str, ...]) -> None:
    """The Node service's exact message when any required field is missing or empty."""
    if any(is_missing(body.get(f)) for f in fields):
        missing = {f: f"{f} is required" for f in fields if is_missing(body.get(f))}
        raise ValidationFailed(f"Missing required fields: {', '.join(fields)}", errors=missing)


# ------------------------------------------------------------------------ query parameters (Part two)

_DIGITS = re.compile(r"^[0-9]{1,6}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# An instant: a date, a time with optional fraction, and a zone (Z or +hh:mm / -hh:mm); nothing local.
_INSTANT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})$")


def path_object_id(value: str, field: str) -> ObjectId:
    """An id in the path of a Part-two route: malformed is a 400 (absent or not visible is the route's 404)."""
    return object_id(value, field)


def page_limit(value: str | None, default: int, maximum: int, field: str = "limit") -> int:
    if value is None:
        return default
    if not _DIGITS.match(value) or not 1 <= int(value) <= maximum:
        raise _fail(field, f"{field} must be an integer from 1 to {maximum}")
    return int(value)


def calendar_date(value: str | None, field: str) -> date:
    """``YYYY-MM-DD``, a real calendar day."""
    if value is None or value == "":
        raise _fail(field, f"{field} is required (YYYY-MM-DD)")
    if not _DATE.match(value):
        raise _fail(field, f"{field} must be a date YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise _fail(field, f"{field} is not a calendar date") from exc


def instant(value: str, field: str = "at") -> datetime:
    """An ISO-8601 instant with its zone (``2026-03-01T10:00:00.000Z``), as an aware UTC datetime."""
    if not _INSTANT.match(value):
        raise _fail(field, f"{field} must be an ISO-8601 instant with a zone, e.g. 2026-03-01T10:00:00.000Z")
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    head, _, rest = text.partition(".")
    if rest:  # Python reads at most 6 fractional digits: keep the microseconds, drop what is finer
        digits = re.match(r"[0-9]+", rest).group(0)  # type: ignore[union-attr]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _fail(field, f"{field} is not a valid instant") from exc
