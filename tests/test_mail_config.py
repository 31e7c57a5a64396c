"""Mail settings at start-up, and the ``outbox`` commands that list and re-queue parked messages.

Production never silently drops mail: it needs ``MAIL_SERVER`` unless ``MAIL_BACKEND=log`` turns mail off on
purpose (and says so in the log). The Node service's ``.env`` names are understood; its Gmail OAuth2 settings,
which this service cannot use, stop start-up with one clear message.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from flask import Flask

from config import NODE_OAUTH2_VARIABLES, ConfigurationError, load_config
from ledger import create_app, db
from ledger.models import utcnow
from ledger.services import notifications
from tests.conftest import drop_database, make_app

MAIL_ENVIRONMENT = ("APP_ENV", "NODE_ENV", "MAIL_SERVER", "MAIL_BACKEND", "MAIL_USERNAME", "MAIL_PASSWORD",
                    "EMAIL_USER", "EMAIL_PASS", "MONGO_URI", "JWT_SECRET", "SYSTEM_USER_EMAIL",
                    "SYSTEM_USER_PASSWORD", "SYSTEM_USER_NAME", *NODE_OAUTH2_VARIABLES)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean mail environment; production apps are built without connecting to a database (none runs here)."""
    import ledger

    for name in MAIL_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OUTBOX_SENDER_ENABLED", "false")
    monkeypatch.setattr(ledger, "initialize_database", lambda app: None)
    return monkeypatch


def production(env: pytest.MonkeyPatch, **variables: str) -> pytest.MonkeyPatch:
    env.setenv("APP_ENV", "production")
    env.setenv("JWT_SECRET", "p" * 48)
    env.setenv("MONGO_URI", "mongodb://127.0.0.1:1/ledger?replicaSet=rs0&serverSelectionTimeoutMS=50")
    for name, value in variables.items():
        env.setenv(name, value)
    return env


# ------------------------------------------------------------------------------ production and backends


def test_production_refuses_to_start_without_a_mail_server(env: pytest.MonkeyPatch):
    production(env)
    with pytest.raises(ConfigurationError) as raised:
        create_app()
    message = str(raised.value)
    assert "MAIL_SERVER is not set" in message
    assert "MAIL_BACKEND=log" in message  # says how to run without mail on purpose
    assert "\n" not in message


@pytest.mark.parametrize("value", ["log", "LOG", " Log "])
def test_production_without_mail_runs_only_when_told_and_says_so_at_start_up(
        env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str):
    production(env, MAIL_BACKEND=value)
    with caplog.at_level(logging.INFO, logger="ledger.mailer"):
        app = create_app()
    announced = [r for r in caplog.records if r.name == "ledger.mailer" and "mail is OFF" in r.getMessage()]
    assert [r.levelno for r in announced] == [logging.WARNING]
    assert "MAIL_BACKEND=log" in announced[0].getMessage()
    assert app.config["MAIL_BACKEND"] == "log"


def test_production_with_a_mail_server_announces_where_mail_goes(env: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture):
    production(env, MAIL_SERVER="smtp.example.test", MAIL_PORT="2525", MAIL_USE_TLS="true", EMAIL_USER="ledger",
               EMAIL_PASS="hunter2-secret")
    with caplog.at_level(logging.INFO, logger="ledger.mailer"):
        create_app()
    lines = [r.getMessage() for r in caplog.records if r.name == "ledger.mailer"]
    assert "mail: SMTP via smtp.example.test:2525 (STARTTLS, with login)" in lines
    assert not any("hunter2" in line for line in lines)


def test_log_backend_with_a_mail_server_set_says_the_server_is_ignored(env: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture):
    production(env, MAIL_BACKEND="log", MAIL_SERVER="smtp.example.test")
    with caplog.at_level(logging.INFO, logger="ledger.mailer"):
        create_app()
    assert any("MAIL_SERVER=smtp.example.test is ignored" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("environment", ["development", "production"])
@pytest.mark.parametrize("value", ["smtp ", "SMTP"])
def test_the_smtp_backend_needs_a_server_in_every_environment(env: pytest.MonkeyPatch, environment: str,
                                                              value: str):
    production(env, MAIL_BACKEND=value)
    with pytest.raises(ConfigurationError, match="MAIL_BACKEND=smtp needs MAIL_SERVER"):
        load_config(environment)


@pytest.mark.parametrize("value", ["sendgrid", "console", "none", "off", "logs", "smtps", "log;smtp", "lo g"])
def test_an_unknown_mail_backend_is_refused(env: pytest.MonkeyPatch, value: str):
    production(env, MAIL_BACKEND=value, MAIL_SERVER="smtp.example.test")
    for environment in ("development", "production"):
        with pytest.raises(ConfigurationError, match="MAIL_BACKEND="):
            load_config(environment)


def test_development_without_a_mail_server_logs_mail_and_says_so(env: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="ledger.mailer"):
        create_app(config_name="development")
    announced = [r for r in caplog.records if "mail is OFF (MAIL_SERVER is not set)" in r.getMessage()]
    assert [r.levelno for r in announced] == [logging.INFO]


# ----------------------------------------------------------------------------------- the Node .env names


@pytest.mark.parametrize(("ours", "nodes"), [("MAIL_USERNAME", "EMAIL_USER"), ("MAIL_PASSWORD", "EMAIL_PASS")])
def test_the_node_credential_names_are_aliases(env: pytest.MonkeyPatch, ours: str, nodes: str):
    production(env, MAIL_SERVER="smtp.example.test")
    for our_value, node_value in itertools.product([None, "", "alpha", "beta"], repeat=2):
        for name, value in ((ours, our_value), (nodes, node_value)):
            if value is None:
                env.delenv(name, raising=False)
            else:
                env.setenv(name, value)
        if our_value and node_value and our_value != node_value:
            with pytest.raises(ConfigurationError, match=f"{ours} and {nodes} are both set"):
                load_config("production")
        else:
            assert getattr(load_config("production"), ours) == (our_value or node_value or None)


def test_the_aliases_reach_the_smtp_login(env: pytest.MonkeyPatch):
    production(env, MAIL_SERVER="smtp.example.test", EMAIL_USER="node-user", EMAIL_PASS="node-pass")
    app = create_app()
    state = app.extensions["mail"]
    assert (state.username, state.password) == ("node-user", "node-pass")


@pytest.mark.parametrize("environment", ["development", "production"])
def test_the_node_gmail_oauth2_settings_stop_start_up_with_one_clear_message(env: pytest.MonkeyPatch,
                                                                              environment: str):
    production(env, MAIL_SERVER="smtp.gmail.com", EMAIL_USER="bank@example.test")
    subsets = [c for size in range(1, len(NODE_OAUTH2_VARIABLES) + 1)
               for c in itertools.combinations(NODE_OAUTH2_VARIABLES, size)]
    for subset in subsets:
        for name in NODE_OAUTH2_VARIABLES:
            if name in subset:
                env.setenv(name, f"value-of-{name.lower()}")
            else:
                env.delenv(name, raising=False)
        with pytest.raises(ConfigurationError) as raised:
            load_config(environment)
        message = str(raised.value)
        assert message.startswith(", ".join(subset) + (" is set" if len(subset) == 1 else " are set")), message
        assert "OAuth2" in message
        assert "EMAIL_PASS" in message  # what to do instead
        assert "\n" not in message
        assert not any(f"value-of-{name.lower()}" in message for name in subset)  # secrets never echoed
    for name in NODE_OAUTH2_VARIABLES:
        env.setenv(name, "")  # set but empty counts as unset
    load_config(environment)


# ------------------------------------------------------------------------------------- outbox commands


@pytest.fixture
def app() -> Iterator[Flask]:
    application = make_app()
    yield application
    drop_database(application)


def _insert(app: Flask, status: str, **fields: Any) -> ObjectId:
    user_id = ObjectId()
    document = notifications.welcome({"_id": user_id, "email": f"{user_id}@example.test", "name": "Parked Person"})
    document.update(status=status, **fields)
    with app.app_context():
        db.get_db(app).notifications.insert_one(document)
    return document["_id"]


def _document(app: Flask, message_id: ObjectId) -> dict[str, Any]:
    with app.app_context():
        return db.get_db(app).notifications.find_one({"_id": message_id})


def test_list_parked_shows_each_parked_message_with_its_reason_and_nothing_else(app: Flask):
    hostile = "550 5.1.1 \x1b[2J\x1b]0;owned\x07 no such user\r\nfake line"
    parked = [_insert(app, "PARKED", attempts=i + 1, lastError=f"error {i}") for i in range(3)]
    escaped = _insert(app, "PARKED", attempts=1, lastError=hostile, leaseExpiries=3)
    others = [_insert(app, status) for status in ("PENDING", "SENDING", "SENT", "LOGGED")]

    result = app.test_cli_runner().invoke(args=["outbox", "list-parked"])

    assert result.exit_code == 0, result.output
    for message_id in (*parked, escaped):
        assert str(message_id) in result.stdout
    for message_id in others:
        assert str(message_id) not in result.stdout
    assert "error 2" in result.stdout
    assert "lease expiries 3" in result.stdout
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout
    assert "\\u001b[2J" in result.stdout
    assert "4 parked message(s)" in result.stderr


def test_list_parked_json_and_limit(app: Flask):
    ids = [_insert(app, "PARKED", lastError="x") for _ in range(5)]
    result = app.test_cli_runner().invoke(args=["outbox", "list-parked", "--json", "--limit", "3"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    assert {row["id"] for row in rows} <= {str(i) for i in ids}
    assert set(rows[0]) == {"id", "kind", "to", "createdAt", "attempts", "leaseExpiries", "lastError"}
    limited = app.test_cli_runner().invoke(args=["outbox", "list-parked", "--limit", "2"])
    assert "2 parked message(s) (more not shown" in limited.stderr


def test_requeue_one_sends_it_again_from_scratch_and_leaves_the_rest(app: Flask):
    target = _insert(app, "PARKED", attempts=8, leaseExpiries=3, interruptions=2, lastError="451 busy")
    untouched = _insert(app, "PARKED", attempts=8, lastError="451 busy")

    result = app.test_cli_runner().invoke(args=["outbox", "requeue", str(target)])

    assert result.exit_code == 0, result.output
    assert "re-queued 1 message(s)" in result.output
    requeued = _document(app, target)
    assert (requeued["status"], requeued["attempts"]) == ("PENDING", 0)
    assert "leaseExpiries" not in requeued
    assert "interruptions" not in requeued
    assert requeued["nextAttemptAt"] <= utcnow()
    assert requeued["lastError"] == "451 busy"  # kept until it is sent
    assert _document(app, untouched)["status"] == "PARKED"


def test_requeue_all_touches_parked_messages_only(app: Flask):
    parked = [_insert(app, "PARKED", attempts=8) for _ in range(4)]
    others = {status: _insert(app, status, attempts=1) for status in ("PENDING", "SENDING", "SENT", "LOGGED")}

    result = app.test_cli_runner().invoke(args=["outbox", "requeue", "--all"])

    assert result.exit_code == 0, result.output
    assert "re-queued 4 message(s)" in result.output
    assert {_document(app, i)["status"] for i in parked} == {"PENDING"}
    for status, message_id in others.items():
        assert (_document(app, message_id)["status"], _document(app, message_id)["attempts"]) == (status, 1)


def test_requeue_refuses_what_it_cannot_requeue_and_says_which(app: Flask):
    parked = _insert(app, "PARKED", attempts=8)
    sent = _insert(app, "SENT", attempts=1)
    missing = ObjectId()
    runner = app.test_cli_runner()

    result = runner.invoke(args=["outbox", "requeue", str(parked), str(sent), str(missing), str(parked)])

    assert result.exit_code == 1
    assert "re-queued 1 message(s)" in result.stdout
    assert f"{sent}: not parked (status SENT)" in result.stderr
    assert f"{missing}: no such message" in result.stderr
    assert _document(app, sent)["status"] == "SENT"

    for args in (["outbox", "requeue"], ["outbox", "requeue", "--all", str(parked)],
                 ["outbox", "requeue", "not-an-id"], ["outbox", "requeue", "0" * 23],
                 ["outbox", "requeue", "$where"]):
        refused = runner.invoke(args=args)
        assert refused.exit_code == 2, (args, refused.output)
