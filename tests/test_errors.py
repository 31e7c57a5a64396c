"""The one error envelope: every failure is ``{"message", "status": "failed"}`` JSON with the right status."""

from __future__ import annotations

import io
import json

import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect, OperationFailure, ServerSelectionTimeoutError

from tests.conftest import unique_email

REGISTER = "/api/auth/register"


def assert_envelope(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == "failed"
    assert isinstance(body["message"], str)
    assert body["message"]
    assert set(body) <= {"message", "status", "errors"}
    text = response.get_data(as_text=True)
    assert "<html" not in text.lower()
    assert "Traceback" not in text
    return body


def credentials_json(name: str = "N") -> str:
    return json.dumps({"email": unique_email(), "password": "password-123", "name": name})


def post_raw(client, path: str, data: bytes | str, content_type: str = "application/json", **headers: str):
    return client.post(path, data=data, headers={"Content-Type": content_type, **headers})


# ------------------------------------------------------------------------------------------ routing


@pytest.mark.parametrize("path", ["/api/nope", "/nope", "/api/accounts/a/b/c", "/api/auth", "/api/transactions/x/y"])
def test_an_unknown_route_is_a_json_404(client, path):
    assert_envelope(client.get(path), 404)


@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", "/api/accounts"), ("PUT", "/api/accounts/create"), ("GET", "/api/auth/login"),
    ("GET", "/api/auth/register"), ("GET", "/api/auth/logout"), ("PATCH", "/api/transactions"), ("POST", "/"),
    ("DELETE", f"/api/accounts/{ObjectId()}"),
])
def test_a_wrong_method_is_a_json_405_with_allow(client, method, path):
    response = client.open(path, method=method)
    assert_envelope(response, 405)
    assert response.headers.get("Allow")


def test_get_slash_is_the_plain_text_welcome(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.get_data(as_text=True) == "Welcome to the banking app"


# ------------------------------------------------------------------------------------------ bodies


@pytest.mark.parametrize("data", ['{"email": ', "{'email': 'a@b.test'}", "{email: 1}", '{"a": 1,}', "nul",
                                  '{"a": 1} {"b": 2}', "\x00"])
def test_malformed_json_is_400(client, data):
    assert_envelope(post_raw(client, REGISTER, data), 400)


@pytest.mark.parametrize("data", ["[]", '["a@b.test", "password"]', '"a string"', "42", "3.5", "true", "null"])
def test_a_json_body_that_is_not_an_object_is_400(client, data):
    assert_envelope(post_raw(client, REGISTER, data), 400)


@pytest.mark.parametrize("data", ["[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000,
                                  "[" * 50_000 + "]" * 50_000, '{"email": ' + "[" * 40 + "]" * 40 + "}"])
def test_deeply_nested_json_is_400_not_500(client, data):
    assert_envelope(post_raw(client, REGISTER, data), 400)


def test_moderately_nested_json_in_an_ignored_field_is_accepted(client):
    body = credentials_json()[:-1] + ', "extra": ' + "[" * 5 + "]" * 5 + "}"
    assert post_raw(client, REGISTER, body).status_code == 201


def test_a_body_over_100_kb_is_a_json_413(client):
    body = credentials_json(name="x" * (101 * 1024))
    assert_envelope(post_raw(client, REGISTER, body), 413)


def test_a_body_just_under_100_kb_is_read(client):
    body = credentials_json()[:-1] + " " * (99 * 1024) + "}"
    assert post_raw(client, REGISTER, body).status_code == 201


def test_invalid_utf8_is_400(client):
    body = b'{"email": "\xff\xfe@example.test", "password": "password-123", "name": "\xc3\x28"}'
    assert_envelope(post_raw(client, REGISTER, body), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_that_is_not_declared_json_is_400_or_415(client, content_type):
    body = credentials_json()
    response = post_raw(client, REGISTER, body, content_type)
    assert response.status_code in {400, 415}
    assert_envelope(response, response.status_code)


def test_an_empty_body_where_one_is_needed_is_400(client):
    assert_envelope(post_raw(client, REGISTER, ""), 400)
    assert_envelope(post_raw(client, "/api/auth/login", ""), 400)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_400(client, api, constant):
    body = credentials_json()[:-1] + f', "password": {constant}}}'
    assert_envelope(post_raw(client, REGISTER, body), 400)
    _, token = api.user()
    account = api.open_account(token)
    other = api.open_account(token)
    transfer = json.dumps({"fromAccount": account, "toAccount": other, "idempotencyKey": f"k-{constant}"})
    transfer = transfer[:-1] + f', "amount": {constant}}}'
    assert_envelope(post_raw(client, "/api/transactions", transfer, Authorization=f"Bearer {token}"), 400)


# ------------------------------------------------------------------------------------------ operator injection


@pytest.mark.parametrize("operator", [{"$ne": None}, {"$gt": ""}, {"$regex": ".*"}, {"$exists": True}])
def test_operator_injection_in_credentials_is_400(api, operator):
    email = unique_email()
    api.register(email=email)
    for body in ({"email": operator, "password": "password-123"}, {"email": email, "password": operator}):
        response = api.request("POST", "/api/auth/login", json=body)
        assert_envelope(response, 400)
        assert "token" not in response.get_json()
    for field in ("email", "password", "name"):
        body = {"email": unique_email(), "password": "password-123", "name": "N", field: operator}
        assert_envelope(api.request("POST", REGISTER, json=body), 400)


@pytest.mark.parametrize("operator", [{"$ne": None}, {"$gt": ""}, [None], {"$oid": "6b04eeaa8646244bd792fa5e"}])
def test_operator_injection_in_ids_is_400(api, operator):
    _, token = api.user()
    account = api.funded_account(token, 100)
    for body in ({"fromAccount": operator, "toAccount": account, "amount": 1, "idempotencyKey": "k1"},
                 {"fromAccount": account, "toAccount": operator, "amount": 1, "idempotencyKey": "k2"},
                 {"fromAccount": account, "toAccount": account, "amount": 1, "idempotencyKey": operator}):
        assert_envelope(api.request("POST", "/api/transactions", token, json=body), 400)
    funding = {"toAccount": operator, "amount": 1, "idempotencyKey": "k3"}
    assert_envelope(api.request("POST", "/api/transactions/system/initial-funds", api.system_token(),
                                json=funding), 400)
    assert api.balance(token, account) == 100


# ------------------------------------------------------------------------------------------ headers


def test_every_api_response_carries_cache_control_no_store(client, api):
    _, token = api.user()
    responses = [
        api.request("POST", REGISTER, json={"email": unique_email(), "password": "password-123", "name": "N"}),
        api.request("GET", "/api/accounts", token),
        api.request("POST", "/api/accounts", token),
        api.request("GET", "/api/accounts"),
        api.request("GET", f"/api/accounts/{ObjectId()}", token),
        api.request("POST", "/api/auth/login", json={"email": unique_email(), "password": "x" * 8}),
        api.request("POST", "/api/auth/logout"),
        api.request("DELETE", "/api/accounts"),
        api.request("GET", "/api/does-not-exist"),
        post_raw(client, REGISTER, "{bad"),
        post_raw(client, REGISTER, "x" * (101 * 1024)),
    ]
    assert {r.status_code for r in responses} >= {200, 201, 400, 401, 404, 405, 413}
    for response in responses:
        assert response.headers.get("Cache-Control") == "no-store", (response.status_code, response.headers)


@pytest.mark.parametrize("path", ["/", "/health", "/api/accounts", "/api/nope", "/nope"])
def test_a_client_request_id_is_echoed(client, path):
    response = client.get(path, headers={"X-Request-ID": "client-req-42.a_b:c"})
    assert response.headers["X-Request-ID"] == "client-req-42.a_b:c"


def test_a_request_id_is_generated_when_absent_and_differs_per_request(client):
    first = client.get("/api/accounts").headers.get("X-Request-ID")
    second = client.get("/api/accounts").headers.get("X-Request-ID")
    assert first
    assert second
    assert first != second


@pytest.mark.parametrize("bad", ["has spaces", "x" * 500, "<script>", "a\tb"])
def test_an_unsafe_request_id_is_replaced_by_a_generated_one(client, bad):
    response = client.get("/health", headers={"X-Request-ID": bad})
    assert response.headers["X-Request-ID"]
    assert response.headers["X-Request-ID"] != bad


# ------------------------------------------------------------------------------------------ database failures


@pytest.mark.parametrize("error", [
    OperationFailure("secret driver text: E11000 node 10.0.0.7:27017 user=admin"),
    RuntimeError("secret driver text: unexpected"),
    KeyError("secret driver text"),
])
def test_a_database_or_unexpected_error_is_a_json_500_without_its_text(api, monkeypatch, error):
    from ledger.services import accounts as account_service

    _, token = api.user()

    def explode(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(account_service, "list_accounts", explode)
    response = api.request("GET", "/api/accounts", token)
    body = assert_envelope(response, 500)
    text = response.get_data(as_text=True)
    assert "secret driver text" not in text
    assert "27017" not in text
    assert "OperationFailure" not in text
    assert body["message"] == "Internal server error"
    assert response.headers.get("Cache-Control") == "no-store"


@pytest.mark.parametrize("error", [ServerSelectionTimeoutError("secret: no servers found at 10.0.0.7:27017"),
                                   AutoReconnect("secret: connection reset")])
def test_an_unreachable_database_is_a_json_503_with_retry_after(api, monkeypatch, error):
    from ledger.services import accounts as account_service

    _, token = api.user()

    def unreachable(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(account_service, "open_account", unreachable)
    response = api.request("POST", "/api/accounts", token)
    assert_envelope(response, 503)
    assert "secret" not in response.get_data(as_text=True)
    assert response.headers.get("Retry-After")


def test_an_unreachable_database_during_login_is_503_not_401(api, monkeypatch):
    from ledger.services import auth as auth_service

    def unreachable(*_args, **_kwargs):
        raise ServerSelectionTimeoutError("secret: no servers")

    monkeypatch.setattr(auth_service, "authenticate", unreachable)
    response = api.request("POST", "/api/auth/login", json={"email": unique_email(), "password": "password-1"})
    assert_envelope(response, 503)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/accounts/", 200), ("POST", "/api/accounts/", 201), ("POST", "/api/accounts/create/", 201),
    ("GET", "/health/", 200),
])
def test_a_trailing_slash_reaches_the_same_route_as_in_express(api, method, path, status):
    _, token = api.user()
    response = api.request(method, path, token)
    assert response.status_code == status, response.get_data(as_text=True)


def test_a_trailing_slash_on_login_logs_in_without_a_redirect(api):
    email = unique_email()
    api.register(email=email)
    response = api.request("POST", "/api/auth/login/", json={"email": email, "password": "password-123"})
    assert response.status_code == 200
    assert response.get_json()["token"]


def chunked_post(client, path: str, data: bytes):
    """A body sent without Content-Length, as a chunked upload reaches the app behind gunicorn."""
    return client.post(path, input_stream=io.BytesIO(data),
                       headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input_terminated": True})


def test_a_chunked_body_over_100_kb_is_413_not_a_truncated_400(client):
    response = chunked_post(client, REGISTER, credentials_json(name="x" * (101 * 1024)).encode())
    assert response.request.content_length is None
    assert_envelope(response, 413)


def test_a_small_chunked_body_is_read_whole(client):
    response = chunked_post(client, REGISTER, credentials_json().encode())
    assert response.status_code == 201, response.get_data(as_text=True)


@pytest.mark.parametrize("function", ["find_user_by_id", "is_token_revoked"])
def test_an_unreachable_database_while_checking_a_token_is_503_not_401_or_200(api, monkeypatch, function):
    from ledger.services import auth as auth_service

    _, token = api.user()

    def unreachable(*_args, **_kwargs):
        raise ServerSelectionTimeoutError("secret: no servers")

    monkeypatch.setattr(auth_service, function, unreachable)
    response = api.request("GET", "/api/accounts", token)
    assert_envelope(response, 503)
    assert "secret" not in response.get_data(as_text=True)


def test_a_database_error_while_revoking_fails_the_logout_instead_of_pretending(api, monkeypatch):
    from ledger.services import auth as auth_service

    _, token = api.user()

    def broken(*_args, **_kwargs):
        raise OperationFailure("secret driver text")

    monkeypatch.setattr(auth_service, "revoke", broken)
    response = api.request("POST", "/api/auth/logout", token)
    assert_envelope(response, 500)
    assert "secret" not in response.get_data(as_text=True)
    monkeypatch.undo()
    assert api.request("GET", "/api/accounts", token).status_code == 200
