"""Email delivery from the notification outbox (flask-mail)."""

from __future__ import annotations

from flask import Flask
from flask_mail import Mail

mail = Mail()


def init_app(app: Flask) -> None:
    mail.init_app(app)


def start_background_sender(app: Flask) -> None:
    """Start the in-process outbox sender (filled in by the notifications work)."""
    return None
