"""Paths match as Express matched them for the Node clients: any letter case, with or without a trailing slash."""

from __future__ import annotations

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.routing import CaseInsensitivePaths
from tests.conftest import Api, drop_database, make_app
from tests.routes import all_routes

HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def world():
    app = make_app()
    client = app.test_client(use_cookies=False)
    routes = all_routes(app)
    canonical = {route: _answer(client, route.method, route.path) for route in routes}
    yield app, client, routes, canonical
    drop_database(app)


def _answer(client, method: str, path: str) -> tuple[int, object]:
    response = client.open(path, method=method, json={})
    if response.is_json:
        body = response.get_json()
        body = {key: value for key, value in body.items() if key in {"message", "status", "errors"}}
    else:
        body = response.mimetype
    return response.status_code, body


def respelled(path: str, flips: list[bool], slash: bool) -> str:
    spelled = "".join(c.swapcase() if flip else c for c, flip in zip(path, flips, strict=False))
    return spelled + "/" if slash and spelled != "/" else spelled


@HYPOTHESIS
@given(data=st.data())
def test_every_route_answers_the_same_in_any_case_and_with_a_trailing_slash(world, data):
    _, client, routes, canonical = world
    for route in routes:
        flips = data.draw(st.lists(st.booleans(), min_size=len(route.path), max_size=len(route.path)))
        path = respelled(route.path, flips, data.draw(st.booleans()))
        assert _answer(client, route.method, path) == canonical[route], (str(route), path)


def test_a_node_client_spelling_paths_its_own_way_moves_money():
    app = make_app()
    try:
        api = Api(app.test_client())
        _, token = api.user()
        response = api.request("POST", "/API/Accounts/", token, json={"currency": "INR"})
        assert response.status_code == 201, response.get_json()
        source = response.get_json()["account"]["_id"]
        assert api.fund(source, 50).status_code == 201
        target = api.open_account(api.user()[1])
        moved = api.request("POST", "/Api/Transactions/", token,
                            json={"fromAccount": source, "toAccount": target, "amount": 20, "idempotencyKey": "k1"})
        assert moved.status_code == 200, moved.get_json()
        balance = api.request("GET", f"/api/Accounts/Balance/{source.upper()}/", token)
        assert balance.get_json() == {"accountId": source, "balance": 30, "availableBalance": 30}
    finally:
        drop_database(app)


@pytest.mark.parametrize("path", ["/api/accountsx", "/API/nothing", "/api/accounts/a/b/c", "/apiaccounts"])
def test_paths_that_name_no_route_in_any_case_are_still_404(world, path):
    _, client, _, _ = world
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json() == {"message": "Route not found", "status": "failed"}


@pytest.mark.parametrize(("sent", "routed"), [
    ("/API/Accounts/AbCdEf", "/api/accounts/AbCdEf"),  # the id is passed on exactly as sent
    ("/api/accounts/USER/XyZ/", "/api/accounts/user/XyZ"),  # the longer static route wins, as in werkzeug
    ("/api/accounts/USER", "/api/accounts/USER"),  # one segment: it is an account id, as in werkzeug
    ("/api/auth/login", "/api/auth/login"),
    ("/", "/"),
    ("/HEALTH/", "/health"),
])
def test_the_rewrite_changes_only_the_static_parts(sent, routed):
    app = Flask(__name__)
    for rule in ("/", "/health", "/api/auth/login", "/api/accounts/<account_id>", "/api/accounts/user/<user_id>"):
        app.add_url_rule(rule, rule, lambda **_: "")
    assert CaseInsensitivePaths(app.wsgi_app, app).canonical_path(sent) == routed
