"""Flask CLI commands: ``ledger <command>`` (:mod:`ledger.console`), or ``flask --app wsgi <command>``.

Every command registered on ``app.cli`` here appears in both. A renamed command keeps its old name as a
hidden alias (:func:`alias`), so scripts written against the old name keep working.
"""

from __future__ import annotations

import copy

import click
from flask import Flask
from flask.cli import with_appcontext

from ledger import progress, validation
from ledger.errors import ValidationFailed
from ledger.services.outbox import outbox_cli, send_emails


def init_app(app: Flask) -> None:
    app.cli.add_command(create_system_user)
    app.cli.add_command(verify_ledger)
    app.cli.add_command(backfill_ledger_chain)
    app.cli.add_command(alias(verify_ledger, "verify-ledger"))
    app.cli.add_command(send_emails)
    app.cli.add_command(outbox_cli)
    from ledger.migrate import migrate_node_db

    app.cli.add_command(migrate_node_db)


def alias(command: click.Command, name: str) -> click.Command:
    """``command`` under another name (an old one), hidden from the list of commands."""
    aliased = copy.copy(command)
    aliased.name = name
    aliased.hidden = True
    return aliased


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


@click.command("verify")
@with_appcontext
@click.option("--quiet", is_flag=True, help="No progress bars on stderr.")
def verify_ledger(quiet: bool) -> None:
    """Prove the ledger: hash chains, sequences, running balances, stored balances, transactions, per-currency
    sums, held amounts. Prints every problem found (PROBLEM <check>: account <id> seq <n>: what differs); exit 1
    if any. (Old name: verify-ledger.)"""
    from ledger import db
    from ledger.services.audit import verify

    bars: dict[str, progress.Bar] = {}
    if not quiet and progress.enabled():  # totals from the collections' metadata: an estimate is enough
        database = db.get_db()
        for phase, label, collection, unit in (("entries", "ledger entries", "ledgers", "entry"),
                                               ("accounts", "accounts", "accounts", "account"),
                                               ("transactions", "transactions", "transactions", "transaction")):
            bars[phase] = progress.Bar(label, total=database[collection].estimated_document_count(), unit=unit)
    try:
        report = verify(keep=0, on_problem=lambda problem: click.echo(f"PROBLEM {problem}"),
                        on_progress=(lambda phase, count: bars[phase].reach(count)) if bars else None)
    finally:
        for bar in bars.values():
            bar.close()
    sums = ", ".join(f"{currency} {total}" for currency, total in sorted(report.balance_by_currency.items()))
    click.echo(f"accounts checked: {report.accounts}, entries: {report.entries}, transactions: "
               f"{report.transactions}, sum of balances per currency (minor units): {sums or 'none'}")
    if report.problem_count:
        click.echo(f"ledger NOT OK: {report.problem_count} problem(s)")
        raise SystemExit(1)
    click.echo("ledger OK")


@click.command("backfill-ledger-chain")
@with_appcontext
@click.option("--dry-run", is_flag=True, help="Count what would be hashed; write nothing.")
def backfill_ledger_chain(dry_run: bool) -> None:
    """Give entries written before the hash chain existed their prevHash/hash (idempotent, resumable)."""
    from ledger import db
    from ledger.services.backfill import accounts_to_chain, backfill

    pending = accounts_to_chain(db.get_db())
    with progress.bar("accounts", total=len(pending), unit="account") as bar:
        report = backfill(dry_run=dry_run, echo=click.echo, on_account=lambda _account: bar.update())
    if not report.ok:
        raise SystemExit(1)
