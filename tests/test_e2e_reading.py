"""Reading and proving the ledger over real HTTP: gunicorn on 127.0.0.1, as the README starts it."""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.gunicorn_process import running_gunicorn
from tests.test_e2e_http import Server

pytestmark = pytest.mark.e2e

SYSTEM_EMAIL = "system-reading@ledger.test"
SYSTEM_PASSWORD = "system-reading-password-1"


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


def _register(server: Server) -> str:
    reply = server.call("POST", "/api/auth/register", body={
        "email": f"reader-{uuid.uuid4().hex[:12]}@example.test", "password": "password-123", "name": "Reader"})
    assert reply.status == 201, reply.text
    return reply.json["token"]


def test_history_statement_balance_at_transaction_and_verification_over_http(server: Server) -> None:
    alice, bob = _register(server), _register(server)
    system = server.call("POST", "/api/auth/login", body={"email": SYSTEM_EMAIL, "password": SYSTEM_PASSWORD})
    system_token = system.json["token"]
    a = server.call("POST", "/api/accounts", alice).json["account"]["_id"]
    b = server.call("POST", "/api/accounts", bob).json["account"]["_id"]
    funded = server.call("POST", "/api/transactions/system/initial-funds", system_token,
                         body={"toAccount": a, "amount": 100, "idempotencyKey": uuid.uuid4().hex})
    assert funded.status == 201, funded.text
    transfer_ids = []
    for amount in (1, 2.5, 3):
        body = {"fromAccount": a, "toAccount": b, "amount": amount, "idempotencyKey": uuid.uuid4().hex}
        sent = server.call("POST", "/api/transactions", alice, body=body)
        assert sent.status == 200, sent.text
        transfer_ids.append(sent.json["transaction"]["_id"])

    # Every entry once, newest first, across pages of 3.
    seqs, cursor, cursors = [], None, []
    while True:
        page = server.call("GET", f"/api/accounts/{a}/entries?limit=3" + (f"&cursor={cursor}" if cursor else ""),
                           alice)
        assert page.status == 200, page.text
        assert page.headers["Cache-Control"] == "no-store"
        seqs += [entry["seq"] for entry in page.json["entries"]]
        cursor = page.json["nextCursor"]
        if cursor is None:
            break
        cursors.append(cursor)
    assert seqs == [4, 3, 2, 1]
    assert server.call("GET", f"/api/accounts/{b}/entries?cursor={cursors[0]}", bob).status == 400  # not Bob's

    # The statement as CSV; its first entry recomputes from docs/hash-chain.md.
    today = datetime.now(UTC).date().isoformat()
    statement = server.call("GET", f"/api/accounts/{a}/statement?from=2026-01-01&to={today}", alice)
    assert statement.json["openingBalance"] + statement.json["totalCredits"] - statement.json["totalDebits"] == \
        statement.json["closingBalance"] == 93.5
    as_csv = server.call("GET", f"/api/accounts/{a}/statement?from=2026-01-01&to={today}", alice,
                         headers={"Accept": "text/csv"})
    assert as_csv.status == 200
    assert as_csv.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert as_csv.headers["Content-Disposition"].startswith("attachment;")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [row["seq"] for row in rows] == ["1", "2", "3", "4"]
    first = rows[0]
    line = "|".join([a, "1", "CREDIT", "10000", "INR", "10000", first["transaction"], first["createdAt"], "0" * 64])
    assert hashlib.sha256(line.encode()).hexdigest() == first["hash"] == statement.json["entries"][0]["hash"]
    assert rows[-1]["hash"] == statement.json["closingHash"]

    before = server.call("GET", f"/api/accounts/balance/{a}?at=2026-01-01T00:00:00Z", alice)
    assert before.json == {"accountId": a, "balance": 0, "at": "2026-01-01T00:00:00.000Z"}
    now = server.call("GET", f"/api/accounts/balance/{a}", alice).json
    assert now["balance"] == now["availableBalance"] == 93.5

    for token in (alice, bob):
        seen = server.call("GET", f"/api/transactions/{transfer_ids[1]}", token)
        assert seen.status == 200
        assert seen.json["transaction"]["amount"] == 2.5
    assert server.call("GET", f"/api/transactions/{transfer_ids[1]}", _register(server)).status == 404

    verified = server.call("GET", "/api/ledger/verify", system_token)
    assert verified.status == 200
    assert verified.json["ok"] is True, verified.json
    assert server.call("GET", "/api/ledger/verify", alice).status == 403
