"""The holes closed by canonical revocation and the JSON boundary, probed over real HTTP through gunicorn.

The Flask-client tests generate the cases; these check that what gunicorn hands the app (header parsing,
percent-decoding, bodies without a content type) leads to the same answers on the wire.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator

import pytest

from tests.gunicorn_process import GunicornProcess, running_gunicorn

pytestmark = pytest.mark.e2e

MISSING = {"message": "Unauthorized, token is missing", "status": "failed"}
INVALID = {"message": "Unauthorized, token is invalid", "status": "failed"}
BLACKLISTED = {"message": "Unauthorized, token is blacklisted", "status": "failed"}
UNSUPPORTED = {"message": "Content-Type must be application/json", "status": "failed"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornProcess]:
    environment = {"JWT_SECRET": f"e2e-hostile-{uuid.uuid4().hex}{uuid.uuid4().hex}"}
    with running_gunicorn(tmp_path_factory.mktemp("gunicorn"), environment) as running:
        yield running


def call(server: GunicornProcess, method: str, path: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        text = response.read().decode("utf-8")
    finally:
        connection.close()
    return response.status, json.loads(text) if text.startswith("{") else text


def register(server: GunicornProcess) -> str:
    body = json.dumps({"email": f"h-{uuid.uuid4().hex[:10]}@example.test", "password": "password-123",
                       "name": "Hostile"}).encode()
    status, answer = call(server, "POST", "/api/auth/register", body=body,
                          headers={"Content-Type": "application/json"})
    assert status == 201, answer
    return answer["token"]


def test_a_logged_out_token_stays_refused_in_a_padded_spelling_over_http(server):
    token = register(server)
    padded = token + "="  # PyJWT reads it as the same token
    assert call(server, "GET", "/api/accounts", headers={"Authorization": f"Bearer {padded}"}) == (401, INVALID)
    assert call(server, "POST", "/api/auth/logout", headers={"Authorization": f"Bearer {token}"})[0] == 200
    for headers in ({"Authorization": f"Bearer {padded}"}, {"Cookie": f"token={padded}"}):
        assert call(server, "GET", "/api/accounts", headers=headers) == (401, INVALID)
    assert call(server, "GET", "/api/accounts", headers={"Authorization": f"Bearer {token}"}) == (401, BLACKLISTED)


@pytest.mark.parametrize(("value", "expected"), [(", ,", MISSING), (" ,Bearer", INVALID), ("Bearer a b", INVALID),
                                                 ("Basic x, ,", MISSING), (",\t,", MISSING)])
def test_hostile_authorization_headers_are_401_over_http(server, value, expected):
    assert call(server, "GET", "/api/accounts", headers={"Authorization": value}) == (401, expected)


def test_lone_surrogates_are_a_400_and_bodies_without_json_type_a_415_over_http(server):
    body = b'{"email": "s@example.test", "password": "password-123", "name": "a\\ud800"}'
    status, answer = call(server, "POST", "/api/auth/register", body=body,
                          headers={"Content-Type": "application/json"})
    assert status == 400
    assert list(answer["errors"]) == ["name"]
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        assert call(server, "POST", "/api/auth/login", body=b'{"email": "a@b.cd", "password": "xxxxxx"}',
                    headers=headers) == (415, UNSUPPORTED)


def test_paths_in_any_case_with_a_trailing_slash_reach_their_routes_over_http(server):
    token = register(server)
    status, answer = call(server, "POST", "/API/Accounts/", body=b'{"currency": "USD"}',
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert status == 201, answer
    assert answer["account"]["currency"] == "USD"
    status, answer = call(server, "GET", "/Api/accounts/", headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    assert [a["currency"] for a in answer["accounts"]] == ["USD"]
