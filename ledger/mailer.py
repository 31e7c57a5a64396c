"""Email delivery: turn an outbox document into a message and hand it to SMTP (flask-mail) or to the log.

This module knows how to *say* something; :mod:`ledger.services.outbox` decides *when*, claims each message
and records the outcome. Nothing here runs on the request path.

* Rendering: every kind has a text and an HTML template under ``templates/email/``. The HTML ones are
  autoescaped, so a name such as ``<b>Eve</b>`` shows as text.
* Headers: the recipient's name and address come from the database, which may hold data written before
  today's validation (the Node service's users). Both are cleaned here again: every control, format and
  line-separator character is removed from the name, and the address must pass the registration rule, so a
  CR/LF can never start a new header; in the ``To`` header the name also loses the characters that could
  turn it into extra addresses (``:``, ``;``, ``@``, ``<``...), while the bodies show it in full (escaped in
  HTML). An unusable address is a :class:`PermanentFailure` (parked, not retried).
* Transport: with ``MAIL_SERVER`` set, flask-mail's connection is used with a socket timeout (flask-mail has
  none, and a silent SMTP server must not hold the sender forever) and a certificate-verifying TLS context.
  One connection is reused for a batch and dropped after any error. With the log backend (``MAIL_BACKEND=log``,
  or no ``MAIL_SERVER`` outside production) the message is *not* sent: one log line names its subject,
  ``Message-ID`` and recipient count (never the body or the address), and the outbox records it as ``LOGGED``.
* Failures are sorted by whose fault they are. :class:`TransportUnavailable`: the server cannot be reached or
  refuses the session (connection refused or reset, timeout, a 4xx/5xx greeting, HELO/EHLO/STARTTLS/AUTH
  refused, ``MAIL FROM`` refused, 421 "closing channel", a dropped connection); every message would fail the
  same way, so the outbox pauses the whole transport and charges no message. :class:`PermanentFailure`: this
  message cannot be delivered (5xx for its recipient or its data, an unusable address); it is parked. Any other
  exception (a 4xx for this recipient or this message's data) is a temporary failure of this message.
* The ``Message-ID`` is derived from the outbox document, so a redelivery (at-least-once) carries the same id
  and mail clients can fold a rare duplicate.
"""

from __future__ import annotations

import functools
import logging
import smtplib
import ssl
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from types import TracebackType
from typing import Any

from flask import Flask, render_template
from flask_mail import BadHeaderError, Connection, Mail, Message

from ledger import validation
from ledger.errors import ValidationFailed
from ledger.services.notifications import (
    CREDIT_NOTICE,
    FUNDING_CREDIT_NOTICE,
    REVERSAL_NOTICE,
    TRANSFER_RECEIPT,
    WELCOME,
)

log = logging.getLogger(__name__)

mail = Mail()

SENT = "SENT"
LOGGED = "LOGGED"

PRODUCT_NAME = "Banking Ledger"
NAME_MAX_LENGTH = 200
_STRIPPED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
# RFC 5322 specials that would end a display name and start an address or a group ("Eve: a@b.c;") when a
# name is written unquoted, which flask-mail's header encoding can do. Dots stay: "J. Smith" is common.
_ADDRESS_SPECIALS = str.maketrans("", "", '()<>[]:;@\\,"')

SUBJECTS = {
    WELCOME: "Welcome to Banking Ledger",
    TRANSFER_RECEIPT: "Transfer receipt: {amount} sent",
    CREDIT_NOTICE: "Credit notice: {amount} received",
    FUNDING_CREDIT_NOTICE: "Credit notice: initial funds of {amount} received",
    REVERSAL_NOTICE: "Reversal notice: a transaction of {amount} was reversed",
}


class PermanentFailure(Exception):
    """Retrying cannot help: the recipient is gone, the address is unusable, or the server refused it (5xx)."""


class TransportUnavailable(Exception):
    """The SMTP server could not be reached or refused the session: every message would fail the same way.

    ``during_message`` is true when a fresh connection was lost while this particular message was being sent:
    most likely the server going away, but possibly the message itself, so the outbox moves that message back
    in the queue (without charging it an attempt) so that it cannot block the others.

    ``refused`` is true when the server answered with a permanent (5xx) refusal of the session, such as bad
    credentials: nothing will change until someone fixes the settings, so it is logged as an error.
    """

    def __init__(self, message: str, *, during_message: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.during_message = during_message
        self.refused = refused


@dataclass(frozen=True)
class Email:
    """A rendered message, ready for a transport."""

    to: str
    name: str
    subject: str
    text: str
    html: str
    message_id: str


LOG_BACKEND = "log"
SMTP_BACKEND = "smtp"


def backend(config: Any) -> str:
    """``log`` when ``MAIL_BACKEND=log`` or no ``MAIL_SERVER`` is configured, else ``smtp``."""
    if (config.get("MAIL_BACKEND") or "").strip().lower() == LOG_BACKEND or not config.get("MAIL_SERVER"):
        return LOG_BACKEND
    return SMTP_BACKEND


def init_app(app: Flask) -> None:
    mail.init_app(app)
    announce_backend(app)


def announce_backend(app: Flask) -> None:
    """Say at start-up where mail goes: a production process that does not send mail must say so loudly."""
    config = app.config
    if backend(config) == SMTP_BACKEND:
        security = "implicit TLS" if config.get("MAIL_USE_SSL") else "STARTTLS" if config.get("MAIL_USE_TLS") \
            else "no TLS"
        login = "with login" if config.get("MAIL_USERNAME") and config.get("MAIL_PASSWORD") else "without login"
        log.info("mail: SMTP via %s:%s (%s, %s)", config.get("MAIL_SERVER"), config.get("MAIL_PORT"), security,
                 login)
        return
    explicit = (config.get("MAIL_BACKEND") or "").strip().lower() == LOG_BACKEND
    reason = "MAIL_BACKEND=log" if explicit else "MAIL_SERVER is not set"
    if explicit and config.get("MAIL_SERVER"):
        reason += f" (MAIL_SERVER={config.get('MAIL_SERVER')} is ignored)"
    level = logging.WARNING if config.get("ENV_NAME") == "production" else logging.INFO
    log.log(level, "mail is OFF (%s): emails are not sent; each is logged by subject and Message-ID only and "
            "marked LOGGED", reason)


def start_background_sender(app: Flask) -> None:
    """Arrange for the outbox sender thread to start in the process that serves requests (see outbox)."""
    from ledger.services import outbox

    outbox.install_background_sender(app)


# ------------------------------------------------------------------------------------------ cleaning


def clean_name(value: Any) -> str:
    """A display name safe for a header: no control/format/separator characters, whitespace collapsed."""
    if not isinstance(value, str):
        return ""
    kept = "".join(" " if ch.isspace() or unicodedata.category(ch) in _STRIPPED_CATEGORIES else ch for ch in value)
    return " ".join(kept.split())[:NAME_MAX_LENGTH]


def display_name(name: str) -> str:
    """A cleaned name made safe for the ``To`` header's phrase: address specials removed."""
    return " ".join(clean_name(name).translate(_ADDRESS_SPECIALS).split())


def clean_address(value: Any) -> str:
    """The address if it passes the registration rule (which excludes CR, LF and spaces), else permanent failure."""
    try:
        return validation.email(value)
    except ValidationFailed as exc:
        raise PermanentFailure("invalid recipient address") from exc


# ----------------------------------------------------------------------------------------- rendering


def render(app: Flask, database: Any, notification: dict[str, Any]) -> Email:
    """Resolve the recipient and render the subject and both bodies (inside an app context)."""
    kind = notification.get("kind")
    if kind not in SUBJECTS:
        raise PermanentFailure(f"unknown notification kind {kind!r}")
    address, name = _recipient(database, notification)
    context = dict(notification.get("context") or {})
    template_context = {
        **context,
        "name": name or "customer",
        "product": PRODUCT_NAME,
        "at_utc": _human_utc(context.get("at")),
        "from_name": clean_name(context.get("fromName")),
    }
    subject = clean_name(SUBJECTS[kind].format(amount=context.get("amount", "")))
    text = render_template(f"email/{kind}.txt", **template_context)
    html = render_template(f"email/{kind}.html", **template_context)
    return Email(to=address, name=name, subject=subject, text=text, html=html,
                 message_id=_message_id(app, notification))


def _recipient(database: Any, notification: dict[str, Any]) -> tuple[str, str]:
    address, name = notification.get("to"), notification.get("recipientName")
    if not address or not name:
        user = database.users.find_one({"_id": notification.get("userId")}, {"email": 1, "name": 1})
        if user is None:
            raise PermanentFailure("the recipient user no longer exists")
        address = address or user.get("email")
        name = name or user.get("name")
    return clean_address(address), clean_name(name)


def _human_utc(value: Any) -> str:
    """``2026-03-01T10:00:00.000Z`` -> ``2026-03-01 10:00:00 UTC`` (unparseable input is shown as it is)."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _message_id(app: Flask, notification: dict[str, Any]) -> str:
    domain = parseaddr(app.config.get("MAIL_DEFAULT_SENDER") or "")[1].rpartition("@")[2] or "ledger.local"
    return f"<{notification['_id']}.{notification.get('kind')}@{domain}>"


# ----------------------------------------------------------------------------------------- transport


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One certificate-verifying context per process (loading the trust store costs ~0.1 s per connection)."""
    return ssl.create_default_context()


class _TimedConnection(Connection):
    """flask-mail's connection, opened with a timeout and a verifying TLS context."""

    def __init__(self, state: Any, timeout: float) -> None:
        super().__init__(state)
        self.timeout = timeout

    def configure_host(self) -> smtplib.SMTP:
        state = self.mail
        host: smtplib.SMTP
        if state.use_ssl:
            host = smtplib.SMTP_SSL(state.server, state.port, timeout=self.timeout, context=_tls_context())
        else:
            host = smtplib.SMTP(state.server, state.port, timeout=self.timeout)
        try:
            host.ehlo_or_helo_if_needed()  # here, so a refused HELO is a connection failure
            if state.use_tls:
                host.starttls(context=_tls_context())
            if state.username and state.password:
                host.login(state.username, state.password)
        except BaseException:
            host.close()
            raise
        return host


class Transport:
    """Delivers rendered emails for one batch: SMTP, or the log backend (see :func:`backend`).

    Use as a context manager; the SMTP connection is opened on the first message and closed at the end (a
    reused connection that turns out to be closed is reopened once). :meth:`send` returns ``SENT`` or
    ``LOGGED``, or raises :class:`PermanentFailure`, :class:`TransportUnavailable` or another exception (a
    temporary failure of this message, worth a retry).
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.backend = backend(app.config)
        self.server = app.config.get("MAIL_SERVER")
        self.timeout = float(app.config.get("MAIL_TIMEOUT_SECONDS") or 10)
        self._connection: _TimedConnection | None = None
        self._sent_on_connection = 0

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def send(self, email: Email) -> str:
        if self.backend == LOG_BACKEND:
            # Never the body, the name or the address: logs travel further than mailboxes.
            log.info("email not sent (mail backend: log): message_id=%s subject=%r recipients=1",
                     email.message_id, email.subject)
            return LOGGED
        message = Message(subject=email.subject, recipients=[(display_name(email.name), email.to)], body=email.text,
                          html=email.html, sender=self.app.config.get("MAIL_DEFAULT_SENDER"))
        message.msgId = email.message_id
        while True:
            reused = self._connection is not None and self._sent_on_connection > 0
            connection = self._connect()
            try:
                connection.send(message)
            except Exception as exc:
                self.close()
                if not _dropped(exc):
                    classified = self._classified(exc)
                    if classified is exc:
                        raise
                    raise classified from exc
                if reused:
                    continue  # an idle connection the server had closed: once more on a fresh one
                raise TransportUnavailable(f"SMTP connection lost: {type(exc).__name__}: {exc}",
                                           during_message=True) from exc
            self._sent_on_connection += 1
            return SENT

    def _classified(self, exc: Exception) -> Exception:
        """The exception :meth:`send` raises for a failure other than a dropped connection."""
        if isinstance(exc, BadHeaderError):
            return PermanentFailure("a header contained a line break")
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _ in exc.recipients.values()]
            if 421 in codes:
                return TransportUnavailable(f"SMTP server closing the session: {_smtp_reply(exc.recipients)}")
            if codes and all(code >= 500 for code in codes):
                return PermanentFailure(f"recipient refused: {_smtp_reply(exc.recipients)}")
            return exc
        if isinstance(exc, smtplib.SMTPSenderRefused):  # MAIL FROM: our sender, the same for every message
            return TransportUnavailable(f"SMTP server refused the sender: {exc.smtp_code} {_text(exc.smtp_error)}",
                                        refused=_permanent(exc))
        if isinstance(exc, smtplib.SMTPHeloError):
            return TransportUnavailable(f"SMTP server refused HELO: {exc.smtp_code} {_text(exc.smtp_error)}")
        if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code == 421:
            return TransportUnavailable(f"SMTP server closing the session: 421 {_text(exc.smtp_error)}")
        if isinstance(exc, smtplib.SMTPDataError) and exc.smtp_code >= 500:
            return PermanentFailure(f"message refused: {exc.smtp_code} {_text(exc.smtp_error)}")
        return exc

    def _connect(self) -> _TimedConnection:
        if self._connection is None:
            connection = _TimedConnection(self.app.extensions["mail"], self.timeout)
            try:
                connection.host = connection.configure_host()
            except (OSError, smtplib.SMTPException) as exc:
                raise TransportUnavailable(
                    f"SMTP server {self.server}:{self.app.config.get('MAIL_PORT')} unavailable: "
                    f"{type(exc).__name__}: {_text(exc)}"[:400],
                    refused=_permanent(exc),
                ) from exc
            self._connection = connection
            self._sent_on_connection = 0
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None or connection.host is None:
            return
        try:
            connection.host.quit()
        except (OSError, smtplib.SMTPException):
            connection.host.close()


def _permanent(exc: BaseException) -> bool:
    """A 5xx reply (bad credentials, sender not allowed, no service): the settings need fixing."""
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500


def _dropped(exc: BaseException) -> bool:
    """The connection is gone (reset, timed out, closed by the server), as opposed to an SMTP reply."""
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)  # SMTPException is an OSError


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _smtp_reply(recipients: dict[str, tuple[int, Any]]) -> str:
    return "; ".join(f"{code} {_text(reply)}" for code, reply in recipients.values())
