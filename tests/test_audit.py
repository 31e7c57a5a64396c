"""`verify-ledger` / `audit.verify()`: the checks an operator runs to prove the ledger is consistent."""

from __future__ import annotations

from bson import ObjectId

from ledger import db
from ledger.models import utcnow
from ledger.services import audit
from tests.conftest import Api


def _account_with_one_entry(database, currency: str, entry_type: str, amount: int) -> None:
    account_id, now = ObjectId(), utcnow()
    signed = amount if entry_type == "CREDIT" else -amount
    database.accounts.insert_one({"_id": account_id, "user": ObjectId(), "status": "ACTIVE", "currency": currency,
                                  "balance": signed, "seq": 1, "createdAt": now, "updatedAt": now})
    database.ledgers.insert_one({"account": account_id, "type": entry_type, "amount": amount, "currency": currency,
                                 "transaction": ObjectId(), "balanceAfter": signed, "seq": 1, "createdAt": now})


def test_a_surplus_in_one_currency_cannot_hide_a_deficit_in_another(app):
    with app.app_context():
        database = db.get_db()
        _account_with_one_entry(database, "USD", "CREDIT", 100)
        _account_with_one_entry(database, "INR", "DEBIT", 100)

        report = audit.verify()

    assert report.total_balance_minor == 0
    assert report.balance_by_currency == {"USD": 100, "INR": -100}
    assert [str(problem) for problem in report.problems if problem.check == "currency-sum"] == [
        "currency-sum: INR balances sum to -100 minor units, not 0",
        "currency-sum: USD balances sum to 100 minor units, not 0"]


def test_verify_ledger_command_fails_on_a_stored_balance_the_entries_do_not_explain(app, api, runner):
    _, token = api.user()
    account = api.funded_account(token, 50)
    with app.app_context():
        db.get_db().accounts.update_one({"_id": ObjectId(account)}, {"$inc": {"balance": 1}})

    result = runner.invoke(args=["verify-ledger"])

    assert result.exit_code == 1
    assert (f"PROBLEM balance: account {account}: stored balance 5001, entries give 5000 (credits - debits)"
            in result.output)


def test_verify_ledger_command_passes_after_real_traffic(api, runner):
    _, alice = api.user()
    _, bob = api.user()
    source = api.funded_account(alice, 100, currency="USD")
    target = api.open_account(bob, "USD")
    assert api.transfer(alice, source, target, 12.34).status_code == 200
    api.funded_account(bob, 7)  # INR

    result = runner.invoke(args=["verify-ledger"])

    assert result.exit_code == 0, result.output
    assert "ledger OK" in result.output


def test_an_audit_reads_one_point_in_time_while_transfers_wait(app, api):
    import threading

    _, alice = api.user()
    _, bob = api.user()
    source = api.funded_account(alice, 100)
    target = api.open_account(bob)
    done = threading.Event()

    def transfer_meanwhile():
        client = Api(app.test_client())
        assert client.transfer(alice, source, target, 1).status_code == 200
        done.set()

    with app.app_context(), db.consistent_reads() as session:
        worker = threading.Thread(target=transfer_meanwhile)
        worker.start()
        first = db.get_db().accounts.find_one({"_id": ObjectId(source)}, session=session)["balance"]
        assert not done.wait(0.3)  # the transfer cannot commit between the audit's reads
        again = db.get_db().accounts.find_one({"_id": ObjectId(source)}, session=session)["balance"]
        assert first == again == 10000
    worker.join(timeout=10)
    assert done.is_set()
    assert api.balance(alice, source) == 99
