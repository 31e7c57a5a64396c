"""kill -9 the whole server (gunicorn master and worker) during concurrent transfers, several times, and restart
on the same data folder: every acknowledged transfer is still there, nothing is half-applied, money is
conserved, verify-ledger passes, users, tokens and revocations survive. While the server runs, the CLI reads a
consistent view of its folder and refuses to write to it; a second server refuses to start.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.gunicorn_process import REPO_ROOT, _healthy, free_loopback_port
from tests.test_e2e_transfers import Client

pytestmark = pytest.mark.e2e

SYSTEM_EMAIL = "system-crash@ledger.test"
SYSTEM_PASSWORD = "system-crash-password-1"
CYCLES = 3
FUNDS = 1000


def _environment(data_dir: Path, port: int | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"MONGO_URI", "MONGO_DB_NAME", "APP_ENV", "NODE_ENV", "LEDGER_TEST_MONGO_URI", "JWT_SECRET",
                          "MAIL_SERVER", "LEDGER_DATA_LOCK_FD"}}
    env.update({"LEDGER_DATA_DIR": str(data_dir), "BCRYPT_ROUNDS": "4", "PYTHONUNBUFFERED": "1",
                "RATELIMIT_ENABLED": "false", "OUTBOX_SENDER_ENABLED": "false", "SYSTEM_USER_EMAIL": SYSTEM_EMAIL,
                "SYSTEM_USER_PASSWORD": SYSTEM_PASSWORD, "SYSTEM_USER_NAME": "Crash System"})
    if port is not None:
        env["PORT"] = str(port)
    return env


@contextlib.contextmanager
def server(data_dir: Path, log: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """gunicorn in a process group of its own (JWT_SECRET unset: the development secret lives in the folder)."""
    port = free_loopback_port()
    with log.open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - a fixed command line
            [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "16", "-b", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=REPO_ROOT, env=_environment(data_dir, port), stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _healthy(port):
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        yield port, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def flask_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - a fixed command line
        [sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=REPO_ROOT, env=_environment(data_dir),
        capture_output=True, text=True, timeout=120, check=False)


def transfer_body(source: str, target: str, amount: int, key: str) -> dict:
    return {"fromAccount": source, "toAccount": target, "amount": amount, "idempotencyKey": key}


class TransferRun:
    """Threads sending transfers between the two accounts until the server dies; records what was answered."""

    def __init__(self, port: int, people: list, attempted: dict, acknowledged: dict) -> None:
        self.port, self.people, self.attempted, self.acknowledged = port, people, attempted, acknowledged
        self.stop = threading.Event()
        self.guard = threading.Lock()
        self.unexpected: list = []

    def work(self, seed: float) -> None:
        rng = random.Random(seed)
        connection = Client(self.port)
        try:
            while not self.stop.is_set():
                src, dst = rng.sample(range(2), 2)
                key = uuid.uuid4().hex
                token = self.people[src][1]
                body = transfer_body(self.people[src][2], self.people[dst][2], rng.randint(1, 5), key)
                with self.guard:
                    self.attempted[key] = (token, body)
                try:
                    reply = connection.call("POST", "/api/transactions", token, body)
                except (OSError, http.client.HTTPException):
                    return  # the server is gone
                with self.guard:
                    if reply.status == 200:
                        self.acknowledged[key] = (token, body, reply.body["transaction"]["_id"])
                    elif reply.status != 400:
                        self.unexpected.append((reply.status, reply.body))
        finally:
            connection.close()


def test_kill_9_during_transfers_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    rng = random.Random(20261202)
    acknowledged: dict[str, tuple[str, dict, str]] = {}  # key -> (token, body, transaction id)
    attempted: dict[str, tuple[str, dict]] = {}

    with server(data_dir, log) as (port, _process):
        client = Client(port)
        system = client.call("POST", "/api/auth/login", body={"email": SYSTEM_EMAIL, "password": SYSTEM_PASSWORD})
        assert system.status == 200, system.body
        people = []
        for name in ("a", "b"):
            email = f"crash-{name}-{uuid.uuid4().hex[:8]}@example.test"
            reply = client.call("POST", "/api/auth/register", body={"email": email, "password": "password-123",
                                                                  "name": f"Crash {name}"})
            assert reply.status == 201, reply.body
            token = reply.body["token"]
            account = client.call("POST", "/api/accounts", token, body={"currency": "INR"}).body["account"]["_id"]
            funded = client.call("POST", "/api/transactions/system/initial-funds", system.body["token"],
                                 body={"toAccount": account, "amount": FUNDS, "idempotencyKey": uuid.uuid4().hex})
            assert funded.status == 201, funded.body
            people.append((email, token, account))
        revoked = client.call("POST", "/api/auth/register", body={
            "email": f"crash-r-{uuid.uuid4().hex[:8]}@example.test", "password": "password-123", "name": "R"})
        revoked_token = revoked.body["token"]
        assert client.call("POST", "/api/auth/logout", revoked_token).status == 200
        client.close()

    for _cycle in range(CYCLES):
        with server(data_dir, log) as (port, process):
            run = TransferRun(port, people, attempted, acknowledged)
            threads = [threading.Thread(target=run.work, args=(rng.random(),)) for _ in range(8)]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.5, 2.0))
            os.killpg(process.pid, signal.SIGKILL)  # master and worker at once, mid-transfer
            run.stop.set()
            for thread in threads:
                thread.join(timeout=30)
            assert run.unexpected == []
    assert len(acknowledged) > 10, "too few transfers were acknowledged to say anything"

    with server(data_dir, log) as (port, _process):
        client = Client(port)
        # Every acknowledged transfer replays as itself.
        for key, (token, body, transaction_id) in acknowledged.items():
            reply = client.call("POST", "/api/transactions", token, body)
            assert reply.status == 200, (key, reply.body)
            assert reply.headers.get("idempotent-replayed") == "true"
            assert reply.body["transaction"]["_id"] == transaction_id
        # Every attempt is either wholly applied (a replay) or not at all (it runs now): afterwards the balances
        # are exactly the funds plus every completed transfer.
        expected = {people[0][2]: Decimal(FUNDS), people[1][2]: Decimal(FUNDS)}
        for _key, (token, body) in attempted.items():
            reply = client.call("POST", "/api/transactions", token, body)
            assert reply.status in (200, 400), reply.body
            if reply.status == 200:
                expected[body["fromAccount"]] -= body["amount"]
                expected[body["toAccount"]] += body["amount"]
        for email, token, account in people:
            balance = client.call("GET", f"/api/accounts/balance/{account}", token)
            assert balance.status == 200  # the token from before the crashes still works
            assert Decimal(balance.body["balance"]) == expected[account]
            login = client.call("POST", "/api/auth/login", body={"email": email, "password": "password-123"})
            assert login.status == 200
        assert sum(expected.values()) == 2 * FUNDS
        assert client.call("GET", "/api/accounts", revoked_token).status == 401  # the revocation survived
        client.close()

        # While the server owns the folder: the CLI reads a consistent view, refuses to write; no second server.
        verified = flask_cli(data_dir, "verify-ledger")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "ledger OK" in verified.stdout
        assert "accounts checked: 0" not in verified.stdout
        refused = flask_cli(data_dir, "create-system-user", "--email", "other@example.test", "--name", "O",
                            "--password", "password-123")
        assert refused.returncode != 0
        assert "in use by a running server" in refused.stderr, refused.stderr
        second = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{free_loopback_port()}", "wsgi:app"],
            cwd=REPO_ROOT, env=_environment(data_dir), capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode != 0
        assert "in use by a running server" in second.stdout + second.stderr

    # Stopped: the writing command works.
    created = flask_cli(data_dir, "create-system-user", "--email", SYSTEM_EMAIL, "--name", "Crash System",
                        "--password", SYSTEM_PASSWORD)
    assert created.returncode == 0, created.stdout + created.stderr
    assert "already exists" in created.stdout
