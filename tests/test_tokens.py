"""Token attacks and revocation: every bad token is a 401 with the Node service's exact message, never a 422."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import jwt as pyjwt
import pytest
from bson import ObjectId

from ledger import db
from ledger.services.auth import REVOCATION_CLOCK_MARGIN

PROTECTED = "/api/accounts"
INVALID = "Unauthorized, token is invalid"
MISSING = "Unauthorized, token is missing"
BLACKLISTED = "Unauthorized, token is blacklisted"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def decode_segment(segment: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def node_token(app, user_id: str, *, iat: int | None = None, lifetime: int = 7 * 24 * 3600,
               secret: str | None = None, **extra: Any) -> str:
    """A token as the Node service's jsonwebtoken minted it: HS256, ``{userId, iat, exp}``, no ``jti``."""
    issued = int(time.time()) if iat is None else iat
    payload = {"userId": user_id, "iat": issued, "exp": issued + lifetime, **extra}
    return pyjwt.encode(payload, secret or app.config["JWT_SECRET_KEY"], algorithm="HS256")


def assert_401(response, message: str) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json() == {"message": message, "status": "failed"}


# ------------------------------------------------------------------------------------------ forged tokens


def test_a_tampered_payload_is_invalid(api):
    victim_id, _ = api.user()
    _, token = api.user()
    header, payload, signature = token.split(".")
    claims = decode_segment(payload)
    claims["userId"] = victim_id
    forged = ".".join([header, b64url_json(claims), signature])
    assert_401(api.request("GET", PROTECTED, forged), INVALID)


def test_an_unsigned_alg_none_token_is_invalid(api):
    user_id, _ = api.user()
    now = int(time.time())
    for alg in ("none", "None", "NONE"):
        forged = ".".join([b64url_json({"alg": alg, "typ": "JWT"}),
                           b64url_json({"userId": user_id, "iat": now, "exp": now + 3600}), ""])
        assert_401(api.request("GET", PROTECTED, forged), INVALID)


def test_a_token_signed_with_another_secret_is_invalid(app, api):
    user_id, _ = api.user()
    forged = node_token(app, user_id, secret="some-other-secret-0123456789abcdef-xyz")
    assert_401(api.request("GET", PROTECTED, forged), INVALID)


def test_a_token_signed_with_another_algorithm_is_invalid(app, api):
    user_id, _ = api.user()
    now = int(time.time())
    forged = pyjwt.encode({"userId": user_id, "iat": now, "exp": now + 3600}, app.config["JWT_SECRET_KEY"] * 2,
                          algorithm="HS512")
    assert_401(api.request("GET", PROTECTED, forged), INVALID)


def test_an_expired_token_is_invalid(app, api):
    user_id, _ = api.user()
    expired = node_token(app, user_id, iat=int(time.time()) - 8 * 24 * 3600)
    assert_401(api.request("GET", PROTECTED, expired), INVALID)


def test_a_token_without_expiry_is_invalid(app, api):
    user_id, _ = api.user()
    forged = pyjwt.encode({"userId": user_id, "iat": int(time.time())}, app.config["JWT_SECRET_KEY"],
                          algorithm="HS256")
    assert_401(api.request("GET", PROTECTED, forged), INVALID)


def test_a_token_not_yet_valid_is_invalid(app, api):
    user_id, _ = api.user()
    forged = node_token(app, user_id, nbf=int(time.time()) + 3600)
    assert_401(api.request("GET", PROTECTED, forged), INVALID)


def test_a_refresh_typed_token_is_invalid_not_422(app, api):
    user_id, _ = api.user()
    assert_401(api.request("GET", PROTECTED, node_token(app, user_id, type="refresh")), INVALID)


@pytest.mark.parametrize("malformed", [
    "garbage", "a.b", "a.b.c", "a.b.c.d", "...", "eyJhbGciOiJIUzI1NiJ9..", "eyJ%%%.eyJ%%%.sig",
    "é.é.é", "x" * 5000,
])
def test_malformed_token_strings_are_invalid(api, malformed):
    assert_401(api.request("GET", PROTECTED, malformed), INVALID)


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer a b", "Bearer  not-a-jwt", "Bearer,Bearer x"])
def test_odd_bearer_headers_are_401_never_422(api, authorization):
    response = api.request("GET", PROTECTED, headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.get_json()["message"] in {INVALID, MISSING}


@pytest.mark.parametrize("authorization", ["", "Basic dXNlcjpwYXNz", "Token abc"])
def test_an_authorization_header_without_a_bearer_token_counts_as_missing(api, authorization):
    assert_401(api.request("GET", PROTECTED, headers={"Authorization": authorization}), MISSING)


def test_a_token_without_user_id_is_invalid(app):
    now = int(time.time())
    token = pyjwt.encode({"iat": now, "exp": now + 3600, "sub": str(ObjectId())}, app.config["JWT_SECRET_KEY"],
                         algorithm="HS256")
    response = app.test_client().get(PROTECTED, headers={"Authorization": f"Bearer {token}"})
    assert_401(response, INVALID)


@pytest.mark.parametrize("user_id", ["not-an-object-id", "", 12345, None, ["a"], {"$ne": None},
                                     "6b04eeaa8646244bd792fa5", "6b04eeaa8646244bd792fa5zz"])
def test_a_user_id_that_is_not_an_object_id_is_invalid(app, api, user_id):
    assert_401(api.request("GET", PROTECTED, node_token(app, user_id)), INVALID)


def test_a_token_for_a_user_who_never_existed_is_invalid(app, api):
    assert_401(api.request("GET", PROTECTED, node_token(app, str(ObjectId()))), INVALID)


def test_a_token_of_a_deleted_user_is_invalid(app, api):
    user_id, token = api.user()
    assert api.request("GET", PROTECTED, token).status_code == 200
    with app.app_context():
        db.get_db().users.delete_one({"_id": ObjectId(user_id)})
    assert_401(api.request("GET", PROTECTED, token), INVALID)


def test_no_token_at_all_is_missing(api):
    assert_401(api.request("GET", PROTECTED), MISSING)
    assert_401(api.request("POST", "/api/accounts", json={}), MISSING)
    assert_401(api.request("GET", f"/api/accounts/{ObjectId()}"), MISSING)


# ------------------------------------------------------------------------------------------ Node-minted tokens


def test_a_node_minted_token_without_jti_is_accepted(app, api):
    user_id, _ = api.user()
    token = node_token(app, user_id)
    assert set(pyjwt.decode(token, options={"verify_signature": False})) == {"userId", "iat", "exp"}
    response = api.request("GET", PROTECTED, token)
    assert response.status_code == 200
    assert response.get_json() == {"accounts": []}
    assert api.request("POST", "/api/accounts", token).status_code == 201


def test_a_node_minted_token_is_accepted_from_the_cookie_too(app, client, api):
    user_id, _ = api.user()
    client.set_cookie("token", node_token(app, user_id))
    assert client.get(PROTECTED).status_code == 200


def test_a_node_minted_token_can_be_revoked_by_logout(app, api):
    user_id, _ = api.user()
    token = node_token(app, user_id)
    logout = api.request("POST", "/api/auth/logout", token)
    assert logout.status_code == 200
    assert_401(api.request("GET", PROTECTED, token), BLACKLISTED)
    # Another Node token for the same user (a different iat) is a different token and still works.
    other = node_token(app, user_id, iat=int(time.time()) - 5)
    assert api.request("GET", PROTECTED, other).status_code == 200


def test_tokens_we_mint_carry_the_node_claims_plus_jti(api):
    user_id, token = api.user()
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["userId"] == user_id
    assert claims["exp"] - claims["iat"] == 7 * 24 * 3600
    assert claims["jti"]
    assert pyjwt.get_unverified_header(token)["alg"] == "HS256"


# ------------------------------------------------------------------------------------------ revocation


def test_a_revoked_token_is_blacklisted_from_the_header_and_from_the_cookie(client, api):
    _, token = api.user()
    assert api.request("POST", "/api/auth/logout", token).status_code == 200
    assert_401(api.request("GET", PROTECTED, token), BLACKLISTED)
    client._cookies.clear()
    client.set_cookie("token", token)
    assert_401(client.get(PROTECTED), BLACKLISTED)


def test_the_blocklist_stores_a_sha256_of_the_token_until_the_tokens_own_expiry(app, api):
    _, token = api.user()
    assert api.request("POST", "/api/auth/logout", token).status_code == 200
    claims = pyjwt.decode(token, options={"verify_signature": False})
    with app.app_context():
        entries = list(db.get_db().tokenblacklists.find({}))
    assert len(entries) == 1
    entry = entries[0]
    assert entry["tokenHash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(entry, default=str)
    for part in token.split("."):
        assert part not in json.dumps(entry, default=str)
    expires_at = entry["expiresAt"]
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    assert expires_at == datetime.fromtimestamp(claims["exp"], tz=UTC) + REVOCATION_CLOCK_MARGIN


def test_a_node_token_revocation_lasts_until_its_exp_not_three_days(app, api):
    user_id, _ = api.user()
    issued = int(time.time()) - 60
    token = node_token(app, user_id, iat=issued)
    assert api.request("POST", "/api/auth/logout", token).status_code == 200
    with app.app_context():
        entry = db.get_db().tokenblacklists.find_one({"tokenHash": hashlib.sha256(token.encode()).hexdigest()})
    expires_at = entry["expiresAt"].replace(tzinfo=UTC) if entry["expiresAt"].tzinfo is None else entry["expiresAt"]
    assert expires_at == datetime.fromtimestamp(issued + 7 * 24 * 3600, tz=UTC) + REVOCATION_CLOCK_MARGIN


def test_logging_out_twice_stores_one_blocklist_entry(app, api):
    _, token = api.user()
    assert api.request("POST", "/api/auth/logout", token).status_code == 200
    assert api.request("POST", "/api/auth/logout", token).status_code == 200
    with app.app_context():
        assert db.get_db().tokenblacklists.count_documents({}) == 1


def test_logging_out_with_an_invalid_token_stores_nothing(app, api):
    assert api.request("POST", "/api/auth/logout", "not.a.token").status_code == 200
    with app.app_context():
        assert db.get_db().tokenblacklists.count_documents({}) == 0


def test_the_blocklist_has_a_ttl_index_on_the_expiry_date(app):
    with app.app_context():
        indexes = db.get_db().tokenblacklists.index_information()
    ttl = [info for info in indexes.values() if info["key"] == [("expiresAt", 1)]]
    assert len(ttl) == 1
    assert ttl[0]["expireAfterSeconds"] == 0


# ------------------------------------------------------------------------------------------ where tokens come from


@pytest.mark.parametrize("parameter", ["token", "jwt", "access_token"])
def test_a_token_in_the_query_string_is_never_accepted(client, api, parameter):
    _, token = api.user()
    client._cookies.clear()
    assert_401(client.get(f"{PROTECTED}?{parameter}={token}"), MISSING)


def test_a_token_in_the_json_body_is_never_accepted(client, api):
    _, token = api.user()
    client._cookies.clear()
    assert_401(client.post("/api/accounts", json={"token": token, "access_token": token}), MISSING)


def test_the_bearer_header_wins_over_a_garbage_cookie(client, api):
    _, token = api.user()
    client._cookies.clear()
    client.set_cookie("token", "garbage.cookie.value")
    assert client.get(PROTECTED, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_garbage_bearer_header_is_invalid_even_with_a_valid_cookie(client, api):
    _, token = api.user()
    client._cookies.clear()
    client.set_cookie("token", token)
    assert client.get(PROTECTED).status_code == 200
    assert_401(client.get(PROTECTED, headers={"Authorization": "Bearer garbage"}), INVALID)


def test_the_header_users_identity_is_used_when_header_and_cookie_differ(client, api):
    header_user, header_token = api.user()
    _, cookie_token = api.user()
    account_id = api.open_account(header_token)
    client._cookies.clear()
    client.set_cookie("token", cookie_token)
    response = client.get(PROTECTED, headers={"Authorization": f"Bearer {header_token}"})
    assert [a["_id"] for a in response.get_json()["accounts"]] == [account_id]
    assert response.get_json()["accounts"][0]["user"] == header_user


def test_a_revoked_header_token_is_refused_even_with_a_valid_cookie(client, api):
    _, revoked = api.user()
    _, valid = api.user()
    assert api.request("POST", "/api/auth/logout", revoked).status_code == 200
    client._cookies.clear()
    client.set_cookie("token", valid)
    assert_401(client.get(PROTECTED, headers={"Authorization": f"Bearer {revoked}"}), BLACKLISTED)


def test_a_valid_header_is_not_refused_because_the_cookie_was_revoked(client, api):
    _, revoked = api.user()
    _, valid = api.user()
    assert api.request("POST", "/api/auth/logout", revoked).status_code == 200
    client._cookies.clear()
    client.set_cookie("token", revoked)
    assert client.get(PROTECTED, headers={"Authorization": f"Bearer {valid}"}).status_code == 200


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_case_insensitive(api, scheme):
    _, token = api.user()
    response = api.request("GET", PROTECTED, headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 200, response.get_json()
    assert api.request("POST", "/api/auth/logout", headers={"Authorization": f"{scheme} {token}"}).status_code == 200
    assert_401(api.request("GET", PROTECTED, token), BLACKLISTED)


def test_a_lower_case_bearer_scheme_with_a_forged_token_is_still_invalid(app, api):
    user_id, _ = api.user()
    forged = node_token(app, user_id, secret="another-secret-entirely-0123456789abcdef")
    assert_401(api.request("GET", PROTECTED, headers={"Authorization": f"bearer {forged}"}), INVALID)
