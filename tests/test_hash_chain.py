"""The hash chain: written by every transfer, recomputable from docs/hash-chain.md alone, and every direct edit
of the database — an amount changed, an entry deleted, two entries swapped, a balance edited, a link broken —
is caught by ``verify-ledger`` and named (check, account, seq)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from bson import ObjectId
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.errors import DuplicateKeyError

from ledger import hashchain
from ledger.services import audit, backfill
from tests.conftest import Api
from tests.ledger_checks import assert_ledger_consistent, database

GENESIS = "0" * 64


def reference_hash(entry: dict[str, Any], prev: str) -> str:
    """The recomputation of docs/hash-chain.md, written independently of ledger.hashchain."""
    created = entry["createdAt"].strftime("%Y-%m-%dT%H:%M:%S.") + f"{entry['createdAt'].microsecond // 1000:03d}Z"
    line = "|".join([str(entry["account"]), str(entry["seq"]), entry["type"], str(entry["amount"]),
                     entry["currency"], str(entry["balanceAfter"]), str(entry["transaction"]), created, prev])
    return hashlib.sha256(line.encode()).hexdigest()


def entries_of(app: Flask, account: str) -> list[dict[str, Any]]:
    return list(database(app).ledgers.find({"account": ObjectId(account)}, sort=[("seq", 1)]))


@pytest.fixture
def ledger(app: Flask, api: Api) -> dict[str, str]:
    """Alice's account A (funded 100, then 10 and 5 to Bob's B, then 2 back): four entries on A, three on B."""
    _, alice = api.user()
    _, bob = api.user()
    a = api.funded_account(alice, 100)
    b = api.open_account(bob)
    assert api.transfer(alice, a, b, 10).status_code == 200
    assert api.transfer(alice, a, b, 5).status_code == 200
    assert api.transfer(bob, b, a, 2).status_code == 200
    return {"a": a, "b": b, "alice": alice, "bob": bob}


def problems(app: Flask) -> list[audit.Problem]:
    with app.app_context():
        return audit.verify(keep=1000).problems


def named(found: list[audit.Problem]) -> set[tuple[str, str | None, int | None]]:
    return {(p.check, str(p.account) if p.account else None, p.seq) for p in found}


# ------------------------------------------------------------------------------------- the chain itself


def test_the_canonical_line_and_hash_match_the_documented_example() -> None:
    entry = {"account": ObjectId("65f1c0ffee0123456789abcd"), "seq": 1, "type": "CREDIT", "amount": 100000,
             "currency": "INR", "balanceAfter": 100000, "transaction": ObjectId("65f1c0ffee0123456789abce"),
             "createdAt": __import__("datetime").datetime(2026, 3, 1, 10, 0, tzinfo=__import__("datetime").UTC)}
    line = ("65f1c0ffee0123456789abcd|1|CREDIT|100000|INR|100000|65f1c0ffee0123456789abce|"
            "2026-03-01T10:00:00.000Z|" + GENESIS)

    assert hashchain.canonical_line(entry, GENESIS) == line
    assert hashchain.entry_hash(entry, GENESIS) == hashlib.sha256(line.encode()).hexdigest()
    assert hashchain.GENESIS == GENESIS


def test_every_entry_a_transfer_writes_links_to_the_previous_one_and_recomputes(app: Flask, ledger) -> None:
    for account, count in ((ledger["a"], 4), (ledger["b"], 3)):
        entries = entries_of(app, account)
        assert [e["seq"] for e in entries] == list(range(1, count + 1))
        prev = GENESIS
        for entry in entries:
            assert entry["prevHash"] == prev
            assert entry["hash"] == reference_hash(entry, prev)
            prev = entry["hash"]
        assert database(app).accounts.find_one({"_id": ObjectId(account)})["lastHash"] == prev
    assert_ledger_consistent(app)


def test_the_system_account_chain_holds_negative_balances(app: Flask, api: Api, ledger) -> None:
    system = database(app).accounts.find_one({"systemCurrency": "INR"})
    entries = list(database(app).ledgers.find({"account": system["_id"]}, sort=[("seq", 1)]))
    assert entries[-1]["balanceAfter"] < 0
    assert entries[-1]["hash"] == reference_hash(entries[-1], entries[-1]["prevHash"])


def test_an_untouched_ledger_verifies_with_no_problem(app: Flask, ledger, runner) -> None:
    assert problems(app) == []
    result = runner.invoke(args=["verify-ledger"])
    assert result.exit_code == 0, result.output
    assert "ledger OK" in result.output


# ------------------------------------------------------------------------------------------ tampering


def _entry(app: Flask, account: str, seq: int) -> dict[str, Any]:
    return database(app).ledgers.find_one({"account": ObjectId(account), "seq": seq})


def change_an_amount(app: Flask, ledger: dict[str, str]) -> set:
    database(app).ledgers.update_one({"_id": _entry(app, ledger["a"], 2)["_id"]}, {"$set": {"amount": 1}})
    return {("hash", ledger["a"], 2), ("balanceAfter", ledger["a"], 2), ("balance", ledger["a"], None)}


def delete_an_entry(app: Flask, ledger: dict[str, str]) -> set:
    database(app).ledgers.delete_one({"_id": _entry(app, ledger["a"], 3)["_id"]})
    return {("sequence", ledger["a"], 4), ("balance", ledger["a"], None), ("seq", ledger["a"], None)}


def delete_the_last_entry(app: Flask, ledger: dict[str, str]) -> set:
    database(app).ledgers.delete_one({"_id": _entry(app, ledger["a"], 4)["_id"]})
    return {("lastHash", ledger["a"], None), ("balance", ledger["a"], None), ("seq", ledger["a"], None)}


def swap_two_entries(app: Flask, ledger: dict[str, str]) -> set:
    ledgers = database(app).ledgers
    second, third = _entry(app, ledger["a"], 2), _entry(app, ledger["a"], 3)
    ledgers.delete_many({"_id": {"$in": [second["_id"], third["_id"]]}})
    ledgers.insert_many([{**second, "seq": 3}, {**third, "seq": 2}])
    return {("hash", ledger["a"], 2), ("link", ledger["a"], 2), ("hash", ledger["a"], 3),
            ("link", ledger["a"], 3), ("link", ledger["a"], 4)}


def edit_an_account_balance(app: Flask, ledger: dict[str, str]) -> set:
    database(app).accounts.update_one({"_id": ObjectId(ledger["b"])}, {"$inc": {"balance": 500}})
    return {("balance", ledger["b"], None), ("currency-sum", None, None)}


def edit_a_balance_after(app: Flask, ledger: dict[str, str]) -> set:
    database(app).ledgers.update_one({"_id": _entry(app, ledger["b"], 2)["_id"]}, {"$inc": {"balanceAfter": 1}})
    return {("hash", ledger["b"], 2), ("balanceAfter", ledger["b"], 2)}


def break_a_link(app: Flask, ledger: dict[str, str]) -> set:
    # The forger rewrites prevHash and recomputes the entry's own hash: only the link gives it away.
    entry = _entry(app, ledger["a"], 3)
    forged_prev = "f" * 64
    database(app).ledgers.update_one({"_id": entry["_id"]}, {"$set": {
        "prevHash": forged_prev, "hash": hashchain.entry_hash(entry, forged_prev)}})
    return {("link", ledger["a"], 3), ("link", ledger["a"], 4)}


def rewrite_a_hash(app: Flask, ledger: dict[str, str]) -> set:
    database(app).ledgers.update_one({"_id": _entry(app, ledger["b"], 1)["_id"]}, {"$set": {"hash": "0" * 64}})
    return {("hash", ledger["b"], 1), ("link", ledger["b"], 2)}


def insert_a_forged_entry(app: Flask, ledger: dict[str, str]) -> set:
    last = _entry(app, ledger["b"], 3)
    forged = {**last, "_id": ObjectId(), "seq": 4, "type": "CREDIT", "amount": 1000,
              "balanceAfter": last["balanceAfter"] + 1000, "prevHash": last["hash"]}
    forged["hash"] = hashchain.entry_hash(forged, last["hash"])
    database(app).ledgers.insert_one(forged)
    return {("balance", ledger["b"], None), ("seq", ledger["b"], None), ("lastHash", ledger["b"], None),
            ("transaction", ledger["b"], 4)}


def fail_a_completed_transaction(app: Flask, ledger: dict[str, str]) -> set:
    txn = _entry(app, ledger["b"], 1)["transaction"]
    database(app).transactions.update_one({"_id": txn}, {"$set": {"status": "FAILED"}})
    return {("transaction", ledger["a"], 2), ("transaction", ledger["b"], 1)}


def change_a_transaction_amount(app: Flask, ledger: dict[str, str]) -> set:
    txn = _entry(app, ledger["b"], 1)["transaction"]
    database(app).transactions.update_one({"_id": txn}, {"$set": {"amount": 99}})
    return {("transaction", ledger["a"], 2), ("transaction", ledger["b"], 1)}


TAMPERINGS: list[Callable[[Flask, dict[str, str]], set]] = [
    change_an_amount, delete_an_entry, delete_the_last_entry, swap_two_entries, edit_an_account_balance,
    edit_a_balance_after, break_a_link, rewrite_a_hash, insert_a_forged_entry, fail_a_completed_transaction,
    change_a_transaction_amount,
]


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=[t.__name__ for t in TAMPERINGS])
def test_a_direct_edit_of_the_database_is_caught_and_named(app: Flask, ledger, runner, tamper) -> None:
    with app.app_context():
        expected = tamper(app, ledger)

    found = problems(app)
    assert expected <= named(found), found
    result = runner.invoke(args=["verify-ledger", "--quiet"])
    assert result.exit_code == 1
    assert "ledger NOT OK" in result.output
    for check, account, seq in expected:
        line = f"PROBLEM {check}: " + (f"account {account}" if account else "")
        line += f" seq {seq}" if seq is not None else ""
        assert line in result.output, (line, result.output)


@pytest.mark.parametrize("field", hashchain.CHAIN_FIELDS)
def test_changing_any_hashed_field_of_any_entry_breaks_its_hash(app: Flask, ledger, field: str) -> None:
    from datetime import timedelta

    changed = {"account": ObjectId(ledger["b"]), "seq": 9, "type": "CREDIT", "amount": 7, "currency": "USD",
               "balanceAfter": -1, "transaction": ObjectId()}
    for seq in range(1, 5):
        entry = _entry(app, ledger["a"], seq)
        value = entry["createdAt"] - timedelta(milliseconds=1) if field == "createdAt" else changed[field]
        if entry[field] == value:
            value = {"type": "DEBIT", "seq": 8}.get(field, value)
        assert entry["hash"] != hashchain.entry_hash({**entry, field: value}, entry["prevHash"])
        assert entry["hash"] == hashchain.entry_hash(entry, entry["prevHash"])


def test_the_problems_are_capped_but_all_are_counted(app: Flask, ledger) -> None:
    database(app).ledgers.update_many({}, {"$set": {"hash": "1" * 64}})
    with app.app_context():
        report = audit.verify(keep=3)
    assert len(report.problems) == 3
    assert report.problem_count > 3
    assert not report.ok


# ------------------------------------------------------------------------------------------- backfill


def _unchain(app: Flask) -> None:
    """What a database written before the chain existed looks like."""
    database(app).ledgers.update_many({}, {"$unset": {"prevHash": "", "hash": ""}})
    database(app).accounts.update_many({}, {"$unset": {"lastHash": ""}})


def test_the_backfill_chains_old_entries_and_a_second_run_changes_nothing(app: Flask, api: Api, ledger,
                                                                         runner) -> None:
    _unchain(app)
    assert {p.check for p in problems(app)} == {"chain-missing"}
    # New transfers on unchained accounts stay unchained until the backfill (whose chain then includes them).
    assert api.transfer(ledger["alice"], ledger["a"], ledger["b"], 1).status_code == 200
    assert "hash" not in entries_of(app, ledger["a"])[-1]

    first = runner.invoke(args=["backfill-ledger-chain"])
    second = runner.invoke(args=["backfill-ledger-chain"])

    assert first.exit_code == 0, first.output
    assert "hashed 10 entries on 3 accounts" in first.output  # A 5, B 4, the system account 1
    assert "hashed 0 entries on 0 accounts" in second.output
    assert problems(app) == []
    assert api.transfer(ledger["alice"], ledger["a"], ledger["b"], 1).status_code == 200
    entries = entries_of(app, ledger["a"])
    assert entries[-1]["prevHash"] == entries[-2]["hash"]
    assert problems(app) == []


def test_an_interrupted_backfill_resumes_where_it_stopped(app: Flask, ledger, monkeypatch) -> None:
    _unchain(app)
    monkeypatch.setattr(backfill, "BATCH", 2)
    original_write, calls = backfill._write, []

    def crash_after_first_batch(database, updates, head):
        calls.append(len(updates))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the operator's ^C, between two batches
        return original_write(database, updates, head)

    monkeypatch.setattr(backfill, "_write", crash_after_first_batch)
    with app.app_context(), pytest.raises(KeyboardInterrupt):
        backfill.backfill()
    half_done = len([e for e in database(app).ledgers.find({}) if "hash" in e])
    assert 0 < half_done < 8  # some accounts (and batches) were chained, not all

    monkeypatch.setattr(backfill, "_write", original_write)
    with app.app_context():
        report = backfill.backfill()
    assert report.ok
    assert report.entries_hashed == 8 - half_done
    assert problems(app) == []


def test_the_backfill_refuses_to_chain_over_an_edited_entry(app: Flask, ledger, runner) -> None:
    entry = _entry(app, ledger["a"], 2)
    database(app).ledgers.update_many({"account": ObjectId(ledger["a"]), "seq": {"$gt": 2}},
                                      {"$unset": {"prevHash": "", "hash": ""}})
    database(app).accounts.update_one({"_id": ObjectId(ledger["a"])}, {"$unset": {"lastHash": ""}})
    database(app).ledgers.update_one({"_id": entry["_id"]}, {"$set": {"amount": 3}})

    result = runner.invoke(args=["backfill-ledger-chain"])

    assert result.exit_code == 1
    assert f"REFUSED: account {ledger['a']} seq 2: its stored hash does not recompute" in result.output
    assert "hash" not in _entry(app, ledger["a"], 3)
    assert ("hash", ledger["a"], 2) in named(problems(app))


# ------------------------------------------------------------------------------- generated tampering

FIELD_CHANGES = {
    "amount": lambda entry, ledger: st.integers(1, 10**12),
    "balanceAfter": lambda entry, ledger: st.integers(-10**12, 10**12),
    "seq": lambda entry, ledger: st.integers(5, 60),
    "type": lambda entry, ledger: st.just("CREDIT" if entry["type"] == "DEBIT" else "DEBIT"),
    "currency": lambda entry, ledger: st.sampled_from(["USD", "EUR", "JPY"]),
    "createdAt": lambda entry, ledger: st.integers(-10**9, 10**9).filter(bool).map(
        lambda ms: entry["createdAt"] + __import__("datetime").timedelta(milliseconds=ms)),
    "transaction": lambda entry, ledger: st.builds(ObjectId),
    "account": lambda entry, ledger: st.sampled_from([ObjectId(ledger["a"]), ObjectId(ledger["b"]), ObjectId()]),
    "prevHash": lambda entry, ledger: st.text("0123456789abcdef", min_size=64, max_size=64),
    "hash": lambda entry, ledger: st.text("0123456789abcdef", min_size=64, max_size=64),
}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_single_field_changed_on_any_entry_is_caught_at_that_entry(app: Flask, ledger, data) -> None:
    entries = list(database(app).ledgers.find({}, sort=[("_id", 1)]))
    original = data.draw(st.sampled_from(entries), label="entry")
    field = data.draw(st.sampled_from(sorted(FIELD_CHANGES)), label="field")
    value = data.draw(FIELD_CHANGES[field](original, ledger).filter(lambda v: v != original[field]), label="value")
    ledgers = database(app).ledgers
    try:
        ledgers.update_one({"_id": original["_id"]}, {"$set": {field: value}})
    except DuplicateKeyError:
        return  # the unique (account, seq) index refuses it: no tampering to detect
    try:
        found = problems(app)
    finally:
        ledgers.replace_one({"_id": original["_id"]}, original)

    accounts_named = {p.account for p in found}
    assert found, (field, value)
    assert original["account"] in accounts_named or value in accounts_named, (field, value, found)
    assert problems(app) == []  # restored: the chain verifies again


def test_the_verification_reads_every_collection_in_index_order(app: Flask, ledger, monkeypatch) -> None:
    from ledger import db
    from tests.test_index_audit import QueryRecorder

    recorder = QueryRecorder(monkeypatch)
    with app.app_context():
        audit.verify()
    monkeypatch.undo()

    indexes = {name: [list(model.document["key"]) for model in models] + [["_id"]]
               for name, models in db.declared_indexes().items()}
    sorts = {(query.collection, tuple(field for field, _ in query.sort)) for query in recorder.queries}
    assert sorts == {("accounts", ("_id",)), ("ledgers", ("account", "seq")), ("ledgers", ("transaction",)),
                     ("transactions", ("_id",)), ("holds", ("fromAccount",))}
    for collection, fields in sorts:
        assert any(keys[:len(fields)] == list(fields) for keys in indexes[collection]), (collection, fields)


def test_a_transfer_landing_while_an_account_is_backfilled_is_chained_too(app: Flask, api: Api, ledger,
                                                                          monkeypatch) -> None:
    _unchain(app)
    original_write, raced = backfill._write, []

    def transfer_first(database, updates, head):
        if head is not None and head[0] == ObjectId(ledger["a"]) and not raced:
            raced.append(True)  # between the walk's read and its write, a transfer appends to the account
            assert api.transfer(ledger["alice"], ledger["a"], ledger["b"], 1).status_code == 200
        return original_write(database, updates, head)

    monkeypatch.setattr(backfill, "_write", transfer_first)
    with app.app_context():
        report = backfill.backfill()

    assert raced
    assert report.ok
    entries = entries_of(app, ledger["a"])
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert all("hash" in e for e in entries)
    assert problems(app) == []
