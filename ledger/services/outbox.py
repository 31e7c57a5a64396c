"""Delivering the notification outbox: claim, send, record; at least once, never twice at the same time.

The documents were inserted in the same transaction as the event they announce (:mod:`notifications`); this
module delivers them after commit, off the request path, from a daemon thread in the web process
(:class:`BackgroundSender`) or from ``flask --app wsgi send-emails`` in a process of its own. Any number of
senders may run against one database:

* **Claim.** One atomic ``find_one_and_update`` takes a message that is ``PENDING`` and due
  (``nextAttemptAt <= now``), or ``SENDING`` with an expired lease, and sets ``status=SENDING``,
  ``claimedUntil=now+lease`` and ``attempts+=1``. Two senders can never hold the same message; a sender that
  died mid-delivery loses its lease and the message is taken again (counted as an attempt, so a message that
  crashes its sender cannot loop for ever).
* **Record.** The outcome is written with a filter on ``status=SENDING`` *and* the exact ``claimedUntil`` this
  sender set, which fences a sender whose lease expired: its late write matches nothing.
* **Retry.** A failure puts the message back to ``PENDING`` with
  ``nextAttemptAt = now + min(OUTBOX_BACKOFF_MAX_SECONDS, OUTBOX_BACKOFF_SECONDS * 2**(attempts-1))``, jittered
  down by up to half so messages that failed together do not retry together. After ``OUTBOX_MAX_ATTEMPTS``
  attempts, or at once for a failure retrying cannot fix (no such user, an unusable address, a 5xx for the
  recipient), it is ``PARKED`` with ``lastError`` for a person to look at.
* **Outage.** When the SMTP server cannot be reached, the batch stops after the first message instead of
  spending an attempt of every queued message on the same refusal.

Delivery is at least once: a sender that dies after the SMTP server accepted a message but before recording
``SENT`` sends it again after the lease; the ``Message-ID`` is the same both times.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from pymongo import ReturnDocument
from pymongo.database import Database

from ledger import db, mailer, metrics
from ledger.models import utcnow

log = logging.getLogger(__name__)

PENDING = "PENDING"
SENDING = "SENDING"
PARKED = "PARKED"

BATCH_SIZE = 100
ERROR_PAUSE_MAX_SECONDS = 60.0
LAST_ERROR_MAX_LENGTH = 500

EXTENSION_KEY = "ledger.outbox_sender"


@dataclass
class DrainReport:
    """What one pass over the outbox did."""

    sent: int = 0
    logged: int = 0
    retried: int = 0
    parked: int = 0
    lost_leases: int = 0
    transport_down: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.sent + self.logged + self.retried + self.parked + self.lost_leases

    def summary(self) -> str:
        text = (f"sent {self.sent}, logged {self.logged}, retried {self.retried}, parked {self.parked}, "
                f"lost leases {self.lost_leases}")
        return text + (" (SMTP server unavailable: stopped early)" if self.transport_down else "")


# ----------------------------------------------------------------------------------- claim and record


def _settings(app: Flask) -> dict[str, float]:
    config = app.config
    return {
        "lease": float(config.get("OUTBOX_LEASE_SECONDS") or 120),
        "base": float(config.get("OUTBOX_BACKOFF_SECONDS") if config.get("OUTBOX_BACKOFF_SECONDS") is not None
                      else 30),
        "cap": float(config.get("OUTBOX_BACKOFF_MAX_SECONDS") or 3600),
        "max_attempts": int(config.get("OUTBOX_MAX_ATTEMPTS") or 8),
    }


def claim_next(database: Database, lease_seconds: float, due_by: datetime | None = None) -> dict[str, Any] | None:
    """Atomically take one message due by ``due_by`` (default: now), or one whose lease expired.

    ``None`` when there is nothing to do.
    """
    now = utcnow()
    lease_until = now + timedelta(milliseconds=round(lease_seconds * 1000))  # whole ms, as BSON stores it
    return database.notifications.find_one_and_update(
        {"$or": [
            {"status": PENDING, "nextAttemptAt": {"$lte": due_by or now}},
            {"status": SENDING, "claimedUntil": {"$lte": now}},
        ]},
        {"$set": {"status": SENDING, "claimedUntil": lease_until},
         "$inc": {"attempts": 1}},
        sort=[("nextAttemptAt", 1)],
        return_document=ReturnDocument.AFTER,
    )


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: ``min(cap, base * 2**(attempts-1))``, minus up to half of it."""
    delay = min(cap, base * (2 ** max(0, min(attempts - 1, 30))))
    return delay / 2 + random.uniform(0, delay / 2)


def _record(database: Database, claimed: dict[str, Any], update: dict[str, Any]) -> bool:
    """Write the outcome if this sender still holds the lease; False if another sender has taken over."""
    result = database.notifications.update_one(
        {"_id": claimed["_id"], "status": SENDING, "claimedUntil": claimed["claimedUntil"]}, update)
    if result.matched_count == 0:
        log.warning("outbox message %s: lease expired before its outcome was recorded", claimed["_id"])
        metrics.NOTIFICATIONS.labels(result="lease_lost").inc()
        return False
    return True


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:LAST_ERROR_MAX_LENGTH]


def deliver(app: Flask, database: Database, claimed: dict[str, Any], transport: mailer.Transport) -> str:
    """Deliver one claimed message and record the outcome; return sent, logged, retried, parked or lost."""
    settings = _settings(app)
    attempts = int(claimed.get("attempts") or 1)
    try:
        email = mailer.render(app, database, claimed)
        status = transport.send(email)
    except mailer.PermanentFailure as exc:
        return _park(database, claimed, _error_text(exc))
    except Exception as exc:  # noqa: BLE001 - any other failure is worth another attempt
        if isinstance(exc, mailer.TransportUnavailable):
            log.warning("outbox message %s: %s", claimed["_id"], exc)
        else:
            log.warning("outbox message %s: delivery failed", claimed["_id"], exc_info=True)
        if attempts >= settings["max_attempts"]:
            return _park(database, claimed, _error_text(exc))
        delay = backoff_seconds(attempts, settings["base"], settings["cap"])
        recorded = _record(database, claimed, {
            "$set": {"status": PENDING, "nextAttemptAt": utcnow() + timedelta(seconds=delay),
                     "lastError": _error_text(exc)},
            "$unset": {"claimedUntil": ""},
        })
        result = _counted("retried" if recorded else "lost")
        if isinstance(exc, mailer.TransportUnavailable):
            raise  # the batch stops here (see drain)
        return result
    recorded = _record(database, claimed, {
        "$set": {"status": status, "sentAt": utcnow(), "to": email.to},
        "$unset": {"claimedUntil": "", "lastError": ""},
    })
    return _counted(("sent" if status == mailer.SENT else "logged") if recorded else "lost")


def _park(database: Database, claimed: dict[str, Any], error: str) -> str:
    log.error("outbox message %s (%s) parked after %s attempt(s): %s", claimed["_id"], claimed.get("kind"),
              claimed.get("attempts"), error)
    recorded = _record(database, claimed, {"$set": {"status": PARKED, "lastError": error},
                                           "$unset": {"claimedUntil": ""}})
    return _counted("parked" if recorded else "lost")


def _counted(result: str) -> str:
    if result != "lost":  # a lost lease was counted where it was detected
        metrics.NOTIFICATIONS.labels(result=result).inc()
    return result


def drain(app: Flask | None = None, *, limit: int | None = None,
          stop: threading.Event | None = None) -> DrainReport:
    """Deliver every message due now (at most ``limit``), in the caller's app context.

    Only messages due when the pass starts are taken, so a message that fails is tried at most once per pass
    (however short its backoff) and a drain always ends. It also ends early when the SMTP server is
    unreachable, or when ``stop`` is set.
    """
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    database = db.get_db(app)
    lease = _settings(app)["lease"]
    report = DrainReport()
    pass_started = utcnow()
    with mailer.Transport(app) as transport:
        while (limit is None or report.processed < limit) and not (stop is not None and stop.is_set()):
            claimed = claim_next(database, lease, due_by=pass_started)
            if claimed is None:
                break
            try:
                result = deliver(app, database, claimed, transport)
            except mailer.TransportUnavailable as exc:
                report.retried += 1
                report.transport_down = True
                report.errors.append(str(exc))
                break
            if result == "lost":
                report.lost_leases += 1
            else:
                setattr(report, result, getattr(report, result) + 1)
    return report


# --------------------------------------------------------------------------------- background sender


class BackgroundSender:
    """A daemon thread that drains the outbox every ``OUTBOX_POLL_SECONDS``; never dies of an error.

    An unreachable SMTP server ends the pass (each message keeps its own backoff); any other error, such as
    the database being away, is logged and waited out, the pause doubling with each consecutive failure up to
    a minute. :meth:`stop` lets the message in hand finish, then joins the thread.
    """

    def __init__(self, app: Flask, poll_seconds: float | None = None) -> None:
        self.app = app
        self.poll_seconds = float(poll_seconds if poll_seconds is not None
                                  else app.config.get("OUTBOX_POLL_SECONDS") or 2)
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundSender:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="outbox-sender", daemon=True)
            self._thread.start()
            atexit.register(self.stop)
        return self

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        atexit.unregister(self.stop)

    def run(self) -> None:
        """The loop itself (the thread's target; ``send-emails`` runs it in the foreground)."""
        failures = 0
        while not self._stop.is_set():
            busy = False
            try:
                with self.app.app_context():
                    report = drain(self.app, limit=BATCH_SIZE, stop=self._stop)
                busy = report.processed >= BATCH_SIZE and not report.transport_down
                failures = 0
            except Exception:  # noqa: BLE001 - the sender must outlive any database or SMTP failure
                failures += 1
                log.exception("outbox sender: pass failed (will retry)")
            if not busy:
                self._stop.wait(min(ERROR_PAUSE_MAX_SECONDS, self.poll_seconds * (2 ** min(failures, 10))))


def start_sender(app: Flask, poll_seconds: float | None = None) -> BackgroundSender:
    """Start a sender thread now, whatever ``OUTBOX_SENDER_ENABLED`` says (tests, tools)."""
    return BackgroundSender(app, poll_seconds).start()


class _LazySender:
    """Starts the app's sender on the first request this process serves, once per process.

    Lazily, because the app is also built by ``flask`` CLI commands (which must not send mail behind the
    operator's back) and may be built before a fork (gunicorn ``--preload``): a thread does not survive a
    fork, so a new process id means a new thread.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.sender: BackgroundSender | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        sender = self.sender
        if sender is not None and sender.pid == os.getpid() and sender.is_alive():
            return
        with self._lock:
            sender = self.sender
            if sender is None or sender.pid != os.getpid() or not sender.is_alive():
                try:
                    self.sender = start_sender(self.app)
                except Exception:  # noqa: BLE001 - mail must never fail a request; the next one retries
                    log.exception("outbox sender could not be started")
                    return
                log.info("outbox sender started in process %s", os.getpid())

    def stop(self) -> None:
        if self.sender is not None:
            self.sender.stop()


def install_background_sender(app: Flask) -> None:
    """Unless ``OUTBOX_SENDER_ENABLED`` is off, start the sender thread with the first request served."""
    if not app.config.get("OUTBOX_SENDER_ENABLED"):
        return
    lazy = _LazySender(app)
    app.extensions[EXTENSION_KEY] = lazy
    app.before_request(lazy.ensure_started)


def stop_background_sender(app: Flask) -> None:
    lazy = app.extensions.get(EXTENSION_KEY)
    if lazy is not None:
        lazy.stop()


# --------------------------------------------------------------------------------------------- CLI


@click.command("send-emails")
@with_appcontext
@click.option("--once", is_flag=True, help="Deliver every message due now, print a summary and exit.")
@click.option("--poll", "poll_seconds", type=float, default=None,
              help="Seconds between passes in loop mode (default: OUTBOX_POLL_SECONDS).")
def send_emails(once: bool, poll_seconds: float | None) -> None:
    """Deliver the email outbox: once, or in a loop until SIGINT/SIGTERM."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    refusal = db.write_refusal(app)
    if refusal:  # sending marks messages sent: a write
        raise click.ClickException(refusal)
    if db.is_embedded(app) and app.config.get("LEDGER_DATA_DIR", ":memory:") == ":memory:":
        click.echo("warning: MONGO_URI is not set; this process has its own empty embedded database, "
                   "so only mail queued by this process can be sent", err=True)
    if once:
        report = drain(app)
        click.echo(report.summary())
        if report.transport_down:
            raise SystemExit(1)
        return
    sender = BackgroundSender(app, poll_seconds)

    def _stop(signum: int, frame: Any) -> None:
        click.echo(f"signal {signum}: finishing the message in hand, then stopping", err=True)
        sender._stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    click.echo(f"sending the outbox every {sender.poll_seconds:g}s; Ctrl-C to stop", err=True)
    sender.run()

