"""Every query the service issues is served by a declared index.

The test drives every route through the test client (and one pass of the outbox sender), records each filter
and sort the services hand to the driver, and checks them against ``ledger.db.declared_indexes()``: a filter's
leading index keys must all be pinned by equality (or ``$in``) — or it pins ``_id`` — and a sort must follow
that equality prefix in the same index. An ``$or`` is checked branch by branch, as MongoDB plans it.

On a replica set (``LEDGER_TEST_MONGO_URI``) the same recorded queries are explained by the server: the winning
plan must use an index (IXSCAN, IDHACK, EXPRESS), never a COLLSCAN.

Whole-collection scans that are whole-collection by design (``verify-ledger`` recomputing every balance) are not
request paths and are not exercised here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from mongomock_ng import collection as mock_collection
from pymongo import collection as real_collection
from pymongo import cursor as real_cursor

from ledger import db
from tests.conftest import Api, unique_email

RANGE_OPERATORS = {"$gt", "$gte", "$lt", "$lte", "$ne", "$nin", "$exists", "$regex", "$not", "$type"}
FILTERED_METHODS = ("find", "find_one", "update_one", "update_many", "delete_one", "delete_many",
                    "count_documents", "find_one_and_update", "find_one_and_delete", "find_one_and_replace",
                    "replace_one", "distinct")


@dataclass(frozen=True)
class Query:
    collection: str
    filter: dict[str, Any]
    sort: tuple[tuple[str, int], ...] = ()


class QueryRecorder:
    """Wraps the driver's (and the mock's) collection methods to record every filter and sort handed to them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queries: list[Query] = []
        for collection_class in (mock_collection.Collection, real_collection.Collection):
            for name in FILTERED_METHODS:
                monkeypatch.setattr(collection_class, name, self._filtered(getattr(collection_class, name)))
            monkeypatch.setattr(collection_class, "bulk_write", self._bulk(collection_class.bulk_write))
        for cursor_class in (mock_collection.Cursor, real_cursor.Cursor):
            monkeypatch.setattr(cursor_class, "sort", self._sorted(cursor_class.sort))

    def _add(self, collection: str, query_filter: Any, sort: Any = None) -> None:
        if isinstance(query_filter, dict):
            self.queries.append(Query(collection, query_filter, _normalize_sort(sort)))

    def _filtered(self, method: Any) -> Any:
        recorder = self

        def wrapper(collection: Any, *args: Any, **kwargs: Any) -> Any:
            query_filter = args[0] if args else kwargs.get("filter", {})
            if method.__name__ == "distinct":
                query_filter = args[1] if len(args) > 1 else kwargs.get("filter", {})
            recorder._add(collection.name, query_filter or {}, kwargs.get("sort"))
            return method(collection, *args, **kwargs)

        wrapper.__name__ = method.__name__
        return wrapper

    def _bulk(self, method: Any) -> Any:
        recorder = self

        def wrapper(collection: Any, requests: Any, *args: Any, **kwargs: Any) -> Any:
            requests = list(requests)
            for operation in requests:
                recorder._add(collection.name, getattr(operation, "_filter", None))
            return method(collection, requests, *args, **kwargs)

        return wrapper

    def _sorted(self, method: Any) -> Any:
        recorder = self

        def wrapper(cursor: Any, key_or_list: Any, direction: Any = None) -> Any:
            sort = [(key_or_list, direction or 1)] if isinstance(key_or_list, str) else key_or_list
            spec = getattr(cursor, "_spec", None) or getattr(cursor, "_Cursor__spec", None) or {}
            recorder._add(cursor.collection.name, spec, sort)
            return method(cursor, key_or_list, direction) if direction is not None else method(cursor, key_or_list)

        return wrapper


def _normalize_sort(sort: Any) -> tuple[tuple[str, int], ...]:
    if not sort:
        return ()
    items = sort.items() if isinstance(sort, dict) else sort
    return tuple((field, int(direction)) for field, direction in items)


def _branches(query_filter: dict[str, Any]) -> list[dict[str, Any]]:
    """The conjunctive branches MongoDB plans separately: one per element of a top-level ``$or``."""
    common = {k: v for k, v in query_filter.items() if k != "$or"}
    alternatives = query_filter.get("$or")
    if not alternatives:
        return [common]
    return [branch for alternative in alternatives for branch in _branches({**common, **alternative})]


def _equality_fields(branch: dict[str, Any]) -> set[str]:
    fields = set()
    for field, condition in branch.items():
        if field.startswith("$"):
            continue
        if isinstance(condition, dict) and any(op.startswith("$") for op in condition):
            if set(condition) <= {"$eq", "$in"}:
                fields.add(field)
        else:
            fields.add(field)
    return fields


def _index_keys(collection: str) -> list[list[str]]:
    keys = [["_id"]]
    for model in db.declared_indexes().get(collection, []):
        keys.append(list(model.document["key"].keys()))
    return keys


def _served_by(query: Query, branch: dict[str, Any]) -> list[str] | None:
    """The keys of a declared index that serves ``branch`` (and the sort), or None."""
    equal = _equality_fields(branch)
    if "_id" in equal:
        return ["_id"]
    sort_fields = [field for field, _ in query.sort]
    for keys in _index_keys(query.collection):
        prefix = 0
        while prefix < len(keys) and keys[prefix] in equal:
            prefix += 1
        if prefix == 0:
            continue
        if sort_fields and keys[prefix:prefix + len(sort_fields)] != sort_fields:
            continue
        return keys
    return None


def _unserved(queries: list[Query]) -> list[str]:
    problems = []
    for query in queries:
        for branch in _branches(query.filter):
            if _served_by(query, branch) is None:
                problems.append(f"{query.collection}: filter {branch!r} sort {list(query.sort)!r}")
    return problems


def _exercise_every_route(app: Flask, api: Api) -> None:
    """Every route of API.md, success and the main error paths, plus one outbox pass."""
    email = unique_email("audit")
    registered = api.register(email=email, password="password-123")
    token, user_id = registered["token"], registered["user"]["_id"]
    assert api.login(email, "password-123").status_code == 200
    assert api.login(email, "wrong-password").status_code == 401
    assert api.login(unique_email("nobody"), "password-123").status_code == 401
    duplicate = api.request("POST", "/api/auth/register",
                            json={"email": email, "password": "password-123", "name": "Twin"})
    assert duplicate.status_code == 422

    source = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])
    created = api.request("POST", "/api/accounts/create", token, json={"currency": "INR"})
    assert created.status_code == 201
    for path in ("/api/accounts", f"/api/accounts/{source}", f"/api/accounts/user/{user_id}",
                 f"/api/accounts/balance/{source}"):
        assert api.request("GET", path, token).status_code == 200
    assert api.request("GET", f"/api/accounts/{'0' * 24}", token).status_code == 404

    key = uuid.uuid4().hex
    assert api.transfer(token, source, target, 10, key=key).status_code == 200
    assert api.transfer(token, source, target, 10, key=key).status_code == 200  # replay
    assert api.transfer(token, source, target, 11, key=key).status_code == 422  # conflict
    assert api.transfer(token, source, target, 10_000).status_code == 400  # insufficient, recorded FAILED
    assert api.transfer(token, target, source, 1).status_code == 400  # not the caller's account
    assert api.fund(target, 5).status_code == 201

    # Part two: reading and proving the ledger.
    assert api.transfer(token, source, target, 1).status_code == 200
    page = api.request("GET", f"/api/accounts/{source}/entries?limit=1", token)
    assert page.status_code == 200
    cursor = page.get_json()["nextCursor"]
    assert api.request("GET", f"/api/accounts/{source}/entries?limit=1&cursor={cursor}", token).status_code == 200
    for path in (f"/api/accounts/{source}/statement?from=2026-01-01&to=2026-12-31",
                 f"/api/accounts/balance/{source}?at=2026-01-01T00:00:00Z",
                 f"/api/transactions/{page.get_json()['entries'][0]['transaction']}"):
        assert api.request("GET", path, token).status_code == 200
    stranger = api.user()[1]
    assert api.request("GET", f"/api/transactions/{page.get_json()['entries'][0]['transaction']}",
                       stranger).status_code == 404

    for path in ("/", "/health", "/ready", "/metrics", "/api/openapi.json"):
        assert api.request("GET", path).status_code == 200

    assert api.request("POST", "/api/auth/logout", token).status_code == 200
    assert api.request("GET", "/api/accounts", token).status_code == 401  # the blocklist answers

    try:
        from ledger.services import outbox
    except ImportError:
        print("outbox sender module not present: its claim query is not exercised")
    else:
        with app.app_context():
            outbox.drain(app, limit=5)


def test_every_query_the_routes_issue_is_served_by_a_declared_index(app: Flask, api: Api,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = QueryRecorder(monkeypatch)

    _exercise_every_route(app, api)

    collections = {query.collection for query in recorder.queries}
    assert {"users", "accounts", "transactions", "tokenblacklists"} <= collections
    assert _unserved(recorder.queries) == []


def test_no_route_and_no_outbox_pass_scans_a_collection_on_the_embedded_engine(app: Flask, api: Api) -> None:
    """The embedded engine answers every request and the sender's claim from its indexes: not one full scan."""
    if not db.is_embedded(app):
        pytest.skip("counts the embedded engine's scans; on a replica set the explain test checks the plans")
    from ledger import embedded

    before = dict(embedded.SCANS)
    with embedded.no_scans():  # a scan raises inside the request (a 500), and is counted below either way
        _exercise_every_route(app, api)
    assert dict(embedded.SCANS) == before


def test_the_audit_flags_a_query_no_index_serves() -> None:
    by_name = Query("users", {"name": "Ada"})
    by_email = Query("users", {"email": "ada@example.test"})
    ledger_by_account_sorted = Query("ledgers", {"account": "a"}, (("seq", -1),))
    ledger_sorted_by_balance = Query("ledgers", {"account": "a"}, (("balanceAfter", -1),))
    claim = Query("notifications", {"$or": [{"status": "PENDING", "nextAttemptAt": {"$lte": 1}},
                                            {"status": "SENDING", "claimedUntil": {"$lte": 1}}]},
                  (("nextAttemptAt", 1),))

    assert _unserved([by_email, ledger_by_account_sorted, claim]) == []
    assert len(_unserved([by_name, ledger_sorted_by_balance])) == 2


def _plan_stages(plan: dict[str, Any]) -> set[str]:
    stages = {plan.get("stage", "")}
    for child_key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(child_key), dict):
            stages |= _plan_stages(plan[child_key])
    for child in plan.get("inputStages", []):
        stages |= _plan_stages(child)
    return stages


@pytest.mark.replica_set
def test_mongodb_plans_every_recorded_query_with_an_index(app: Flask, api: Api,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = QueryRecorder(monkeypatch)
    _exercise_every_route(app, api)
    monkeypatch.undo()

    database = db.get_db(app)
    collection_scans = []
    for query in recorder.queries:
        cursor = database[query.collection].find(query.filter)
        if query.sort:
            cursor = cursor.sort(list(query.sort))
        stages = _plan_stages(cursor.explain()["queryPlanner"]["winningPlan"])
        if "COLLSCAN" in stages:
            collection_scans.append(f"{query.collection}: {query.filter!r} -> {sorted(stages)}")
    assert collection_scans == []
