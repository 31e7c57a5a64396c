"""Parse each bearer token once per process, not four times per request.

flask-jwt-extended hands every request's token to PyJWT four times (the unverified claims, the unverified
header twice, then the verified decode), and PyJWT's compact-form parser (``PyJWS._load``: split the three
segments, check and decode their base64url character by character, read the header's JSON) is the largest
part of authenticating a request outside the database. The parse is a pure function of the token's bytes,
so :func:`install` memoises it: a bounded LRU of recently seen tokens.

The claims' JSON is remembered the same way (:func:`_memoise_payload`). Nothing about verification changes.
Only successful parses are remembered (a malformed token is parsed, and refused with PyJWT's own error, every
time); the signature is checked, and ``exp``/``nbf``/``iat`` are validated against the clock, on every decode
exactly as before, since those happen after the parse. Each caller gets its own copy of the header and claims
dicts. Tokens longer than :data:`MAX_TOKEN_BYTES` are not remembered.
"""

from __future__ import annotations

import functools
from typing import Any

from jwt.api_jws import PyJWS
from jwt.api_jwt import PyJWT

MAX_TOKEN_BYTES = 4096
CACHE_SIZE = 512  # tokens; at most CACHE_SIZE * MAX_TOKEN_BYTES of parsed segments

_installed = False
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _flat(values: dict[str, Any]) -> bool:
    """Only dicts of plain scalars are remembered: a copy is then one ``dict()``, and a forged token's nested
    header or claims (parsed before any signature check) can neither fill the cache with large structures nor
    make each later use pay a deep copy."""
    return all(type(value) in _SCALARS for value in values.values())


def install() -> None:
    """Memoise ``PyJWS._load`` once per process (idempotent; leaves PyJWT alone if it has no such method)."""
    global _installed
    original = PyJWS.__dict__.get("_load")
    if _installed or original is None:
        return

    @functools.lru_cache(maxsize=CACHE_SIZE)
    def parsed(parser: PyJWS, token: bytes) -> tuple[bytes, bytes, dict[str, Any], bytes] | None:
        result = original(parser, token)
        return result if _flat(result[2]) else None  # None: parse it afresh each time

    @functools.wraps(original)
    def _load(self: PyJWS, jwt: str | bytes) -> tuple[bytes, bytes, dict[str, Any], bytes]:
        if isinstance(jwt, str):
            try:
                token = jwt.encode("utf-8")
            except UnicodeEncodeError:
                return original(self, jwt)  # refused by the original, with its own error
        elif isinstance(jwt, bytes):
            token = jwt
        else:
            return original(self, jwt)
        if len(token) > MAX_TOKEN_BYTES:
            return original(self, token)
        remembered = parsed(self, token)
        if remembered is None:
            return original(self, token)
        payload, signing_input, header, signature = remembered
        return payload, signing_input, dict(header), signature

    _load.__ledger_memoised__ = parsed  # type: ignore[attr-defined]
    PyJWS._load = _load  # type: ignore[method-assign]
    _memoise_payload()
    _installed = True


def _memoise_payload() -> None:
    """The claims' JSON is read from the token's bytes as often as the header is (each decode reads it again):
    remembered the same way, per payload, successful reads only, each caller getting its own copy
    (flask-jwt-extended adds claims to the dict it gets)."""
    original = PyJWT.__dict__.get("_decode_payload")
    if original is None:
        return

    @functools.lru_cache(maxsize=CACHE_SIZE)
    def claims(parser: PyJWT, payload: bytes) -> dict[str, Any] | None:
        result = original(parser, {"payload": payload})
        return result if _flat(result) else None  # None: read it afresh each time

    @functools.wraps(original)
    def _decode_payload(self: PyJWT, decoded: dict[str, Any]) -> dict[str, Any]:
        payload = decoded.get("payload")
        if type(self) is not PyJWT or type(payload) is not bytes or len(payload) > MAX_TOKEN_BYTES:
            return original(self, decoded)
        remembered = claims(self, payload)
        return original(self, decoded) if remembered is None else dict(remembered)

    _decode_payload.__ledger_memoised__ = claims  # type: ignore[attr-defined]
    PyJWT._decode_payload = _decode_payload  # type: ignore[method-assign]
