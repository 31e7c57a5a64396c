"""Flask CLI commands: ``flask --app wsgi <command>``."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import with_appcontext

from ledger import validation
from ledger.errors import ValidationFailed
from ledger.services.outbox import send_emails


def init_app(app: Flask) -> None:
    app.cli.add_command(create_system_user)
    app.cli.add_command(verify_ledger)
    app.cli.add_command(send_emails)
    from ledger.migrate import migrate_node_db

    app.cli.add_command(migrate_node_db)


@click.command("create-system-user")
@with_appcontext
@click.option("--email", envvar="SYSTEM_USER_EMAIL", required=True, help="Defaults to SYSTEM_USER_EMAIL.")
@click.option("--name", envvar="SYSTEM_USER_NAME", required=True, help="Defaults to SYSTEM_USER_NAME.")
@click.option("--password", envvar="SYSTEM_USER_PASSWORD", required=True, prompt=True, hide_input=True,
              confirmation_prompt=True, help="Defaults to SYSTEM_USER_PASSWORD; prompted when absent.")
@click.option("--currency", default="INR", show_default=True, help="Currency of the first system account.")
def create_system_user(email: str, name: str, password: str, currency: str) -> None:
    """Create the system user and its system account (idempotent)."""
    from ledger import db
    from ledger.services.system import SystemUserConflict, ensure_system_user

    refusal = db.write_refusal()
    if refusal:
        raise click.ClickException(refusal)
    try:
        user, created = ensure_system_user(validation.email(email), validation.password(password),
                                           validation.name(name), validation.currency(currency))
    except ValidationFailed as exc:
        raise click.ClickException(exc.message) from exc
    except SystemUserConflict as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"system user {user['email']} ({user['_id']}) {'created' if created else 'already exists'}")


@click.command("verify-ledger")
@with_appcontext
def verify_ledger() -> None:
    """Recompute every balance from the ledger entries; exit 1 on any mismatch."""
    from ledger.services.audit import verify

    report = verify()
    for problem in report.problems:
        click.echo(f"MISMATCH {problem}")
    sums = ", ".join(f"{currency} {total}" for currency, total in sorted(report.balance_by_currency.items()))
    click.echo(f"accounts checked: {report.accounts}, entries: {report.entries}, "
               f"sum of balances per currency (minor units): {sums or 'none'}")
    if report.problems:
        raise SystemExit(1)
    click.echo("ledger OK")
