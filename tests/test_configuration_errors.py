"""A configuration error is one clear paragraph on stderr and exit status 78, before anything binds a port:
``scripts/serve``, gunicorn with this project's gunicorn.conf.py, ``ledger ...`` and ``flask --app wsgi ...``.

Every entry point runs as a real subprocess, as an operator would start it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import config
from tests.gunicorn_process import free_loopback_port

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VENV = Path(sys.prefix)
_NOT_INHERITED = {"MONGO_URI", "MONGO_DB_NAME", "APP_ENV", "NODE_ENV", "LEDGER_TEST_MONGO_URI", "MAIL_SERVER",
                  "JWT_SECRET", "SYSTEM_USER_EMAIL", "SYSTEM_USER_PASSWORD", "SYSTEM_USER_NAME", "COOKIE_SECURE",
                  "BCRYPT_ROUNDS", "FLASK_APP", "LEDGER_PROGRESS", "PORT", "BIND"}
GOOD_SECRET = "s" * 48
REPLICA_SET = "mongodb://127.0.0.1:1/ledger?replicaSet=rs0"

# (environment, a phrase the paragraph must contain)
BROKEN = {
    "production-without-secret": ({"APP_ENV": "production", "MONGO_URI": REPLICA_SET}, "JWT_SECRET is not set"),
    "node-env-production-without-secret": ({"NODE_ENV": "production", "MONGO_URI": REPLICA_SET},
                                           "JWT_SECRET is not set"),
    "production-without-mongo": ({"APP_ENV": "production", "JWT_SECRET": GOOD_SECRET}, "MONGO_URI is not set"),
    "production-short-secret": ({"APP_ENV": "production", "JWT_SECRET": "short", "MONGO_URI": REPLICA_SET},
                                "JWT_SECRET is too short"),
    "unknown-environment": ({"APP_ENV": "staging"}, "APP_ENV='staging' is not one of"),
    "mongo-uri-scheme": ({"MONGO_URI": "http://127.0.0.1:27017"}, "MONGO_URI is not a usable MongoDB connection"),
    "mongo-uri-port": ({"MONGO_URI": "mongodb://127.0.0.1:notaport/ledger"},
                       "MONGO_URI is not a usable MongoDB connection"),
    "mongo-uri-unescaped-password": ({"MONGO_URI": "mongodb://user:p@ss:word@127.0.0.1/ledger"},
                                     "MONGO_URI is not a usable MongoDB connection"),
    "mongo-uri-unknown-option": ({"MONGO_URI": "mongodb://127.0.0.1/ledger?replicaSett=rs0"},
                                 "MONGO_URI is not a usable MongoDB connection"),
    "mongo-uri-srv-with-port": ({"MONGO_URI": "mongodb+srv://cluster.example.com:27017/ledger"},
                                "MONGO_URI is not a usable MongoDB connection"),
    "integer": ({"BCRYPT_ROUNDS": "ten"}, "BCRYPT_ROUNDS must be a whole number, got 'ten'"),
    "seconds": ({"OUTBOX_POLL_SECONDS": "2s"}, "OUTBOX_POLL_SECONDS must be a number of seconds"),
    "negative-seconds": ({"TRANSACTION_TIMEOUT_SECONDS": "-1"}, "TRANSACTION_TIMEOUT_SECONDS must be a number"),
    "rate-limit": ({"RATELIMIT_LOGIN": "lots"}, "RATELIMIT_LOGIN='lots' is not a rate limit"),
}


def environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    env.update({"OUTBOX_SENDER_ENABLED": "false", "PYTHONUNBUFFERED": "1", **extra})
    return env


def assert_refused(done: subprocess.CompletedProcess, phrase: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == config.EXIT_CONFIGURATION_ERROR, output
    assert "Traceback" not in output, output
    assert "Listening at" not in output, output
    paragraphs = [line for line in done.stderr.splitlines() if line.startswith("Configuration error: ")]
    assert len(paragraphs) == 1, done.stderr
    assert phrase in paragraphs[0], paragraphs[0]
    assert paragraphs[0].endswith("Nothing was started. Fix the environment (every variable is described in "
                                  ".env.example and in the README's Configuration section) and start again.")


def run(command: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60,  # noqa: S603
                          stdin=subprocess.DEVNULL, check=False)


def test_the_password_in_a_broken_mongo_uri_is_never_printed():
    done = run([str(BIN / "ledger"), "verify"],
               environment(MONGO_URI="mongodb://admin:hunter2-secret@127.0.0.1:99999999/ledger"))
    assert_refused(done, "MONGO_URI is not a usable MongoDB connection")
    assert "hunter2-secret" not in done.stdout + done.stderr


WITHHELD = (" (the driver's reason is not shown: it quotes part of the credentials; check that the user name and "
            "password are percent-encoded)")


def _mongo_uri_reason(monkeypatch, capsys, uri: str) -> str:
    """What the paragraph says about a broken MONGO_URI between the fixed words around it."""
    for name in _NOT_INHERITED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MONGO_URI", uri)
    with pytest.raises(SystemExit):
        config.preflight()
    err = capsys.readouterr().err
    prefix = "Configuration error: MONGO_URI is not a usable MongoDB connection string"
    assert err.startswith(prefix), err
    return err[len(prefix):].split(" (expected the form ")[0]


@pytest.mark.parametrize(("uri", "secret"), [
    ("mongodb://admin:hunter2-secret@127.0.0.1:99999999/ledger", "hunter2-secret"),
    ("mongodb://admin:pa/ss-word@127.0.0.1/ledger", "pa"),  # the '/' makes the driver read "pa" as a port
    ("mongodb://admin:pa/ss-word@127.0.0.1/ledger", "ss-word"),
    ("mongodb://ad:min:pw@127.0.0.1/ledger", "min"),
    ("mongodb://user%3A:p%40ss@h:notaport/x", "p@ss"),
    ("mongodb://h/x?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok-123,X:y", "tok-123"),
])
def test_a_broken_mongo_uri_is_refused_without_quoting_its_secrets(monkeypatch, capsys, uri, secret):
    reason = _mongo_uri_reason(monkeypatch, capsys, uri)
    assert reason == WITHHELD or secret not in reason, reason


@pytest.mark.parametrize(("uri", "secrets"), [
    ("mongodb://admin:hunter2@h/x", ["hunter2", "admin"]),
    ("mongodb://admin:p%40ss@h/x", ["p@ss", "p%40ss"]),
    ("mongodb://admin:pa/ss@h/x", ["pa", "ss"]),
    ("mongodb://h/x?tlsCertificateKeyFilePassword=s3cr3t", ["s3cr3t"]),
    ("mongodb://h/x?authMechanismProperties=AWS_SESSION_TOKEN:tok-123", ["tok-123"]),
])
def test_a_driver_message_that_quotes_a_secret_is_withheld(monkeypatch, capsys, uri, secrets):
    """pymongo's messages quote no credentials today; if one ever does, the paragraph leaves it out."""
    import pymongo.uri_parser_shared

    for secret in secrets:
        def quoting(_uri: str, secret: str = secret) -> None:
            raise ValueError(f"something is wrong near {secret!r}")

        monkeypatch.setattr(pymongo.uri_parser_shared, "_validate_uri", quoting)
        reason = _mongo_uri_reason(monkeypatch, capsys, uri)
        assert reason == WITHHELD, reason
    monkeypatch.setattr(pymongo.uri_parser_shared, "_validate_uri",
                        lambda _uri: (_ for _ in ()).throw(ValueError("Port must be an integer")))
    assert _mongo_uri_reason(monkeypatch, capsys, uri) == ": Port must be an integer"


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_the_preflight_refuses_every_broken_configuration_with_one_paragraph(case, monkeypatch, capsys):
    """In-process, every case; the subprocess tests below run a few of them through each entry point."""
    for name in _NOT_INHERITED:
        monkeypatch.delenv(name, raising=False)
    variables, phrase = BROKEN[case]
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        config.preflight()
    assert exit_info.value.code == config.EXIT_CONFIGURATION_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("Configuration error: ")
    assert phrase in captured.err


def test_the_preflight_passes_a_good_configuration(monkeypatch, capsys):
    for name in _NOT_INHERITED:
        monkeypatch.delenv(name, raising=False)
    for variables in ({}, {"APP_ENV": "production", "JWT_SECRET": GOOD_SECRET, "MONGO_URI": REPLICA_SET,
                           "MAIL_SERVER": "smtp.example.com"},
                      {"APP_ENV": "production", "JWT_SECRET": GOOD_SECRET, "MONGO_URI": REPLICA_SET,
                       "MAIL_BACKEND": "log"},
                      {"MONGO_URI": "mongodb+srv://cluster0.example.com/ledger?retryWrites=true&w=majority"},
                      {"MONGO_URI": "mongodb://u%40x:p%3Aw@h1:27017,h2,h3/db?replicaSet=rs0&authSource=admin"},
                      {"RATELIMIT_LOGIN": "5/second;100 per day", "OUTBOX_POLL_SECONDS": "0.5"}):
        with monkeypatch.context() as patch:
            for name, value in variables.items():
                patch.setenv(name, value)
            config.preflight()  # no SystemExit
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("case", ["production-without-secret", "mongo-uri-unescaped-password", "integer"])
def test_ledger_refuses_a_broken_configuration_with_one_paragraph(case, tmp_path):
    variables, phrase = BROKEN[case]
    assert_refused(run([str(BIN / "ledger"), "verify"], environment(**variables), cwd=tmp_path), phrase)


@pytest.mark.parametrize("case", ["production-short-secret", "mongo-uri-scheme"])
def test_flask_refuses_a_broken_configuration_with_one_paragraph(case):
    variables, phrase = BROKEN[case]
    assert_refused(run([str(BIN / "flask"), "--app", "wsgi", "verify"], environment(**variables)), phrase)


@pytest.mark.parametrize(("case", "config_option"), [("production-without-secret", []),
                                                     ("mongo-uri-port", ["--config", "gunicorn.conf.py"])])
def test_gunicorn_refuses_a_broken_configuration_before_it_listens(case, config_option):
    """The operator's command line (gunicorn reads ./gunicorn.conf.py by default), and the Dockerfile's."""
    variables, phrase = BROKEN[case]
    port = str(free_loopback_port())
    command = [sys.executable, "-m", "gunicorn", *config_option, "-w", "1", "-b", f"127.0.0.1:{port}", "wsgi:app"]
    assert_refused(run(command, environment(**variables)), phrase)


def _shared_venv_ready() -> bool:
    stamp = VENV / ".ledger-installed"
    want = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "_deps.py"), str(REPO_ROOT)],
                          capture_output=True, text=True, check=True).stdout.split()[0]
    return stamp.is_file() and stamp.read_text().strip() == want


@pytest.fixture
def serve_env() -> dict[str, str]:
    if not _shared_venv_ready():
        pytest.skip(f"scripts/serve would install into {VENV} first: this interpreter's environment was not "
                    f"installed by scripts/_env.sh (run the suite with scripts/test)")
    return environment(LEDGER_VENV=str(VENV), PYTHON=sys.executable)


@pytest.mark.parametrize("case", ["production-without-secret", "seconds"])
def test_scripts_serve_refuses_a_broken_configuration_before_gunicorn_starts(case, serve_env, tmp_path):
    variables, phrase = BROKEN[case]
    port = str(free_loopback_port())
    done = run([str(REPO_ROOT / "scripts" / "serve")], {**serve_env, "PORT": port, **variables}, cwd=tmp_path)
    assert_refused(done, phrase)
    assert done.stderr.strip().startswith("Configuration error: "), done.stderr  # nothing before it, not even
    assert "gunicorn" not in done.stderr  # gunicorn's start-up line: the refusal came first


def test_scripts_serve_with_a_good_configuration_does_listen(serve_env, tmp_path):
    """The control for the tests above: the same command in the same environment, minus the mistake, starts."""
    port = str(free_loopback_port())
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([str(REPO_ROOT / "scripts" / "serve")], cwd=tmp_path,  # noqa: S603
                                   env={**serve_env, "PORT": port},
                                   stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Listening at" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert f"Listening at: http://127.0.0.1:{port}" in text
    assert "Configuration error" not in text


def test_scripts_ledger_runs_the_command_from_the_shared_venv_and_refuses_a_broken_configuration(serve_env, tmp_path):
    ledger = str(REPO_ROOT / "scripts" / "ledger")
    done = run([ledger, "verify"], serve_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "ledger OK"
    assert "==> installing" not in done.stderr  # the shared .venv is already installed
    variables, phrase = BROKEN["production-without-mongo"]
    assert_refused(run([ledger, "verify"], {**serve_env, **variables}, cwd=tmp_path), phrase)
