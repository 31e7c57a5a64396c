"""An SMTP server that is down or misbehaving for hours costs no message an attempt; mail arrives once after.

Time is simulated: ``outbox.drain`` takes a ``clock``, so hours of outage pass in seconds. The outage is real
on the wire: nothing listening on the port, or a small TCP server on 127.0.0.1 that answers the way an SMTP
server in trouble does (421 greeting, 421 to EHLO, 454 to AUTH, 451 to MAIL FROM, silence, a reset, a
connection dropped at DATA). Recovery is a real aiosmtpd server on the same port, which counts what arrives.
"""

from __future__ import annotations

import logging
import random
import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from flask import Flask

from ledger import mailer
from ledger.models import utcnow
from ledger.services import outbox
from tests.conftest import Api, drop_database, unique_email
from tests.test_email import (
    Inbox,
    SmtpServer,
    drain,
    free_port,
    mail_app_for,
    make_pair,
    outbox_documents,
    transfer_ok,
)

# Production's settings (the silent-server outage shortens the socket timeout while it lasts).
REAL_SETTINGS = {
    "OUTBOX_BACKOFF_SECONDS": 30,
    "OUTBOX_BACKOFF_MAX_SECONDS": 3600,
    "OUTBOX_MAX_ATTEMPTS": 8,
    "OUTBOX_LEASE_SECONDS": 120,
    "OUTBOX_MAX_LEASE_EXPIRIES": 3,
    "OUTBOX_TRANSPORT_BACKOFF_SECONDS": 10,
    "OUTBOX_TRANSPORT_BACKOFF_MAX_SECONDS": 300,
    "MAIL_TIMEOUT_SECONDS": 5,
}
OUTAGE_HOURS = 3


class FakeClock:
    """A clock the test moves by hand (UTC, whole milliseconds like ``utcnow``)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(milliseconds=round(seconds * 1000))


# ---------------------------------------------------------------------------------- a broken SMTP server


class BrokenSmtp(socketserver.ThreadingTCPServer):
    """A TCP server on loopback that fails an SMTP session in one of several ways (``mode``)."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, mode: str) -> None:
        self.mode = mode
        self.sessions = 0
        self.closing = threading.Event()
        super().__init__(("127.0.0.1", port), _BrokenHandler)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _BrokenHandler(socketserver.StreamRequestHandler):
    server: BrokenSmtp

    def handle(self) -> None:
        self.server.sessions += 1
        mode = self.server.mode
        if mode == "closed at once":
            return  # accepted, then closed before the greeting
        if mode == "silent":
            self.server.closing.wait(5)  # never greets: the client times out
            return
        if mode == "greeting 421":
            self._reply("421 4.3.2 Service not available, closing transmission channel")
            return
        self._reply("220 broken.test ESMTP")
        while not self.server.closing.is_set():
            line = self.rfile.readline()
            if not line:
                return
            command = line.split(b" ", 1)[0].strip().upper()
            if command in (b"EHLO", b"HELO"):
                if mode == "EHLO 421":
                    self._reply("421 4.7.0 Too many connections, closing")
                    return
                self._reply("250-broken.test\r\n250 AUTH PLAIN LOGIN")
            elif command == b"AUTH":
                self._reply("535 5.7.8 Authentication credentials invalid" if mode == "AUTH 535"
                            else "454 4.7.0 Temporary authentication failure")
            elif command == b"MAIL":
                self._reply("451 4.3.0 Sender verification temporarily failed" if mode == "MAIL FROM 451"
                            else "250 OK")
            elif command == b"RCPT":
                self._reply("250 OK")
            elif command == b"DATA":
                return  # "dropped at DATA": the connection dies while this message is being sent
            elif command == b"QUIT":
                self._reply("221 Bye")
                return
            else:
                self._reply("250 OK")

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()


def _accept_any_login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    return AuthResult(success=True)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _quiet_aiosmtpd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("mail.log"), "level", logging.WARNING)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def recovered(port: int) -> Iterator[SmtpServer]:
    server = SmtpServer(port)
    yield server
    server.stop()


def _outage_app(port: int, **overrides: Any) -> Flask:
    return mail_app_for(port, **{**REAL_SETTINGS, **overrides})


def _queue_mail(app: Flask) -> list[str]:
    """Two customers, initial funds and three transfers: eleven messages in the outbox."""
    api = Api(app.test_client())
    pair = make_pair(api)
    return [transfer_ok(api, pair, amount)["_id"] for amount in (10, 20.5, 30)]


def _no_message_charged(app: Flask) -> list[dict[str, Any]]:
    documents = outbox_documents(app)
    assert {d["status"] for d in documents} == {"PENDING"}, Counter(d["status"] for d in documents)
    assert [d["attempts"] for d in documents] == [0] * len(documents)
    return documents


# ------------------------------------------------------------------------------------------------ tests

OUTAGES = ["refused", "closed at once", "silent", "greeting 421", "EHLO 421", "AUTH 454", "AUTH 535", "MAIL FROM 451",
           "dropped at DATA"]


@pytest.mark.parametrize("mode", OUTAGES)
def test_hours_of_smtp_outage_park_nothing_and_every_message_arrives_exactly_once_after(
        port: int, recovered: SmtpServer, mode: str):
    credentials = {"MAIL_USERNAME": "ledger", "MAIL_PASSWORD": "secret"} if mode.startswith("AUTH") else {}
    timeout = {"MAIL_TIMEOUT_SECONDS": 0.1} if mode == "silent" else {}  # 0.1 s per probe of a silent server
    app = _outage_app(port, **credentials, **timeout)
    broken = None if mode == "refused" else BrokenSmtp(port, mode)
    rng = random.Random(f"outage-{mode}")
    try:
        transactions = _queue_mail(app)
        clock = FakeClock()
        outage_ends = clock.now + timedelta(hours=OUTAGE_HOURS)
        probes = 0
        errors: list[str] = []
        while clock.now < outage_ends:
            clock.advance(rng.uniform(1, 60))  # the background sender polls every few seconds
            report = drain(app, clock=clock)
            assert report.sent == report.parked == report.retried == 0
            assert report.transport_down or report.processed == 0
            probes += report.released
            errors += report.errors
            if rng.random() < 0.01:  # customers keep transferring during the outage
                transactions += _queue_mail(app)[-1:]

        queued = _no_message_charged(app)  # hours, and not one attempt used up
        # The transport paused between probes, doubling up to 300 s (jittered down to no less than half).
        assert probes <= OUTAGE_HOURS * 3600 / 150 + 10, probes
        if mode == "dropped at DATA":
            # Each probe's message is moved back by its own backoff (up to an hour), so when every queued
            # message is waiting there is nothing to probe with: fewer probes, none of them charged.
            assert sum(d.get("interruptions", 0) for d in queued) == probes >= OUTAGE_HOURS
            max_wait = timedelta(seconds=3600 + 330)
        else:
            assert probes >= OUTAGE_HOURS * 3600 / (300 + 60) - 2, probes
            assert all("interruptions" not in d for d in queued)
            max_wait = timedelta(seconds=330)
        assert broken is None or broken.sessions >= probes * 0.9
        assert any("SMTP" in error for error in errors), errors[-3:]

        if broken is not None:
            broken.stop()
        app.config["MAIL_TIMEOUT_SECONDS"] = 5  # a loaded machine must not turn recovery into another outage
        inbox = _start_with_login(recovered) if mode.startswith("AUTH") else recovered.start()
        recovery_started = clock.now
        first_delivery = None
        while outbox_documents(app, status={"$ne": "SENT"}):
            assert clock.now - recovery_started < timedelta(hours=2), outbox_documents(app, status={"$ne": "SENT"})
            clock.advance(30)
            report = drain(app, clock=clock)
            if report.sent and first_delivery is None:
                first_delivery = clock.now
        # Mail flows again within one transport pause (300 s at most) of the server's return.
        assert first_delivery is not None
        assert first_delivery - recovery_started <= max_wait

        documents = outbox_documents(app)
        assert len(documents) == len(queued) >= 11
        assert {d["status"] for d in documents} == {"SENT"}
        assert [d["attempts"] for d in documents] == [1] * len(documents)
        received = inbox.all()
        message_ids = Counter(m.message["Message-ID"] for m in received)
        assert sorted(message_ids) == sorted(f"<{d['_id']}.{d['kind']}@ledger.local>" for d in documents)
        assert set(message_ids.values()) == {1}, message_ids  # exactly once each
        for transaction in transactions:
            assert len([m for m in received if transaction in m.text]) == 2  # receipt and credit notice
    finally:
        if broken is not None:
            broken.stop()
        drop_database(app)


def _start_with_login(server: SmtpServer) -> Inbox:
    from aiosmtpd.controller import Controller

    server._controller = Controller(server.inbox, hostname="127.0.0.1", port=server.port, ready_timeout=5,
                                    authenticator=_accept_any_login, auth_require_tls=False)
    server._controller.start()
    return server.inbox


def test_while_the_transport_is_paused_a_pass_touches_no_message(port: int):
    app = _outage_app(port)
    try:
        _queue_mail(app)
        clock = FakeClock()
        first = drain(app, clock=clock)
        assert (first.released, first.transport_down) == (1, True)
        assert first.paused_until is not None
        assert first.paused_until > clock.now
        before = outbox_documents(app)
        clock.now = first.paused_until - timedelta(milliseconds=1)
        paused = drain(app, clock=clock)
        assert (paused.processed, paused.transport_down) == (0, True)
        assert "unavailable" in paused.summary()
        assert "no message charged" in paused.summary()
        assert outbox_documents(app) == before  # not even a claim
        clock.now = first.paused_until
        assert drain(app, clock=clock).released == 1  # the pause is over: one probe
    finally:
        drop_database(app)


def test_the_transport_pause_doubles_up_to_its_cap_and_resets_after_a_delivery(port: int, recovered: SmtpServer):
    app = _outage_app(port)
    try:
        _queue_mail(app)
        clock = FakeClock()
        pauses = []
        for _ in range(8):
            report = drain(app, clock=clock)
            pauses.append((report.paused_until - clock.now).total_seconds())
            clock.now = report.paused_until
        for failures, pause in enumerate(pauses, start=1):
            full = min(300, 10 * 2 ** (failures - 1))
            assert full / 2 <= pause <= full, (failures, pause)
        recovered.start()
        assert drain(app, clock=clock).sent >= 1
        assert outbox.transport_gate(app).failures == 0
        recovered.stop()
        assert drain(app, clock=clock).sent == 0  # nothing left to send: no probe, no pause
        Api(app.test_client()).register(email=unique_email("after"), name="After Outage")
        report = drain(app, clock=clock)
        assert report.released == 1
        assert (report.paused_until - clock.now).total_seconds() <= 10  # back to the first, short pause
    finally:
        drop_database(app)


class SenderCrash(BaseException):
    """Stands for the sender process dying mid-delivery (nothing in the sender catches it)."""


def test_a_message_that_keeps_crashing_its_sender_is_parked_after_a_bounded_number_of_claims(
        port: int, recovered: SmtpServer, monkeypatch: pytest.MonkeyPatch):
    inbox = recovered.start()
    app = _outage_app(port)
    try:
        api = Api(app.test_client())
        victim, bystander = unique_email("poison"), unique_email("bystander")
        api.register(email=victim, name="Poison Pill")
        api.register(email=bystander, name="Innocent Bystander")
        original_render = mailer.render

        def crashing_render(app: Flask, database: Any, notification: dict[str, Any]) -> mailer.Email:
            if notification.get("to") == victim:
                raise SenderCrash
            return original_render(app, database, notification)

        monkeypatch.setattr(mailer, "render", crashing_render)
        clock = FakeClock()
        crashes = 0
        for _ in range(20):
            try:
                drain(app, clock=clock)
            except SenderCrash:
                crashes += 1
            [document] = outbox_documents(app, to=victim)
            if document["status"] == "PARKED":
                break
            clock.advance(121)  # past the lease
        assert crashes == 3  # OUTBOX_MAX_LEASE_EXPIRIES: the fourth claim parks it instead of trying again
        assert document["attempts"] == 4
        assert document["leaseExpiries"] == 3
        assert "LeaseExpired" in document["lastError"]
        assert "3 time(s)" in document["lastError"]
        assert "claimedUntil" not in document
        assert inbox.to(victim) == []
        assert len(inbox.to(bystander)) == 1  # the others are not held up

        monkeypatch.setattr(mailer, "render", original_render)  # the bug is fixed: send it again
        result = app.test_cli_runner().invoke(args=["outbox", "requeue", str(document["_id"])])
        assert result.exit_code == 0, result.output
        drain(app, clock=clock)
        assert len(inbox.to(victim)) == 1
        [sent] = outbox_documents(app, to=victim)
        assert (sent["status"], sent["attempts"]) == ("SENT", 1)
        assert "leaseExpiries" not in sent
    finally:
        drop_database(app)


def test_an_idle_connection_closed_by_the_server_is_reopened_without_charging_anyone(
        port: int, recovered: SmtpServer):
    inbox = recovered.start()
    app = _outage_app(port)
    try:
        with app.app_context(), mailer.Transport(app) as transport:
            api = Api(app.test_client())
            first, second = unique_email("first"), unique_email("second")
            api.register(email=first, name="First")
            api.register(email=second, name="Second")
            from ledger import db

            database = db.get_db(app)
            claimed = outbox.claim_next(database, 60)
            assert outbox.deliver(app, database, claimed, transport) == "sent"
            transport._connection.host.sock.shutdown(socket.SHUT_RDWR)  # as a server's idle timeout does
            claimed = outbox.claim_next(database, 60)
            assert outbox.deliver(app, database, claimed, transport) == "sent"
        assert (len(inbox.to(first)), len(inbox.to(second))) == (1, 1)
        assert [d["attempts"] for d in outbox_documents(app)] == [1, 1]
    finally:
        drop_database(app)


class DataRefusingInbox(Inbox):
    """Accepts recipients, then answers DATA with ``data_reply``."""

    data_reply = "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
        if self.data_reply.startswith("250"):
            return await super().handle_DATA(server, session, envelope)
        return self.data_reply


@pytest.mark.parametrize(("reply", "status", "attempts", "transport_down"), [
    ("554 5.6.0 Message content rejected", "PARKED", 1, False),  # this message, for good
    ("552 5.3.4 Message too big for system", "PARKED", 1, False),
    ("452 4.3.1 Insufficient system storage", "PENDING", 1, False),  # this message, for now
    ("451 4.3.0 Local error in processing", "PENDING", 1, False),
    ("421 4.3.0 Service shutting down", "PENDING", 0, True),  # the server, not the message
])
def test_a_refusal_at_data_is_charged_to_the_message_only_when_it_is_about_the_message(
        port: int, reply: str, status: str, attempts: int, transport_down: bool):
    server = SmtpServer(port)
    server.inbox = DataRefusingInbox()
    server.inbox.data_reply = reply
    server.start()
    app = _outage_app(port)
    try:
        Api(app.test_client()).register(email=unique_email("data"), name="Data Refused")
        report = drain(app, clock=FakeClock())
        [document] = outbox_documents(app)
        assert (document["status"], document["attempts"], report.transport_down) == (status, attempts, transport_down)
        assert reply.split(" ")[0] in document["lastError"]
        assert server.inbox.all() == []
    finally:
        server.stop()
        drop_database(app)


def test_a_clock_with_microseconds_still_fences_each_claim(port: int, recovered: SmtpServer):
    inbox = recovered.start()
    app = _outage_app(port)
    try:
        Api(app.test_client()).register(email=unique_email("micro"), name="Micro Second")
        report = drain(app, clock=FakeClock((utcnow() + timedelta(seconds=2)).replace(microsecond=123_456)))
        assert (report.sent, report.lost_leases) == (1, 0), report
        assert len(inbox.all()) == 1
    finally:
        drop_database(app)


@pytest.mark.parametrize(("mode", "level"), [("AUTH 535", logging.ERROR), ("AUTH 454", logging.WARNING),
                                             ("refused", logging.WARNING)])
def test_a_permanent_refusal_of_the_session_is_logged_as_an_error_and_still_charges_no_message(
        port: int, caplog: pytest.LogCaptureFixture, mode: str, level: int):
    app = _outage_app(port, MAIL_USERNAME="ledger", MAIL_PASSWORD="wrong-password")
    broken = None if mode == "refused" else BrokenSmtp(port, mode)
    try:
        Api(app.test_client()).register(email=unique_email("auth"), name="Auth Failure")
        with caplog.at_level(logging.WARNING, logger="ledger.services.outbox"):
            report = drain(app, clock=FakeClock())
        assert (report.released, report.transport_down) == (1, True)
        [record] = [r for r in caplog.records if "SMTP server unavailable" in r.getMessage()]
        assert record.levelno == level
        assert ("check the MAIL_* settings" in record.getMessage()) == (level == logging.ERROR)
        assert "wrong-password" not in record.getMessage()
        _no_message_charged(app)
    finally:
        if broken is not None:
            broken.stop()
        drop_database(app)
