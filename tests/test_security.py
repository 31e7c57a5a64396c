"""The OWASP API Security Top 10 (2023), one group of tests per relevant risk.

The exhaustive matrices live with the feature tests (auth, accounts, transfers); this module is the
security reviewer's view: each risk, the attack, and what the API answers. Not applicable here: API7 (SSRF:
the service never fetches a URL a client supplies) and API10 (unsafe consumption: it calls no third-party API;
its only outbound traffic is SMTP with server-built content).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest
from flask import Flask

import config
from ledger.api.openapi import openapi_path
from tests.conftest import Api, drop_database, make_app, unique_email

SECRET = config.TestingConfig().JWT_SECRET_KEY
INVALID = {"message": "Unauthorized, token is invalid", "status": "failed"}
ACCOUNT_NOT_FOUND = {"message": "Account not found", "status": "failed"}
INTERNAL_FIELDS = {"password", "passwordHash", "hash", "fingerprint", "initiator", "failure", "seq",
                   "systemCurrency", "systemUser", "__v", "tokenHash", "jti"}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# --------------------------------------------------------------- API1: broken object-level authorization


@pytest.fixture
def alice_and_bob(api: Api) -> dict[str, str]:
    alice_id, alice = api.user("Alice")
    bob_id, bob = api.user("Bob")
    return {"alice_id": alice_id, "alice": alice, "alice_account": api.funded_account(alice, 500),
            "bob_id": bob_id, "bob": bob, "bob_account": api.funded_account(bob, 500)}


@pytest.mark.parametrize("path", ["/api/accounts/{alice_account}", "/api/accounts/balance/{alice_account}"])
def test_api1_another_users_account_looks_exactly_like_a_missing_one(api: Api, alice_and_bob: dict[str, str],
                                                                    path: str) -> None:
    foreign = api.request("GET", path.format(**alice_and_bob), alice_and_bob["bob"])
    missing = api.request("GET", path.format(alice_account="0" * 24), alice_and_bob["bob"])

    assert foreign.status_code == missing.status_code == 404
    assert foreign.get_json() == missing.get_json() == ACCOUNT_NOT_FOUND


def test_api1_another_users_account_list_is_never_shown(api: Api, alice_and_bob: dict[str, str]) -> None:
    response = api.request("GET", f"/api/accounts/user/{alice_and_bob['alice_id']}", alice_and_bob["bob"])
    own_list = api.request("GET", "/api/accounts", alice_and_bob["bob"]).get_json()["accounts"]

    assert response.status_code in {403, 404}
    assert alice_and_bob["alice_account"] not in response.get_data(as_text=True)
    assert [a["_id"] for a in own_list] == [alice_and_bob["bob_account"]]


def test_api1_nobody_can_spend_from_someone_elses_account(api: Api, alice_and_bob: dict[str, str]) -> None:
    theft = api.transfer(alice_and_bob["bob"], alice_and_bob["alice_account"], alice_and_bob["bob_account"], 100)

    assert theft.status_code == 400
    assert theft.get_json()["message"] == "One or both accounts not found"
    assert api.balance(alice_and_bob["alice"], alice_and_bob["alice_account"]) == 500
    assert api.balance(alice_and_bob["bob"], alice_and_bob["bob_account"]) == 500


def test_api1_an_idempotency_key_never_reveals_another_users_transfer(api: Api,
                                                                      alice_and_bob: dict[str, str]) -> None:
    key = f"shared-{uuid.uuid4().hex}"
    alices = api.transfer(alice_and_bob["alice"], alice_and_bob["alice_account"], alice_and_bob["bob_account"],
                          10, key=key)
    bobs = api.transfer(alice_and_bob["bob"], alice_and_bob["bob_account"], alice_and_bob["alice_account"],
                        10, key=key)

    assert alices.status_code == bobs.status_code == 200
    assert "Idempotent-Replayed" not in bobs.headers
    assert bobs.get_json()["transaction"]["_id"] != alices.get_json()["transaction"]["_id"]


# ----------------------------------------------------------------------- API2: broken authentication


def _hs512(claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():
        # The test secret is shorter than HS512 recommends; irrelevant: the server must refuse HS512 outright.
        warnings.simplefilter("ignore", pyjwt.warnings.InsecureKeyLengthWarning)
        return pyjwt.encode(claims, SECRET, algorithm="HS512")


def _token_corpus(user_id: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"userId": user_id, "iat": now, "exp": now + 3600}
    valid = pyjwt.encode(claims, SECRET, algorithm="HS256")
    header, payload, signature = valid.split(".")
    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "wrong secret": pyjwt.encode(claims, "not-the-secret-" + "x" * 32, algorithm="HS256"),
        "expired": pyjwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, SECRET, algorithm="HS256"),
        "no expiry": pyjwt.encode({"userId": user_id, "iat": now}, SECRET, algorithm="HS256"),
        "tampered claims": f"{header}.{_b64({**claims, 'userId': '0' * 24})}.{signature}",
        "user who does not exist": pyjwt.encode({**claims, "userId": "0" * 24}, SECRET, algorithm="HS256"),
        "HS512 instead of HS256": _hs512(claims),
        "garbage": "not.a.jwt",
        "empty segments": "..",
    }


@pytest.mark.parametrize("kind", list(_token_corpus("0" * 24)))
def test_api2_forged_expired_and_garbage_tokens_are_refused(api: Api, kind: str) -> None:
    user_id, _ = api.user()
    token = _token_corpus(user_id)[kind]

    by_header = api.request("GET", "/api/accounts", token)
    api.client.set_cookie("token", token)
    by_cookie = api.client.get("/api/accounts")

    assert (by_header.status_code, by_header.get_json()) == (401, INVALID)
    assert (by_cookie.status_code, by_cookie.get_json()) == (401, INVALID)


def test_api2_a_logged_out_token_stays_refused(api: Api) -> None:
    _, token = api.user()
    api.request("POST", "/api/auth/logout", token)

    response = api.request("GET", "/api/accounts", token)

    assert response.status_code == 401
    assert response.get_json()["message"] == "Unauthorized, token is blacklisted"


@pytest.fixture
def rate_limited_app() -> Iterator[Flask]:
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="5 per minute")
    yield app
    drop_database(app)


def test_api2_password_guessing_is_cut_off_with_429(rate_limited_app: Flask) -> None:
    api = Api(rate_limited_app.test_client())
    email = unique_email("victim")
    api.register(email=email, password="correct-horse")

    guesses = [api.login(email, f"guess-{n}").status_code for n in range(8)]
    correct_after_lockout = api.login(email, "correct-horse")

    assert guesses[:5] == [401] * 5
    assert set(guesses[5:]) == {429}
    assert correct_after_lockout.status_code == 429  # the limit holds even for the right password
    assert int(correct_after_lockout.headers["Retry-After"]) >= 0


def test_api2_unknown_email_and_wrong_password_are_indistinguishable(api: Api) -> None:
    email = unique_email("known")
    api.register(email=email, password="right-password")

    unknown = api.login(unique_email("unknown"), "right-password")
    wrong = api.login(email, "wrong-password")

    assert unknown.status_code == wrong.status_code == 401
    assert unknown.get_json() == wrong.get_json() == {"message": "Invalid email or password", "status": "failed"}
    assert "Set-Cookie" not in unknown.headers
    assert "Set-Cookie" not in wrong.headers


# ------------------------------------------------------------ API3: broken property-level authorization


def _keys_and_strings(value: Any) -> tuple[set[str], list[str]]:
    keys: set[str] = set()
    strings: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys.update(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            strings.append(item)
    return keys, strings


def test_api3_clients_cannot_assign_privileged_or_internal_fields(api: Api) -> None:
    forged_id = "0123456789abcdef01234567"
    registered = api.request("POST", "/api/auth/register", json={
        "email": unique_email("mass"), "password": "password-123", "name": "Mass Assign", "systemUser": True,
        "_id": forged_id, "password_hash": "$2b$10$forged", "role": "admin"}).get_json()
    token = registered["token"]
    other_id, _ = api.user()
    opened = api.request("POST", "/api/accounts", token, json={
        "currency": "INR", "balance": 1_000_000, "status": "FROZEN", "user": other_id, "_id": forged_id}).get_json()
    funding = api.request("POST", "/api/transactions/system/initial-funds", token,
                          json={"toAccount": opened["account"]["_id"], "amount": 100, "idempotencyKey": "k1"})

    assert registered["user"]["_id"] != forged_id
    assert set(registered["user"]) == {"_id", "email", "name"}
    assert opened["account"]["balance"] == 0
    assert opened["account"]["status"] == "ACTIVE"
    assert opened["account"]["user"] == registered["user"]["_id"]
    assert opened["account"]["_id"] != forged_id
    assert funding.status_code == 403  # "systemUser": true was ignored


def test_api3_transfer_bodies_cannot_set_status_owner_or_currency(api: Api) -> None:
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])

    response = api.request("POST", "/api/transactions", token, json={
        "fromAccount": source, "toAccount": target, "amount": 10, "idempotencyKey": uuid.uuid4().hex,
        "status": "REVERSED", "initiator": "0" * 24, "currency": "USD", "_id": "0" * 24})

    transaction = response.get_json()["transaction"]
    assert response.status_code == 200
    assert transaction["status"] == "COMPLETED"
    assert transaction["currency"] == "INR"
    assert transaction["_id"] != "0" * 24
    assert api.balance(token, source) == 90


def test_api3_no_response_ever_carries_a_hash_or_an_internal_field(api: Api) -> None:
    user_id, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])
    usd = api.open_account(token, "USD")
    key = uuid.uuid4().hex
    system = api.system_token()
    bodies = [
        api.request("GET", "/api/accounts", token).get_json(),
        api.request("GET", f"/api/accounts/{source}", token).get_json(),
        api.request("GET", f"/api/accounts/balance/{source}", token).get_json(),
        api.request("GET", f"/api/accounts/user/{user_id}", token).get_json(),
        api.request("GET", "/api/accounts", system).get_json(),  # the system account too
        api.transfer(token, source, target, 5, key=key).get_json(),
        api.transfer(token, source, target, 5, key=key).get_json(),  # replay
        api.transfer(token, source, usd, 5).get_json(),  # currency mismatch: recorded FAILED
        api.transfer(token, source, target, 10_000).get_json(),  # insufficient: recorded FAILED
        api.fund(source, 1).get_json(),
        api.login(unique_email(), "x" * 10).get_json(),
        api.request("POST", "/api/auth/logout", token).get_json(),
    ]

    keys, strings = _keys_and_strings(bodies)
    assert keys & INTERNAL_FIELDS == set()
    assert not [s for s in strings if s.startswith(("$2a$", "$2b$", "$2y$"))]


# --------------------------------------------------------------- API4: unrestricted resource consumption


def test_api4_a_body_over_100_kb_is_refused_with_413(api: Api) -> None:
    _, token = api.user()
    response = api.request("POST", "/api/accounts", token, data=b'{"currency": "' + b"A" * 110_000 + b'"}',
                           headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.get_json()["status"] == "failed"


def test_api4_deeply_nested_json_is_a_400_not_a_crash(api: Api) -> None:
    _, token = api.user()
    for depth in (33, 5_000, 45_000):  # 45,000 levels still fit in 100 KB, deep enough to blow a recursive parser
        response = api.request("POST", "/api/accounts", token, data=b'{"a":' + b"[" * depth + b"]" * depth + b"}",
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 400, depth
        assert "nested" in response.get_json()["message"]


@pytest.mark.parametrize(("path", "field", "size"), [
    ("/api/auth/register", "name", 5_000),
    ("/api/auth/register", "email", 5_000),
    ("/api/auth/register", "password", 5_000),
    ("/api/transactions", "idempotencyKey", 256),
])
def test_api4_oversized_strings_are_refused_with_400(api: Api, path: str, field: str, size: int) -> None:
    _, token = api.user()
    body = {"email": unique_email(), "password": "password-123", "name": "Big",
            "fromAccount": "0" * 24, "toAccount": "1" * 24, "amount": 1, "idempotencyKey": "k"}
    body[field] = "x" * size

    response = api.request("POST", path, token, json=body)

    assert response.status_code == 400
    assert field in response.get_json().get("errors", {})


# ------------------------------------------------------------- API5: broken function-level authorization


def test_api5_customers_cannot_call_the_system_funding_route(api: Api) -> None:
    _, token = api.user()
    account = api.open_account(token)

    response = api.request("POST", "/api/transactions/system/initial-funds", token,
                           json={"toAccount": account, "amount": 1_000_000, "idempotencyKey": uuid.uuid4().hex})

    assert response.status_code == 403
    assert response.get_json() == {"message": "Forbidden, user is not a system user", "status": "failed"}
    assert api.balance(token, account) == 0


def test_api5_the_system_user_cannot_be_created_over_the_api(api: Api) -> None:
    response = api.request("POST", "/api/auth/register", json={
        "email": unique_email("sys"), "password": "password-123", "name": "Fake System", "systemUser": True})
    token = response.get_json()["token"]
    account = api.open_account(token)

    funding = api.request("POST", "/api/transactions/system/initial-funds", token,
                          json={"toAccount": account, "amount": 10, "idempotencyKey": "x"})

    assert funding.status_code == 403


# --------------------------------------------------------- API6: unrestricted access to sensitive flows


@pytest.mark.parametrize("amount", [0, -1, -0.01, 0.001, 1_000_000_000_001, "10", True, None, [], {"$gt": 0}])
def test_api6_amounts_outside_the_rules_move_nothing(api: Api, amount: Any) -> None:
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])

    response = api.transfer(token, source, target, amount)

    assert response.status_code == 400
    assert api.balance(token, source) == 100


@pytest.mark.parametrize("raw_amount", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" * 5000])
def test_api6_non_finite_and_absurd_json_numbers_are_refused(api: Api, raw_amount: bytes) -> None:
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])
    body = (b'{"fromAccount": "%s", "toAccount": "%s", "idempotencyKey": "k", "amount": %s}'
            % (source.encode(), target.encode(), raw_amount))

    response = api.request("POST", "/api/transactions", token, data=body,
                           headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert api.balance(token, source) == 100


def test_api6_a_transfer_to_the_same_account_is_refused(api: Api) -> None:
    _, token = api.user()
    account = api.funded_account(token, 100)

    response = api.transfer(token, account, account, 10)

    assert response.status_code == 400
    assert api.balance(token, account) == 100


def test_api6_a_currency_mismatch_is_refused_and_replayed_identically(api: Api) -> None:
    _, token = api.user()
    source = api.funded_account(token, 100)
    usd = api.open_account(token, "USD")
    key = uuid.uuid4().hex

    first = api.transfer(token, source, usd, 10, key=key)
    retry = api.transfer(token, source, usd, 10, key=key)

    assert first.status_code == retry.status_code == 400
    assert retry.get_json() == first.get_json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert api.balance(token, source) == 100
    assert api.balance(token, usd) == 0


def test_api6_overdraft_is_impossible(api: Api) -> None:
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])

    response = api.transfer(token, source, target, 100.01)

    assert response.status_code == 400
    assert response.get_json()["message"].startswith("Insufficient balance")
    assert api.balance(token, source) == 100


# ----------------------------------------------------------------------- API8: security misconfiguration


@pytest.fixture
def app_with_a_failing_route() -> Iterator[Flask]:
    app = make_app()

    def explode():
        raise RuntimeError("secret internals: mongodb://user:pw@db/ledger")

    app.add_url_rule("/api/test-explode", "explode", explode)
    yield app
    drop_database(app)


def test_api8_an_unexpected_error_is_a_bare_json_500(app_with_a_failing_route: Flask) -> None:
    response = app_with_a_failing_route.test_client().get("/api/test-explode")

    assert not app_with_a_failing_route.debug
    assert response.status_code == 500
    assert response.get_json() == {"message": "Internal server error", "status": "failed"}
    assert "Traceback" not in response.get_data(as_text=True)
    assert "mongodb://" not in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"


def test_api8_the_session_cookie_is_httponly_samesite_and_scoped(api: Api) -> None:
    response = api.request("POST", "/api/auth/register",
                           json={"email": unique_email(), "password": "password-123", "name": "Cookie"})
    cookie = response.headers["Set-Cookie"]

    assert cookie.startswith("token=")
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=604800"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP in development; see the next test


def test_api8_the_cookie_is_secure_and_hsts_is_on_when_configured_for_tls() -> None:
    app = make_app(COOKIE_SECURE=True)
    try:
        response = app.test_client().post("/api/auth/register", json={
            "email": unique_email(), "password": "password-123", "name": "Secure"})
    finally:
        drop_database(app)

    assert "Secure" in response.headers["Set-Cookie"]
    assert "max-age=" in response.headers["Strict-Transport-Security"]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/accounts"), ("GET", "/api/nowhere"), ("DELETE", "/api/accounts"), ("POST", "/api/auth/login"),
])
def test_api8_api_responses_are_never_cached_and_carry_security_headers(client, method: str, path: str) -> None:
    response = client.open(path, method=method, json={})

    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.mimetype == "application/json"


# ---------------------------------------------------------------------- API9: improper inventory management


def test_api9_the_openapi_document_lists_exactly_the_routes_served(app: Flask, client) -> None:
    document = client.get("/api/openapi.json").get_json()
    served = {(m.lower(), openapi_path(rule)) for rule in app.url_map.iter_rules()
              for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    documented = {(m, path) for path, item in document["paths"].items() for m in item if m != "parameters"}

    assert documented == served
    assert not any(path.startswith("/static") for _, path in served)


def test_api9_a_path_segment_that_is_not_a_route_is_a_json_404(api: Api) -> None:
    _, token = api.user()
    for path in ("/api/accounts/create", "/api/admin", "/api/v2/accounts", "/api/debug"):
        response = api.request("GET", path, token)
        assert response.status_code == 404, path
        assert response.get_json()["status"] == "failed"
