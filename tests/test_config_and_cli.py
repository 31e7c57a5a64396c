"""Start-up configuration, the system-user bootstrap and the ``create-system-user`` command."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from bson import ObjectId
from pymongo.errors import ServerSelectionTimeoutError

from config import ConfigurationError
from ledger import create_app, db
from ledger.services.system import SystemUserConflict
from tests.conftest import SYSTEM_EMAIL, drop_database, make_app, unique_email

ENVIRONMENT = ("APP_ENV", "NODE_ENV", "JWT_SECRET", "MONGO_URI", "MONGO_DB_NAME", "COOKIE_SECURE",
               "SYSTEM_USER_EMAIL", "SYSTEM_USER_PASSWORD", "SYSTEM_USER_NAME", "MAIL_SERVER")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with none of the ledger's variables set, and no background thread: neither the outbox
    sender nor the hold sweeper, which would outlive the test and, every 30 s, point the process-wide client at
    this test's database while another test is using it."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OUTBOX_SENDER_ENABLED", "false")
    monkeypatch.setenv("HOLD_SWEEP_SECONDS", "0")
    monkeypatch.setenv("BCRYPT_ROUNDS", "4")
    monkeypatch.setenv("LEDGER_DATA_DIR", ":memory:")  # never the repository's .ledger-data
    return monkeypatch


def system_documents(app) -> tuple[list[dict], list[dict]]:
    with app.app_context():
        database = db.get_db()
        return list(database.users.find({"systemUser": True})), list(database.accounts.find({"systemUser": True}))


# ------------------------------------------------------------------------------------------ production


@pytest.mark.parametrize("selector", ["APP_ENV", "NODE_ENV"])
def test_production_refuses_to_start_without_jwt_secret(clean_env, selector):
    clean_env.setenv(selector, "production")
    clean_env.setenv("MONGO_URI", "mongodb://127.0.0.1:1/ledger?replicaSet=rs0")
    with pytest.raises(ConfigurationError, match="JWT_SECRET"):
        create_app()


def test_production_refuses_to_start_without_mongo_uri(clean_env):
    clean_env.setenv("APP_ENV", "production")
    clean_env.setenv("JWT_SECRET", "s" * 48)
    with pytest.raises(ConfigurationError, match="MONGO_URI"):
        create_app()


def test_production_refuses_a_short_jwt_secret(clean_env):
    clean_env.setenv("APP_ENV", "production")
    clean_env.setenv("JWT_SECRET", "short")
    clean_env.setenv("MONGO_URI", "mongodb://127.0.0.1:1/ledger?replicaSet=rs0")
    with pytest.raises(ConfigurationError, match="JWT_SECRET"):
        create_app()


def test_an_unknown_environment_name_is_refused(clean_env):
    clean_env.setenv("APP_ENV", "prod-ish")
    with pytest.raises(ConfigurationError, match="APP_ENV"):
        create_app()


# ------------------------------------------------------------------------------------------ development


def test_development_without_jwt_secret_generates_one_and_warns_loudly(clean_env, caplog):
    clean_env.setenv("APP_ENV", "development")
    clean_env.setenv("MONGO_DB_NAME", f"ledger-dev-{uuid.uuid4().hex[:12]}")
    with caplog.at_level(logging.WARNING):
        app = create_app()
    try:
        secret = app.config["JWT_SECRET_KEY"]
        assert isinstance(secret, str)
        assert len(secret) >= 32
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("JWT_SECRET" in message and "GENERATED" in message for message in warnings), warnings
        assert any("EMBEDDED" in message for message in warnings), warnings
        client = app.test_client()
        registered = client.post("/api/auth/register",
                                 json={"email": unique_email(), "password": "password-123", "name": "Dev"})
        assert registered.status_code == 201
        token = registered.get_json()["token"]
        assert client.get("/api/accounts", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        drop_database(app)


def test_two_development_processes_without_jwt_secret_do_not_share_a_secret(clean_env):
    clean_env.setenv("APP_ENV", "development")
    clean_env.setenv("MONGO_DB_NAME", f"ledger-dev-{uuid.uuid4().hex[:12]}")
    first, second = create_app(), create_app()
    try:
        assert first.config["JWT_SECRET_KEY"] != second.config["JWT_SECRET_KEY"]
    finally:
        drop_database(first)


def test_the_generated_development_secret_lives_in_the_data_folder(clean_env, tmp_path):
    # A restart on the same folder keeps everyone logged in; another folder gets a secret of its own.
    from config import load_config

    clean_env.setenv("APP_ENV", "development")
    clean_env.setenv("LEDGER_DATA_DIR", str(tmp_path / "one"))
    first, again = load_config(), load_config()
    clean_env.setenv("LEDGER_DATA_DIR", str(tmp_path / "two"))
    other = load_config()
    assert first.GENERATED_JWT_SECRET
    assert first.JWT_SECRET_STORED
    assert first.JWT_SECRET_KEY == again.JWT_SECRET_KEY != other.JWT_SECRET_KEY
    assert len(first.JWT_SECRET_KEY) >= 32
    assert (tmp_path / "one" / "jwt-secret").stat().st_mode & 0o077 == 0


def test_an_explicit_jwt_secret_is_used_as_given(clean_env):
    clean_env.setenv("APP_ENV", "development")
    clean_env.setenv("JWT_SECRET", "an-explicit-secret-of-sufficient-length-123")
    clean_env.setenv("MONGO_DB_NAME", f"ledger-dev-{uuid.uuid4().hex[:12]}")
    app = create_app()
    try:
        assert app.config["JWT_SECRET_KEY"] == "an-explicit-secret-of-sufficient-length-123"
        assert not app.config["GENERATED_JWT_SECRET"]
    finally:
        drop_database(app)


# ------------------------------------------------------------------------------------------ bootstrap


def test_start_up_creates_the_system_user_and_its_system_account(app, api):
    users, accounts = system_documents(app)
    assert [u["email"] for u in users] == [SYSTEM_EMAIL]
    assert len(accounts) == 1
    assert accounts[0]["user"] == users[0]["_id"]
    assert accounts[0]["currency"] == "INR"
    assert accounts[0]["status"] == "ACTIVE"
    assert api.system_token()


def test_start_up_bootstrap_is_idempotent(app):
    name = app.config["MONGO_DB_NAME"]
    again = make_app(MONGO_DB_NAME=name)
    once_more = make_app(MONGO_DB_NAME=name)
    for application in (app, again, once_more):
        users, accounts = system_documents(application)
        assert len(users) == 1
        assert len(accounts) == 1


def test_concurrent_start_ups_bootstrap_one_system_user(clean_env):
    name = f"ledger-test-{uuid.uuid4().hex[:12]}"
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait(timeout=10)
            make_app(MONGO_DB_NAME=name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    app = make_app(MONGO_DB_NAME=name)
    try:
        assert errors == []
        users, accounts = system_documents(app)
        assert len(users) == 1
        assert len(accounts) == 1
    finally:
        drop_database(app)


def test_start_up_never_promotes_an_ordinary_user_to_system_user(app, api):
    email = unique_email("ordinary")
    user_id = api.register(email=email)["user"]["_id"]
    with pytest.raises(SystemUserConflict):
        make_app(MONGO_DB_NAME=app.config["MONGO_DB_NAME"], SYSTEM_USER_EMAIL=email)
    with app.app_context():
        assert db.get_db().users.find_one({"_id": ObjectId(user_id)})["systemUser"] is False


def test_without_system_user_settings_no_system_user_is_created():
    app = make_app(SYSTEM_USER_EMAIL=None, SYSTEM_USER_PASSWORD=None, SYSTEM_USER_NAME=None)
    try:
        assert system_documents(app) == ([], [])
    finally:
        drop_database(app)


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def bare_app():
    """An app whose start-up bootstrapped no system user."""
    app = make_app(SYSTEM_USER_EMAIL=None, SYSTEM_USER_PASSWORD=None, SYSTEM_USER_NAME=None)
    yield app
    drop_database(app)


def test_create_system_user_command_creates_the_user_and_its_account(bare_app):
    email = unique_email("ops")
    result = bare_app.test_cli_runner().invoke(
        args=["create-system-user", "--email", email, "--name", "Ops", "--password", "ops-password-1"])
    assert result.exit_code == 0, result.output
    assert "created" in result.output
    users, accounts = system_documents(bare_app)
    assert [u["email"] for u in users] == [email]
    assert len(accounts) == 1
    assert accounts[0]["user"] == users[0]["_id"]

    client = bare_app.test_client()
    login = client.post("/api/auth/login", json={"email": email, "password": "ops-password-1"})
    assert login.status_code == 200
    system_token = login.get_json()["token"]
    registered = client.post("/api/auth/register",
                             json={"email": unique_email(), "password": "password-123", "name": "Customer"})
    customer_token = registered.get_json()["token"]
    account = client.post("/api/accounts", headers={"Authorization": f"Bearer {customer_token}"})
    funding = client.post("/api/transactions/system/initial-funds",
                          headers={"Authorization": f"Bearer {system_token}"},
                          json={"toAccount": account.get_json()["account"]["_id"], "amount": 500,
                                "idempotencyKey": "cli-first-funding"})
    assert funding.status_code == 201, funding.get_json()


def test_create_system_user_command_is_idempotent(bare_app):
    runner = bare_app.test_cli_runner()
    args = ["create-system-user", "--email", unique_email("ops"), "--name", "Ops", "--password", "ops-password-1"]
    first = runner.invoke(args=args)
    second = runner.invoke(args=args)
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "already exists" in second.output
    users, accounts = system_documents(bare_app)
    assert len(users) == 1
    assert len(accounts) == 1


def test_create_system_user_command_reads_the_environment(bare_app):
    email = unique_email("ops")
    result = bare_app.test_cli_runner().invoke(args=["create-system-user"], env={
        "SYSTEM_USER_EMAIL": email, "SYSTEM_USER_NAME": "Ops", "SYSTEM_USER_PASSWORD": "ops-password-1"})
    assert result.exit_code == 0, result.output
    assert [u["email"] for u in system_documents(bare_app)[0]] == [email]


def test_create_system_user_command_refuses_an_ordinary_users_email(bare_app):
    client = bare_app.test_client()
    email = unique_email("ordinary")
    assert client.post("/api/auth/register",
                       json={"email": email, "password": "password-123", "name": "N"}).status_code == 201
    result = bare_app.test_cli_runner().invoke(
        args=["create-system-user", "--email", email, "--name", "Ops", "--password", "ops-password-1"])
    assert result.exit_code != 0
    assert "ordinary user" in result.output
    assert system_documents(bare_app) == ([], [])


@pytest.mark.parametrize("args", [["--email", "not-an-email", "--password", "ops-password-1"],
                                  ["--email", "ops@example.test", "--password", "short"],
                                  ["--email", "ops@example.test", "--password", "ops-password-1", "--currency", "XX"]])
def test_create_system_user_command_refuses_invalid_input(bare_app, args):
    result = bare_app.test_cli_runner().invoke(args=["create-system-user", "--name", "Ops", *args])
    assert result.exit_code != 0
    assert system_documents(bare_app) == ([], [])


# ------------------------------------------------------------------------------------------ not over the API


@pytest.mark.parametrize("flag", [True, "true", 1])
def test_a_system_user_cannot_be_created_through_the_api(app, api, flag):
    response = api.request("POST", "/api/auth/register", json={
        "email": unique_email(), "password": "password-123", "name": "Mallory", "systemUser": flag})
    assert response.status_code == 201
    token = response.get_json()["token"]
    account = api.open_account(token)
    forbidden = api.request("POST", "/api/transactions/system/initial-funds", token,
                            json={"toAccount": account, "amount": 100, "idempotencyKey": "mallory"})
    assert forbidden.status_code == 403
    assert forbidden.get_json()["message"] == "Forbidden, user is not a system user"
    users, _ = system_documents(app)
    assert [u["email"] for u in users] == [SYSTEM_EMAIL]


def test_the_system_email_cannot_be_registered_again(api):
    response = api.request("POST", "/api/auth/register",
                           json={"email": SYSTEM_EMAIL.upper(), "password": "password-123", "name": "Mallory"})
    assert response.status_code == 422
    assert response.get_json()["message"] == "Email already exists in the database"


# ------------------------------------------------------------------------------------------ database down


def test_an_unreachable_database_at_start_up_defers_the_bootstrap_instead_of_crashing(monkeypatch):
    import ledger
    from ledger.services import system

    real_bootstrap = system.bootstrap_from_config
    database_up = {"value": False}
    monkeypatch.setattr(ledger, "STARTUP_RETRY_SECONDS", 0.01)

    def bootstrap(app):
        if not database_up["value"]:
            raise ServerSelectionTimeoutError("no servers")
        return real_bootstrap(app)

    monkeypatch.setattr(system, "bootstrap_from_config", bootstrap)
    app = make_app()
    try:
        client = app.test_client()
        assert client.get("/health").status_code == 200
        assert system_documents(app) == ([], [])
        assert client.post("/api/auth/login", json={"email": SYSTEM_EMAIL,
                                                    "password": "system-password-1"}).status_code == 401
        database_up["value"] = True
        deadline = time.monotonic() + 10
        while system_documents(app) == ([], []) and time.monotonic() < deadline:
            time.sleep(0.02)
        users, accounts = system_documents(app)
        assert [u["email"] for u in users] == [SYSTEM_EMAIL]
        assert len(accounts) == 1
        login = client.post("/api/auth/login", json={"email": SYSTEM_EMAIL, "password": "system-password-1"})
        assert login.status_code == 200
    finally:
        database_up["value"] = True  # lets the retry thread finish even when an assertion failed
        drop_database(app)


def test_indexes_missed_at_start_up_are_created_once_the_database_answers(monkeypatch):
    import ledger

    real_ensure = db.ensure_indexes
    database_up = {"value": False}
    monkeypatch.setattr(ledger, "STARTUP_RETRY_SECONDS", 0.01)

    def ensure_indexes(database):
        if not database_up["value"]:
            raise ServerSelectionTimeoutError("no servers")
        return real_ensure(database)

    monkeypatch.setattr(db, "ensure_indexes", ensure_indexes)
    app = make_app(SYSTEM_USER_EMAIL=None, SYSTEM_USER_PASSWORD=None, SYSTEM_USER_NAME=None)
    try:
        client = app.test_client()
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503
        database_up["value"] = True
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/ready").status_code == 200
    finally:
        database_up["value"] = True
        drop_database(app)


def test_behind_a_trusted_proxy_rate_limits_count_the_forwarded_client_address():
    app = make_app(TRUSTED_PROXIES=1, RATELIMIT_ENABLED=True, RATELIMIT_LOGIN_PER_ADDRESS="2 per minute")
    try:
        client = app.test_client()

        def login(address: str) -> int:
            return client.post("/api/auth/login", json={"email": unique_email(), "password": "wrong-pass"},
                               headers={"X-Forwarded-For": address}).status_code

        assert [login("203.0.113.7") for _ in range(3)] == [401, 401, 429]
        assert login("203.0.113.8") == 401  # another client behind the same balancer is not throttled
    finally:
        drop_database(app)


def test_without_trusted_proxies_a_forged_forwarded_header_cannot_dodge_the_limit():
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN_PER_ADDRESS="2 per minute")
    try:
        client = app.test_client()
        codes = [client.post("/api/auth/login", json={"email": unique_email(), "password": "wrong-pass"},
                             headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(3)]
        assert codes == [401, 401, 429]
    finally:
        drop_database(app)


def test_a_second_system_user_is_refused_with_the_name_of_the_first(app, runner):
    result = runner.invoke(args=["create-system-user", "--email", "second-system@ledger.test", "--name", "Second",
                                 "--password", "second-password-1"])

    assert result.exit_code != 0
    assert f"already belongs to the system user {SYSTEM_EMAIL}" in result.output
    with app.app_context():
        assert db.get_db().users.find_one({"email": "second-system@ledger.test"}) is None


def test_start_up_with_a_changed_system_email_fails_loudly_instead_of_crashing_obscurely(app):
    with pytest.raises(SystemUserConflict, match="already belongs to the system user"):
        make_app(MONGO_DB_NAME=app.config["MONGO_DB_NAME"], SYSTEM_USER_EMAIL="renamed-system@ledger.test")
