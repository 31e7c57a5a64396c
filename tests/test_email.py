"""Email notifications through the transactional outbox, delivered to a real SMTP server on loopback.

An aiosmtpd server on 127.0.0.1 (a free port per test) records what arrives. Senders are driven explicitly:
``outbox.drain`` for one pass, ``outbox.start_sender`` for the background thread, the ``send-emails`` command
through the CLI runner. Backoff and polling are shrunk to milliseconds through config overrides.
"""

from __future__ import annotations

import email
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from bson import ObjectId
from flask import Flask

from ledger import db, mailer, metrics
from ledger.services import notifications, outbox
from tests.conftest import Api, drop_database, make_app, unique_email, wait_for

FAST_OUTBOX = {
    "OUTBOX_BACKOFF_SECONDS": 0.05,
    "OUTBOX_BACKOFF_MAX_SECONDS": 0.2,
    "OUTBOX_POLL_SECONDS": 0.05,
    "OUTBOX_MAX_ATTEMPTS": 3,
    "OUTBOX_TRANSPORT_BACKOFF_SECONDS": 0.05,
    "OUTBOX_TRANSPORT_BACKOFF_MAX_SECONDS": 0.2,
    "MAIL_TIMEOUT_SECONDS": 5,
}


# ------------------------------------------------------------------------------------------ SMTP server


@dataclass(frozen=True)
class Received:
    """One message as the SMTP server got it: envelope and parsed content."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes

    def header_names(self) -> list[str]:
        """Every header name as sent on the wire (continuation lines of folded headers skipped)."""
        head = self.raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
        return [line.split(b":", 1)[0].decode() for line in head.split(b"\n") if line and line[:1] not in b" \t"]

    def raw_header(self, name: str) -> str:
        """One header's raw value, unfolded, with encoded words left encoded."""
        from email import message_from_bytes
        from email.policy import compat32

        return str(message_from_bytes(self.raw, policy=compat32)[name]).replace("\n", "").replace("\r", "")

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        return self.message.get_body(preferencelist=("plain",)).get_content()

    @property
    def html(self) -> str:
        return self.message.get_body(preferencelist=("html",)).get_content()


class Inbox:
    """An aiosmtpd handler that records every accepted message; ``rcpt_reply`` makes it refuse recipients."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.rcpt_reply: str | None = None
        self.port = 0
        self._lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd API
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
        parsed = email.message_from_bytes(envelope.content, policy=policy.default)
        with self._lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed, envelope.content))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if address in r.rcpt_tos]

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.received)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SmtpServer:
    """Start and stop an aiosmtpd controller on a fixed loopback port (so it can come back after an outage)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inbox = Inbox()
        self.inbox.port = port
        self._controller: Controller | None = None

    def start(self) -> Inbox:
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, ready_timeout=5)
        self._controller.start()
        return self.inbox

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()


@pytest.fixture
def smtp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    # aiosmtpd logs every SMTP command at INFO, which would bury a failing test's own output.
    monkeypatch.setattr(logging.getLogger("mail.log"), "level", logging.WARNING)
    server = SmtpServer(free_port())
    yield server
    server.stop()


@pytest.fixture
def smtp(smtp_server: SmtpServer) -> Inbox:
    return smtp_server.start()


def mail_app_for(port: int, **overrides: Any) -> Flask:
    return make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=port, **{**FAST_OUTBOX, **overrides})


@pytest.fixture
def mail_app(smtp_server: SmtpServer) -> Iterator[Flask]:
    application = mail_app_for(smtp_server.port)
    yield application
    drop_database(application)


@pytest.fixture
def mail_api(mail_app: Flask) -> Api:
    return Api(mail_app.test_client())


# ----------------------------------------------------------------------------------------------- helpers


def drain(app: Flask, **kwargs: Any) -> outbox.DrainReport:
    with app.app_context():
        return outbox.drain(app, **kwargs)


def outbox_documents(app: Flask, **query: Any) -> list[dict[str, Any]]:
    with app.app_context():
        return list(db.get_db(app).notifications.find(query))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    return wait_for(condition, timeout, interval)


def drain_until_settled(app: Flask, timeout: float = 10.0) -> None:
    """Drain repeatedly (waiting out backoff) until no message is PENDING or SENDING."""

    def settled() -> bool:
        drain(app)
        return not outbox_documents(app, status={"$in": ["PENDING", "SENDING"]})

    assert wait_until(settled, timeout, interval=0.05), outbox_documents(app)


@dataclass
class Pair:
    """Alice (with a funded account) and Bob (with an empty one), each with a unique address."""

    alice_email: str
    alice_token: str
    alice_account: str
    bob_email: str
    bob_token: str
    bob_account: str


def make_pair(api: Api, alice_name: str = "Alice Sender", bob_name: str = "Bob Receiver",
              funds: Any = 5000) -> Pair:
    alice_email, bob_email = unique_email("alice"), unique_email("bob")
    alice = api.register(email=alice_email, name=alice_name)
    bob = api.register(email=bob_email, name=bob_name)
    alice_account = api.funded_account(alice["token"], funds)
    bob_account = api.open_account(bob["token"])
    return Pair(alice_email, alice["token"], alice_account, bob_email, bob["token"], bob_account)


def transfer_ok(api: Api, pair: Pair, amount: Any, key: str | None = None) -> dict[str, Any]:
    response = api.transfer(pair.alice_token, pair.alice_account, pair.bob_account, amount, key=key)
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()["transaction"]


def metric_value(result: str) -> float:
    return metrics.NOTIFICATIONS.labels(result=result)._value.get()


# ---------------------------------------------------------------------------------------- what is sent


def test_registration_sends_one_welcome_email_naming_the_user(mail_app: Flask, mail_api: Api, smtp: Inbox):
    address = unique_email("welcome")
    mail_api.register(email=address, name="Wendy Welcome")

    report = drain(mail_app)

    [welcome] = smtp.to(address)
    assert report.sent >= 1
    assert welcome.subject == "Welcome to Banking Ledger"
    assert welcome.message["To"] == f"Wendy Welcome <{address}>"
    assert "Banking Ledger" in welcome.message["From"]
    assert "Hello Wendy Welcome," in welcome.text
    assert "Hello Wendy Welcome," in welcome.html
    [document] = outbox_documents(mail_app, kind="welcome", to=address)
    assert document["status"] == "SENT"
    assert document["attempts"] == 1
    assert document["sentAt"] is not None


def test_a_transfer_sends_a_receipt_to_the_sender_and_a_credit_notice_to_the_receiver(
        mail_app: Flask, mail_api: Api, smtp: Inbox):
    pair = make_pair(mail_api)
    transaction = transfer_ok(mail_api, pair, 1000.5)
    drain(mail_app)

    receipts = [m for m in smtp.to(pair.alice_email) if m.subject.startswith("Transfer receipt")]
    notices = [m for m in smtp.to(pair.bob_email) if m.subject.startswith("Credit notice")]
    assert len(receipts) == 1
    assert len(notices) == 1
    receipt, notice = receipts[0], notices[0]
    assert receipt.subject == "Transfer receipt: INR 1,000.50 sent"
    assert notice.subject == "Credit notice: INR 1,000.50 received"
    assert receipt.rcpt_tos == [pair.alice_email]
    assert notice.rcpt_tos == [pair.bob_email]
    at_utc = transaction["createdAt"][:19].replace("T", " ") + " UTC"
    for message, person, balance_after in ((receipt, "Alice Sender", "INR 3,999.50"),
                                           (notice, "Bob Receiver", "INR 1,000.50")):
        for body in (message.text, message.html):
            assert f"Hello {person}," in body
            assert "INR 1,000.50" in body
            assert pair.alice_account in body
            assert pair.bob_account in body
            assert transaction["_id"] in body
            assert at_utc in body
            assert balance_after in body
            assert "$" not in body
    assert "from Alice Sender" in notice.text


def test_initial_funds_send_a_credit_notice_to_the_account_owner(mail_app: Flask, mail_api: Api, smtp: Inbox):
    address = unique_email("funded")
    token = mail_api.register(email=address, name="Fiona Funded")["token"]
    account = mail_api.open_account(token)
    response = mail_api.fund(account, 1234.5)
    assert response.status_code in (200, 201), response.get_json()
    transaction_id = response.get_json()["transaction"]["_id"]

    drain(mail_app)

    [notice] = [m for m in smtp.to(address) if m.subject.startswith("Credit notice")]
    assert notice.subject == "Credit notice: initial funds of INR 1,234.50 received"
    for body in (notice.text, notice.html):
        assert "Hello Fiona Funded," in body
        assert "INR 1,234.50" in body
        assert account in body
        assert transaction_id in body
        assert "$" not in body


def test_html_bodies_escape_names_while_text_bodies_keep_them(mail_app: Flask, mail_api: Api, smtp: Inbox):
    pair = make_pair(mail_api, alice_name="<b>Alice</b> & Co")
    transfer_ok(mail_api, pair, 10)
    drain(mail_app)

    [notice] = [m for m in smtp.to(pair.bob_email) if m.subject.startswith("Credit notice")]
    assert "from <b>Alice</b> & Co" in notice.text
    assert "&lt;b&gt;Alice&lt;/b&gt; &amp; Co" in notice.html
    assert "<b>Alice</b>" not in notice.html


def test_rejected_and_replayed_transfers_send_nothing_more(mail_app: Flask, mail_api: Api, smtp: Inbox):
    pair = make_pair(mail_api, funds=100)
    drain(mail_app)
    before = len(smtp.all())

    refused = mail_api.transfer(pair.alice_token, pair.alice_account, pair.bob_account, 500)
    assert refused.status_code == 400
    transaction = transfer_ok(mail_api, pair, 40, key="rent-1")
    replay = mail_api.transfer(pair.alice_token, pair.alice_account, pair.bob_account, 40, key="rent-1")
    assert replay.status_code in (200, 201)
    assert replay.get_json()["transaction"]["_id"] == transaction["_id"]
    drain(mail_app)

    new = smtp.all()[before:]
    assert sorted(m.subject for m in new) == ["Credit notice: INR 40.00 received", "Transfer receipt: INR 40.00 sent"]
    assert all(transaction["_id"] in m.text for m in new)
    assert len(outbox_documents(mail_app, **{"context.transactionId": transaction["_id"]})) == 2


def test_an_aborted_transfer_leaves_no_message_to_send(mail_app: Flask, mail_api: Api, smtp: Inbox,
                                                       monkeypatch: pytest.MonkeyPatch):
    pair = make_pair(mail_api)
    drain(mail_app)
    before = len(smtp.all())
    original_enqueue = notifications.enqueue

    def enqueue_then_fail(session: Any, messages: list[dict[str, Any]]) -> None:
        original_enqueue(session, messages)
        raise RuntimeError("the process died after queueing the mail, before commit")

    monkeypatch.setattr(notifications, "enqueue", enqueue_then_fail)
    response = mail_api.transfer(pair.alice_token, pair.alice_account, pair.bob_account, 25)
    monkeypatch.setattr(notifications, "enqueue", original_enqueue)

    assert response.status_code == 500
    assert outbox_documents(mail_app, kind={"$in": ["transfer_receipt", "credit_notice"]}) == []
    assert drain(mail_app).processed == 0
    assert len(smtp.all()) == before
    assert mail_api.balance(pair.alice_token, pair.alice_account) == 5000


# ------------------------------------------------------------------------------- outages and retries


def test_transfers_succeed_while_smtp_is_down_and_the_mail_arrives_once_it_is_back(
        smtp_server: SmtpServer, mail_app: Flask, mail_api: Api):
    pair = make_pair(mail_api)
    transaction = transfer_ok(mail_api, pair, 75)

    report = drain(mail_app)
    assert report.transport_down
    assert (report.sent, report.released) == (0, 1)
    assert drain(mail_app).processed == 0  # the transport is paused: the next pass touches nothing
    queued = outbox_documents(mail_app)
    assert {d["status"] for d in queued} == {"PENDING"}
    assert all(d["attempts"] == 0 for d in queued)  # the outage used up no message's attempts
    [tried] = [d for d in queued if d.get("lastError")]
    assert "unavailable" in tried["lastError"]
    assert tried["nextAttemptAt"] == tried["createdAt"]  # it keeps its place in the queue

    inbox = smtp_server.start()
    drain_until_settled(mail_app)

    assert {d["status"] for d in outbox_documents(mail_app)} == {"SENT"}
    subjects = Counter((m.rcpt_tos[0], m.subject) for m in inbox.all())
    assert subjects[(pair.alice_email, "Transfer receipt: INR 75.00 sent")] == 1
    assert subjects[(pair.bob_email, "Credit notice: INR 75.00 received")] == 1
    assert subjects[(pair.alice_email, "Welcome to Banking Ledger")] == 1
    assert all(count == 1 for count in subjects.values()), subjects
    assert all(transaction["_id"] in m.text for m in inbox.all() if "INR 75.00" in m.subject)


def test_a_temporarily_refused_message_is_retried_with_backoff_then_parked(mail_app: Flask, smtp: Inbox):
    smtp.rcpt_reply = "451 4.3.0 Mailbox temporarily unavailable"
    with mail_app.test_client() as client:
        Api(client).register(email=unique_email("busy"), name="Busy Mailbox")
    parked_before = metric_value("parked")

    first = drain(mail_app)
    assert first.retried >= 1
    [document] = outbox_documents(mail_app, kind="welcome", recipientName="Busy Mailbox")
    assert document["status"] == "PENDING"
    assert document["attempts"] == 1
    assert "451" in document["lastError"]
    assert drain(mail_app).processed == 0  # not due again before its backoff has passed

    def parked_yet() -> bool:
        drain(mail_app)
        return outbox_documents(mail_app, _id=document["_id"])[0]["status"] == "PARKED"

    assert wait_until(parked_yet, timeout=10, interval=0.05)
    [parked] = outbox_documents(mail_app, _id=document["_id"])
    assert parked["attempts"] == 3
    assert "451" in parked["lastError"]
    assert "claimedUntil" not in parked
    assert smtp.all() == []
    assert metric_value("parked") >= parked_before + 1


def test_a_message_refused_once_is_delivered_exactly_once_on_retry(mail_app: Flask, mail_api: Api, smtp: Inbox):
    pair = make_pair(mail_api)
    drain_until_settled(mail_app)
    smtp.rcpt_reply = "421 4.7.0 Try again later"
    transaction = transfer_ok(mail_api, pair, 33)
    first = drain(mail_app)
    assert first.retried + int(first.transport_down) >= 1
    assert [m for m in smtp.all() if transaction["_id"] in m.text] == []

    smtp.rcpt_reply = None
    drain_until_settled(mail_app)

    about_transfer = Counter(m.rcpt_tos[0] for m in smtp.all() if transaction["_id"] in m.text)
    assert about_transfer == Counter({pair.alice_email: 1, pair.bob_email: 1})
    retried = outbox_documents(mail_app, **{"context.transactionId": transaction["_id"]})
    assert {d["status"] for d in retried} == {"SENT"}
    assert all(d["attempts"] == 1 for d in retried)  # 421 closes the session: the server's fault, not theirs


def test_one_pass_tries_a_failing_message_once_however_short_its_backoff(smtp_server, smtp: Inbox):
    app = mail_app_for(smtp_server.port, OUTBOX_BACKOFF_SECONDS=0, OUTBOX_BACKOFF_MAX_SECONDS=0)
    try:
        smtp.rcpt_reply = "451 4.3.0 Mailbox temporarily unavailable"
        Api(app.test_client()).register(email=unique_email("busy"), name="Busy Server")

        report = drain(app)

        [document] = outbox_documents(app, kind="welcome", recipientName="Busy Server")
        assert (report.retried, document["attempts"], document["status"]) == (1, 1, "PENDING")
    finally:
        drop_database(app)


def test_a_recipient_refused_for_good_is_parked_at_once(mail_app: Flask, smtp: Inbox):
    smtp.rcpt_reply = "550 5.1.1 No such user here"
    Api(mail_app.test_client()).register(email=unique_email("gone"), name="Gone Away")

    drain(mail_app)

    [document] = outbox_documents(mail_app, kind="welcome", recipientName="Gone Away")
    assert document["status"] == "PARKED"
    assert document["attempts"] == 1
    assert "550" in document["lastError"]


def test_backoff_doubles_per_attempt_up_to_the_cap_with_jitter_below_it():
    for attempts, full in ((1, 30), (2, 60), (3, 120), (4, 240), (20, 3600)):
        delays = [outbox.backoff_seconds(attempts, 30, 3600) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays), (attempts, min(delays), max(delays))


# ---------------------------------------------------------------------------- exactly one, concurrently


def test_concurrent_senders_deliver_every_message_exactly_once(mail_app: Flask, mail_api: Api, smtp: Inbox):
    pair = make_pair(mail_api, funds=10_000)
    transactions = [transfer_ok(mail_api, pair, amount) for amount in range(1, 13)]
    expected = len(outbox_documents(mail_app))
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def sender() -> None:
        try:
            barrier.wait(timeout=10)
            drain(mail_app)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    received = smtp.all()
    assert len(received) == expected
    message_ids = Counter(m.message["Message-ID"] for m in received)
    assert all(count == 1 for count in message_ids.values())
    for transaction in transactions:
        recipients = sorted(m.rcpt_tos[0] for m in received if transaction["_id"] in m.text)
        assert recipients == sorted([pair.alice_email, pair.bob_email])
    assert {d["status"] for d in outbox_documents(mail_app)} == {"SENT"}
    assert all(d["attempts"] == 1 for d in outbox_documents(mail_app))


def test_a_claimed_message_is_not_claimed_again_until_its_lease_expires(mail_app: Flask, smtp: Inbox):
    Api(mail_app.test_client()).register(email=unique_email("lease"), name="Lease Holder")
    with mail_app.app_context():
        database = db.get_db(mail_app)
        [document] = outbox_documents(mail_app)  # the welcome message, alone in the outbox
        first = outbox.claim_next(database, lease_seconds=0.3)
        while_held = outbox.claim_next(database, lease_seconds=60)
        time.sleep(0.35)
        after_expiry = outbox.claim_next(database, lease_seconds=60)

    assert first["_id"] == document["_id"]
    assert first["status"] == "SENDING"
    assert first["attempts"] == 1
    assert while_held is None
    assert after_expiry["_id"] == document["_id"]
    assert after_expiry["attempts"] == 2
    assert after_expiry["claimedUntil"] > first["claimedUntil"]


def test_a_sender_whose_lease_expired_cannot_overwrite_the_new_holders_outcome(mail_app: Flask, smtp: Inbox):
    address = unique_email("fenced")
    Api(mail_app.test_client()).register(email=address, name="Fenced Off")
    with mail_app.app_context():
        database = db.get_db(mail_app)
        [document] = outbox_documents(mail_app)  # the welcome message, alone in the outbox
        stale = outbox.claim_next(database, lease_seconds=0.001)  # a sender that stalls past its lease
        assert stale["_id"] == document["_id"]
        time.sleep(0.01)
        current = outbox.claim_next(database, lease_seconds=60)
        assert current["_id"] == stale["_id"]
        with mailer.Transport(mail_app) as transport:
            assert outbox.deliver(mail_app, database, stale, transport) == "lost"
            [meanwhile] = outbox_documents(mail_app, _id=stale["_id"])
            assert meanwhile["status"] == "SENDING"
            assert meanwhile["claimedUntil"] == current["claimedUntil"]
            assert outbox.deliver(mail_app, database, current, transport) == "sent"

    [document] = outbox_documents(mail_app, _id=stale["_id"])
    assert document["status"] == "SENT"
    assert len(smtp.to(address)) == 2  # both holders sent (at least once); only the current one recorded it


# ------------------------------------------------------------------------------------- header injection


@pytest.mark.parametrize("name", ["Eve\r\nBcc: victim@example.test", "Eve\nSubject: pwned", "Eve\rX: y"])
def test_registration_refuses_a_name_with_a_line_break(mail_api: Api, name: str):
    response = mail_api.request("POST", "/api/auth/register",
                                json={"email": unique_email("eve"), "password": "password-123", "name": name})

    assert response.status_code == 400
    assert "control characters" in response.get_json()["message"]


def test_a_line_break_in_a_stored_name_never_becomes_a_header(mail_app: Flask, smtp: Inbox):
    address = unique_email("legacy")
    user_id = ObjectId()
    hostile = "Mallory\r\nBcc: victim@example.test\u2028X-Evil: 1\x85Cc: other@example.test"
    with mail_app.app_context():
        database = db.get_db(mail_app)
        database.users.insert_one({"_id": user_id, "email": address, "name": hostile, "password": "x"})
        database.notifications.insert_one(notifications.welcome({"_id": user_id, "email": address,
                                                                 "name": hostile}))

    drain(mail_app)

    [delivered] = smtp.to(address)
    assert delivered.rcpt_tos == [address]
    names = delivered.header_names()
    assert names.count("To") == 1
    assert not {"Bcc", "Cc", "X-Evil"} & set(names)
    [(to_name, to_address)] = getaddresses([delivered.raw_header("To")])
    assert to_address == address
    assert str(make_header(decode_header(to_name))) == "Mallory Bcc victimexample.test X-Evil 1 Cc otherexample.test"
    assert "Hello Mallory Bcc: victim@example.test X-Evil: 1 Cc: other@example.test," in delivered.text
    assert [r for r in smtp.all() if "victim@example.test" in r.rcpt_tos or "other@example.test" in r.rcpt_tos] == []


def test_a_line_break_in_a_stored_address_is_parked_and_never_reaches_smtp(mail_app: Flask, smtp: Inbox):
    hostile = "victim@example.test\r\nBcc: everyone@example.test"
    with mail_app.app_context():
        document = notifications.welcome({"_id": ObjectId(), "email": hostile, "name": "Victim"})
        db.get_db(mail_app).notifications.insert_one(document)

    drain(mail_app)

    [parked] = outbox_documents(mail_app, _id=document["_id"])
    assert parked["status"] == "PARKED"
    assert parked["lastError"] == "PermanentFailure: invalid recipient address"
    assert [r for r in smtp.all() if "victim@example.test" in r.rcpt_tos or "everyone@" in str(r.rcpt_tos)] == []


# ------------------------------------------------------------------------------ without a mail server


def _logged_text(records: list[logging.LogRecord]) -> str:
    """Everything a log handler could write for these records: message, arguments, extras, tracebacks."""
    return "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {vars(r)!r}" for r in records)


@pytest.mark.parametrize("settings", [{}, {"MAIL_BACKEND": "log", "MAIL_SERVER": "smtp.example.test"},
                                      {"MAIL_BACKEND": " LOG "}])
def test_the_log_backend_writes_subject_and_message_id_never_the_body_or_the_recipient(
        caplog: pytest.LogCaptureFixture, settings: dict[str, Any]):
    app = make_app(**FAST_OUTBOX, **settings)  # the testing configuration has no MAIL_SERVER
    try:
        api = Api(app.test_client())
        pair = make_pair(api, alice_name="Zelda Bodymarker", bob_name="Yannick Bodymarker")
        transaction = transfer_ok(api, pair, 1234.56)
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            report = drain(app)

        documents = outbox_documents(app)
        assert report.logged == len(documents) >= 5
        assert report.sent == 0
        assert {d["status"] for d in documents} == {"LOGGED"}
        logged = _logged_text(caplog.records)
        with app.app_context():
            emails = [mailer.render(app, db.get_db(app), d) for d in documents]
        for message in emails:
            assert message.message_id in logged
            assert message.subject in logged
            secrets = [message.text, message.html, message.to, message.name,
                       *(line.strip() for line in message.text.splitlines() if len(line.strip()) >= 12
                         and line.strip() not in message.subject)]
            leaked = [secret for secret in secrets if secret and secret in logged]
            assert leaked == [], leaked
        for secret in ("Bodymarker", pair.alice_email, pair.bob_email, transaction["_id"], pair.alice_account,
                       pair.bob_account, "balance"):
            assert secret.lower() not in logged.lower(), secret
        assert "recipients=1" in logged
    finally:
        drop_database(app)


# ----------------------------------------------------------------------------- senders and the CLI


def test_the_background_sender_delivers_after_commit_and_stops_cleanly(mail_app: Flask, mail_api: Api,
                                                                       smtp: Inbox):
    sender = outbox.start_sender(mail_app)
    try:
        pair = make_pair(mail_api)
        transaction = transfer_ok(mail_api, pair, 12.34)
        assert wait_until(lambda: any(transaction["_id"] in m.text for m in smtp.to(pair.bob_email)))
    finally:
        sender.stop(timeout=5)
    assert not sender.is_alive()
    assert len([m for m in smtp.to(pair.alice_email) if transaction["_id"] in m.text]) == 1


def test_the_background_sender_survives_database_errors(mail_app: Flask, mail_api: Api, smtp: Inbox,
                                                        monkeypatch: pytest.MonkeyPatch):
    original_claim = outbox.claim_next
    failures = {"left": 3}

    def flaky_claim(database: Any, lease_seconds: float, **kwargs: Any) -> dict[str, Any] | None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("database went away")
        return original_claim(database, lease_seconds, **kwargs)

    monkeypatch.setattr(outbox, "claim_next", flaky_claim)
    address = unique_email("survivor")
    mail_api.register(email=address, name="Sam Survivor")
    sender = outbox.start_sender(mail_app, poll_seconds=0.01)
    try:
        assert wait_until(lambda: len(smtp.to(address)) == 1)
        assert sender.is_alive()
    finally:
        sender.stop(timeout=5)
    assert failures["left"] == 0


def test_the_web_sender_starts_with_the_first_request_once_and_only_when_enabled(smtp_server: SmtpServer):
    smtp_server.start()
    disabled = mail_app_for(smtp_server.port)
    enabled = mail_app_for(smtp_server.port, OUTBOX_SENDER_ENABLED=True)
    try:
        assert outbox.EXTENSION_KEY not in disabled.extensions
        lazy = enabled.extensions[outbox.EXTENSION_KEY]
        assert lazy.sender is None  # building the app (as CLI commands do) starts nothing
        enabled.test_client().get("/health")
        first = lazy.sender
        enabled.test_client().get("/health")
        assert first is not None
        assert first.is_alive()
        assert lazy.sender is first
        assert [t.name for t in threading.enumerate()].count("outbox-sender") >= 1
    finally:
        outbox.stop_background_sender(enabled)
        drop_database(enabled)
        drop_database(disabled)
    assert not lazy.sender.is_alive()


def test_send_emails_once_drains_the_outbox_and_reports(mail_app: Flask, mail_api: Api, smtp: Inbox):
    pair = make_pair(mail_api)
    transfer_ok(mail_api, pair, 5)
    expected = len(outbox_documents(mail_app, status="PENDING"))

    result = mail_app.test_cli_runner().invoke(args=["send-emails", "--once"])

    assert result.exit_code == 0, result.output
    assert f"sent {expected}," in result.output
    assert len(smtp.all()) == expected
    assert outbox_documents(mail_app, status="PENDING") == []


def test_send_emails_once_exits_non_zero_when_the_smtp_server_is_down(mail_app: Flask, mail_api: Api):
    mail_api.register(email=unique_email("down"), name="Down Time")

    result = mail_app.test_cli_runner().invoke(args=["send-emails", "--once"])

    assert result.exit_code == 1
    assert "SMTP server unavailable" in result.output
