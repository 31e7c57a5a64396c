"""Ledger entries are never updated or deleted: the model refuses it, and no code path asks for it."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import pytest
from bson import ObjectId

from ledger import db
from ledger.models import ImmutableLedgerError, LedgerEntry
from tests.ledger_checks import assert_ledger_consistent, database

LEDGER_PACKAGE = Path(__file__).resolve().parent.parent / "ledger"

# What any code may do with the ledgers collection: read it, append to it, manage its indexes.
ALLOWED_LEDGER_METHODS = {
    "insert_one", "insert_many", "find", "find_one", "count_documents", "estimated_document_count",
    "aggregate", "distinct", "create_index", "create_indexes", "index_information", "list_indexes", "watch",
    "with_options", "name", "full_name",
}


@pytest.fixture
def entry_ids(api, app):
    """Two real ledger entries written by a transfer, with the models bound to this test's database."""
    _, token = api.user()
    source = api.funded_account(token, 100)
    target = api.open_account(token)
    response = api.transfer(token, source, target, Decimal("12.34"))
    assert response.status_code == 200
    txn_id = ObjectId(response.get_json()["transaction"]["_id"])
    db.bind_models(app)  # another app built later in this process may have taken the binding
    ids = [e["_id"] for e in database(app).ledgers.find({"transaction": txn_id})]
    assert len(ids) == 2
    return ids


def stored_entries(app):
    return sorted(database(app).ledgers.find({}), key=lambda e: e["_id"])


def test_the_models_read_the_entries_the_transfer_wrote(app, entry_ids):
    entries = list(LedgerEntry.objects(id__in=entry_ids))
    assert sorted(e.type for e in entries) == ["CREDIT", "DEBIT"]
    assert {e.amount for e in entries} == {1234}


def test_re_saving_a_changed_entry_is_refused_and_changes_nothing(app, entry_ids):
    before = stored_entries(app)
    entry = LedgerEntry.objects.get(id=entry_ids[0])
    entry.amount = 1

    with pytest.raises(ImmutableLedgerError):
        entry.save()

    assert stored_entries(app) == before
    assert_ledger_consistent(app)


@pytest.mark.parametrize("attempt", [
    pytest.param(lambda entry: entry.update(set__amount=1), id="document update"),
    pytest.param(lambda entry: entry.modify(set__amount=1), id="document modify"),
    pytest.param(lambda entry: entry.delete(), id="document delete"),
])
def test_changing_or_deleting_an_entry_through_the_document_is_refused(app, entry_ids, attempt):
    before = stored_entries(app)
    entry = LedgerEntry.objects.get(id=entry_ids[0])

    with pytest.raises(ImmutableLedgerError):
        attempt(entry)

    assert stored_entries(app) == before
    assert_ledger_consistent(app)


@pytest.mark.parametrize("attempt", [
    pytest.param(lambda qs: qs.update(set__amount=1), id="queryset update"),
    pytest.param(lambda qs: qs.update_one(set__amount=1), id="queryset update_one"),
    pytest.param(lambda qs: qs.upsert_one(set__amount=1), id="queryset upsert_one"),
    pytest.param(lambda qs: qs.modify(set__amount=1), id="queryset modify"),
    pytest.param(lambda qs: qs.delete(), id="queryset delete"),
])
def test_changing_or_deleting_entries_through_a_queryset_is_refused(app, entry_ids, attempt):
    before = stored_entries(app)

    with pytest.raises(ImmutableLedgerError):
        attempt(LedgerEntry.objects(id__in=entry_ids))

    assert stored_entries(app) == before
    assert_ledger_consistent(app)


# ------------------------------------------------------------------------- no code path writes them


def _ledger_collection_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, method) for every method called on something that names the ledgers collection."""
    uses = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        receiver = ast.unparse(node.value)
        names_ledgers = (receiver.endswith(".ledgers") or receiver == "ledgers" or "['ledgers']" in receiver
                         or '["ledgers"]' in receiver or "LedgerEntry" in receiver)
        if names_ledgers:
            uses.append((node.lineno, node.attr))
    return uses


def _violations(source: str, filename: str) -> list[str]:
    found = []
    for line, method in _ledger_collection_uses(ast.parse(source, filename)):
        if method not in ALLOWED_LEDGER_METHODS and not method.startswith("_") and method not in {
                "objects", "_get_collection_name", "_meta"}:
            found.append(f"{filename}:{line}: .{method}() on the ledgers collection")
    return found


def test_the_scanner_flags_an_update_or_delete_on_the_ledgers_collection():
    source = (
        "def bad(database):\n"
        "    database.ledgers.update_one({}, {'$set': {'amount': 1}})\n"
        "    database['ledgers'].delete_many({})\n"
        "    LedgerEntry.objects.delete()\n"
        "    database.ledgers.insert_many([])\n"
    )
    assert _violations(source, "bad.py") == [
        "bad.py:2: .update_one() on the ledgers collection",
        "bad.py:3: .delete_many() on the ledgers collection",
        "bad.py:4: .delete() on the ledgers collection",
    ]


# The one sanctioned exception: the one-time conversion of entries the Node service wrote (major-unit doubles,
# no seq). Its update filters require ``seq`` to be absent, so it cannot touch an entry this service wrote.
NODE_MIGRATION = LEDGER_PACKAGE / "migrate.py"
# The other: the one-time hash-chain backfill of entries written before the chain existed. Its update filter
# requires both chain fields to be absent and it sets only those two, so it can add them once and change nothing.
CHAIN_BACKFILL = LEDGER_PACKAGE / "services" / "backfill.py"


def test_no_code_in_the_ledger_package_updates_or_deletes_ledger_entries():
    files = sorted(path for path in LEDGER_PACKAGE.rglob("*.py") if path not in (NODE_MIGRATION, CHAIN_BACKFILL))
    assert len(files) > 10  # the scan really ran over the package

    violations = [v for path in files for v in _violations(path.read_text("utf-8"), str(path))]

    assert violations == []


def test_the_node_migration_rewrites_entries_only_through_filters_that_exclude_this_services_entries():
    source = NODE_MIGRATION.read_text("utf-8")
    writes = [method for _, method in _ledger_collection_uses(ast.parse(source))
              if method not in ALLOWED_LEDGER_METHODS]
    assert writes == ["bulk_write"]
    assert source.count('{"_id": entry["_id"], "seq": {"$exists": False}}') == 1


def test_the_transfer_path_appends_to_the_ledgers_collection():
    # The scan above would pass vacuously if the collection were renamed; the writer must still be visible.
    source = (LEDGER_PACKAGE / "services" / "transfers.py").read_text("utf-8")
    methods = [method for _, method in _ledger_collection_uses(ast.parse(source))]
    assert methods == ["insert_many"]


def test_the_chain_backfill_only_adds_the_two_chain_fields_to_entries_that_have_neither():
    source = CHAIN_BACKFILL.read_text("utf-8")
    writes = [method for _, method in _ledger_collection_uses(ast.parse(source))
              if method not in ALLOWED_LEDGER_METHODS]
    assert writes == ["bulk_write"]
    assert source.count("UpdateOne(") == 1
    assert ('UpdateOne({"_id": entry["_id"], "hash": {"$exists": False}, "prevHash": {"$exists": False}},\n'
            '                                 {"$set": {"prevHash": prev_hash, "hash": entry_hash}})') in source
