"""Mail through a real gunicorn process and a real SMTP server on loopback, across an SMTP outage.

The web worker's own sender thread delivers (as in production); the test only makes HTTP requests and counts
what the SMTP server receives. The outage is the server being stopped; recovery is the same port again.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.gunicorn_process import running_gunicorn
from tests.test_email import SmtpServer, free_port

SYSTEM_EMAIL = "system-e2e-mail@ledger.test"
SYSTEM_PASSWORD = "system-password-1"


def call(port: int, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        return response.status, (json.loads(text) if text.startswith(("{", "[")) else text)
    finally:
        connection.close()


def metric(port: int, result: str) -> float:
    _, text = call(port, "GET", "/metrics")
    prefix = f'ledger_notifications_total{{result="{result}"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def test_mail_queued_during_an_smtp_outage_arrives_exactly_once_over_real_http(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(logging.getLogger("mail.log"), "level", logging.WARNING)
    smtp = SmtpServer(free_port())
    inbox = smtp.start()
    environment = {
        "JWT_SECRET": f"e2e-mail-{uuid.uuid4().hex}{uuid.uuid4().hex}",
        "SYSTEM_USER_EMAIL": SYSTEM_EMAIL,
        "SYSTEM_USER_PASSWORD": SYSTEM_PASSWORD,
        "SYSTEM_USER_NAME": "E2E Mail System",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(smtp.port),
        "OUTBOX_SENDER_ENABLED": "true",
        "OUTBOX_POLL_SECONDS": "0.1",
        "OUTBOX_MAX_ATTEMPTS": "2",  # were an outage charged to messages, two probes would park them
        "OUTBOX_TRANSPORT_BACKOFF_SECONDS": "0.2",
        "OUTBOX_TRANSPORT_BACKOFF_MAX_SECONDS": "0.5",
    }
    try:
        with running_gunicorn(tmp_path_factory.mktemp("gunicorn-mail"), environment) as server:
            port = server.port
            tag = uuid.uuid4().hex[:8]
            alice, bob = f"alice-{tag}@example.test", f"bob-{tag}@example.test"
            tokens = {}
            for address, name in ((alice, "Alice Outage"), (bob, "Bob Outage")):
                status, body = call(port, "POST", "/api/auth/register",
                                    body={"email": address, "password": "password-123", "name": name})
                assert status == 201, body
                tokens[address] = body["token"]
            accounts = {}
            for address in (alice, bob):
                status, body = call(port, "POST", "/api/accounts", tokens[address], body={})
                assert status == 201, body
                accounts[address] = body["account"]["_id"]
            status, body = call(port, "POST", "/api/auth/login",
                                body={"email": SYSTEM_EMAIL, "password": SYSTEM_PASSWORD})
            assert status == 200, body
            status, body = call(port, "POST", "/api/transactions/system/initial-funds", body["token"],
                                body={"toAccount": accounts[alice], "amount": 500, "idempotencyKey": uuid.uuid4().hex})
            assert status == 201, body
            assert wait_for(lambda: len(inbox.all()) == 3), server.log_tail()  # two welcomes, one credit notice

            smtp.stop()  # the outage
            transactions = []
            for amount in (1, 2.5, 3):
                status, body = call(port, "POST", "/api/transactions", tokens[alice],
                                    body={"fromAccount": accounts[alice], "toAccount": accounts[bob],
                                          "amount": amount, "idempotencyKey": uuid.uuid4().hex})
                assert status == 200, body  # transfers never wait for mail
                transactions.append(body["transaction"]["_id"])
            assert wait_for(lambda: metric(port, "released") >= 4), server.log_tail()  # several probes refused
            assert "sending paused" in server.log_tail(20000)

            before = len(inbox.all())
            inbox = smtp.start()  # recovery, same port
            assert wait_for(lambda: len(inbox.all()) == before + 6), server.log_tail()
            time.sleep(1)  # anything sent twice would arrive by now
            received = inbox.all()[before:]
            assert len(received) == 6
            assert set(Counter(m.message["Message-ID"] for m in received).values()) == {1}
            for transaction in transactions:
                assert sorted(m.rcpt_tos[0] for m in received if transaction in m.text) == sorted([alice, bob])
            assert metric(port, "parked") == 0
            assert metric(port, "retried") == 0
    finally:
        smtp.stop()
