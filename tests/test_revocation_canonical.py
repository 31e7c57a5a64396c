"""One token, one accepted spelling: a logged-out token stays refused however it is re-spelled.

A JWT decoder may read several strings as the same token (PyJWT accepts a padded signature segment; older
versions also read ``+``/``/``, stray characters and non-zero trailing bits). The variants here are generated
by edits that keep every segment's decoded bytes (padding, trailing bits, the standard base64 alphabet, stray
characters) or change them, in any combination; whatever the decoder makes of them, the service accepts the
token only in the exact form it was issued in, from the header and from the cookie, and a logout made with
any spelling revokes the token itself.
"""

from __future__ import annotations

import base64
import hashlib
import string
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jwt as pyjwt
import pytest
from bson import ObjectId
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import db
from ledger.security import canonical_token, is_canonical_token, token_hash
from tests.conftest import Api, drop_database, make_app

PROTECTED = "/api/accounts"
INVALID = "Unauthorized, token is invalid"
BLACKLISTED = "Unauthorized, token is blacklisted"
URL_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
# Characters a forgiving base64 decoder skips or maps; none of them is cookie syntax (; , " \ space).
STRAY = "=!*~$@^+/.%\x7f\xe9"
EDITS = ("pad", "trailing_bits", "standard_alphabet", "stray", "replace")
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _edit_segment(segment: str, edit: str, seed: int, char: str) -> str:
    if edit == "pad":
        return segment + "=" * (1 + seed % 3)
    if edit == "trailing_bits":
        # The last character of an n-character segment carries 6 - (unused) bits; the unused ones are free.
        unused = {2: 4, 3: 2}.get(len(segment) % 4, 0)
        if not unused or not segment or segment[-1] not in URL_ALPHABET:
            return segment + char
        index = URL_ALPHABET.index(segment[-1])
        mask = (1 << unused) - 1
        return segment[:-1] + URL_ALPHABET[(index & ~mask) | (seed & mask)]
    if edit == "standard_alphabet":
        return segment.replace("-", "+").replace("_", "/") if seed % 2 else segment + "+"
    position = seed % (len(segment) + 1)
    if edit == "stray":
        return segment[:position] + char + segment[position:]
    return segment[:position] + URL_ALPHABET[seed % 64] + segment[position + 1:]  # "replace": other bytes


def respell(token: str, edits: list[tuple[str, int, int, str]]) -> str:
    segments = token.split(".")
    for edit, which, seed, char in edits:
        segments[which] = _edit_segment(segments[which], edit, seed, char)
    return ".".join(segments)


spellings = st.lists(
    st.tuples(st.sampled_from(EDITS), st.integers(0, 2), st.integers(0, 2**16), st.sampled_from(STRAY)),
    min_size=1, max_size=3,
)


def systematic_spellings(token: str) -> list[str]:
    """Every single edit of every segment that keeps its decoded bytes, for the decoder census below."""
    found = set()
    for which in range(3):
        for seed in range(64):
            for edit in ("pad", "trailing_bits", "standard_alphabet"):
                found.add(respell(token, [(edit, which, seed, "=")]))
        for char in STRAY:
            found.add(respell(token, [("stray", which, 0, char)]))
            found.add(respell(token, [("stray", which, 10**6, char)]))
    found.discard(token)
    return sorted(found)


def decoder_accepts(app: Flask, spelling: str) -> bool:
    try:
        pyjwt.decode(spelling, app.config["JWT_SECRET_KEY"], algorithms=["HS256"])
    except pyjwt.PyJWTError:
        return False
    return True


def node_token(app: Flask, user_id: str) -> str:
    now = int(time.time())
    return pyjwt.encode({"userId": user_id, "iat": now, "exp": now + 3600}, app.config["JWT_SECRET_KEY"],
                        algorithm="HS256")


def by_header(api: Api, spelling: str):
    return api.request("GET", PROTECTED, environ_overrides={"HTTP_AUTHORIZATION": f"Bearer {spelling}"})


def by_cookie(api: Api, spelling: str):
    # A client without a cookie jar: a jar would replace the raw Cookie header with its own.
    client = api.client.application.test_client(use_cookies=False)
    return client.get(PROTECTED, environ_overrides={"HTTP_COOKIE": f"token={spelling}"})


CARRIERS: dict[str, Callable[[Api, str], object]] = {"header": by_header, "cookie": by_cookie}


@pytest.fixture(scope="module")
def world():
    """One service with a live token, a logged-out token and a logged-out Node-minted token (no jti)."""
    app = make_app()
    api = Api(app.test_client())
    live = api.user()[1]
    revoked = api.user()[1]
    node_user, _ = api.user()
    node = node_token(app, node_user)
    for token in (revoked, node):
        assert api.request("POST", "/api/auth/logout", token).status_code == 200
    yield app, api, {"live": live, "revoked": revoked, "node": node}
    drop_database(app)


def assert_refused(response, *messages: str) -> None:
    assert response.status_code == 401, response.get_json()
    assert response.get_json() == {"message": response.get_json()["message"], "status": "failed"}
    assert response.get_json()["message"] in messages


@pytest.mark.parametrize("carrier", CARRIERS)
def test_the_issued_spelling_is_accepted_and_a_revoked_one_is_blacklisted(world, carrier):
    _, api, tokens = world
    assert CARRIERS[carrier](api, tokens["live"]).status_code == 200
    for name in ("revoked", "node"):
        assert_refused(CARRIERS[carrier](api, tokens[name]), BLACKLISTED)


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("which", ["live", "revoked", "node"])
@HYPOTHESIS
@given(edits=spellings)
def test_no_other_spelling_of_a_token_is_accepted(world, carrier, which, edits):
    _, api, tokens = world
    spelling = respell(tokens[which], edits)
    if spelling == tokens[which]:
        return
    assert_refused(CARRIERS[carrier](api, spelling), INVALID)


@pytest.mark.parametrize("carrier", CARRIERS)
def test_every_spelling_the_decoder_reads_as_the_token_is_refused(world, carrier):
    """The census: list the spellings PyJWT itself accepts for these tokens, and show each one refused."""
    app, api, tokens = world
    accepted_by_decoder = []
    for token in tokens.values():
        for spelling in systematic_spellings(token):
            if decoder_accepts(app, spelling):
                accepted_by_decoder.append(spelling)
                assert canonical_token(spelling) == token
                assert token_hash(spelling) == token_hash(token)
            assert_refused(CARRIERS[carrier](api, spelling), INVALID)
    print(f"{len(accepted_by_decoder)} alternative spellings accepted by PyJWT {pyjwt.__version__}, all refused")


def test_the_decoder_in_use_reads_some_other_spelling_as_the_same_token(world):
    """Why the rule exists: without it these spellings would pass the signature check and miss the blocklist."""
    app, _, tokens = world
    accepted = [s for s in systematic_spellings(tokens["live"]) if decoder_accepts(app, s)]
    if not accepted:
        pytest.skip(f"PyJWT {pyjwt.__version__} accepts no alternative spelling; the refusal is then belt and braces")
    assert all(not is_canonical_token(spelling) for spelling in accepted)


@settings(HYPOTHESIS, max_examples=40)  # a fresh service per example
@given(edits=spellings)
def test_a_logout_with_any_spelling_the_decoder_accepts_revokes_the_token_itself(edits):
    app = make_app()
    try:
        api = Api(app.test_client())
        token = api.user()[1]
        spelling = respell(token, edits)
        response = api.request("POST", "/api/auth/logout",
                               environ_overrides={"HTTP_AUTHORIZATION": f"Bearer {spelling}"})
        assert response.status_code == 200
        status = api.request("GET", PROTECTED, token)
        if decoder_accepts(app, spelling):
            assert_refused(status, BLACKLISTED)
        else:  # not a spelling of this token at all: nothing was revoked
            assert status.status_code == 200
    finally:
        drop_database(app)


def test_blocklist_entries_written_before_the_rule_still_revoke(world):
    """Entries hold SHA-256 of the string sent at logout; for an issued token that is its canonical form."""
    app, api, _ = world
    user_id, token = api.user()
    with app.app_context():
        db.get_db().tokenblacklists.insert_one({
            "_id": ObjectId(), "tokenHash": hashlib.sha256(token.encode()).hexdigest(), "userId": user_id,
            "expiresAt": datetime.now(UTC) + timedelta(days=7), "createdAt": datetime.now(UTC)})
    assert_refused(by_header(api, token), BLACKLISTED)
    padded = token + "=" * (-len(token.rsplit(".", 1)[1]) % 4 or 1)
    assert_refused(by_header(api, padded), INVALID)


def test_canonical_form_is_each_segments_bytes_unpadded():
    raw = [b'{"alg":"HS256"}', b'{"userId":"x"}', bytes(range(32))]
    canonical = ".".join(base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in raw)
    assert is_canonical_token(canonical)
    assert canonical_token(canonical) == canonical
    standard = ".".join(base64.b64encode(part).decode() for part in raw)  # padded, "+" and "/"
    assert canonical_token(standard) == canonical
    assert not is_canonical_token(standard)
    for broken in ("", "a.b", "a.b.c.d", "..", "a..c", "é.é.é"):
        assert not is_canonical_token(broken)
