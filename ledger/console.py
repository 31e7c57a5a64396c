"""The ``ledger`` console command (``scripts/ledger`` runs it from the project's .venv).

It is the app's own Flask CLI under a shorter name: every command registered on ``app.cli`` (by
:func:`ledger.cli.init_app` and anything else that adds one) appears here by itself, with the same options
and ``--help``, so ``ledger verify`` and ``flask --app wsgi verify`` are one command. The app is built with
:func:`ledger.create_app` from the same environment the server reads (``APP_ENV``, ``MONGO_URI``,
``JWT_SECRET``, ...). A configuration error is one paragraph on stderr and exit status 78, before anything
touches the database.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click
from flask import Flask
from flask.cli import FlaskGroup, routes_command, shell_command

# config.py sits at the project root beside the package, outside it (the Docker image puts it on PYTHONPATH).
# A console script does not have the current directory on sys.path, so find it from the package's location.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _project_on_path() -> None:
    if (PROJECT_ROOT / "config.py").is_file() and str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))


def load_app() -> Flask:
    """Build the app as ``wsgi.py`` does; a configuration error ends the process with one clear paragraph."""
    _project_on_path()
    from config import ConfigurationError, exit_with
    from ledger import create_app

    try:
        return create_app()
    except ConfigurationError as error:
        exit_with(error)


class LedgerGroup(FlaskGroup):
    """A FlaskGroup that always loads this project's app (no ``--app``, ``--debug`` or ``.env`` handling)."""

    def __init__(self, create_app: Callable[[], Flask] | None = None) -> None:
        super().__init__(
            name="ledger",
            help="Operator commands of the Banking Ledger. They read the same environment as the server "
                 "(APP_ENV, MONGO_URI, JWT_SECRET, SYSTEM_USER_*, MAIL_*); `flask --app wsgi COMMAND` runs the "
                 "same commands. `ledger COMMAND --help` describes one.",
            create_app=create_app or load_app,
            add_default_commands=False,
            add_version_option=False,
            load_dotenv=False,
            set_debug_flag=False,
            no_args_is_help=True,
        )
        self.params = [param for param in self.params if param.name not in {"app", "debug", "env_file"}]
        click.version_option(package_name="banking-ledger", prog_name="ledger")(self)
        self.add_command(routes_command)
        self.add_command(shell_command)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except BaseException:
            # `ledger --help` ends here, after listing the commands pushed an app context onto ctx: close ctx
            # so that context does not outlive the command (it matters when the group runs in-process).
            ctx.close()
            raise


cli = LedgerGroup()


def main() -> None:
    """The ``ledger`` console script (setup.cfg ``[options.entry_points]``)."""
    cli.main(prog_name="ledger")
