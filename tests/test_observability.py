"""Request ids, structured logs, the access line, metrics, security headers and CORS, as an operator sees them."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from ledger.observability import JsonFormatter
from tests.conftest import Api, drop_database, make_app, unique_email


class _JsonLines(logging.Handler):
    """Collects what the production formatter writes, one parsed JSON object per record."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]

    def take(self) -> list[dict]:
        entries = self.entries()
        self.lines.clear()
        return entries


@pytest.fixture
def log_lines() -> Iterator[_JsonLines]:
    handler = _JsonLines()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous_level)


def _sample(metrics_text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_every_log_line_of_a_request_carries_that_requests_id(api: Api, log_lines: _JsonLines) -> None:
    _, token = api.user()
    account = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])
    log_lines.take()

    for request_id, call in (
        ("req-register-1", lambda h: api.request("POST", "/api/auth/register", headers=h,
                                                json={"email": unique_email(), "password": "password-123",
                                                      "name": "Logged"})),
        ("req-login-bad-2", lambda h: api.request("POST", "/api/auth/login", headers=h,
                                                 json={"email": unique_email(), "password": "wrong-password"})),
        ("req-transfer-3", lambda h: api.transfer(token, account, target, 10, headers=h)),
        ("req-not-found-4", lambda h: api.request("GET", "/api/nowhere", headers=h)),
    ):
        response = call({"X-Request-ID": request_id})
        assert response.headers["X-Request-ID"] == request_id
        entries = log_lines.take()
        assert entries, "a request logs at least its access line"
        assert {entry.get("requestId") for entry in entries} == {request_id}, entries


def test_an_unsafe_request_id_is_replaced_by_a_generated_one(client) -> None:
    unsafe = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 200})
    generated = client.get("/health")

    assert unsafe.headers["X-Request-ID"] != "bad id\twith spaces" + "x" * 200
    assert len(unsafe.headers["X-Request-ID"]) == 32
    assert generated.headers["X-Request-ID"] != unsafe.headers["X-Request-ID"]


def test_each_request_writes_one_access_line_with_route_status_duration_and_user(
        api: Api, log_lines: _JsonLines) -> None:
    user_id, token = api.user()
    account = api.open_account(token)
    log_lines.take()

    api.request("GET", f"/api/accounts/{account}", token)

    access = [e for e in log_lines.take() if e["logger"] == "ledger.access"]
    assert len(access) == 1
    line = access[0]
    assert line["method"] == "GET"
    assert line["route"] == "/api/accounts/<account_id>"  # the template: ids never become label values
    assert line["path"] == f"/api/accounts/{account}"
    assert line["status"] == 200
    assert isinstance(line["durationMs"], int | float)
    assert line["durationMs"] >= 0
    assert line["userId"] == user_id


def test_no_password_token_or_idempotency_key_ever_reaches_the_logs(api: Api, log_lines: _JsonLines) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    email = unique_email("secret")
    key = f"idem-{uuid.uuid4().hex}"
    header_key = f"hdr-{uuid.uuid4().hex}"

    registered = api.request("POST", "/api/auth/register",
                             json={"email": email, "password": password, "name": "Secretive"}).get_json()
    login = api.login(email, password).get_json()
    wrong = api.login(email, password + "-wrong")
    account = api.funded_account(login["token"], 100)
    target = api.open_account(api.user()[1])
    api.transfer(login["token"], account, target, 5, key=key)
    api.transfer(login["token"], account, target, 5, key=key)  # replay
    api.request("POST", "/api/transactions", login["token"], headers={"Idempotency-Key": header_key},
                json={"fromAccount": account, "toAccount": target, "amount": 10_000})  # insufficient
    api.request("POST", "/api/auth/logout", registered["token"])
    api.request("GET", "/api/accounts", "not-a-token")

    assert wrong.status_code == 401
    text = "\n".join(log_lines.lines)
    assert log_lines.lines, "the flow was logged"
    for secret in (password, registered["token"], login["token"], key, header_key):
        assert secret not in text


def test_metrics_count_requests_by_route_and_transfers_by_outcome(api: Api) -> None:
    _, token = api.user()
    account = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])
    before = api.client.get("/metrics").get_data(as_text=True)

    assert api.transfer(token, account, target, 10).status_code == 200
    assert api.transfer(token, account, target, 10_000).status_code == 400

    response = api.client.get("/metrics")
    after = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    route = {"method": "POST", "route": "/api/transactions"}
    assert _sample(after, "ledger_http_requests_total", status="200", **route) == \
        _sample(before, "ledger_http_requests_total", status="200", **route) + 1
    assert _sample(after, "ledger_http_requests_total", status="400", **route) == \
        _sample(before, "ledger_http_requests_total", status="400", **route) + 1
    assert _sample(after, "ledger_http_request_duration_seconds_count", **route) == \
        _sample(before, "ledger_http_request_duration_seconds_count", **route) + 2
    assert _sample(after, "ledger_transfers_total", outcome="completed") == \
        _sample(before, "ledger_transfers_total", outcome="completed") + 1
    assert _sample(after, "ledger_transfers_total", outcome="rejected") == \
        _sample(before, "ledger_transfers_total", outcome="rejected") + 1
    assert "# TYPE ledger_transaction_retries_total counter" in after
    # Committed transfers queue notifications (the sender is off in tests), sampled at scrape time.
    assert _sample(after, "ledger_notification_backlog") >= 2


@pytest.mark.parametrize("path", ["/", "/health", "/api/accounts", "/api/nowhere", "/metrics"])
def test_every_response_carries_the_security_headers(client, path: str) -> None:
    response = client.get(path)

    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain-HTTP development: no HSTS
    assert "Access-Control-Allow-Origin" not in response.headers


def test_hsts_is_sent_when_the_cookie_is_secure() -> None:
    app = make_app(COOKIE_SECURE=True)
    try:
        response = app.test_client().get("/health")
    finally:
        drop_database(app)
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


@pytest.fixture
def cors_app() -> Iterator[Flask]:
    app = make_app(CORS_ORIGINS=["https://app.example"])
    yield app
    drop_database(app)


def test_cors_is_off_for_origins_outside_the_allow_list(cors_app: Flask, client) -> None:
    stranger = cors_app.test_client().get("/health", headers={"Origin": "https://evil.example"})
    unconfigured = client.get("/health", headers={"Origin": "https://app.example"})

    assert "Access-Control-Allow-Origin" not in stranger.headers
    assert "Origin" in stranger.headers["Vary"]
    assert "Access-Control-Allow-Origin" not in unconfigured.headers


def test_cors_allows_an_origin_on_the_allow_list_including_its_preflight(cors_app: Flask) -> None:
    client = cors_app.test_client()
    preflight = client.options("/api/transactions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type, Idempotency-Key"})
    actual = client.get("/health", headers={"Origin": "https://app.example"})

    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    assert actual.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Request-ID" in actual.headers["Access-Control-Expose-Headers"]
