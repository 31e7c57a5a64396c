"""Taking over a database the Node service wrote: ``flask --app wsgi migrate-node-db``.

The fixtures are shaped exactly as docs/NODE-SCHEMA says the Node/Mongoose service left them: ``__v: 0``,
amounts as doubles in major units (an integral one as a BSON int32, as the Node driver stores it), ``$2a$10$``
bcrypt hashes, the system account's funding DEBIT written with a *negative* amount, a raw-token blocklist with
Node's indexes (global unique ``idempotencyKey``, unique ``token``, 3-day TTL on ``createdAt``). The service
under test then starts on that database, exactly as after a cut-over, and the migration runs through the CLI.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import bcrypt
import jwt as pyjwt
import pytest
from bson import ObjectId
from flask import Flask
from pymongo import ASCENDING, IndexModel

from ledger import db
from ledger.migrate import INCOMPLETE_FAILURE, UnusableAmount, major_to_minor
from ledger.security import token_hash
from ledger.services.audit import verify
from ledger.services.auth import REVOCATION_CLOCK_MARGIN
from tests.conftest import Api, drop_database, make_app

NO_SYSTEM_USER = {"SYSTEM_USER_EMAIL": None, "SYSTEM_USER_PASSWORD": None, "SYSTEM_USER_NAME": None}
PASSWORDS = {"system": "node-system-pass", "alice": "alice-node-pass", "bob": "bob-node-pass",
             "carol": "carol-node-pass"}
_HASHES: dict[str, str] = {}


def node_hash(password: str) -> str:
    """A bcryptjs-style ``$2a$10$`` hash (computed once per password: cost 10 is slow on purpose)."""
    if password not in _HASHES:
        _HASHES[password] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10, prefix=b"2a")).decode()
    return _HASHES[password]


def node_token(secret: str, user_id: ObjectId, *, issued: int | None = None) -> str:
    """What the Node service's jsonwebtoken minted: HS256 ``{userId, iat, exp}`` (7 days), no ``jti``."""
    iat = int(time.time()) - 3600 if issued is None else issued
    return pyjwt.encode({"userId": str(user_id), "iat": iat, "exp": iat + 7 * 24 * 3600}, secret, algorithm="HS256")


class NodeDatabase:
    """Writes documents the way the Node service did, and remembers what it wrote."""

    def __init__(self, database, secret: str) -> None:
        self.db = database
        self.secret = secret
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
        self.users: dict[str, ObjectId] = {}
        self.accounts: dict[str, ObjectId] = {}
        self.fundings: list[Decimal] = []
        self.keys: dict[str, dict[str, Any]] = {}

    def create_node_indexes(self) -> None:
        self.db.users.create_indexes([IndexModel([("email", ASCENDING)], unique=True)])
        self.db.accounts.create_indexes([IndexModel([("user", ASCENDING)]),
                                         IndexModel([("user", ASCENDING), ("status", ASCENDING)])])
        self.db.transactions.create_indexes([IndexModel([("idempotencyKey", ASCENDING)], unique=True),
                                             IndexModel([("fromAccount", ASCENDING)]),
                                             IndexModel([("toAccount", ASCENDING)])])
        self.db.ledgers.create_indexes([IndexModel([("account", ASCENDING)]),
                                        IndexModel([("transaction", ASCENDING)])])
        self.db.tokenblacklists.create_indexes([IndexModel([("token", ASCENDING)], unique=True),
                                                IndexModel([("createdAt", ASCENDING)], expireAfterSeconds=259200)])

    def user(self, name: str, *, system: bool = False) -> ObjectId:
        user_id = ObjectId()
        self.db.users.insert_one({"_id": user_id, "email": f"{name}-{uuid.uuid4().hex[:8]}@example.com",
                                  "name": name.title(), "password": node_hash(PASSWORDS[name]), "systemUser": system,
                                  "createdAt": self.now, "updatedAt": self.now, "__v": 0})
        self.users[name] = user_id
        return user_id

    def account(self, label: str, owner: str, *, currency: str = "INR", status: str = "ACTIVE") -> ObjectId:
        account_id = ObjectId()
        self.db.accounts.insert_one({"_id": account_id, "user": self.users[owner], "status": status,
                                     "currency": currency, "createdAt": self.now, "updatedAt": self.now, "__v": 0})
        self.accounts[label] = account_id
        return account_id

    def _transaction(self, source: str, target: str, amount: float | int, key: str, status: str) -> ObjectId:
        transaction_id = ObjectId()
        self.db.transactions.insert_one({
            "_id": transaction_id, "fromAccount": self.accounts[source], "toAccount": self.accounts[target],
            "status": status, "amount": amount, "idempotencyKey": key,
            "createdAt": self.now, "updatedAt": self.now, "__v": 0})
        self.keys[key] = {"from": source, "to": target, "amount": amount}
        return transaction_id

    def _entry(self, account: str, entry_type: str, amount: float | int, transaction_id: ObjectId) -> None:
        self.db.ledgers.insert_one({"_id": ObjectId(), "account": self.accounts[account], "amount": amount,
                                    "transaction": transaction_id, "type": entry_type, "__v": 0})

    def fund(self, target: str, amount: float | int, key: str) -> None:
        """Node's initial-funds controller: a negative DEBIT on the system account, a positive CREDIT."""
        transaction_id = self._transaction("system", target, amount, key, "COMPLETED")
        self._entry("system", "DEBIT", -amount, transaction_id)
        self._entry(target, "CREDIT", amount, transaction_id)
        self.fundings.append(Decimal(str(amount)))

    def transfer(self, source: str, target: str, amount: float | int, key: str, status: str = "COMPLETED") -> None:
        transaction_id = self._transaction(source, target, amount, key, status)
        if status == "COMPLETED":
            self._entry(source, "DEBIT", amount, transaction_id)
            self._entry(target, "CREDIT", amount, transaction_id)

    def blacklist(self, token: str, *, created: datetime | None = None) -> None:
        when = created or self.now
        self.db.tokenblacklists.insert_one({"_id": ObjectId(), "token": token, "blackListedAt": when,
                                            "createdAt": when, "updatedAt": when, "__v": 0})

    def node_balance(self, label: str) -> Decimal:
        """The Node service's balance: its aggregation of CREDIT minus DEBIT amounts over the raw doubles."""
        pipeline = [
            {"$match": {"account": self.accounts[label]}},
            {"$group": {"_id": None,
                        "credit": {"$sum": {"$cond": [{"$eq": ["$type", "CREDIT"]}, "$amount", 0]}},
                        "debit": {"$sum": {"$cond": [{"$eq": ["$type", "DEBIT"]}, "$amount", 0]}}}},
        ]
        rows = list(self.db.ledgers.aggregate(pipeline))
        raw = rows[0]["credit"] - rows[0]["debit"] if rows else 0
        return Decimal(str(round(raw, 2)))


def build_node_database(database, secret: str) -> NodeDatabase:
    node = NodeDatabase(database, secret)
    node.create_node_indexes()
    node.user("system", system=True)
    for name in ("alice", "bob", "carol"):
        node.user(name)
    node.account("system", "system")
    node.account("alice", "alice")
    node.account("bob", "bob")
    node.account("carol", "carol")
    node.account("bob-frozen", "bob", status="FROZEN")
    node.fund("alice", 1000.0, "node-fund-alice")
    node.fund("bob", 250.75, "node-fund-bob")
    node.fund("carol", 500, "node-fund-carol")  # an integral amount: the Node driver stores it as int32
    node.transfer("alice", "bob", 10.5, "node-alice-bob")
    node.transfer("bob", "alice", 0.1, "node-bob-alice")
    node.transfer("alice", "carol", 99.99, "node-alice-carol")
    node.transfer("carol", "alice", 0.3, "node-carol-alice")
    node.transfer("alice", "bob", 5.0, "node-never-finished", status="PENDING")
    node.bob_token = node_token(secret, node.users["bob"], issued=int(time.time()) - 7200)  # logged out
    node.blacklist(node.bob_token)
    node.blacklist(node_token(secret, node.users["alice"], issued=int(time.time()) - 8 * 24 * 3600))  # expired
    node.blacklist("not-a-jwt")
    return node


def snapshot(database) -> dict[str, Any]:
    """Every document and every index of every collection, for before/after comparisons."""
    state: dict[str, Any] = {}
    for name in sorted(database.list_collection_names()):
        state[name] = (list(database[name].find({}, sort=[("_id", 1)])), database[name].index_information())
    return state


@pytest.fixture
def node_app():
    """The service started on a database the Node service wrote (no system user configured)."""
    seed = make_app(**NO_SYSTEM_USER)
    drop_database(seed)
    name = seed.config["MONGO_DB_NAME"]
    with seed.app_context():
        node = build_node_database(db.get_db(seed), seed.config["JWT_SECRET_KEY"])
    application = make_app(MONGO_DB_NAME=name, **NO_SYSTEM_USER)
    application.node = node
    yield application
    drop_database(application)


def run_migration(app: Flask, *args: str):
    result = app.test_cli_runner().invoke(args=["migrate-node-db", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def migrated(app: Flask):
    result = run_migration(app)
    assert result.exit_code == 0, result.output
    return result


def node_db(app: Flask):
    with app.app_context():
        return db.get_db(app)


# ------------------------------------------------------------------------------------------ amounts


def test_amounts_convert_exactly_from_the_shortest_decimal_of_the_double():
    assert major_to_minor(0.1, "INR") == (10, Decimal("0.1"), True)
    assert major_to_minor(10.1, "INR") == (1010, Decimal("10.1"), True)
    assert major_to_minor(1000, "INR") == (100000, Decimal(1000), True)
    assert major_to_minor(1000.0, "JPY") == (1000, Decimal("1000.0"), True)


def test_amounts_with_too_many_decimals_round_half_up_symmetrically_and_say_so():
    assert major_to_minor(10.555, "INR") == (1056, Decimal("10.555"), False)
    assert major_to_minor(-10.555, "INR") == (-1056, Decimal("-10.555"), False)
    assert major_to_minor(0.125, "INR") == (13, Decimal("0.125"), False)
    assert major_to_minor(10.5, "JPY") == (11, Decimal("10.5"), False)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "10", None])
def test_amounts_that_are_not_finite_numbers_are_refused(value):
    with pytest.raises(UnusableAmount):
        major_to_minor(value, "INR")


# ------------------------------------------------------------------------------- the whole migration


def test_the_service_starts_on_an_unmigrated_node_database_and_is_not_ready_until_migrated(node_app):
    client = node_app.test_client()
    before = client.get("/ready")
    assert before.status_code == 503
    assert "ledgers.account_1_seq_1" in before.get_json()["missingIndexes"]

    migrated(node_app)

    after = client.get("/ready")
    assert after.status_code == 200, after.get_json()


def test_users_log_in_with_their_node_passwords_after_migration(node_app):
    migrated(node_app)
    api = Api(node_app.test_client())
    with node_app.app_context():
        emails = {u["name"]: u["email"] for u in db.get_db(node_app).users.find()}

    for name, password in PASSWORDS.items():
        assert api.login(emails[name.title()], password).status_code == 200, name
    assert api.login(emails["Alice"], "wrong-password").status_code == 401


def test_node_minted_tokens_authenticate_and_show_the_node_balances(node_app):
    node = node_app.node
    expected = {label: node.node_balance(label) for label in ("alice", "bob", "carol", "bob-frozen")}

    migrated(node_app)

    api = Api(node_app.test_client())
    for owner, labels in (("alice", ["alice"]), ("carol", ["carol"]), ("bob", ["bob", "bob-frozen"])):
        token = node_token(node.secret, node.users[owner])
        response = api.request("GET", "/api/accounts", token)
        assert response.status_code == 200, response.get_json()
        balances = {a["_id"]: Decimal(str(a["balance"])) for a in response.get_json()["accounts"]}
        assert balances == {str(node.accounts[label]): expected[label] for label in labels}
    assert expected["alice"] == Decimal("889.91")  # 1000 - 10.5 + 0.1 - 99.99 + 0.3, exactly


def test_a_token_revoked_in_the_node_service_stays_revoked_by_its_hash(node_app):
    node = node_app.node
    migrated(node_app)

    response = Api(node_app.test_client()).request("GET", "/api/accounts", node.bob_token)
    assert response.status_code == 401
    assert response.get_json()["message"] == "Unauthorized, token is blacklisted"
    with node_app.app_context():
        entries = list(db.get_db(node_app).tokenblacklists.find())
    assert len(entries) == 1  # the expired and the undecodable entries revoked nothing and are gone
    entry = entries[0]
    assert "token" not in entry
    assert entry["tokenHash"] == token_hash(node.bob_token)
    exp = pyjwt.decode(node.bob_token, options={"verify_signature": False})["exp"]
    assert entry["expiresAt"].replace(tzinfo=UTC) == datetime.fromtimestamp(exp, tz=UTC) + REVOCATION_CLOCK_MARGIN


def test_node_indexes_give_way_to_the_declared_ones(node_app):
    migrated(node_app)
    with node_app.app_context():
        database = db.get_db(node_app)
        assert db.missing_indexes(database) == []
        transactions = database.transactions.index_information()
        blocklist = database.tokenblacklists.index_information()
    assert "idempotencyKey_1" not in transactions
    assert transactions["initiator_1_idempotencyKey_1"]["unique"] is True
    assert "token_1" not in blocklist
    assert "createdAt_1" not in blocklist
    assert blocklist["expiresAt_1"]["expireAfterSeconds"] == 0


def test_repairing_the_negative_system_debits_makes_the_ledger_verify_and_sum_to_zero(node_app):
    node = node_app.node
    funded = sum(node.fundings)
    # The claim checked on the Node data first: its balances sum to twice the funding, not zero.
    node_sum = sum(node.node_balance(label) for label in node.accounts)
    assert node_sum == 2 * funded

    result = migrated(node_app)

    assert "negative system DEBIT" in result.output
    with node_app.app_context():
        report = verify()
        system = db.get_db(node_app).accounts.find_one({"_id": node.accounts["system"]})
    assert report.problems == []
    assert report.total_balance_minor == 0
    assert system["balance"] == -int(funded * 100)
    assert (system["systemCurrency"], system["systemUser"]) == ("INR", True)
    assert "ledger verification: OK" in result.output


def test_entries_are_numbered_in_id_order_with_positive_minor_amounts_and_running_balances(node_app):
    node = node_app.node
    migrated(node_app)
    with node_app.app_context():
        entries = list(db.get_db(node_app).ledgers.find({"account": node.accounts["alice"]}, sort=[("_id", 1)]))
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert [(e["type"], e["amount"]) for e in entries] == [
        ("CREDIT", 100000), ("DEBIT", 1050), ("CREDIT", 10), ("DEBIT", 9999), ("CREDIT", 30)]
    assert [e["balanceAfter"] for e in entries] == [100000, 98950, 98960, 88961, 88991]
    assert all(e["currency"] == "INR" and e["createdAt"] is not None for e in entries)


def test_transactions_gain_kind_currency_initiator_and_minor_amounts(node_app):
    node = node_app.node
    migrated(node_app)
    with node_app.app_context():
        by_key = {t["idempotencyKey"]: t for t in db.get_db(node_app).transactions.find()}
    funding, transfer = by_key["node-fund-bob"], by_key["node-alice-bob"]
    assert (funding["kind"], funding["amount"], funding["initiator"]) == ("INITIAL_FUNDS", 25075, node.users["system"])
    assert (transfer["kind"], transfer["amount"], transfer["initiator"]) == ("TRANSFER", 1050, node.users["alice"])
    assert {t["currency"] for t in by_key.values()} == {"INR"}
    assert all(isinstance(t["amount"], int) for t in by_key.values())


def test_transfers_and_funding_work_after_migration_on_the_migrated_accounts(node_app):
    node = node_app.node
    migrated(node_app)
    api = Api(node_app.test_client())
    alice = node_token(node.secret, node.users["alice"])

    moved = api.transfer(alice, str(node.accounts["alice"]), str(node.accounts["bob"]), 89.91)
    assert moved.status_code == 200, moved.get_json()
    with node_app.app_context():
        system_email = db.get_db(node_app).users.find_one({"_id": node.users["system"]})["email"]
    system_token = api.login(system_email, PASSWORDS["system"]).get_json()["token"]
    funded = api.request("POST", "/api/transactions/system/initial-funds", system_token,
                         json={"toAccount": str(node.accounts["carol"]), "amount": 1, "idempotencyKey": "after"})
    assert funded.status_code == 201, funded.get_json()

    assert api.balance(alice, str(node.accounts["alice"])) == 800
    with node_app.app_context():
        database = db.get_db(node_app)
        system_accounts = list(database.accounts.find({"user": node.users["system"]}))
        report = verify()
    assert [a["_id"] for a in system_accounts] == [node.accounts["system"]]  # no second system account
    assert (report.problems, report.total_balance_minor) == ([], 0)


def test_a_node_client_retrying_its_old_key_gets_the_replay_or_a_conflict(node_app):
    node = node_app.node
    migrated(node_app)
    api = Api(node_app.test_client())
    alice = node_token(node.secret, node.users["alice"])
    source, target = str(node.accounts["alice"]), str(node.accounts["bob"])

    replay = api.transfer(alice, source, target, 10.5, key="node-alice-bob")
    assert replay.status_code == 200
    assert replay.get_json()["message"] == "Transaction already processed"
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert api.transfer(alice, source, target, 11, key="node-alice-bob").status_code == 422
    assert api.balance(alice, source) == Decimal("889.91")


def test_a_pending_node_transaction_without_entries_becomes_failed_and_its_key_replays_that(node_app):
    node = node_app.node
    result = migrated(node_app)
    assert "PENDING with no ledger entries" in result.output
    with node_app.app_context():
        record = db.get_db(node_app).transactions.find_one({"idempotencyKey": "node-never-finished"})
    assert record["status"] == "FAILED"
    assert record["failure"] == INCOMPLETE_FAILURE

    alice = node_token(node.secret, node.users["alice"])
    retry = Api(node_app.test_client()).transfer(alice, str(node.accounts["alice"]), str(node.accounts["bob"]), 5,
                                                 key="node-never-finished")
    assert retry.status_code == 400
    assert retry.get_json()["message"] == INCOMPLETE_FAILURE["message"]
    assert retry.headers["Idempotent-Replayed"] == "true"


def test_a_second_run_changes_nothing_and_says_so(node_app):
    migrated(node_app)
    before = snapshot(node_db(node_app))

    second = migrated(node_app)

    assert "Nothing to migrate" in second.output
    assert snapshot(node_db(node_app)) == before


def test_a_dry_run_reports_the_plan_and_writes_nothing(node_app):
    before = snapshot(node_db(node_app))

    result = run_migration(node_app, "--dry-run")

    assert result.exit_code == 0, result.output
    assert "DRY RUN" in result.output
    assert "would drop transactions.idempotencyKey_1" in result.output
    assert "ledger entries converted: 14" in result.output
    assert "projected sum of balances (minor units): 0" in result.output
    assert snapshot(node_db(node_app)) == before


def test_an_interrupted_migration_resumes_to_the_same_result(node_app, monkeypatch):
    import ledger.migrate

    real = db.run_in_transaction
    calls = {"n": 0}

    def crash_on_third(callback, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(callback, **kwargs)

    monkeypatch.setattr(ledger.migrate, "ENTRY_BATCH", 1)
    monkeypatch.setattr(db, "run_in_transaction", crash_on_third)
    crashed = node_app.test_cli_runner().invoke(args=["migrate-node-db"])
    assert isinstance(crashed.exception, RuntimeError)
    assert calls["n"] == 3
    monkeypatch.setattr(db, "run_in_transaction", real)

    migrated(node_app)

    with node_app.app_context():
        report = verify()
        alice = db.get_db(node_app).accounts.find_one({"_id": node_app.node.accounts["alice"]})
    assert (report.problems, report.total_balance_minor) == ([], 0)
    assert (alice["balance"], alice["seq"]) == (88991, 5)


def test_progress_is_printed_every_n_documents(node_app):
    result = run_migration(node_app, "--progress-every", "2")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines() if line.strip().startswith("ledger entries: ")]
    # Accounts are converted whole, in _id order (3, 5, 3 and 3 entries): a line each time a multiple of 2 is passed.
    assert lines == ["ledger entries: 3/14", "ledger entries: 8/14", "ledger entries: 11/14", "ledger entries: 14/14"]
    assert "transactions: 8/8" in result.output


def test_on_a_terminal_progress_is_a_bar_per_collection_instead_of_lines(node_app, monkeypatch):
    monkeypatch.setenv("LEDGER_PROGRESS", "1")  # what a terminal on stderr turns on (ledger.progress)
    result = run_migration(node_app, "--progress-every", "2")
    assert result.exit_code == 0, result.output
    assert re.search(r"ledger entries: 100%\|█+\| 14/14 ", result.stderr), result.stderr
    assert re.search(r"transactions: 100%\|█+\| 8/8 ", result.stderr), result.stderr
    assert "ledger entries: 3/14" not in result.output  # the lines are for logs, not terminals
    assert "Step 6/6" in result.stdout
    assert "%|" not in result.stdout


def test_an_empty_system_account_made_at_start_up_gives_way_to_the_node_system_account():
    seed = make_app(**NO_SYSTEM_USER)
    drop_database(seed)
    with seed.app_context():
        node = build_node_database(db.get_db(seed), seed.config["JWT_SECRET_KEY"])
        email = db.get_db(seed).users.find_one({"_id": node.users["system"]})["email"]
    # Start-up bootstraps the configured system user, which is the Node one: it gets an empty INR system account.
    application = make_app(MONGO_DB_NAME=seed.config["MONGO_DB_NAME"], SYSTEM_USER_EMAIL=email,
                           SYSTEM_USER_PASSWORD=PASSWORDS["system"], SYSTEM_USER_NAME="System")
    try:
        with application.app_context():
            accounts = db.get_db(application).accounts
            assert accounts.count_documents({"user": node.users["system"]}) == 2

            result = migrated(application)

            system_accounts = list(accounts.find({"user": node.users["system"]}))
            report = verify()
        assert "empty INR system account" in result.output
        assert [(a["_id"], a["systemCurrency"]) for a in system_accounts] == [(node.accounts["system"], "INR")]
        assert (report.problems, report.total_balance_minor) == ([], 0)
    finally:
        drop_database(application)


def test_amounts_with_too_many_decimals_are_reported_and_the_ledger_still_balances(node_app):
    node = node_app.node
    node.transfer("alice", "bob", 0.125, "node-three-decimals")

    result = migrated(node_app)

    assert "amount 0.125 has more decimals than INR allows" in result.output
    with node_app.app_context():
        amounts = {e["type"]: e["amount"] for e in db.get_db(node_app).ledgers.find(
            {"transaction": db.get_db(node_app).transactions.find_one(
                {"idempotencyKey": "node-three-decimals"})["_id"]})}
        report = verify()
    assert amounts == {"DEBIT": 13, "CREDIT": 13}
    assert (report.problems, report.total_balance_minor) == ([], 0)


def test_a_system_user_with_two_accounts_in_one_currency_gets_one_system_account_and_reruns_cleanly(node_app):
    node = node_app.node
    node.account("system-spare", "system")  # newer than the account the Node service funded from

    first = migrated(node_app)
    second = migrated(node_app)

    with node_app.app_context():
        marked = list(db.get_db(node_app).accounts.find({"systemCurrency": "INR"}, {"_id": 1}))
    assert marked == [{"_id": node.accounts["system"]}]
    assert str(node.accounts["system-spare"]) in first.output
    assert "Nothing to migrate" in second.output


@pytest.mark.parametrize("amount", [-20, -0.5, -1000.25])
def test_a_negative_customer_debit_is_reported_unresolved_and_keeps_the_balance_node_showed(node_app, amount):
    """Only the *system* account's negative DEBIT is the known funding defect; on a customer account it is
    unexplained data. It is not "repaired" (that would silently take money from the customer): it is converted
    as it is, reported, and the customer sees the balance the Node service showed."""
    node = node_app.node
    transaction_id = node._transaction("alice", "bob", abs(amount), "node-odd-debit", "COMPLETED")
    node._entry("alice", "DEBIT", amount, transaction_id)
    node._entry("bob", "CREDIT", abs(amount), transaction_id)
    with node_app.app_context():
        odd_entry = db.get_db(node_app).ledgers.find_one({"transaction": transaction_id, "type": "DEBIT"})["_id"]
    shown = {label: node.node_balance(label) for label in ("alice", "bob")}

    result = run_migration(node_app)

    assert result.exit_code != 0, result.output  # an operator must look
    about_entry = [line for line in result.output.splitlines()
                   if str(odd_entry) in line and line.startswith(("REPAIRED", "UNRESOLVED"))]
    assert about_entry == [f"UNRESOLVED: account {node.accounts['alice']}, entry {odd_entry}: DEBIT amount "
                           f"{Decimal(str(amount))} is not positive; converted as it is"], result.output
    api = Api(node_app.test_client())
    for owner in ("alice", "bob"):
        response = api.request("GET", f"/api/accounts/balance/{node.accounts[owner]}",
                               node_token(node.secret, node.users[owner]))
        assert response.status_code == 200, response.get_json()
        assert Decimal(str(response.get_json()["balance"])) == shown[owner]


def test_migrated_entries_get_their_hash_chain_and_new_transfers_extend_it(node_app):
    from ledger import hashchain

    node = node_app.node
    result = migrated(node_app)
    assert "ledger entries hashed: 14" in result.output

    def chain(account_id):
        with node_app.app_context():
            database = db.get_db(node_app)
            return (list(database.ledgers.find({"account": account_id}, sort=[("seq", 1)])),
                    database.accounts.find_one({"_id": account_id})["lastHash"])

    entries, head = chain(node.accounts["alice"])
    prev = hashchain.GENESIS
    for entry in entries:
        assert entry["prevHash"] == prev
        assert entry["hash"] == hashchain.entry_hash(entry, prev)
        prev = entry["hash"]
    assert head == prev

    alice = node_token(node.secret, node.users["alice"])
    moved = Api(node_app.test_client()).transfer(alice, str(node.accounts["alice"]), str(node.accounts["bob"]), 1)
    assert moved.status_code == 200, moved.get_json()
    after, new_head = chain(node.accounts["alice"])
    assert after[-1]["prevHash"] == head
    assert new_head == after[-1]["hash"]
    assert "ledger entries hashed" not in migrated(node_app).output  # a second run hashes nothing
