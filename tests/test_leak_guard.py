"""The suite-wide leak guard (tests/conftest.py) really catches a response that leaks a password or a hash."""

from __future__ import annotations

import bcrypt
import pytest
from flask import jsonify

from tests.conftest import LeakGuard, drop_database, make_app, unique_email

A_HASH = bcrypt.hashpw(b"leaked-password", bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture
def leaky_app():
    app = make_app()

    @app.get("/api/_leak/password-key")
    def leak_password_key():
        return jsonify({"user": {"_id": "1", "email": "a@b.test", "password": "hunter22"}})

    @app.get("/api/_leak/hash-in-text")
    def leak_hash_in_text():
        return f"debug: stored hash is {A_HASH}", 200, {"Content-Type": "text/plain"}

    @app.get("/api/_leak/hash-in-header")
    def leak_hash_in_header():
        return jsonify({"ok": True}), 200, {"X-Debug": A_HASH.replace("$2b$", "$2a$")}

    @app.get("/api/_leak/nested-key")
    def leak_nested_key():
        return jsonify({"accounts": [{"owner": {"passwordHash": "x"}}]})

    yield app
    drop_database(app)


@pytest.mark.parametrize("path", ["/api/_leak/password-key", "/api/_leak/hash-in-text", "/api/_leak/hash-in-header",
                                  "/api/_leak/nested-key"])
def test_a_leaking_route_is_caught_and_would_fail_the_test(leaky_app, leak_guard: LeakGuard, path):
    assert leaky_app.test_client().get(path).status_code == 200
    assert leak_guard.findings
    assert all(finding.startswith(path) for finding in leak_guard.findings)
    with pytest.raises(pytest.fail.Exception, match="leaked a password"):
        leak_guard.check()
    leak_guard.findings.clear()  # the leak was planted on purpose: let this test itself pass


def test_the_real_auth_routes_leak_nothing(api, leak_guard: LeakGuard):
    email = unique_email()
    api.register(email=email)
    api.login(email, "password-123")
    api.login(email, "wrong-password")
    response = api.request("POST", "/api/auth/register", json={"email": unique_email(), "password": "x", "name": "N"})
    assert response.status_code == 400
    assert leak_guard.findings == []


def test_a_validation_error_naming_the_password_field_is_not_a_leak(api, leak_guard: LeakGuard):
    response = api.request("POST", "/api/auth/register", json={"email": unique_email(), "password": 1, "name": "N"})
    assert response.status_code == 400
    assert leak_guard.findings == []
