"""Rate limits: login and registration per client address and per email, transfers per user, 429 in our envelope.

The test configuration switches limits off; each test here builds its own app with ``RATELIMIT_ENABLED=True``
and small limits. (Build it last in the test: flask-limiter's extension is one per process.)
"""

from __future__ import annotations

from collections.abc import Iterator

import bcrypt
import pytest
from flask import Flask

from config import load_config
from ledger import security
from tests.conftest import Api, drop_database, make_app, unique_email

ADDRESS_A = {"REMOTE_ADDR": "192.0.2.10"}
ADDRESS_B = {"REMOTE_ADDR": "192.0.2.20"}


@pytest.fixture
def limited_app() -> Iterator[Flask]:
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="3 per minute", RATELIMIT_REGISTER="3 per minute",
                   RATELIMIT_LOGIN_PER_ADDRESS="3 per minute", RATELIMIT_REGISTER_PER_ADDRESS="3 per minute",
                   RATELIMIT_TRANSFER="2 per minute")
    yield app
    drop_database(app)


@pytest.fixture
def limited(limited_app: Flask) -> Api:
    return Api(limited_app.test_client())


def _login(api: Api, email: str, address: dict[str, str]):
    return api.request("POST", "/api/auth/login", json={"email": email, "password": "wrong-password"},
                       environ_base=address)


def _assert_rate_limited(response, limit: int = 3) -> None:
    assert response.status_code == 429
    assert response.get_json() == {"message": "Too many requests, please retry later", "status": "failed"}
    assert 0 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["Cache-Control"] == "no-store"


def test_login_is_limited_per_client_address_whatever_the_email(limited: Api) -> None:
    statuses = [_login(limited, unique_email(), ADDRESS_A).status_code for _ in range(3)]
    blocked = _login(limited, unique_email(), ADDRESS_A)
    other_address = _login(limited, unique_email(), ADDRESS_B)

    assert statuses == [401, 401, 401]
    _assert_rate_limited(blocked)
    assert other_address.status_code == 401


def test_login_is_limited_per_email_whatever_the_address(limited: Api) -> None:
    email = unique_email("target")
    addresses = [{"REMOTE_ADDR": f"198.51.100.{n}"} for n in range(1, 5)]
    variants = [email, email.upper(), f"  {email} ", email]  # trimmed and lower-cased, as the login itself

    responses = [_login(limited, variant, address) for variant, address in zip(variants, addresses, strict=True)]
    other_email = _login(limited, unique_email(), {"REMOTE_ADDR": "198.51.100.99"})

    assert [r.status_code for r in responses[:3]] == [401, 401, 401]
    _assert_rate_limited(responses[3])
    assert other_email.status_code == 401


def test_registration_is_limited_per_client_address(limited: Api) -> None:
    def register():
        return limited.request("POST", "/api/auth/register", environ_base=ADDRESS_A,
                               json={"email": unique_email(), "password": "password-123", "name": "Many"})

    statuses = [register().status_code for _ in range(3)]
    blocked = register()

    assert statuses == [201, 201, 201]
    _assert_rate_limited(blocked)


def test_registration_is_limited_per_email(limited: Api) -> None:
    email = unique_email("dup")
    responses = [limited.request("POST", "/api/auth/register", environ_base={"REMOTE_ADDR": f"203.0.113.{n}"},
                                 json={"email": email, "password": "password-123", "name": "Dup"})
                 for n in range(1, 5)]

    assert [r.status_code for r in responses[:3]] == [201, 422, 422]
    _assert_rate_limited(responses[3])


def test_transfers_are_limited_per_user_not_per_address(limited: Api) -> None:
    _, alice = limited.user()
    _, bob = limited.user()
    alice_account = limited.funded_account(alice, 100)
    bob_account = limited.funded_account(bob, 100)

    alice_statuses = [limited.transfer(alice, alice_account, bob_account, 1).status_code for _ in range(2)]
    alice_blocked = limited.transfer(alice, alice_account, bob_account, 1)
    bob_allowed = limited.transfer(bob, bob_account, alice_account, 1)

    assert alice_statuses == [200, 200]
    _assert_rate_limited(alice_blocked, limit=2)
    assert bob_allowed.status_code == 200
    assert limited.balance(alice, alice_account) == 100 - 2 + 1  # the refused transfer moved nothing


def test_an_unauthenticated_transfer_is_a_401_and_spends_no_ones_budget(limited: Api) -> None:
    _, alice = limited.user()
    account = limited.funded_account(alice, 100)
    target = limited.open_account(limited.user()[1])

    anonymous = [limited.request("POST", "/api/transactions", json={}).status_code for _ in range(5)]

    assert anonymous == [401] * 5
    assert limited.transfer(alice, account, target, 1).status_code == 200


@pytest.mark.parametrize(("body", "content_type"), [
    (b"", "application/json"),
    (b"not json", "application/json"),
    (b"[1, 2]", "application/json"),
    (b'{"email": 5, "password": "x"}', "application/json"),
    (b'{"email": {"$ne": null}, "password": "x"}', "application/json"),
    (b"[" * 5000 + b"]" * 5000, "application/json"),
    (b'{"email": "a@b.example", "password": "' + b"x" * 200_000 + b'"}', "application/json"),
    (b'{"email": "a@b.example"}', "text/plain"),
    (b"\xff\xfe\x00garbage", "application/json"),
])
def test_the_email_key_never_breaks_a_request_whatever_the_body(limited: Api, body: bytes,
                                                                content_type: str) -> None:
    response = limited.request("POST", "/api/auth/login", data=body, headers={"Content-Type": content_type},
                               environ_base=ADDRESS_A)

    assert response.status_code in {400, 413, 415}
    assert response.get_json()["status"] == "failed"


def test_limits_are_off_in_the_test_configuration(api: Api) -> None:
    statuses = {_login(api, "same@example.test", ADDRESS_A).status_code for _ in range(25)}

    assert statuses == {401}


def test_rate_limit_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATELIMIT_ENABLED", "false")
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("RATELIMIT_LOGIN", "7 per minute")
    monkeypatch.setenv("RATELIMIT_REGISTER", "2 per hour")
    monkeypatch.setenv("RATELIMIT_TRANSFER", "30 per minute")

    config = load_config("development")

    assert config.RATELIMIT_ENABLED is False
    assert config.RATELIMIT_STORAGE_URI == "redis://127.0.0.1:6379/3"
    assert (config.RATELIMIT_LOGIN, config.RATELIMIT_REGISTER, config.RATELIMIT_TRANSFER) == \
        ("7 per minute", "2 per hour", "30 per minute")


def test_rate_limits_default_to_on_in_memory_outside_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RATELIMIT_ENABLED", "RATELIMIT_STORAGE_URI", "RATELIMIT_LOGIN"):
        monkeypatch.delenv(name, raising=False)

    config = load_config("development")

    assert config.RATELIMIT_ENABLED is True
    assert config.RATELIMIT_STORAGE_URI == "memory://"
    assert config.RATELIMIT_LOGIN.startswith("10 per minute")


def test_login_spends_exactly_one_bcrypt_check_whether_or_not_the_email_exists(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    email = unique_email("timing")
    api.register(email=email, password="right-password")
    api.login(unique_email(), "warm-up")  # builds the cached dummy hash once
    calls: list[int] = []
    real_checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(1)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(security.bcrypt, "checkpw", counting_checkpw)
    counts = {}
    for case, (login_email, password) in {
        "unknown email": (unique_email(), "whatever-password"),
        "wrong password": (email, "wrong-password"),
        "right password": (email, "right-password"),
        "over-long password": (email, "x" * 100),
    }.items():
        calls.clear()
        api.login(login_email, password)
        counts[case] = len(calls)

    assert counts == {"unknown email": 1, "wrong password": 1, "right password": 1, "over-long password": 1}


def test_an_unreachable_shared_storage_degrades_to_per_process_limits_instead_of_failing() -> None:
    # Port 9 on loopback: nothing listens, so the shared storage is down from the first request.
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="2 per minute",
                   RATELIMIT_STORAGE_URI="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300&connectTimeoutMS=300")
    try:
        api = Api(app.test_client())
        statuses = [_login(api, "someone@example.test", ADDRESS_A).status_code for _ in range(3)]
    finally:
        drop_database(app)

    assert statuses == [401, 401, 429]


def test_retry_after_appears_only_on_refusals_never_on_a_success():
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="2 per minute")
    try:
        client = app.test_client()
        email = unique_email()
        client.post("/api/auth/register", json={"email": email, "password": "password-123", "name": "R"})
        first = client.post("/api/auth/login", json={"email": email, "password": "password-123"})
        assert first.status_code == 200
        assert "X-RateLimit-Limit" in first.headers
        assert "Retry-After" not in first.headers
        wrong = [client.post("/api/auth/login", json={"email": email, "password": "wrong-password"}).status_code
                 for _ in range(2)]
        refused = client.post("/api/auth/login", json={"email": email, "password": "password-123"})
        assert wrong == [401, 401]
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
    finally:
        drop_database(app)


def test_successful_logins_do_not_use_up_the_per_email_lockout():
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="2 per minute")
    try:
        client = app.test_client()
        email = unique_email()
        client.post("/api/auth/register", json={"email": email, "password": "password-123", "name": "Often"})

        statuses = [client.post("/api/auth/login", json={"email": email, "password": "password-123"}).status_code
                    for _ in range(6)]

        assert statuses == [200] * 6
    finally:
        drop_database(app)


@pytest.mark.parametrize(("uri", "option"), [
    ("mongodb://127.0.0.1:1/limits", "serverSelectionTimeoutMS"),
    ("redis://127.0.0.1:1/0", "socket_timeout"),
])
def test_a_shared_limit_store_gets_short_timeouts_so_an_outage_cannot_stall_requests(monkeypatch, uri, option):
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", uri)

    options = load_config("development").RATELIMIT_STORAGE_OPTIONS

    assert 0 < options[option] <= 1000
