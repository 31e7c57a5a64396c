"""Transfers over real HTTP: gunicorn (one worker, 16 threads, the embedded engine) on a loopback port.

Concurrent clients, each on its own keep-alive connection, fund accounts, race transfers and race one
idempotency key. Everything is checked through the API alone: money is conserved, no account is overdrawn,
every accepted transfer is applied exactly once. The server is always terminated.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from tests.gunicorn_process import GunicornProcess, running_gunicorn

pytestmark = pytest.mark.e2e

SYSTEM_EMAIL = "system-e2e-transfers@ledger.test"
SYSTEM_PASSWORD = "system-e2e-transfers-1"
INSUFFICIENT_PREFIX = "Insufficient balance. Available balance is "


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Client:
    """One keep-alive HTTP connection to the server (not shared between threads)."""

    port: int
    connection: http.client.HTTPConnection | None = field(default=None, repr=False)

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> Reply:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = json.dumps(body, default=float).encode()  # as a JS client sends 10.5 if body is not None else None
        for attempt in range(2):  # a keep-alive connection the server closed is reopened once
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            try:
                self.connection.request(method, path, body=payload, headers=headers)
                response = self.connection.getresponse()
                text = response.read().decode("utf-8")
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        parsed = json.loads(text, parse_float=Decimal) if text and response.getheader(
            "Content-Type", "").startswith("application/json") else text
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, parsed)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass
class Server:
    running: GunicornProcess

    @property
    def port(self) -> int:
        return self.running.port

    def log_tail(self) -> str:
        return self.running.log_tail(3000)

    def client(self) -> Client:
        return Client(self.port)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    environment = {
        "JWT_SECRET": uuid.uuid4().hex * 2,
        "SYSTEM_USER_EMAIL": SYSTEM_EMAIL,
        "SYSTEM_USER_PASSWORD": SYSTEM_PASSWORD,
        "SYSTEM_USER_NAME": "E2E Transfers System",
        # Request-rate limits have their own tests; here many requests come from one loopback address.
        "RATELIMIT_ENABLED": "false",
    }
    with running_gunicorn(tmp_path_factory.mktemp("gunicorn-transfers"), environment) as running:
        yield Server(running)


class Bank:
    """Set-up helpers over HTTP."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = server.client()
        login = self.client.call("POST", "/api/auth/login", body={"email": SYSTEM_EMAIL, "password": SYSTEM_PASSWORD})
        assert login.status == 200, login.body
        self.system_token = login.body["token"]

    def user(self) -> str:
        reply = self.client.call("POST", "/api/auth/register", body={
            "email": f"e2e-transfers-{uuid.uuid4().hex[:12]}@example.test", "password": "password-123",
            "name": "E2E Transfers"})
        assert reply.status == 201, reply.body
        return reply.body["token"]

    def account(self, token: str, funds: int = 0) -> str:
        reply = self.client.call("POST", "/api/accounts", token, body={"currency": "INR"})
        assert reply.status == 201, reply.body
        account_id = reply.body["account"]["_id"]
        if funds:
            funded = self.client.call("POST", "/api/transactions/system/initial-funds", self.system_token,
                                      body={"toAccount": account_id, "amount": funds,
                                            "idempotencyKey": uuid.uuid4().hex})
            assert funded.status == 201, funded.body
        return account_id

    def balance(self, token: str, account_id: str) -> Decimal:
        reply = self.client.call("GET", f"/api/accounts/balance/{account_id}", token)
        assert reply.status == 200, reply.body
        return Decimal(reply.body["balance"])


@pytest.fixture
def bank(server: Server) -> Iterator[Bank]:
    helper = Bank(server)
    yield helper
    helper.client.close()


def run_together(server: Server, workers: int, action: Callable[[Client, int], Any]) -> list[Any]:
    barrier = threading.Barrier(workers, timeout=30)

    def work(index: int) -> Any:
        client = server.client()
        try:
            client.call("GET", "/health")  # connect before the start line so requests really overlap
            barrier.wait()
            return action(client, index)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, i) for i in range(workers)]
        return [f.result(timeout=120) for f in futures]


def transfer(client: Client, token: str, source: str, target: str, amount: Any, key: str | None = None) -> Reply:
    return client.call("POST", "/api/transactions", token, body={
        "fromAccount": source, "toAccount": target, "amount": amount, "idempotencyKey": key or uuid.uuid4().hex})


def test_random_concurrent_transfers_over_http_conserve_money(server, bank):
    tokens = [bank.user() for _ in range(3)]
    accounts = [bank.account(token, funds=300) for token in tokens]
    workers, per_worker = 8, 12

    def work(client: Client, index: int) -> list[tuple[int, int, int, Decimal, str | None]]:
        rng = random.Random(1000 + index)
        results = []
        for _ in range(per_worker):
            src, dst = rng.sample(range(3), 2)
            amount = Decimal(rng.randint(1, 12000)).scaleb(-2)
            reply = transfer(client, tokens[src], accounts[src], accounts[dst], amount)
            txn_id = reply.body["transaction"]["_id"] if reply.status == 200 else None
            if reply.status == 400:
                assert reply.body["message"].startswith(INSUFFICIENT_PREFIX), reply.body
            results.append((reply.status, src, dst, amount, txn_id))
        return results

    outcomes = [o for batch in run_together(server, workers, work) for o in batch]

    assert {status for status, *_ in outcomes} <= {200, 400}
    expected = [Decimal(300)] * 3
    completed_ids = []
    for status, src, dst, amount, txn_id in outcomes:
        if status == 200:
            expected[src] -= amount
            expected[dst] += amount
            completed_ids.append(txn_id)
    assert len(completed_ids) == len(set(completed_ids)) > 0
    balances = [bank.balance(token, account) for token, account in zip(tokens, accounts, strict=True)]
    assert balances == expected
    assert sum(balances) == 900
    assert min(balances) >= 0


def test_racing_one_idempotency_key_over_http_moves_money_once(server, bank):
    token = bank.user()
    source = bank.account(token, funds=100)
    target = bank.account(token)
    shared = f"e2e-race-{uuid.uuid4().hex}"

    replies = run_together(server, 16, lambda client, _: transfer(client, token, source, target, 10, key=shared))

    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {200, 409}, statuses
    completed = [r for r in replies if r.status == 200]
    assert len({r.body["transaction"]["_id"] for r in completed}) == 1
    assert len([r for r in completed if r.headers.get("idempotent-replayed") != "true"]) == 1
    assert all(r.headers.get("retry-after") for r in replies if r.status == 409)
    assert bank.balance(token, source) == 90
    assert bank.balance(token, target) == 10
    again = transfer(bank.client, token, source, target, 10, key=shared)
    assert again.status == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.body["transaction"]["_id"] == completed[0].body["transaction"]["_id"]


def test_racing_withdrawals_over_http_never_overdraw(server, bank):
    token = bank.user()
    source = bank.account(token, funds=50)
    target = bank.account(token)

    replies = run_together(server, 16, lambda client, _: transfer(client, token, source, target, 7))

    assert Counter(r.status for r in replies) == {200: 7, 400: 9}
    assert bank.balance(token, source) == 1
    assert bank.balance(token, target) == 49


def test_the_server_answers_json_for_every_error_it_produced(server, bank):
    # After the races, an ordinary request still works and the log holds no traceback.
    token = bank.user()
    reply = transfer(bank.client, token, bank.account(token), bank.account(token), "ten")
    assert reply.status == 400
    assert reply.body["status"] == "failed"
    assert "Traceback" not in server.running.log_path.read_text(errors="replace")
