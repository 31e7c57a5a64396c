"""The WSGI entry point: ``gunicorn wsgi:app`` or ``flask --app wsgi <command>``."""

from ledger import create_app

app = create_app()
