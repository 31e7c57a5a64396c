"""A state machine drives the API with random sequences of operations and compares it with a tiny model.

Rules: open accounts (two currencies), fund them, transfer (including to oneself, from someone else's account,
between currencies and beyond the balance), replay a used key, and reuse a key with a different request. After
every step the invariants are checked: every balance equals the model, the audit is clean (stored balances equal
the ledger's sums), all balances sum to zero, no customer balance is negative. Every example runs on a fresh app
and database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from tests.conftest import Api, drop_database, make_app
from tests.ledger_checks import assert_ledger_consistent, balance_minor

CURRENCIES = ("INR", "USD")
USERS = 2
amounts = st.integers(min_value=1, max_value=50_000)  # minor units


def major(minor: int) -> Decimal:
    return Decimal(minor).scaleb(-2)


@dataclass(frozen=True)
class Account:
    id: str
    owner: int
    currency: str


@dataclass(frozen=True)
class UsedKey:
    """A key and the first answer it got: (user, request) -> (status, body)."""

    user: int
    key: str
    source: Account
    target: Account
    amount: int
    status: int
    body: dict[str, Any]


class LedgerMachine(RuleBasedStateMachine):
    accounts = Bundle("accounts")
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.app = make_app()
        self.api = Api(self.app.test_client())
        self.tokens = [self.api.user()[1] for _ in range(USERS)]
        self.balances: dict[str, int] = {}

    def teardown(self) -> None:
        drop_database(self.app)

    # ----------------------------------------------------------------------------------------- rules

    @initialize(target=accounts, funding=amounts)
    def one_funded_inr_account_per_user(self, funding: int):
        opened = [self.open_account(owner, "INR") for owner in range(USERS)]
        self.fund(opened[0], funding)
        return multiple(*opened)

    @rule(target=accounts, owner=st.integers(0, USERS - 1), currency=st.sampled_from(CURRENCIES))
    def open_account(self, owner: int, currency: str) -> Account:
        account = Account(self.api.open_account(self.tokens[owner], currency), owner, currency)
        self.balances[account.id] = 0
        return account

    @rule(account=accounts, amount=amounts)
    def fund(self, account: Account, amount: int) -> None:
        response = self.api.fund(account.id, major(amount))
        assert response.status_code == 201, response.get_json()
        self.balances[account.id] += amount

    @rule(target=keys, source=accounts, target_account=accounts, amount=amounts)
    def transfer(self, source: Account, target_account: Account, amount: int):
        return self._transfer(source, target_account, amount)

    @rule(target=keys, source=accounts, target_account=accounts, extra=amounts)
    def transfer_more_than_the_balance(self, source: Account, target_account: Account, extra: int):
        return self._transfer(source, target_account, self.balances[source.id] + extra)

    @rule(source=accounts, target_account=accounts, amount=amounts)
    def transfer_from_someone_elses_account(self, source: Account, target_account: Account, amount: int) -> None:
        intruder = (source.owner + 1) % USERS
        response = self.api.transfer(self.tokens[intruder], source.id, target_account.id, major(amount))
        expected = 400
        assert response.status_code == expected, response.get_json()
        if source.id != target_account.id:
            assert response.get_json()["message"] == "One or both accounts not found"

    @rule(used=keys)
    def replay_a_used_key(self, used: UsedKey) -> None:
        response = self.api.transfer(self.tokens[used.user], used.source.id, used.target.id, major(used.amount),
                                     key=used.key)
        assert response.status_code == used.status, response.get_json()
        assert response.headers.get("Idempotent-Replayed") == "true"
        body = response.get_json()
        if used.status == 200:
            assert body["message"] == "Transaction already processed"
            assert body["transaction"] == used.body["transaction"]
        else:
            assert body == used.body

    @rule(used=keys, delta=amounts)
    def reuse_a_key_with_another_amount(self, used: UsedKey, delta: int) -> None:
        response = self.api.transfer(self.tokens[used.user], used.source.id, used.target.id,
                                     major(used.amount + delta), key=used.key)
        assert response.status_code == 422, response.get_json()
        assert response.get_json()["message"] == "idempotencyKey was already used with a different request"

    def _transfer(self, source: Account, target: Account, amount: int):
        key = uuid.uuid4().hex
        response = self.api.transfer(self.tokens[source.owner], source.id, target.id, major(amount), key=key)
        body = response.get_json()
        if source.id == target.id:
            assert response.status_code == 400, body
            return multiple()  # a validation error consumes no key
        if source.currency != target.currency:
            assert response.status_code == 400, body
            assert "urrency" in body["message"]
        elif amount > self.balances[source.id]:
            assert response.status_code == 400, body
            assert body["message"] == (
                f"Insufficient balance. Available balance is {_plain(self.balances[source.id])}. "
                f"Required balance is {_plain(amount)}")
        else:
            assert response.status_code == 200, body
            assert body["transaction"]["status"] == "COMPLETED"
            self.balances[source.id] -= amount
            self.balances[target.id] += amount
        assert "Idempotent-Replayed" not in response.headers
        return UsedKey(source.owner, key, source, target, amount, response.status_code, body)

    # ------------------------------------------------------------------------------------ invariants

    @invariant()
    def balances_match_the_model_and_the_ledger(self) -> None:
        for account_id, expected in self.balances.items():
            assert balance_minor(self.app, account_id) == expected, account_id
        assert_ledger_consistent(self.app)


def _plain(minor: int) -> str:
    value = major(minor).normalize()
    return format(value, "f")


LedgerMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerMachine = LedgerMachine.TestCase
