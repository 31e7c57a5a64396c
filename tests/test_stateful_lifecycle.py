"""The state machine of ``test_stateful``, extended with holds, captures, voids, reversals, freezes and closes.

The model now also tracks each account's status and held amount, each hold's state and which completed
transactions were reversed. After every step, besides the base invariants (balances equal the model, the audit
is clean, every currency sums to 0, no customer is negative): ``availableBalance`` equals the model's and
``0 <= availableBalance <= balance`` for every customer account.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from fractions import Fraction

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, consumes, invariant, multiple, rule

from tests.test_stateful import Account, LedgerMachine, UsedKey, _plain, amounts, major

INACTIVE = "Both accounts must be active to process the transaction"


@dataclass(frozen=True)
class Hold:
    id: str
    source: Account
    target: Account
    amount: int


@dataclass(frozen=True)
class Completed:
    id: str
    source: Account
    target: Account
    amount: int


class LifecycleMachine(LedgerMachine):
    holds = Bundle("holds")
    completed = Bundle("completed")

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[str, str] = {}
        self.held: dict[str, int] = {}
        self.hold_state: dict[str, str] = {}
        self.reversed: set[str] = set()
        self.owner_of: dict[str, int] = {}

    # ------------------------------------------------------------------------------ base rules, revised

    def open_account(self, owner: int, currency: str) -> Account:
        account = super().open_account(owner, currency)
        self.status[account.id] = "ACTIVE"
        self.held[account.id] = 0
        self.owner_of[account.id] = owner
        return account

    @rule(account=LedgerMachine.accounts, amount=amounts)
    def fund(self, account: Account, amount: int) -> None:
        response = self.api.fund(account.id, major(amount))
        if self.status[account.id] != "ACTIVE":
            assert response.status_code == 400, response.get_json()
            return
        assert response.status_code == 201, response.get_json()
        self.balances[account.id] += amount

    def available(self, account: Account) -> int:
        return self.balances[account.id] - self.held[account.id]

    def _expected_refusal(self, source: Account, target: Account, amount: int) -> str | None:
        if self.status[source.id] != "ACTIVE" or self.status[target.id] != "ACTIVE":
            return INACTIVE
        if source.currency != target.currency:
            return "currency"
        if amount > self.available(source):
            return (f"Insufficient balance. Available balance is {_plain(self.available(source))}. "
                    f"Required balance is {_plain(amount)}")
        return None

    def _assert_refusal(self, response, expected: str) -> None:
        body = response.get_json()
        assert response.status_code == 400, body
        if expected == "currency":
            assert "urrency" in body["message"], body
        else:
            assert body["message"] == expected, body

    def _transfer(self, source: Account, target: Account, amount: int):
        key = uuid.uuid4().hex
        response = self.api.transfer(self.tokens[source.owner], source.id, target.id, major(amount), key=key)
        body = response.get_json()
        if source.id == target.id:
            assert response.status_code == 400, body
            return multiple()
        refusal = self._expected_refusal(source, target, amount)
        if refusal is not None:
            self._assert_refusal(response, refusal)
        else:
            assert response.status_code == 200, body
            self.balances[source.id] -= amount
            self.balances[target.id] += amount
        return UsedKey(source.owner, key, source, target, amount, response.status_code, body)

    @rule(target=completed, source=LedgerMachine.accounts, target_account=LedgerMachine.accounts,
          fraction=st.fractions(min_value=0, max_value=1, max_denominator=8))
    def transfer_part_of_what_is_available(self, source: Account, target_account: Account, fraction: Fraction):
        amount = max(1, int(self.available(source) * fraction))
        used = self._transfer(source, target_account, amount)
        if isinstance(used, UsedKey) and used.status == 200:
            return Completed(used.body["transaction"]["_id"], source, target_account, amount)
        return multiple()

    # --------------------------------------------------------------------------------------- holds

    @rule(target=holds, source=LedgerMachine.accounts, target_account=LedgerMachine.accounts,
          fraction=st.fractions(min_value=0, max_value=Fraction(5, 4), max_denominator=8))
    def create_hold(self, source: Account, target_account: Account, fraction: Fraction):
        amount = max(1, int(max(self.available(source), 1) * fraction))
        response = self.api.request("POST", "/api/holds", self.tokens[source.owner], json={
            "fromAccount": source.id, "toAccount": target_account.id, "amount": major(amount),
            "idempotencyKey": uuid.uuid4().hex})
        if source.id == target_account.id:
            assert response.status_code == 400
            return multiple()
        refusal = self._expected_refusal(source, target_account, amount)
        if refusal is not None:
            self._assert_refusal(response, refusal)
            return multiple()
        assert response.status_code == 201, response.get_json()
        hold = Hold(response.get_json()["hold"]["_id"], source, target_account, amount)
        self.held[source.id] += amount
        self.hold_state[hold.id] = "ACTIVE"
        return hold

    @rule(hold=consumes(holds), fraction=st.fractions(min_value=0, max_value=1, max_denominator=8))
    def capture_hold(self, hold: Hold, fraction: Fraction) -> None:
        captured = max(1, int(hold.amount * fraction))
        response = self.api.request("POST", f"/api/holds/{hold.id}/capture", self.tokens[hold.source.owner],
                                    json={"idempotencyKey": uuid.uuid4().hex, "amount": major(captured)})
        body = response.get_json()
        if self.hold_state[hold.id] != "ACTIVE":
            assert response.status_code == 409, body
            return
        if self.status[hold.source.id] != "ACTIVE" or self.status[hold.target.id] != "ACTIVE":
            assert (response.status_code, body["message"]) == (400, INACTIVE), body
            return
        assert response.status_code == 200, body
        assert body["hold"]["status"] == "CAPTURED"
        self.hold_state[hold.id] = "CAPTURED"
        self.held[hold.source.id] -= hold.amount
        self.balances[hold.source.id] -= captured
        self.balances[hold.target.id] += captured

    @rule(hold=holds)
    def void_hold(self, hold: Hold) -> None:
        response = self.api.request("POST", f"/api/holds/{hold.id}/void", self.tokens[hold.source.owner], json={})
        if self.hold_state[hold.id] != "ACTIVE":
            assert response.status_code == 409, response.get_json()
            return
        assert response.status_code == 200, response.get_json()
        self.hold_state[hold.id] = "VOIDED"
        self.held[hold.source.id] -= hold.amount

    # ----------------------------------------------------------------------------------- reversals

    @rule(original=completed)
    def reverse(self, original: Completed) -> None:
        response = self.api.request("POST", f"/api/transactions/{original.id}/reverse", self.api.system_token(),
                                    json={"idempotencyKey": uuid.uuid4().hex})
        body = response.get_json()
        if original.id in self.reversed:
            assert response.status_code == 409, body
            return
        refusal = self._expected_refusal(original.target, original.source, original.amount)
        if refusal is not None:
            self._assert_refusal(response, refusal)
            return
        assert response.status_code == 201, body
        self.reversed.add(original.id)
        self.balances[original.target.id] -= original.amount
        self.balances[original.source.id] += original.amount

    # ----------------------------------------------------------------------------------- lifecycle

    @rule(account=LedgerMachine.accounts, frozen=st.booleans())
    def freeze_or_unfreeze(self, account: Account, frozen: bool) -> None:
        wanted = "FROZEN" if frozen else "ACTIVE"
        response = self.api.request("PATCH", f"/api/accounts/{account.id}", self.api.system_token(),
                                    json={"status": wanted})
        if self.status[account.id] == "CLOSED":
            assert response.status_code == 409, response.get_json()
            return
        assert response.status_code == 200, response.get_json()
        self.status[account.id] = wanted

    @rule(account=LedgerMachine.accounts)
    def close(self, account: Account) -> None:
        response = self.api.request("PATCH", f"/api/accounts/{account.id}", self.tokens[account.owner],
                                    json={"status": "CLOSED"})
        if self.status[account.id] != "ACTIVE":
            assert response.status_code == 409, response.get_json()
        elif self.balances[account.id] != 0 or self.held[account.id]:
            assert response.status_code == 400, response.get_json()
        else:
            assert response.status_code == 200, response.get_json()
            self.status[account.id] = "CLOSED"

    # ---------------------------------------------------------------------------------- invariants

    @invariant()
    def available_balance_matches_the_model(self) -> None:
        for account_id, balance in self.balances.items():
            response = self.api.request("GET", f"/api/accounts/balance/{account_id}",
                                        self.tokens[self.owner_of[account_id]])
            body = response.get_json()
            expected = balance - self.held[account_id]
            assert body["availableBalance"] == major(expected), (account_id, body, expected)
            assert 0 <= body["availableBalance"] <= body["balance"], body


LifecycleMachine.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLifecycleMachine = LifecycleMachine.TestCase
