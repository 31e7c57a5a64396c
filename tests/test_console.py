"""The ``ledger`` console command: every command of the app's Flask CLI, ``--help`` on each, old names kept,
progress bars only on a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from flask import Flask

from ledger import console, progress
from tests.conftest import Api, make_app

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LEDGER = BIN / "ledger"
# Variables of the runner's environment that must not reach a command under test.
_NOT_INHERITED = {"MONGO_URI", "MONGO_DB_NAME", "APP_ENV", "NODE_ENV", "LEDGER_TEST_MONGO_URI", "MAIL_SERVER",
                  "JWT_SECRET", "SYSTEM_USER_EMAIL", "SYSTEM_USER_PASSWORD", "SYSTEM_USER_NAME", "LEDGER_PROGRESS",
                  "FLASK_APP"}


def clean_environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    env.update({"OUTBOX_SENDER_ENABLED": "false", "BCRYPT_ROUNDS": "4", **extra})
    return env


def all_commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under ``group``, subgroups walked, hidden aliases included."""
    paths = []
    for name in sorted(group.commands):
        command = group.commands[name]
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths.extend(all_commands(command, ctx, (*prefix, name)))
    return paths


@pytest.fixture
def ledger_app() -> Flask:
    """The app the ``ledger`` group loads in these tests, with one command registered only here."""
    application = make_app()

    @application.cli.command("probe-only-here")
    @click.option("--times", type=int, default=1, help="How many times to say it.")
    def probe(times: int) -> None:
        """A command the ledger group cannot know by name."""
        click.echo("probe " * times)

    return application


@pytest.fixture
def ledger(ledger_app: Flask):
    group = console.LedgerGroup(create_app=lambda: ledger_app)
    runner = CliRunner()
    return lambda *args, **kwargs: runner.invoke(group, list(args), prog_name="ledger", **kwargs)


# ------------------------------------------------------------------------------------------ commands


def test_every_command_of_the_apps_cli_is_a_ledger_command_with_its_help(ledger, ledger_app):
    listing = ledger("--help")
    assert listing.exit_code == 0, listing.output
    visible = {name for name, command in ledger_app.cli.commands.items() if not command.hidden}
    assert {"create-system-user", "verify", "migrate-node-db", "send-emails", "probe-only-here"} <= visible
    listed = {line.split()[0] for line in listing.output.split("Commands:")[1].splitlines() if line.strip()}
    plugins = {entry.name for entry in entry_points(group="flask.commands")}  # e.g. flask-limiter's `limiter`
    assert listed == visible | plugins | {"routes", "shell"}

    with ledger_app.app_context():
        paths = all_commands(ledger_app.cli, click.Context(ledger_app.cli))
    assert ("verify-ledger",) in paths
    assert len(paths) >= 6
    for path in paths:
        result = ledger(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert f"Usage: ledger {' '.join(path)}" in result.output, result.output


def test_a_command_registered_on_the_app_runs_through_ledger_with_its_options(ledger):
    result = ledger("probe-only-here", "--times", "3")
    assert (result.exit_code, result.output.split()) == (0, ["probe"] * 3)
    assert ledger("no-such-command").exit_code == 2


@pytest.mark.parametrize("name", ["verify", "verify-ledger"])
def test_verify_answers_under_its_new_and_its_old_name(ledger, name):
    result = ledger(name)
    assert result.exit_code == 0, result.output
    assert "ledger OK" in result.output


def test_the_old_name_is_hidden_from_the_list_but_still_documented(ledger):
    listing = ledger("--help").output
    assert "verify-ledger" not in listing.split("Commands:")[1]
    assert "Old name: verify-ledger" in " ".join(ledger("verify", "--help").output.split())


def test_ledger_without_a_command_shows_the_commands(ledger):
    result = ledger()
    assert "Commands:" in result.output
    assert "verify" in result.output


def test_the_version_is_the_installed_projects(ledger):
    from importlib.metadata import version

    result = ledger("--version")
    assert (result.exit_code, result.output.strip()) == (0, f"ledger, version {version('banking-ledger')}")


# ------------------------------------------------------------------------ as installed (subprocesses)


def test_the_installed_ledger_command_works_from_any_directory_and_so_does_flask(tmp_path):
    assert LEDGER.exists(), f"{LEDGER} is missing: the project is not installed with its console script"
    env = clean_environment()
    for command, cwd in (([str(LEDGER), "verify"], tmp_path), ([str(LEDGER), "verify-ledger"], tmp_path),
                         ([str(BIN / "flask"), "--app", "wsgi", "verify-ledger"], REPO_ROOT),
                         ([str(BIN / "flask"), "--app", "wsgi", "verify"], REPO_ROOT)):
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "ledger OK" in done.stdout, (command, done.stdout)
        assert "\r" not in done.stderr  # not a terminal: no bars
        assert "%|" not in done.stderr


@pytest.mark.parametrize("columns", [100, 0])  # 0: a terminal that reports no width (the bars take 80)
def test_on_a_terminal_the_installed_command_draws_its_bars(tmp_path, columns):
    """A real pseudo-terminal on stderr: the bars appear there (stdout, a pipe, keeps only the result)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        done = subprocess.run([str(LEDGER), "verify"], cwd=tmp_path, env=clean_environment(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=follower, timeout=60, check=False)
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal has no writer any more
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert done.returncode == 0, drawn
    assert b"ledger OK" in done.stdout
    text = drawn.decode(errors="replace")
    assert "ledger entries" in text, text
    assert "accounts" in text, text
    assert "ledger entries" not in done.stdout.decode()


# ---------------------------------------------------------------------------------------- progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return True


@pytest.mark.parametrize(("setting", "stream", "expected"), [
    ("", FakeTerminal(), True), ("", io.StringIO(), False), ("0", FakeTerminal(), False),
    ("off", FakeTerminal(), False), ("1", io.StringIO(), True), ("yes", io.StringIO(), True),
    ("", object(), False),
])
def test_bars_are_drawn_on_a_terminal_unless_told_otherwise(monkeypatch, setting, stream, expected):
    monkeypatch.setenv("LEDGER_PROGRESS", setting)
    assert progress.enabled(stream) is expected


def test_a_closed_stream_gets_no_bar(monkeypatch):
    monkeypatch.delenv("LEDGER_PROGRESS", raising=False)
    stream = FakeTerminal()
    stream.close()
    assert progress.enabled(stream) is False


@pytest.mark.parametrize("total", [0, 1, 7, 250])
def test_a_bar_counts_to_its_total_and_reach_never_goes_back(monkeypatch, total):
    monkeypatch.delenv("LEDGER_PROGRESS", raising=False)
    screen = FakeTerminal()
    with progress.bar("things", total, unit="thing", stream=screen) as bar:
        for done in range(1, total + 1):
            bar.reach(done)
            bar.reach(done - 1)  # a late, smaller count is ignored
    assert bar.done == total
    drawn = screen.getvalue()
    assert drawn.startswith("\rthings: ")
    if total:  # a bar; with nothing to do, a counter
        assert "things: 100%|" in drawn
        assert f"{total}/{total}" in drawn


def test_a_bar_off_the_terminal_writes_nothing_and_still_counts(monkeypatch):
    monkeypatch.delenv("LEDGER_PROGRESS", raising=False)
    log = io.StringIO()
    with progress.bar("things", 5, stream=log) as bar:
        bar.update(2)
        bar.update(3)
    assert (bar.done, bar.drawn, log.getvalue()) == (5, False, "")


def _seed_traffic(api: Api, users: int) -> None:
    for _ in range(users):
        _, token = api.user()
        api.funded_account(token, 10)


def test_verify_draws_one_bar_per_collection_when_bars_are_on(app, api, runner, monkeypatch):
    _seed_traffic(api, 3)  # 3 funded accounts + the system account, 6 entries
    monkeypatch.setenv("LEDGER_PROGRESS", "1")
    result = runner.invoke(args=["verify"])
    assert result.exit_code == 0, result.output
    assert re.search(r"ledger entries: 100%\|█+\| 6/6 ", result.stderr), result.stderr
    assert re.search(r"accounts: 100%\|█+\| 4/4 ", result.stderr), result.stderr
    assert result.stdout.splitlines()[-1] == "ledger OK"
    assert "%|" not in result.stdout

    monkeypatch.setenv("LEDGER_PROGRESS", "0")
    quiet = runner.invoke(args=["verify"])
    assert quiet.exit_code == 0
    assert quiet.stderr == ""


def test_draining_the_outbox_once_draws_a_bar_of_the_messages_due(app, api, runner, monkeypatch):
    _seed_traffic(api, 3)  # a welcome email and a credit notice each
    monkeypatch.setenv("LEDGER_PROGRESS", "1")
    result = runner.invoke(args=["send-emails", "--once"])
    assert result.exit_code == 0, result.output
    assert re.search(r"messages: 100%\|█+\| 6/6 ", result.stderr), result.stderr
    assert "logged 6" in result.stdout
