"""End to end over real HTTP: gunicorn (one worker, threads) on a loopback port, the embedded engine, a client.

The server is started exactly as the README tells an operator to start it, with only the environment a real
deployment would give it, and is always terminated, whatever the test outcome.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import re
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.gunicorn_process import GunicornProcess, running_gunicorn

pytestmark = pytest.mark.e2e

SYSTEM_EMAIL = "system-e2e@ledger.test"
SYSTEM_PASSWORD = "system-e2e-password-1"
BCRYPT_HASH = re.compile(r"\$2[aby]\$\d{2}\$")
REQUEST_TIMEOUT_SECONDS = 10


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Server:
    running: GunicornProcess

    @property
    def base_url(self) -> str:
        return self.running.base_url

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def process(self) -> subprocess.Popen:
        return self.running.process

    def log(self) -> str:
        return self.running.log_tail()

    def call(self, method: str, path: str, token: str | None = None, body: Any = None,
             headers: dict[str, str] | None = None) -> Reply:
        """One request on a fresh connection; no cookies unless the caller sends a Cookie header."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            sent = dict(headers or {})
            payload = None
            if body is not None:
                payload = json.dumps(body).encode()
                sent["Content-Type"] = "application/json"
            if token:
                sent["Authorization"] = f"Bearer {token}"
            connection.request(method, path, body=payload, headers=sent)
            response = connection.getresponse()
            text = response.read().decode("utf-8")
            reply = Reply(response.status, response.headers, text)
        finally:
            connection.close()
        assert not BCRYPT_HASH.search(reply.text), f"{path} leaked a password hash"
        if reply.headers.get_content_type() == "application/json":
            assert '"password"' not in reply.text, f"{path} leaked a password key"
        return reply


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    environment = {
        "JWT_SECRET": f"e2e-secret-{uuid.uuid4().hex}{uuid.uuid4().hex}",
        "SYSTEM_USER_EMAIL": SYSTEM_EMAIL,
        "SYSTEM_USER_PASSWORD": SYSTEM_PASSWORD,
        "SYSTEM_USER_NAME": "E2E System",
    }
    with running_gunicorn(tmp_path_factory.mktemp("gunicorn"), environment) as running:
        yield Server(running)


def new_email() -> str:
    return f"e2e-{uuid.uuid4().hex[:12]}@example.test"


@pytest.fixture(scope="module")
def customer_token(server: Server) -> str:
    """One registered customer shared by the probes below (registration is rate-limited per address)."""
    registered = server.call("POST", "/api/auth/register",
                             body={"email": new_email(), "password": "password-123", "name": "Shared"})
    assert registered.status == 201, registered.text
    return registered.json["token"]


# ------------------------------------------------------------------------------------------ the journeys


def test_the_welcome_page_and_health_answer_over_http(server):
    welcome = server.call("GET", "/")
    assert welcome.status == 200
    assert welcome.headers.get_content_type() == "text/plain"
    assert welcome.text == "Welcome to the banking app"
    health = server.call("GET", "/health")
    assert health.status == 200
    assert health.headers.get_content_type() == "application/json"


def test_a_customer_journey_with_bearer_tokens_ends_with_the_old_token_refused(server):
    email = new_email()
    registered = server.call("POST", "/api/auth/register",
                             body={"email": email, "password": "password-123", "name": "E2E Customer"})
    assert registered.status == 201, registered.text
    assert registered.json["user"]["email"] == email
    assert "token=" in (registered.headers.get("Set-Cookie") or "")

    login = server.call("POST", "/api/auth/login", body={"email": email.upper(), "password": "password-123"})
    assert login.status == 200, login.text
    token = login.json["token"]

    created = server.call("POST", "/api/accounts", token, body={"currency": "INR"})
    assert created.status == 201, created.text
    account = created.json["account"]
    assert account["balance"] == 0
    assert account["user"] == registered.json["user"]["_id"]

    listed = server.call("GET", "/api/accounts", token)
    assert listed.status == 200
    assert [a["_id"] for a in listed.json["accounts"]] == [account["_id"]]
    assert listed.headers["Cache-Control"] == "no-store"

    system = server.call("POST", "/api/auth/login", body={"email": SYSTEM_EMAIL, "password": SYSTEM_PASSWORD})
    assert system.status == 200, system.text
    funded = server.call("POST", "/api/transactions/system/initial-funds", system.json["token"],
                         body={"toAccount": account["_id"], "amount": 1234.5, "idempotencyKey": uuid.uuid4().hex})
    assert funded.status == 201, funded.text

    balance = server.call("GET", f"/api/accounts/balance/{account['_id']}", token)
    assert balance.status == 200
    assert balance.json == {"accountId": account["_id"], "balance": 1234.5, "availableBalance": 1234.5}

    logout = server.call("POST", "/api/auth/logout", token)
    assert logout.status == 200
    assert logout.json == {"message": "User logged out successfully"}
    assert "Max-Age=0" in (logout.headers.get("Set-Cookie") or "")

    refused = server.call("GET", "/api/accounts", token)
    assert refused.status == 401
    assert refused.json == {"message": "Unauthorized, token is blacklisted", "status": "failed"}
    assert server.call("GET", f"/api/accounts/balance/{account['_id']}", token).status == 401


def test_a_browser_style_cookie_session_works_and_logout_ends_it(server):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{server.base_url}{path}", data=data, method=method,  # noqa: S310
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with opener.open(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())

    status, _ = call("POST", "/api/auth/register",
                     {"email": new_email(), "password": "password-123", "name": "Cookie User"})
    assert status == 201
    cookies = {cookie.name: cookie for cookie in jar}
    assert "token" in cookies
    assert cookies["token"].has_nonstandard_attr("HttpOnly")
    assert not cookies["token"].secure

    status, body = call("POST", "/api/accounts/create", {})
    assert status == 201
    status, body = call("GET", "/api/accounts")
    assert status == 200
    assert len(body["accounts"]) == 1

    status, body = call("POST", "/api/auth/logout")
    assert status == 200
    assert "token" not in {cookie.name for cookie in jar}
    status, body = call("GET", "/api/accounts")
    assert status == 401
    assert body["message"] == "Unauthorized, token is missing"


def test_errors_over_http_are_json_with_request_ids(server, customer_token):
    missing = server.call("GET", "/api/definitely-not-here", headers={"X-Request-ID": "e2e-trace-1"})
    assert missing.status == 404
    assert missing.json["status"] == "failed"
    assert missing.headers["X-Request-ID"] == "e2e-trace-1"
    assert missing.headers["Cache-Control"] == "no-store"
    wrong_method = server.call("DELETE", "/api/accounts")
    assert wrong_method.status == 405
    assert wrong_method.json["status"] == "failed"
    assert wrong_method.headers["X-Request-ID"]
    too_big = server.call("POST", "/api/accounts", customer_token, body={"currency": "x" * (120 * 1024)})
    assert too_big.status == 413
    assert too_big.json["status"] == "failed"


def test_concurrent_requests_on_the_threaded_worker_all_succeed(server, customer_token):
    from concurrent.futures import ThreadPoolExecutor

    token = customer_token
    account_id = server.call("POST", "/api/accounts", token).json["account"]["_id"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda _: server.call("GET", f"/api/accounts/balance/{account_id}", token),
                                range(32)))
    assert [r.status for r in replies] == [200] * 32
    assert len({r.headers["X-Request-ID"] for r in replies}) == 32


def test_deeply_nested_json_over_http_is_400_in_a_worker_thread(server, customer_token):
    for depth in (1000, 50_000):
        body = "[" * depth + "]" * depth
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            connection.request("POST", "/api/accounts", body=body.encode(),
                               headers={"Content-Type": "application/json",
                                        "Authorization": f"Bearer {customer_token}"})
            response = connection.getresponse()
            assert response.status == 400
            assert json.loads(response.read())["status"] == "failed"
        finally:
            connection.close()
    assert server.call("GET", "/health").status == 200


def test_a_chunked_body_over_100_kb_is_413(server, customer_token):
    def chunks() -> Iterator[bytes]:
        yield b'{"currency": "'
        for _ in range(30):
            yield b"x" * 8192
        yield b'"}'

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        connection.request("POST", "/api/accounts", body=chunks(), encode_chunked=True,
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                                    "Authorization": f"Bearer {customer_token}"})
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["status"] == "failed"
    finally:
        connection.close()
    assert server.call("GET", "/health").status == 200
