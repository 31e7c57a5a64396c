"""The JSON boundary: a string that is not valid Unicode, and a body not declared as JSON, on every write.

JSON's ``\\ud800`` escapes decode to lone surrogates, which are not Unicode text: bcrypt and BSON cannot encode
them. Wherever such a string sits (a known field, an unknown one, deep inside, in a key) the answer is a 400
naming the field and nothing is written. A body without ``Content-Type: application/json`` is a 415 on every
route that reads one, except account creation, whose body the Node service ignored.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import db
from tests.conftest import Api, drop_database, make_app, unique_email

HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
COLLECTIONS = ("users", "accounts", "transactions", "ledgers", "notifications", "tokenblacklists")
UNSUPPORTED = {"message": "Content-Type must be application/json", "status": "failed"}

lone_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
not_unicode = st.tuples(st.text(max_size=6), lone_surrogate, st.text(max_size=6)).map("".join)


@pytest.fixture(scope="module")
def world():
    app = make_app()
    api = Api(app.test_client())
    password = "password-123"
    email = unique_email()
    user = api.register(email=email, password=password)
    token = user["token"]
    source = api.funded_account(token, 100)
    target = api.open_account(api.user()[1])
    system = api.system_token()

    def bodies() -> dict[str, tuple[str, str | None, dict[str, Any]]]:
        """Route → (path, token, a body the route accepts)."""
        key = uuid.uuid4().hex
        return {
            "register": ("/api/auth/register", None,
                         {"email": unique_email(), "password": password, "name": "Someone"}),
            "login": ("/api/auth/login", None, {"email": email, "password": password}),
            "create account": ("/api/accounts", token, {"currency": "INR"}),
            "create account (alias)": ("/api/accounts/create", token, {"currency": "INR"}),
            "transfer": ("/api/transactions", token,
                         {"fromAccount": source, "toAccount": target, "amount": 1, "idempotencyKey": key}),
            "initial funds": ("/api/transactions/system/initial-funds", system,
                              {"toAccount": target, "amount": 1, "idempotencyKey": key}),
        }

    for name, (path, caller, body) in bodies().items():  # every body is one the route accepts
        response = api.request("POST", path, caller, json=body)
        assert response.status_code in {200, 201}, (name, response.get_json())
    yield app, api, bodies
    drop_database(app)


def counts(app) -> dict[str, int]:
    with app.app_context():
        database = db.get_db(app)
        return {name: database[name].count_documents({}) for name in COLLECTIONS}


def send(api: Api, path: str, token: str | None, text: str, content_type: str | None):
    headers = {"Content-Type": content_type} if content_type else {}
    return api.request("POST", path, token, data=text.encode("utf-8"), headers=headers)


# ------------------------------------------------------------------------------------- not Unicode


@HYPOTHESIS
@given(data=st.data())
def test_a_string_that_is_not_unicode_anywhere_in_any_body_is_a_400_naming_the_field(world, data):
    app, api, bodies = world
    route = data.draw(st.sampled_from(sorted(bodies())), label="route")
    path, token, body = bodies()[route]
    bad = data.draw(not_unicode, label="string")
    where = data.draw(st.sampled_from([*body, "unexpected", "nested", "key"]), label="where")
    if where == "nested":
        body["meta"] = {"tags": ["fine", bad]}
        expected = "meta.tags[1]"
    elif where == "key":
        body[bad] = "value"
        expected = bad.encode("utf-8", errors="backslashreplace").decode("utf-8")
    else:
        body[where] = bad
        expected = where
    text = json.dumps(body)  # ensure_ascii: the surrogate travels as a \udXXX escape, as a client would send it
    assert "\\ud" in text
    before = counts(app)

    response = send(api, path, token, text, "application/json")

    assert response.status_code == 400, (route, where, response.get_json())
    answer = response.get_json()
    assert answer["status"] == "failed"
    assert list(answer["errors"]) == [expected]
    assert "not valid Unicode" in answer["message"]
    assert expected in answer["message"]
    assert counts(app) == before


def test_a_surrogate_pair_written_as_two_escapes_is_valid_text(world):
    _, api, bodies = world
    path, token, body = bodies()["register"]
    body["name"] = "\U0001F600 smile"
    text = json.dumps(body)
    assert "\\ud83d\\ude00" in text
    response = send(api, path, token, text, "application/json")
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["user"]["name"] == "\U0001F600 smile"


# ------------------------------------------------------------------------------------- Content-Type


not_json_types = st.one_of(
    st.sampled_from([None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                     "text/json", "application/jsonx", "application/javascript", "text/html; charset=utf-8",
                     "application/octet-stream", "*/*"]),
    st.from_regex(r"[a-z]{1,10}/[a-z0-9.-]{1,12}", fullmatch=True).filter(lambda t: "json" not in t),
)


@HYPOTHESIS
@given(data=st.data())
def test_a_body_not_declared_as_json_is_a_415_on_every_write_that_reads_one(world, data):
    app, api, bodies = world
    route = data.draw(st.sampled_from(["register", "login", "transfer", "initial funds"]), label="route")
    content_type = data.draw(not_json_types, label="Content-Type")
    path, token, body = bodies()[route]
    before = counts(app)

    response = send(api, path, token, json.dumps(body), content_type)

    assert response.status_code == 415, (route, content_type, response.get_json())
    assert response.get_json() == UNSUPPORTED
    assert counts(app) == before


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
def test_json_declared_in_any_accepted_spelling_is_read(world, content_type):
    _, api, bodies = world
    path, token, body = bodies()["register"]
    response = send(api, path, token, json.dumps(body), content_type)
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize("route", ["create account", "create account (alias)"])
def test_account_creation_reads_currency_only_from_a_json_body(world, route):
    _, api, bodies = world
    path, token, _ = bodies()[route]
    declared = send(api, path, token, '{"currency": "USD"}', "application/json")
    assert declared.status_code == 201
    assert declared.get_json()["account"]["currency"] == "USD"
    assert send(api, path, token, '{"currency": "nope"}', "application/json").status_code == 400
    assert send(api, path, token, '{"currency": "USD"', "application/json").status_code == 400
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        ignored = send(api, path, token, '{"currency": "USD"}', content_type)
        assert ignored.status_code == 201, ignored.get_json()
        assert ignored.get_json()["account"]["currency"] == "INR"
