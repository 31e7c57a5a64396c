"""Delivering the notification outbox: claim, send, record; at least once, never twice at the same time.

The documents were inserted in the same transaction as the event they announce (:mod:`notifications`); this
module delivers them after commit, off the request path, from a daemon thread in the web process
(:class:`BackgroundSender`) or from ``flask --app wsgi send-emails`` in a process of its own. Any number of
senders may run against one database:

* **Claim.** One atomic ``find_one_and_update`` takes a message that is ``PENDING`` and due
  (``nextAttemptAt <= now``), or ``SENDING`` with an expired lease, and sets ``status=SENDING``,
  ``claimedUntil=now+lease`` and ``attempts+=1``. Two senders can never hold the same message.
* **Record.** The outcome is written with a filter on ``status=SENDING`` *and* the exact ``claimedUntil`` this
  sender set, which fences a sender whose lease expired: its late write matches nothing.
* **A message that crashes its sender.** A claim that takes over an expired lease counts it in
  ``leaseExpiries`` (the previous holder died or hung mid-delivery). After ``OUTBOX_MAX_LEASE_EXPIRIES`` of
  them the message is ``PARKED`` with the reason instead of being tried again, so it cannot take senders down
  for ever.
* **The SMTP server is down: pause the transport, charge no message.** When the server cannot be reached or
  refuses the session (see :class:`mailer.TransportUnavailable`), the message in hand goes back to
  ``PENDING`` with its attempt given back, the pass stops, and the transport as a whole is paused
  (:class:`TransportGate`: ``OUTBOX_TRANSPORT_BACKOFF_SECONDS`` doubling up to
  ``OUTBOX_TRANSPORT_BACKOFF_MAX_SECONDS``) before the next message is tried. An outage of any length
  therefore parks nothing; mail flows again within one pause of the server's return. A message whose own
  delivery dropped a fresh connection is also moved back in the queue (``interruptions``), so a message that
  breaks the server cannot hold up the others.
* **Retry.** A failure of the message itself (a 4xx for its recipient or its data) puts it back to
  ``PENDING`` with ``nextAttemptAt = now + min(OUTBOX_BACKOFF_MAX_SECONDS, OUTBOX_BACKOFF_SECONDS *
  2**(attempts-1))``, jittered down by up to half so messages that failed together do not retry together.
  After ``OUTBOX_MAX_ATTEMPTS`` attempts, or at once for a failure retrying cannot fix (no such user, an
  unusable address, a 5xx for the recipient or the data), it is ``PARKED`` with ``lastError``.
  ``flask --app wsgi outbox list-parked`` shows them, ``outbox requeue`` sends them again.

Delivery is at least once: a sender that dies after the SMTP server accepted a message but before recording
``SENT`` sends it again after the lease; the ``Message-ID`` is the same both times.

Every function that reads the time takes a ``clock`` (default :func:`ledger.models.utcnow`), so tests can run
hours of outage in a second.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import click
from bson import ObjectId
from bson.errors import InvalidId
from flask import Flask, current_app
from flask.cli import with_appcontext
from pymongo import ReturnDocument
from pymongo.database import Database

from ledger import db, mailer, metrics, progress
from ledger.models import utcnow

log = logging.getLogger(__name__)

PENDING = "PENDING"
SENDING = "SENDING"
PARKED = "PARKED"

BATCH_SIZE = 100
ERROR_PAUSE_MAX_SECONDS = 60.0
LAST_ERROR_MAX_LENGTH = 500

EXTENSION_KEY = "ledger.outbox_sender"
GATE_KEY = "ledger.mail_transport_gate"

Clock = Callable[[], datetime]


@dataclass
class DrainReport:
    """What one pass over the outbox did."""

    sent: int = 0
    logged: int = 0
    retried: int = 0
    parked: int = 0
    lost_leases: int = 0
    released: int = 0  # handed back without using an attempt: the SMTP server was unavailable
    transport_down: bool = False  # the SMTP server was unavailable, or still paused after it was
    paused_until: datetime | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.sent + self.logged + self.retried + self.parked + self.lost_leases + self.released

    def summary(self) -> str:
        text = (f"sent {self.sent}, logged {self.logged}, retried {self.retried}, parked {self.parked}, "
                f"lost leases {self.lost_leases}")
        if self.transport_down:
            until = f" until {self.paused_until:%Y-%m-%d %H:%M:%S} UTC" if self.paused_until else ""
            last = f": {self.errors[-1]}" if self.errors else ""
            text += f" (SMTP server unavailable{last}; sending paused{until}, no message charged an attempt)"
        return text


class TransportGate:
    """Whether the SMTP server may be tried now: after a transport failure it is left alone for a backoff.

    One per application (so per process): the background sender's passes and ``send-emails`` in that process
    share it. Each process probes on its own, at most once per pause, and the probe costs no message an attempt.
    """

    def __init__(self) -> None:
        self.failures = 0
        self.paused_until: datetime | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def is_paused(self, now: datetime) -> bool:
        with self._lock:
            return self.paused_until is not None and now < self.paused_until

    def failed(self, now: datetime, error: str, base: float, cap: float) -> datetime:
        with self._lock:
            self.failures += 1
            self.last_error = error
            self.paused_until = now + timedelta(seconds=backoff_seconds(self.failures, base, cap))
            return self.paused_until

    def succeeded(self) -> None:
        with self._lock:
            if self.failures:
                log.info("SMTP server available again after %d failed attempt(s) to reach it", self.failures)
            self.failures, self.paused_until, self.last_error = 0, None, None


def transport_gate(app: Flask) -> TransportGate:
    gate = app.extensions.get(GATE_KEY)
    if gate is None:
        gate = app.extensions.setdefault(GATE_KEY, TransportGate())
    return gate


# ----------------------------------------------------------------------------------- claim and record


def _settings(app: Flask) -> dict[str, float]:
    config = app.config
    return {
        "lease": float(config.get("OUTBOX_LEASE_SECONDS") or 120),
        "base": float(config.get("OUTBOX_BACKOFF_SECONDS") if config.get("OUTBOX_BACKOFF_SECONDS") is not None
                      else 30),
        "cap": float(config.get("OUTBOX_BACKOFF_MAX_SECONDS") or 3600),
        "max_attempts": int(config.get("OUTBOX_MAX_ATTEMPTS") or 8),
        "max_lease_expiries": int(config.get("OUTBOX_MAX_LEASE_EXPIRIES") or 3),
        "transport_base": float(config.get("OUTBOX_TRANSPORT_BACKOFF_SECONDS")
                                if config.get("OUTBOX_TRANSPORT_BACKOFF_SECONDS") is not None else 10),
        "transport_cap": float(config.get("OUTBOX_TRANSPORT_BACKOFF_MAX_SECONDS") or 300),
    }


def claim_next(database: Database, lease_seconds: float, due_by: datetime | None = None,
               now: datetime | None = None) -> dict[str, Any] | None:
    """Atomically take one message due by ``due_by`` (default: now), or one whose lease expired.

    ``None`` when there is nothing to do. Taking over an expired lease adds one to the message's
    ``leaseExpiries`` (its previous holder never recorded an outcome).
    """
    now = now or utcnow()
    lease_until = now + timedelta(milliseconds=round(lease_seconds * 1000))
    # Whole milliseconds, as BSON stores it: the value is the fence every later write of this claim matches.
    lease_until = lease_until.replace(microsecond=lease_until.microsecond // 1000 * 1000)
    before = database.notifications.find_one_and_update(
        {"$or": [
            {"status": PENDING, "nextAttemptAt": {"$lte": due_by or now}},
            {"status": SENDING, "claimedUntil": {"$lte": now}},
        ]},
        {"$set": {"status": SENDING, "claimedUntil": lease_until},
         "$inc": {"attempts": 1}},
        sort=[("nextAttemptAt", 1)],
        return_document=ReturnDocument.BEFORE,
    )
    if before is None:
        return None
    claimed = {**before, "status": SENDING, "claimedUntil": lease_until,
               "attempts": int(before.get("attempts") or 0) + 1}
    if before.get("status") == SENDING:
        claimed["leaseExpiries"] = int(before.get("leaseExpiries") or 0) + 1
        log.warning("outbox message %s (%s): its previous sender's lease expired without an outcome "
                    "(%d time(s)); the sender crashed or hung while delivering it", claimed["_id"],
                    claimed.get("kind"), claimed["leaseExpiries"])
        database.notifications.update_one(
            {"_id": claimed["_id"], "status": SENDING, "claimedUntil": lease_until},
            {"$inc": {"leaseExpiries": 1}})
    return claimed


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


def deliver(app: Flask, database: Database, claimed: dict[str, Any], transport: mailer.Transport,
            clock: Clock = utcnow) -> str:
    """Deliver one claimed message and record the outcome; return sent, logged, retried, parked or lost.

    Raises :class:`mailer.TransportUnavailable` after handing the message back (``released``) without using
    up its attempt.
    """
    settings = _settings(app)
    attempts = int(claimed.get("attempts") or 1)
    expiries = int(claimed.get("leaseExpiries") or 0)
    if expiries >= settings["max_lease_expiries"]:
        return _park(database, claimed, f"LeaseExpired: its sender's lease expired {expiries} time(s) before an "
                                        "outcome was recorded (the sender crashed or hung while delivering it)")
    try:
        email = mailer.render(app, database, claimed)
        status = transport.send(email)
    except mailer.PermanentFailure as exc:
        return _park(database, claimed, _error_text(exc))
    except mailer.TransportUnavailable as exc:
        _release(database, claimed, exc, settings, clock)
        raise  # the batch stops here and the transport pauses (see drain)
    except Exception as exc:  # noqa: BLE001 - any other failure of this message is worth another attempt
        log.warning("outbox message %s: delivery failed", claimed["_id"], exc_info=True)
        if attempts >= settings["max_attempts"]:
            return _park(database, claimed, _error_text(exc))
        delay = backoff_seconds(attempts, settings["base"], settings["cap"])
        recorded = _record(database, claimed, {
            "$set": {"status": PENDING, "nextAttemptAt": clock() + timedelta(seconds=delay),
                     "lastError": _error_text(exc)},
            "$unset": {"claimedUntil": ""},
        })
        return _counted("retried" if recorded else "lost")
    recorded = _record(database, claimed, {
        "$set": {"status": status, "sentAt": clock(), "to": email.to},
        "$unset": {"claimedUntil": "", "lastError": ""},
    })
    return _counted(("sent" if status == mailer.SENT else "logged") if recorded else "lost")


def _release(database: Database, claimed: dict[str, Any], exc: mailer.TransportUnavailable,
             settings: dict[str, float], clock: Clock) -> bool:
    """Hand a message back after a transport failure, giving back the attempt its claim counted.

    It keeps its place in the queue, unless a fresh connection died while it was being sent: then it waits
    its own backoff (counted in ``interruptions``), in case it is the message rather than the server.
    """
    update: dict[str, Any] = {
        "$set": {"status": PENDING, "lastError": _error_text(exc)},
        "$unset": {"claimedUntil": ""},
        "$inc": {"attempts": -1},
    }
    if exc.during_message:
        interruptions = int(claimed.get("interruptions") or 0) + 1
        delay = backoff_seconds(interruptions, settings["base"], settings["cap"])
        update["$set"]["nextAttemptAt"] = clock() + timedelta(seconds=delay)
        update["$inc"]["interruptions"] = 1
    recorded = _record(database, claimed, update)
    if recorded:
        metrics.NOTIFICATIONS.labels(result="released").inc()
    return recorded


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


def due_count(database: Database, due_by: datetime | None = None) -> int:
    """How many messages :func:`claim_next` could take now (for a progress bar; not a promise)."""
    now = utcnow()
    return database.notifications.count_documents({"$or": [
        {"status": PENDING, "nextAttemptAt": {"$lte": due_by or now}},
        {"status": SENDING, "claimedUntil": {"$lte": now}},
    ]})


def drain(app: Flask | None = None, *, limit: int | None = None,
          stop: threading.Event | None = None, clock: Clock = utcnow,
          on_message: Callable[[str], None] | None = None) -> DrainReport:
    """Deliver every message due now (at most ``limit``), in the caller's app context.

    Only messages due when the pass starts are taken, so a message that fails is tried at most once per pass
    (however short its backoff) and a drain always ends. It also ends early when the SMTP server is
    unavailable (which pauses the transport: later passes send nothing until the pause is over), or when
    ``stop`` is set. ``on_message`` is called with each message's outcome (``"sent"``, ``"logged"``,
    ``"retried"``, ``"parked"``, ``"lost"``, or ``"released"`` when the transport went down with it in hand),
    e.g. to advance a progress bar.
    """
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    database = db.get_db(app)
    settings = _settings(app)
    gate = transport_gate(app)
    report = DrainReport()
    pass_started = clock()
    if gate.is_paused(pass_started):
        report.transport_down = True
        report.paused_until = gate.paused_until
        if gate.last_error:
            report.errors.append(gate.last_error)
        return report
    with mailer.Transport(app) as transport:
        while (limit is None or report.processed < limit) and not (stop is not None and stop.is_set()):
            claimed = claim_next(database, settings["lease"], due_by=pass_started, now=clock())
            if claimed is None:
                break
            try:
                result = deliver(app, database, claimed, transport, clock)
            except mailer.TransportUnavailable as exc:
                report.released += 1
                report.transport_down = True
                report.errors.append(str(exc))
                report.paused_until = gate.failed(clock(), str(exc), settings["transport_base"],
                                                  settings["transport_cap"])
                log.log(logging.ERROR if exc.refused else logging.WARNING,
                        "SMTP server unavailable (%s): sending paused until %s UTC (failure %d in a row); "
                        "no message is charged an attempt%s", exc, f"{report.paused_until:%H:%M:%S}",
                        gate.failures, "; the server refused the session for good: check the MAIL_* settings"
                        if exc.refused else "")
                if on_message is not None:
                    on_message("released")
                break
            if result == "sent":
                gate.succeeded()
            if result == "lost":
                report.lost_leases += 1
            else:
                setattr(report, result, getattr(report, result) + 1)
            if on_message is not None:
                on_message(result)
    return report


# --------------------------------------------------------------------------------- background sender


class BackgroundSender:
    """A daemon thread that drains the outbox every ``OUTBOX_POLL_SECONDS``; never dies of an error.

    An unavailable SMTP server ends the pass and pauses the transport (:class:`TransportGate`; passes during
    the pause send nothing and touch no message); any other error, such as the database being away, is logged
    and waited out, the pause doubling with each consecutive failure up to a minute. :meth:`stop` lets the
    message in hand finish, then joins the thread.
    """

    def __init__(self, app: Flask, poll_seconds: float | None = None, clock: Clock = utcnow) -> None:
        self.app = app
        self.clock = clock
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
                    report = drain(self.app, limit=BATCH_SIZE, stop=self._stop, clock=self.clock)
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
        with progress.bar("messages", due_count(db.get_db(app)), unit="msg") as bar:
            report = drain(app, on_message=lambda _result: bar.update())
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


@click.group("outbox")
def outbox_cli() -> None:
    """Inspect the email outbox and send parked messages again."""


@outbox_cli.command("list-parked")
@with_appcontext
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Show at most this many (oldest first).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
def list_parked(limit: int, as_json: bool) -> None:
    """List the messages given up on (PARKED), with why."""
    _warn_if_embedded(current_app, "there is nothing here to list")
    database = db.get_db()
    documents = list(database.notifications.find({"status": PARKED}).sort("nextAttemptAt", 1).limit(limit + 1))
    for document in documents[:limit]:
        row = {
            "id": str(document["_id"]),
            "kind": document.get("kind"),
            "to": document.get("to") or f"user {document.get('userId')}",
            "createdAt": _iso(document.get("createdAt")),
            "attempts": int(document.get("attempts") or 0),
            "leaseExpiries": int(document.get("leaseExpiries") or 0),
            "lastError": _printable(document.get("lastError") or ""),
        }
        if as_json:
            click.echo(json.dumps(row, sort_keys=True))
        else:
            click.echo(f"{row['id']}  {row['kind']}  to {_printable(str(row['to']))}  created {row['createdAt']}  "
                       f"attempts {row['attempts']}  lease expiries {row['leaseExpiries']}\n"
                       f"    last error: {row['lastError'] or '-'}")
    if not as_json:
        more = " (more not shown: raise --limit)" if len(documents) > limit else ""
        click.echo(f"{min(len(documents), limit)} parked message(s){more}", err=True)


@outbox_cli.command("requeue")
@with_appcontext
@click.argument("message_ids", nargs=-1)
@click.option("--all", "requeue_all", is_flag=True, help="Re-queue every parked message.")
def requeue(message_ids: tuple[str, ...], requeue_all: bool) -> None:
    """Send parked messages again: MESSAGE_IDS (from list-parked) or --all.

    Each goes back to PENDING, due now, with its attempts and lease expiries reset; its last error is kept
    until it is sent. Only PARKED messages are touched; exit 1 if a given id is not a parked message.
    """
    if bool(message_ids) == requeue_all:
        raise click.UsageError("give the ids of parked messages, or --all (not both)")
    refusal = db.write_refusal(current_app)
    if refusal:  # re-queueing changes messages: a write
        raise click.ClickException(refusal)
    _warn_if_embedded(current_app, "there is nothing here to re-queue")
    query: dict[str, Any] = {"status": PARKED}
    database = db.get_db()
    refused: list[str] = []
    if message_ids:
        try:
            wanted = list(dict.fromkeys(ObjectId(value) for value in message_ids))
        except (InvalidId, TypeError) as exc:
            raise click.BadParameter(f"not a message id: {exc}", param_hint="MESSAGE_IDS") from exc
        statuses = {d["_id"]: d.get("status")
                    for d in database.notifications.find({"_id": {"$in": wanted}}, {"status": 1})}
        refused = [f"{message_id}: " + (f"not parked (status {statuses[message_id]})" if message_id in statuses
                                        else "no such message")
                   for message_id in wanted if statuses.get(message_id) != PARKED]
        query["_id"] = {"$in": wanted}
    now = utcnow()
    result = database.notifications.update_many(query, {
        "$set": {"status": PENDING, "attempts": 0, "nextAttemptAt": now, "requeuedAt": now},
        "$unset": {"leaseExpiries": "", "interruptions": "", "claimedUntil": ""},
    })
    click.echo(f"re-queued {result.modified_count} message(s)")
    for line in refused:
        click.echo(line, err=True)
    if refused:
        raise SystemExit(1)


def _warn_if_embedded(app: Flask, consequence: str) -> None:
    if db.is_embedded(app) and app.config.get("LEDGER_DATA_DIR", ":memory:") == ":memory:":
        click.echo(f"warning: MONGO_URI is not set; this process has its own empty embedded database, so "
                   f"{consequence}", err=True)


def _iso(value: Any) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(value, datetime) else str(value or "-")


def _printable(text: str) -> str:
    """Text safe for a terminal: control and format characters (escape sequences) shown as code points."""
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)[:LAST_ERROR_MAX_LENGTH]
