"""No ``Authorization`` header and no cookie can cause a 5xx, on any route.

Header values are generated from schemes in any case, blanks (including the ones only Unicode calls blank),
separators, many parts, arbitrary Latin-1 text (what a WSGI server hands over) and bad tokens. On a route that
needs a token the answer is always the Node service's 401; logout answers 200 (an invalid token has nothing to
revoke) or 400 ``No token found``; every other route answers as if no header had been sent.
"""

from __future__ import annotations

import time

import jwt as pyjwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.security import parse_authorization
from tests.conftest import Api, drop_database, make_app
from tests.routes import all_routes, protected_routes

MISSING = "Unauthorized, token is missing"
INVALID = "Unauthorized, token is invalid"
BLACKLISTED = "Unauthorized, token is blacklisted"
LOGOUT = ("POST", "/api/auth/logout")
HYPOTHESIS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SCHEMES = ["Bearer", "bearer", "BEARER", "bEaReR", "Basic", "Token", "Bearerx", "JWT", "Bearer:"]
BLANKS = [" ", "  ", "\t", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\r", "\n", "\x00"]
SEPARATORS = [",", ", ", " ,", ",,", ", ,", ";", "=", "."]
latin1_text = st.text(alphabet=st.characters(max_codepoint=255), max_size=12)


@pytest.fixture(scope="module")
def world():
    app = make_app()
    api = Api(app.test_client())
    secret = app.config["JWT_SECRET_KEY"]
    user_id, live = api.user()
    _, revoked = api.user()
    assert api.request("POST", "/api/auth/logout", revoked).status_code == 200
    now = int(time.time())
    bad_tokens = [
        revoked,
        revoked + "=",
        pyjwt.encode({"userId": user_id, "iat": now, "exp": now + 60}, "another-secret-" * 3, algorithm="HS256"),
        pyjwt.encode({"userId": user_id, "iat": now - 90, "exp": now - 60}, secret, algorithm="HS256"),
        "a.b.c", "eyJ", "..", "null", "undefined",
    ]
    client = app.test_client(use_cookies=False)
    baseline = {}
    for route in all_routes(app):
        response = client.open(route.path, method=route.method, json={})
        baseline[route] = response.status_code
    yield {"app": app, "client": client, "live": live, "bad_tokens": bad_tokens, "baseline": baseline,
           "protected": set(protected_routes(app)), "routes": all_routes(app)}
    drop_database(app)


def headers_from(parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(SCHEMES), st.sampled_from(BLANKS), st.sampled_from(SEPARATORS), latin1_text,
                      parts)
    return st.lists(piece, max_size=14).map("".join)


def check_route(world, route, response) -> None:
    assert response.status_code < 500, (str(route), response.get_data())
    body = response.get_json(silent=True)
    if (route.method, route.rule) == LOGOUT:
        assert (response.status_code, body["message"]) in {(200, "User logged out successfully"),
                                                            (400, "No token found")}
    elif route in world["protected"]:
        assert response.status_code == 401, (str(route), body)
        assert body == {"message": body["message"], "status": "failed"}
        assert body["message"] in {MISSING, INVALID, BLACKLISTED}
    else:
        assert response.status_code == world["baseline"][route], str(route)


@HYPOTHESIS
@given(data=st.data())
def test_no_authorization_header_without_a_valid_token_gets_past_401_or_causes_a_5xx(world, data):
    header = data.draw(headers_from(st.sampled_from(world["bad_tokens"])), label="Authorization")
    for route in world["routes"]:
        response = world["client"].open(route.path, method=route.method, json={},
                                         environ_overrides={"HTTP_AUTHORIZATION": header})
        check_route(world, route, response)


@HYPOTHESIS
@given(data=st.data())
def test_no_token_cookie_without_a_valid_token_gets_past_401_or_causes_a_5xx(world, data):
    value = data.draw(st.one_of(latin1_text, headers_from(st.sampled_from(world["bad_tokens"]))), label="cookie")
    cookie = data.draw(st.sampled_from([f"token={value}", f'token="{value}"', value, f"a=b; token={value}; c"]))
    for route in world["routes"]:
        response = world["client"].open(route.path, method=route.method, json={},
                                         environ_overrides={"HTTP_COOKIE": cookie})
        check_route(world, route, response)


@HYPOTHESIS
@given(data=st.data())
def test_headers_around_a_valid_token_never_cause_a_5xx_and_authenticate_only_when_well_formed(world, data):
    header = data.draw(headers_from(st.just(world["live"])), label="Authorization")
    kind, token = parse_authorization(header)
    for route in world["routes"]:
        if (route.method, route.rule) == LOGOUT or route not in world["protected"] or route.method != "GET":
            continue  # reads only: logging out or opening accounts would change what the next example sees
        response = world["client"].open(route.path, method=route.method,
                                         environ_overrides={"HTTP_AUTHORIZATION": header})
        assert response.status_code < 500, (str(route), header)
        if response.status_code != 401:
            assert (kind, token) == ("bearer", world["live"]), (str(route), header)


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer abc", ("bearer", "abc")),
    ("bearer abc", ("bearer", "abc")),
    ("  BEARER\tabc  ", ("bearer", "abc")),
    ("Basic x, Bearer abc", ("bearer", "abc")),
    (", ,Bearer abc,, ,", ("bearer", "abc")),
    ("", ("absent", None)),
    (" , ,", ("absent", None)),
    ("Basic dXNlcjpwYXNz", ("absent", None)),
    ("Bearer", ("malformed", None)),
    ("Bearer a b", ("malformed", None)),
    ("Bearer a, Bearer b", ("malformed", None)),
])
def test_the_authorization_parser_reads_each_shape(header, expected):
    assert parse_authorization(header) == expected
