"""Shared fixtures: a fresh app per test on its own database, a client, and helpers that build data.

Every app gets a database of its own (a unique name), on the embedded engine by default or on the replica
set named by ``LEDGER_TEST_MONGO_URI``; the database is dropped afterwards.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, Response, request_finished
from flask.testing import FlaskClient

from ledger import create_app, db

REPLICA_SET_URI = os.environ.get("LEDGER_TEST_MONGO_URI")
# A development configuration loaded by a test keeps its generated secret (and data) in memory, never in the
# working directory's .ledger-data; tests that need a folder name one under tmp_path.
os.environ["LEDGER_DATA_DIR"] = ":memory:"

SYSTEM_EMAIL = "system@ledger.test"
SYSTEM_PASSWORD = "system-password-1"


def pytest_report_header(config: pytest.Config) -> str:
    if REPLICA_SET_URI:
        return "ledger engine: MongoDB replica set from LEDGER_TEST_MONGO_URI"
    return "ledger engine: embedded (set LEDGER_TEST_MONGO_URI to run against a replica set)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REPLICA_SET_URI:
        return
    skip = pytest.mark.skip(reason="needs a MongoDB replica set: set LEDGER_TEST_MONGO_URI "
                                   "(scripts/test --replica-set starts one with docker compose)")
    for item in items:
        if "replica_set" in item.keywords:
            item.add_marker(skip)


def wait_for(condition: Callable[[], bool], timeout: float = 30, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.test"


def make_app(**overrides: Any) -> Flask:
    config = {
        "MONGO_DB_NAME": f"ledger-test-{uuid.uuid4().hex[:12]}",
        "SYSTEM_USER_EMAIL": SYSTEM_EMAIL,
        "SYSTEM_USER_PASSWORD": SYSTEM_PASSWORD,
        "SYSTEM_USER_NAME": "Ledger System",
    }
    config.update(overrides)
    return create_app(config)


def drop_database(app: Flask) -> None:
    with app.app_context():
        db.get_client(app).drop_database(db.database_name(app))


@pytest.fixture
def app() -> Iterator[Flask]:
    application = make_app()
    yield application
    drop_database(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


class Api:
    """A small client for tests: registers users, opens and funds accounts, sends transfers.

    Tokens are sent as Bearer headers (the client's cookie jar is cleared) so each call acts as exactly the
    user the test names.
    """

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self._system_token: str | None = None

    def _headers(self, token: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def request(self, method: str, path: str, token: str | None = None, *, json: Any = None,
                headers: dict[str, str] | None = None, **kwargs: Any):
        self.client._cookies.clear()
        return self.client.open(path, method=method, json=json, headers=self._headers(token, headers), **kwargs)

    def register(self, email: str | None = None, password: str = "password-123", name: str = "Test User"):
        response = self.request("POST", "/api/auth/register",
                                json={"email": email or unique_email(), "password": password, "name": name})
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    def user(self, name: str = "Test User") -> tuple[str, str]:
        """Register a new user; return ``(user_id, token)``."""
        body = self.register(name=name)
        return body["user"]["_id"], body["token"]

    def login(self, email: str, password: str):
        return self.request("POST", "/api/auth/login", json={"email": email, "password": password})

    def system_token(self) -> str:
        if self._system_token is None:
            response = self.login(SYSTEM_EMAIL, SYSTEM_PASSWORD)
            assert response.status_code == 200, response.get_json()
            self._system_token = response.get_json()["token"]
        return self._system_token

    def open_account(self, token: str, currency: str | None = None) -> str:
        body = {"currency": currency} if currency else None
        response = self.request("POST", "/api/accounts", token, json=body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["account"]["_id"]

    def fund(self, account_id: str, amount: Any, key: str | None = None):
        return self.request("POST", "/api/transactions/system/initial-funds", self.system_token(),
                            json={"toAccount": account_id, "amount": amount,
                                  "idempotencyKey": key or uuid.uuid4().hex})

    def funded_account(self, token: str, amount: Any = 1000, currency: str | None = None) -> str:
        account_id = self.open_account(token, currency)
        response = self.fund(account_id, amount)
        assert response.status_code == 201, response.get_json()
        return account_id

    def transfer(self, token: str, from_account: str, to_account: str, amount: Any, key: str | None = None,
                 headers: dict[str, str] | None = None):
        return self.request("POST", "/api/transactions", token,
                            json={"fromAccount": from_account, "toAccount": to_account, "amount": amount,
                                  "idempotencyKey": key or uuid.uuid4().hex}, headers=headers)

    def balance(self, token: str, account_id: str):
        response = self.request("GET", f"/api/accounts/balance/{account_id}", token)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["balance"]


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


# ------------------------------------------------------------------------------------- leak guard

BCRYPT_HASH = re.compile(r"\$2[aby]\$\d{2}\$")
# Documents that describe the schema (a "password" property) rather than carry data.
SCHEMA_PATHS = frozenset({"/api/openapi.json"})


def response_leaks(path: str, response: Response) -> list[str]:
    """What a response must never carry: a bcrypt hash anywhere, or a ``password`` key in its JSON.

    The error envelope's ``errors`` object is keyed by field name (``{"password": "too short"}``), so a
    ``password`` key directly inside it names the field rather than leaking one; hashes are still looked for.
    """
    if response.is_streamed or response.direct_passthrough:
        return []
    text = response.get_data().decode("utf-8", "replace")  # binary bodies (the docs' PNG icons) too
    found = [f"{path}: bcrypt hash in body" for _ in BCRYPT_HASH.finditer(text)][:1]
    found += [f"{path}: bcrypt hash in header {name}" for name, value in response.headers.items()
              if BCRYPT_HASH.search(value)]
    if path in SCHEMA_PATHS or not response.is_json:
        return found
    try:
        body = json.loads(text)
    except ValueError:
        return found
    stack: list[tuple[Any, bool]] = [(body, False)]
    while stack:
        value, is_error_map = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                if isinstance(key, str) and "password" in key.lower() and not is_error_map:
                    found.append(f"{path}: JSON key {key!r}")
                stack.append((child, value is body and key == "errors"))
        elif isinstance(value, list):
            stack.extend((child, False) for child in value)
    return found


class LeakGuard:
    """Receives ``request_finished`` from every Flask app in the process and records leaking responses."""

    def __init__(self) -> None:
        self.findings: list[str] = []

    def __call__(self, sender: Flask, response: Response, **_extra: Any) -> None:
        from flask import request

        self.findings.extend(response_leaks(request.path, response))

    def check(self) -> None:
        if self.findings:
            pytest.fail("a response leaked a password or a password hash: " + "; ".join(self.findings),
                        pytrace=False)


@pytest.fixture(autouse=True)
def leak_guard() -> Iterator[LeakGuard]:
    """Fail any test in which any response of any app contained a bcrypt hash or a ``password`` key."""
    guard = LeakGuard()
    request_finished.connect(guard)  # no sender: every app, including ones a test builds itself
    try:
        yield guard
    finally:
        request_finished.disconnect(guard)
    guard.check()
