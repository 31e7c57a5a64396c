"""Registration, login and logout, exactly as API.md describes them to a client."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import pytest
from bson import ObjectId
from flask_jwt_extended import create_access_token

from ledger import db
from tests.conftest import drop_database, make_app, unique_email

REGISTER = "/api/auth/register"
LOGIN = "/api/auth/login"
LOGOUT = "/api/auth/logout"
SEVEN_DAYS = 7 * 24 * 3600


def token_cookie(response) -> dict[str, Any]:
    """The ``token`` Set-Cookie header as ``{"value": ..., attribute-lower-case: value-or-True}``."""
    headers = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("token=")]
    assert len(headers) == 1, response.headers.getlist("Set-Cookie")
    first, *attributes = [part.strip() for part in headers[0].split(";")]
    cookie: dict[str, Any] = {"value": first.split("=", 1)[1]}
    for attribute in attributes:
        name, _, value = attribute.partition("=")
        cookie[name.lower()] = value if value else True
    return cookie


def register_body(**overrides: Any) -> dict[str, Any]:
    body = {"email": unique_email(), "password": "password-123", "name": "Asha Rao"}
    body.update(overrides)
    return body


def assert_failed(response, status: int, message: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "failed"
    assert isinstance(body["message"], str)
    assert body["message"]
    if message is not None:
        assert body["message"] == message
    return body


# ------------------------------------------------------------------------------------------ register


def test_register_answers_201_with_the_user_and_a_token(api):
    email = unique_email()
    response = api.request("POST", REGISTER, json={"email": email, "password": "password-123", "name": "Asha"})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"user", "token"}
    assert set(body["user"]) == {"_id", "email", "name"}
    assert ObjectId.is_valid(body["user"]["_id"])
    assert len(body["user"]["_id"]) == 24
    assert body["user"]["email"] == email
    assert body["user"]["name"] == "Asha"
    assert body["token"].count(".") == 2


def test_register_sets_an_httponly_lax_cookie_carrying_the_same_token_for_seven_days(api):
    response = api.request("POST", REGISTER, json=register_body())
    cookie = token_cookie(response)
    assert cookie["value"] == response.get_json()["token"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == str(SEVEN_DAYS)
    assert "secure" not in cookie


def test_the_registration_token_authenticates_the_new_user(api):
    token = api.register()["token"]
    assert api.request("GET", "/api/accounts", token).status_code == 200


def test_register_trims_and_lower_cases_the_email(api):
    local = unique_email().split("@")[0]
    response = api.request("POST", REGISTER, json=register_body(email=f"  {local.upper()}@Example.TEST \t"))
    assert response.status_code == 201
    assert response.get_json()["user"]["email"] == f"{local}@example.test"
    login = api.login(f"{local}@example.test", "password-123")
    assert login.status_code == 200


def test_plus_addressing_is_a_valid_email(api):
    email = f"a+{ObjectId()}@x.info"
    response = api.request("POST", REGISTER, json=register_body(email=email))
    assert response.status_code == 201
    assert response.get_json()["user"]["email"] == email


def test_register_ignores_system_user_and_id_sent_by_the_client(app, api):
    chosen_id = str(ObjectId())
    response = api.request("POST", REGISTER, json=register_body(systemUser=True, _id=chosen_id,
                                                                 password_hash="$2b$04$x", balance=10))
    assert response.status_code == 201
    body = response.get_json()
    assert body["user"]["_id"] != chosen_id
    with app.app_context():
        stored = db.get_db().users.find_one({"_id": ObjectId(body["user"]["_id"])})
    assert stored["systemUser"] is False
    account_id = api.open_account(body["token"])
    forbidden = api.request("POST", "/api/transactions/system/initial-funds", body["token"],
                            json={"toAccount": account_id, "amount": 100, "idempotencyKey": "k1"})
    assert_failed(forbidden, 403, "Forbidden, user is not a system user")


def test_register_stores_a_bcrypt_hash_not_the_password(app, api):
    body = api.register(password="my-secret-pw")
    with app.app_context():
        stored = db.get_db().users.find_one({"_id": ObjectId(body["user"]["_id"])})
    assert stored["password"] != "my-secret-pw"
    assert bcrypt.checkpw(b"my-secret-pw", stored["password"].encode())


def test_register_with_an_existing_email_is_422(api):
    email = unique_email()
    api.register(email=email)
    response = api.request("POST", REGISTER, json=register_body(email=email))
    assert_failed(response, 422, "Email already exists in the database")


def test_register_with_an_existing_email_in_other_case_and_spacing_is_422(api):
    email = unique_email()
    api.register(email=email)
    response = api.request("POST", REGISTER, json=register_body(email=f"  {email.upper()} "))
    assert_failed(response, 422, "Email already exists in the database")


def test_concurrent_registrations_of_one_email_create_exactly_one_user(app):
    email = unique_email("race")
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    statuses: list[int] = []
    lock = threading.Lock()

    def attempt() -> None:
        client = app.test_client()
        barrier.wait(timeout=10)
        response = client.post(REGISTER, json=register_body(email=email))
        with lock:
            statuses.append(response.status_code)
        if response.status_code == 422:
            assert response.get_json()["message"] == "Email already exists in the database"

    threads = [threading.Thread(target=attempt) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(statuses) == [201] + [422] * (threads_count - 1)
    with app.app_context():
        assert db.get_db().users.count_documents({"email": email}) == 1


@pytest.mark.parametrize("email", [
    "not-an-email", "a@b", "@example.test", "a b@example.test", "a@@example.test", "a@exa mple.test", "",
    "a@exam\nple.test", "x" * 250 + "@example.test",
])
def test_register_with_an_invalid_email_is_400(api, email):
    assert_failed(api.request("POST", REGISTER, json=register_body(email=email)), 400)


@pytest.mark.parametrize("password", ["", "12345", "é" * 2 + "a"])
def test_register_with_a_short_password_is_400(api, password):
    assert_failed(api.request("POST", REGISTER, json=register_body(password=password)), 400)


def test_register_accepts_a_six_byte_password(api):
    assert api.request("POST", REGISTER, json=register_body(password="123456")).status_code == 201


def test_register_accepts_a_password_of_exactly_72_bytes_and_it_logs_in(api):
    email = unique_email()
    password = "p" * 72
    assert api.request("POST", REGISTER, json=register_body(email=email, password=password)).status_code == 201
    assert api.login(email, password).status_code == 200
    assert api.login(email, password[:71]).status_code == 401


def test_register_with_a_73_byte_password_is_400_not_a_silent_truncation(api):
    email = unique_email()
    assert_failed(api.request("POST", REGISTER, json=register_body(email=email, password="p" * 73)), 400)
    assert api.login(email, "p" * 72).status_code == 401


def test_password_length_counts_utf8_bytes_not_characters(api):
    # 37 two-byte characters are 74 bytes: over bcrypt's limit although only 37 characters long.
    assert_failed(api.request("POST", REGISTER, json=register_body(password="é" * 37)), 400)
    email = unique_email()
    assert api.request("POST", REGISTER, json=register_body(email=email, password="é" * 36)).status_code == 201
    assert api.login(email, "é" * 36).status_code == 200


@pytest.mark.parametrize("name", [None, "", "   "])
def test_register_without_a_name_is_400(api, name):
    body = register_body(name=name)
    if name is None:
        del body["name"]
    assert_failed(api.request("POST", REGISTER, json=body), 400)


@pytest.mark.parametrize("field", ["email", "password"])
def test_register_without_email_or_password_is_400(api, field):
    body = register_body()
    del body[field]
    assert_failed(api.request("POST", REGISTER, json=body), 400)


@pytest.mark.parametrize(("field", "value"), [
    ("email", 12345), ("email", ["a@b.test"]), ("email", {"$ne": None}), ("email", True),
    ("password", 12345678), ("password", ["password-123"]), ("password", {"$gt": ""}), ("password", True),
    ("name", 42), ("name", ["Asha"]), ("name", {"first": "Asha"}), ("name", False),
])
def test_register_with_a_non_string_field_is_400(api, field, value):
    assert_failed(api.request("POST", REGISTER, json=register_body(**{field: value})), 400)


# ------------------------------------------------------------------------------------------ login


def test_login_answers_200_with_the_register_shape_and_a_cookie(api):
    email = unique_email()
    registered = api.register(email=email, name="Ravi")
    response = api.login(email, "password-123")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"user", "token"}
    assert body["user"] == registered["user"]
    cookie = token_cookie(response)
    assert cookie["value"] == body["token"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == str(SEVEN_DAYS)
    assert api.request("GET", "/api/accounts", body["token"]).status_code == 200


def test_login_trims_and_lower_cases_the_email(api):
    email = unique_email()
    api.register(email=email)
    assert api.login(f"  {email.upper()}  ", "password-123").status_code == 200


def test_login_with_a_wrong_password_and_an_unknown_email_answer_identically(api):
    email = unique_email()
    api.register(email=email)
    wrong_password = api.login(email, "wrong-password")
    unknown_email = api.login(unique_email(), "password-123")
    assert_failed(wrong_password, 401, "Invalid email or password")
    assert_failed(unknown_email, 401, "Invalid email or password")
    assert wrong_password.get_json() == unknown_email.get_json()
    assert "Set-Cookie" not in wrong_password.headers
    assert "Set-Cookie" not in unknown_email.headers


def test_login_with_a_password_over_72_bytes_is_401_not_500(api):
    email = unique_email()
    api.register(email=email, password="p" * 72)
    assert_failed(api.login(email, "p" * 73), 401, "Invalid email or password")
    assert_failed(api.login(email, "p" * 5000), 401, "Invalid email or password")


@pytest.mark.parametrize("body", [
    {"email": {"$ne": None}, "password": "password-123"},
    {"email": "a@b.test", "password": {"$ne": None}},
    {"email": ["a@b.test"], "password": "password-123"},
    {"email": "a@b.test", "password": 123456},
    {"email": 1, "password": 2},
    {"password": "password-123"},
    {"email": "a@b.test"},
])
def test_login_with_missing_or_non_string_fields_is_400(api, body):
    assert_failed(api.request("POST", LOGIN, json=body), 400)


@pytest.mark.parametrize("prefix", [b"2a", b"2b"])
def test_a_node_era_cost_10_hash_logs_in(app, api, prefix):
    email = unique_email("node")
    node_hash = bcrypt.hashpw(b"node-password", bcrypt.gensalt(rounds=10, prefix=prefix)).decode()
    assert node_hash.startswith(f"${prefix.decode()}$10$")
    now = datetime.now(UTC)
    user_id = ObjectId()
    with app.app_context():
        db.get_db().users.insert_one({"_id": user_id, "email": email, "name": "Node User", "password": node_hash,
                                      "systemUser": False, "createdAt": now, "updatedAt": now, "__v": 0})
    response = api.login(email, "node-password")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["user"] == {"_id": str(user_id), "email": email, "name": "Node User"}
    assert_failed(api.login(email, "not-the-password"), 401, "Invalid email or password")


# ------------------------------------------------------------------------------------------ logout


def test_logout_answers_200_and_clears_the_cookie(api):
    token = api.register()["token"]
    response = api.request("POST", LOGOUT, token)
    assert response.status_code == 200
    assert response.get_json() == {"message": "User logged out successfully"}
    cookie = token_cookie(response)
    assert cookie["value"] == ""
    assert cookie["max-age"] == "0"
    assert cookie["path"] == "/"


def test_after_logout_the_token_is_refused_as_blacklisted(api):
    token = api.register()["token"]
    assert api.request("POST", LOGOUT, token).status_code == 200
    assert_failed(api.request("GET", "/api/accounts", token), 401, "Unauthorized, token is blacklisted")


def test_logout_with_the_cookie_alone_revokes_that_token(client, api):
    response = client.post(REGISTER, json=register_body())
    token = response.get_json()["token"]
    logout = client.post(LOGOUT)  # the client's cookie jar carries the token
    assert logout.status_code == 200
    assert client.get_cookie("token") is None
    assert_failed(api.request("GET", "/api/accounts", token), 401, "Unauthorized, token is blacklisted")


def test_logout_twice_is_still_200(api):
    token = api.register()["token"]
    assert api.request("POST", LOGOUT, token).status_code == 200
    second = api.request("POST", LOGOUT, token)
    assert second.status_code == 200
    assert second.get_json() == {"message": "User logged out successfully"}


def test_logout_with_an_invalid_token_is_200_with_nothing_to_revoke(api):
    response = api.request("POST", LOGOUT, "not.a.jwt")
    assert response.status_code == 200
    assert response.get_json() == {"message": "User logged out successfully"}


def test_logout_with_an_expired_token_is_200(app, api):
    user_id, _ = api.user()
    with app.app_context():
        expired = create_access_token(identity=user_id, expires_delta=timedelta(seconds=-60))
    response = api.request("POST", LOGOUT, expired)
    assert response.status_code == 200
    assert response.get_json() == {"message": "User logged out successfully"}


def test_logout_without_any_token_is_400_no_token_found(api):
    assert_failed(api.request("POST", LOGOUT), 400, "No token found")


def test_logout_of_one_session_leaves_the_users_other_session_working(api):
    email = unique_email()
    first = api.register(email=email)["token"]
    second = api.login(email, "password-123").get_json()["token"]
    assert api.request("POST", LOGOUT, first).status_code == 200
    assert api.request("GET", "/api/accounts", second).status_code == 200


# ------------------------------------------------------------------------------------------ cookies in production


def test_the_cookie_is_secure_when_cookie_secure_is_set():
    app = make_app(COOKIE_SECURE=True)
    try:
        client = app.test_client()
        response = client.post(REGISTER, json=register_body())
        assert response.status_code == 201
        assert token_cookie(response)["secure"] is True
        logout = client.post(LOGOUT, headers={"Authorization": f"Bearer {response.get_json()['token']}"})
        assert token_cookie(logout)["secure"] is True
    finally:
        drop_database(app)


def test_the_production_configuration_makes_the_cookie_secure(monkeypatch):
    from config import load_config

    monkeypatch.setenv("JWT_SECRET", "x" * 40)
    monkeypatch.setenv("MONGO_URI", "mongodb://127.0.0.1:1/ledger?replicaSet=rs0")
    monkeypatch.setenv("MAIL_SERVER", "127.0.0.1")
    monkeypatch.delenv("COOKIE_SECURE", raising=False)
    assert load_config("production").COOKIE_SECURE is True
    monkeypatch.setenv("COOKIE_SECURE", "false")
    assert load_config("production").COOKIE_SECURE is False
    monkeypatch.delenv("COOKIE_SECURE")
    assert load_config("development").COOKIE_SECURE is False
