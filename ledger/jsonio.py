"""JSON in and out, exactly.

In: request bodies are parsed with JSON numbers as ``int``/``Decimal`` (never ``float``), ``NaN`` and
``Infinity`` refused, nesting depth capped, invalid UTF-8 refused, strings that are not valid Unicode (a lone
surrogate written as a ``\\ud800`` escape, which the JSON reader accepts but bcrypt and BSON cannot encode)
refused naming the field, and anything but an object refused, each with a clear 400. A body must be declared
``Content-Type: application/json`` (or ``+json``), as ``express.json()`` required: anything else is a 415,
so a cross-site form cannot post a body that we would read as JSON.

Out: ``Decimal`` is written as a JSON number digit for digit, dates as ISO-8601 UTC with milliseconds and
``Z``, ObjectIds as 24-hex strings.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import simplejson
from bson import ObjectId
from flask import current_app, request
from flask.json.provider import JSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

from ledger.errors import UnsupportedMediaType, ValidationFailed


def iso_utc(value: datetime) -> str:
    """``2026-03-01T10:00:00.000Z``: the format the Node service's JSON dates had (naive means UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if value.year >= 1000:  # isoformat pads the year to 4 digits where strftime's %Y does not: same text here
        return value.isoformat(timespec="milliseconds") + "Z"
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, ObjectId):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = simplejson.JSONEncoder(default=_default, ensure_ascii=True, use_decimal=True, allow_nan=False)


class LedgerJSONProvider(JSONProvider):
    """Flask's JSON provider, writing ``Decimal`` exactly (via simplejson) and refusing NaN."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if not kwargs:  # every response: one encoder with exactly the settings below, built once
            return _ENCODER.encode(obj)
        kwargs.setdefault("default", _default)
        kwargs.setdefault("ensure_ascii", True)
        return simplejson.dumps(obj, use_decimal=True, allow_nan=False, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return json.loads(s, parse_float=Decimal, parse_constant=_refuse_constant, **kwargs)


class _ConstantRefused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _ConstantRefused(name)


def _field_name(path: tuple[str | int, ...]) -> str:
    """``amount``, ``meta.tags[2]``: where a value sits in the body, printable even if a key is not Unicode."""
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            text = part.encode("utf-8", errors="backslashreplace").decode("utf-8")
            name += f".{text}" if name else text
    return name or "body"


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _inspect(value: Any, limit: int) -> tuple[int, str | None]:
    """Nesting depth of ``value`` (counting stops past ``limit``) and the first field holding a string, or named
    by a key, that is not valid Unicode. Iterative: deep input cannot exhaust the stack."""
    deepest = 0
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            if not _is_unicode(item):
                return deepest, _field_name(path)
        elif isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest, None
            if isinstance(item, dict):
                for key, child in item.items():
                    if not _is_unicode(key):
                        return deepest, _field_name((*path, key))
                    stack.append((child, depth + 1, (*path, key)))
            else:
                stack.extend((child, depth + 1, (*path, index)) for index, child in enumerate(item))
    return deepest, None


def needs_inspection(text: str, limit: int) -> bool:
    """Whether the parsed ``text`` could be nested deeper than ``limit`` or hold a lone surrogate, the two things
    :func:`_inspect` looks for. ``text`` is decoded UTF-8, which cannot carry a surrogate: one can only come
    from a ``\\u`` escape. Nesting needs an opening bracket per level, so with no more ``{``/``[`` characters
    than ``limit`` (counted anywhere, strings included: an overcount only means looking) it is within it.
    The usual body (a flat object, no escapes) is answered without walking it."""
    return "\\u" in text or text.count("{") + text.count("[") > limit


def is_json_request() -> bool:
    """Whether the request declares a JSON body (``application/json`` or a ``+json`` type)."""
    mimetype = request.mimetype or ""
    return mimetype == "application/json" or mimetype.endswith("+json")


def json_body(*, required: bool = True) -> dict[str, Any]:
    """The request's JSON object, or a clear 400/413/415.

    With ``required=False`` the body is optional, as it was for the Node route that ignored it: an empty body,
    or one not declared as JSON, is an empty object; a body declared as JSON is read and checked as always.
    """
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit:
        # A chunked body (no Content-Length) is cut at the limit by werkzeug, not refused: refuse it here.
        raise RequestEntityTooLarge()
    if not raw.strip() or (not required and not is_json_request()):
        if required:
            raise ValidationFailed("Request body must be a JSON object")
        return {}
    if not is_json_request():
        raise UnsupportedMediaType()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed("Request body is not valid UTF-8") from exc
    try:
        body = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except _ConstantRefused as exc:
        raise ValidationFailed("NaN and Infinity are not valid JSON numbers") from exc
    except RecursionError as exc:
        raise ValidationFailed("JSON body is nested too deeply") from exc
    except ValueError as exc:
        raise ValidationFailed("Malformed JSON in request body") from exc
    limit = current_app.config.get("MAX_JSON_DEPTH", 32)
    depth, not_unicode = _inspect(body, limit) if needs_inspection(text, limit) else (0, None)
    if depth > limit:
        raise ValidationFailed(f"JSON body is nested too deeply (limit {limit})")
    if not_unicode is not None:
        text = f"{not_unicode} is not valid Unicode text (it contains a lone surrogate escape)"
        raise ValidationFailed(text, errors={not_unicode: text})
    if not isinstance(body, dict):
        raise ValidationFailed("Request body must be a JSON object")
    return body
