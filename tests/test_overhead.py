"""The per-request shortcuts behave exactly like what they replace (issue 13: our cost per request).

Speed itself is measured by ``scripts/bench`` (the in-process overhead table), never here; these tests hold
each shortcut to the behaviour of the code it stands in for: date text, rate-limit hooks, the in-memory
limit storage, the access line and the request metrics.
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from flask import Flask, g
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import metrics, ratelimit
from ledger.jsonio import iso_utc
from tests.conftest import Api, drop_database, make_app, unique_email


def _iso_utc_by_strftime(value: datetime) -> str:
    """The formula ``iso_utc`` used before: the reference its faster form must match character for character."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


_OFFSETS = st.one_of(st.none(), st.just(UTC), st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60 - 59, 23 * 60 + 59)))


@settings(max_examples=500, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_OFFSETS))
def test_iso_utc_writes_exactly_what_the_strftime_formula_wrote(value: datetime) -> None:
    assert iso_utc(value) == _iso_utc_by_strftime(value)


# ------------------------------------------------------------------------------------------ rate limits


@pytest.fixture
def limited_app() -> Iterator[Flask]:
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="3 per minute", RATELIMIT_LOGIN_PER_ADDRESS="50 per minute",
                   RATELIMIT_TRANSFER="50 per minute")
    yield app
    drop_database(app)


def test_no_limiter_hook_runs_before_any_view_when_no_app_wide_or_default_limit_is_configured(
        limited_app: Flask) -> None:
    hooks = limited_app.before_request_funcs.get(None, [])

    assert ratelimit.limiter._check_request_limit not in hooks
    assert not ratelimit._limits_outside_views()


def test_a_route_without_limits_leaves_no_limiter_state_and_no_limit_headers(limited_app: Flask) -> None:
    seen: list[bool] = []

    @limited_app.teardown_request
    def _record(_exc: BaseException | None) -> None:
        from flask.globals import request_ctx

        seen.append(hasattr(request_ctx, ratelimit._LIMITER_CONTEXT))

    client = limited_app.test_client()
    unlimited = [client.get("/health"), client.get("/api/nowhere"), client.get("/api/accounts")]
    limited = client.post("/api/auth/login", json={"email": unique_email(), "password": "wrong-password"})

    for response in unlimited:
        assert not any(name.startswith("X-RateLimit") for name, _value in response.headers)
        assert "Retry-After" not in response.headers
    assert limited.status_code == 401
    assert limited.headers["X-RateLimit-Limit"] in {"3", "50"}
    assert seen == [False, False, False, True]


def test_failed_logins_still_count_per_email_through_the_limited_hooks(limited_app: Flask) -> None:
    api = Api(limited_app.test_client())
    email = unique_email()
    api.register(email=email, password="right-password")
    statuses = []
    for attempt in range(6):  # successes in between never count; after 3 failures the email is locked
        password = "right-password" if attempt % 2 else "wrong-password"
        statuses.append(api.login(email, password).status_code)

    assert statuses == [401, 200, 401, 200, 401, 429]


def test_the_default_memory_storage_is_the_swept_one_and_starts_one_thread_however_many_hits(
        limited_app: Flask) -> None:
    storage = ratelimit.limiter._storage
    assert isinstance(storage, ratelimit.SweptMemoryStorage)
    assert limited_app.config["RATELIMIT_STORAGE_URI"] == "memory://"  # the app's setting is left as it was
    client = limited_app.test_client()
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        real_start(thread)

    threading.Thread.start = counting_start  # type: ignore[method-assign]
    try:
        for _ in range(12):
            client.post("/api/auth/login", json={"email": unique_email(), "password": "wrong-password"})
            time.sleep(0.015)  # longer than the 10 ms after which the original storage started a new Timer
    finally:
        threading.Thread.start = real_start  # type: ignore[method-assign]

    assert [thread.name for thread in started if thread.name != "ledger-ratelimit-sweeper"] == []
    assert len(started) <= 1


def test_the_sweeper_frees_expired_entries_and_ends_with_its_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "SWEEP_SECONDS", 0.02)
    storage = ratelimit.SweptMemoryStorage()
    assert storage.acquire_entry("moving", 5, 1)
    assert storage.incr("fixed", 1) == 1
    sweeper = storage._sweeper
    assert sweeper is not None
    assert sweeper.is_alive()

    deadline = time.monotonic() + 10
    while (storage.events.get("moving") or "fixed" in storage.storage) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not storage.events.get("moving")
    assert "fixed" not in storage.storage

    del storage
    gc.collect()
    sweeper.join(timeout=5)
    assert not sweeper.is_alive()


# ----------------------------------------------------------------------------------- access line, metrics


def test_request_metrics_count_every_request_in_its_own_series(app: Flask) -> None:
    client = app.test_client()

    def count(status: str) -> float:
        return metrics.REGISTRY.get_sample_value(
            "ledger_http_requests_total", {"method": "GET", "route": "/health", "status": status}) or 0.0

    def observed() -> float:
        return metrics.REGISTRY.get_sample_value(
            "ledger_http_request_duration_seconds_count", {"method": "GET", "route": "/health"}) or 0.0

    before, before_observed = count("200"), observed()
    for _ in range(7):
        client.get("/health")
    assert count("200") - before == 7
    assert observed() - before_observed == 7
    assert client.get("/nowhere").status_code == 404
    assert (metrics.REGISTRY.get_sample_value(
        "ledger_http_requests_total", {"method": "GET", "route": "<unmatched>", "status": "404"}) or 0) >= 1


def test_the_access_record_is_an_info_record_of_ledger_access_with_its_fields(app: Flask) -> None:
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger("ledger.access")
    logger.addHandler(handler)
    try:
        with app.test_request_context():
            g.request_id = "outside"
        app.test_client().get("/health", headers={"X-Request-ID": "req-access-1"})
    finally:
        logger.removeHandler(handler)

    (record,) = records
    assert record.levelno == logging.INFO
    assert record.getMessage() == "GET /health 200"
    assert (record.method, record.route, record.path, record.status, record.userId) == (
        "GET", "/health", "/health", 200, None)
    assert isinstance(record.durationMs, float)
    assert record.durationMs >= 0


def test_the_access_line_written_directly_is_the_line_the_formatter_writes_for_the_record(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import json
    import logging

    from ledger import observability

    root = logging.getLogger()
    (handler,) = [h for h in root.handlers if getattr(h, "_ledger_handler", False)]
    monkeypatch.setattr(root, "handlers", [handler])  # as deployed: pytest's capturing handlers set aside
    stream = io.StringIO()
    previous = handler.setStream(stream)
    handled: list[logging.LogRecord] = []
    real_handle = observability.access_log.handle
    monkeypatch.setattr(observability.access_log, "handle", lambda record: (handled.append(record),
                                                                           real_handle(record)))
    client = app.test_client()
    try:
        client.get("/api/nowhere?x=1", headers={"X-Request-ID": "direct-1"})
        direct = stream.getvalue()
        assert handled == []  # written without a record
        observability.access_log.addHandler(logging.NullHandler())  # another handler: the record path
        try:
            client.get("/api/nowhere?x=1", headers={"X-Request-ID": "direct-1"})
        finally:
            observability.access_log.handlers.clear()
        via_record = stream.getvalue()[len(direct):]
    finally:
        handler.setStream(previous)

    assert len(handled) == 1
    lines = [json.loads(text) for text in (direct, via_record)]
    assert direct.endswith("\n")
    assert via_record.endswith("\n")
    for line in lines:
        line.pop("durationMs")
        assert line.pop("time").endswith("Z")
    assert list(lines[0]) == list(lines[1])
    assert lines[0] == lines[1] == {
        "level": "INFO", "logger": "ledger.access", "message": "GET <unmatched> 404", "requestId": "direct-1",
        "method": "GET", "route": "<unmatched>", "path": "/api/nowhere", "status": 404, "userId": None}


# ------------------------------------------------------------------------------------------ token parsing


def _jwt_parsers():
    import jwt
    from jwt.api_jws import PyJWS

    from ledger import jwt_parse

    jwt_parse.install()
    memoised = PyJWS._load
    return jwt, PyJWS(), memoised, memoised.__wrapped__


RIGHT_SECRET = "right-secret-" + "r" * 40
WRONG_SECRET = "wrong-secret-" + "w" * 40
_TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.!+/ \u00e9"


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(alphabet=_TOKEN_CHARS, max_size=120),
    st.builds(lambda parts: ".".join(parts), st.lists(st.text(alphabet=_TOKEN_CHARS[:64], max_size=40),
                                                       min_size=1, max_size=4)),
    st.binary(max_size=60),
    st.sampled_from(["\ud800.a.b", "e30.e30.", "eyJhbGciOiJIUzI1NiJ9.e30.", "eyJiNjQiOmZhbHNlfQ..c2ln"]),
))
def test_a_memoised_parse_answers_exactly_what_pyjwts_parse_answers(token: str | bytes) -> None:
    _, parser, memoised, original = _jwt_parsers()
    outcomes = []
    for parse in (original, memoised, memoised):  # the second memoised call is served from the cache
        try:
            outcomes.append(("ok", parse(parser, token)))
        except Exception as exc:  # noqa: BLE001 - the very same refusal is what is compared
            outcomes.append(("error", type(exc), str(exc)))
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_signature_and_expiry_are_still_checked_on_every_decode_of_a_remembered_token() -> None:
    jwt, parser, memoised, _ = _jwt_parsers()
    now = int(time.time())
    token = jwt.encode({"userId": "u", "iat": now, "exp": now + 60}, RIGHT_SECRET, algorithm="HS256")
    expired = jwt.encode({"userId": "u", "iat": now - 120, "exp": now - 60}, RIGHT_SECRET, algorithm="HS256")
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")

    for _ in range(3):
        assert jwt.decode(token, RIGHT_SECRET, algorithms=["HS256"])["userId"] == "u"
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, WRONG_SECRET, algorithms=["HS256"])
        with pytest.raises(jwt.ExpiredSignatureError):
            jwt.decode(expired, RIGHT_SECRET, algorithms=["HS256"])
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(tampered, RIGHT_SECRET, algorithms=["HS256"])
    first, second = memoised(parser, token)[2], memoised(parser, token)[2]
    first["alg"] = "none"
    assert second["alg"] == "HS256"  # every caller gets a header of its own
    assert memoised(parser, token)[2]["alg"] == "HS256"


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.builds(lambda claims: json.dumps(claims).encode(), st.dictionaries(
        st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.text(max_size=12)
        | st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
        max_size=5)),
    st.sampled_from([b"[]", b"1", b'"x"', b"{", b"", b"\xff\xfe", b'{"a": NaN}', b"[" * 2000 + b"]" * 2000,
                     b'{"exp": 1e400}', b'{"sub": "\\ud800"}']),
    st.binary(max_size=40),
))
def test_remembered_claims_answer_exactly_what_pyjwt_reads_and_each_caller_gets_its_own(payload: bytes) -> None:
    from jwt.api_jwt import PyJWT

    from ledger import jwt_parse

    jwt_parse.install()
    parser = PyJWT()
    memoised = PyJWT._decode_payload
    original = memoised.__wrapped__
    outcomes = []
    for read in (original, memoised, memoised):  # the second memoised read is served from the cache
        try:
            outcomes.append(("ok", read(parser, {"payload": payload})))
        except Exception as exc:  # noqa: BLE001 - the very same refusal is what is compared
            outcomes.append(("error", type(exc), str(exc)))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    if outcomes[1][0] == "ok":
        assert outcomes[1][1] is not outcomes[2][1]
        outcomes[1][1]["added-by-a-caller"] = True
        for value in outcomes[1][1].values():
            if isinstance(value, list | dict):
                value.clear()  # nested values are copies too
        assert memoised(parser, {"payload": payload}) == outcomes[0][1]


def test_only_flat_headers_and_claims_are_remembered() -> None:
    """A forged token is parsed before any signature check: nested values in its header or claims are read
    afresh each time rather than remembered (no large structures in the cache, no deep copy per use)."""
    import base64

    from jwt.api_jws import PyJWS
    from jwt.api_jwt import PyJWT

    from ledger import jwt_parse

    jwt_parse.install()

    def segment(value) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    remembered_claims = PyJWT._decode_payload.__ledger_memoised__
    remembered_parse = PyJWS._load.__ledger_memoised__
    nested = json.dumps({"sub": "u", "blob": [{}] * 200}).encode()
    flat = json.dumps({"sub": "u", "exp": 1, "admin": False}).encode()
    assert remembered_claims(PyJWT(), nested) is None
    assert remembered_claims(PyJWT(), flat) == {"sub": "u", "exp": 1, "admin": False}
    assert PyJWT()._decode_payload({"payload": nested}) == json.loads(nested)  # still answered, read afresh
    nested_header = f"{segment({'alg': 'HS256', 'kid': [1, 2]})}.{segment({'sub': 'u'})}.c2ln".encode()
    flat_header = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment({'sub': 'u'})}.c2ln".encode()
    assert remembered_parse(PyJWS(), nested_header) is None
    assert remembered_parse(PyJWS(), flat_header)[2] == {"alg": "HS256", "typ": "JWT"}
    assert PyJWS()._load(nested_header)[2] == {"alg": "HS256", "kid": [1, 2]}


def test_a_revoked_or_altered_token_is_refused_after_it_was_used(api: Api) -> None:
    _, token = api.user()
    assert api.request("GET", "/api/accounts", token).status_code == 200
    altered = token[:-3] + ("abc" if not token.endswith("abc") else "xyz")

    assert api.request("GET", "/api/accounts", altered).status_code == 401
    assert api.request("POST", "/api/auth/logout", token).status_code == 200
    assert api.request("GET", "/api/accounts", token).status_code == 401


# ------------------------------------------------------------------------ access line, request id, headers


_ANY_TEXT = st.text(max_size=40)  # any code point, surrogates and controls included


@settings(max_examples=400, deadline=None)
@given(method=_ANY_TEXT, route=_ANY_TEXT, path=_ANY_TEXT, status=st.integers(100, 599),
       duration=st.floats(0, 1e6, allow_nan=False, allow_infinity=False), user=st.none() | _ANY_TEXT,
       request_id=st.none() | _ANY_TEXT, second=st.integers(0, 4_000_000_000), millis=st.integers(0, 999))
def test_the_access_line_is_what_the_json_encoder_writes_for_the_same_fields(
        method: str, route: str, path: str, status: int, duration: float, user: str | None,
        request_id: str | None, second: int, millis: int) -> None:
    from ledger import observability

    timestamp = observability._timestamp(second + millis / 1000, millis)
    duration_ms = round(duration, 2)
    expected = observability._LINE_ENCODER.encode({
        "time": timestamp, "level": "INFO", "logger": "ledger.access", "message": f"{method} {route} {status}",
        "requestId": request_id, "method": method, "route": route, "path": path, "status": status,
        "durationMs": duration_ms, "userId": user})
    assert observability.access_line(timestamp, method, route, path, status, duration_ms, user,
                                     request_id) == expected


def test_generated_request_ids_are_distinct_version_4_uuids_as_uuid4_hex_writes_them() -> None:
    import uuid

    from ledger import observability

    ids = [observability.new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(hex=text)
        assert parsed.hex == text
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    for position in range(32):  # every digit the version and variant leave free does vary
        if position != 12:
            assert len({text[position] for text in ids}) > 1, position


_HEADER_NAMES = ("X-Request-ID", "x-content-type-options", "X-Frame-Options", "REFERRER-POLICY",
                 "Content-Security-Policy", "cross-origin-resource-policy", "Strict-Transport-Security",
                 "Cache-Control", "Content-Type", "Vary", "X-Other")


@settings(max_examples=300, deadline=None)
@given(existing=st.lists(st.tuples(st.sampled_from(_HEADER_NAMES), st.sampled_from(["a", "b; c=1", ""])),
                         max_size=8),
       request_id=st.sampled_from(["req-1", "0" * 32]), secure=st.booleans(), no_store=st.booleans())
def test_headers_appended_directly_are_those_the_headers_api_would_set(
        existing: list[tuple[str, str]], request_id: str, secure: bool, no_store: bool) -> None:
    from werkzeug.datastructures import Headers

    from ledger import observability

    direct, through_api = Headers(existing), Headers(existing)
    observability._add_headers(direct, request_id, secure, no_store)
    observability._add_headers_through_api(through_api, request_id, secure, no_store)
    assert direct.to_wsgi_list() == through_api.to_wsgi_list()


def test_every_route_answers_with_the_same_headers_in_the_same_order_as_before(app: Flask) -> None:
    client = app.test_client()
    expected_tail = ["X-Request-ID", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
                     "Content-Security-Policy", "Cross-Origin-Resource-Policy"]
    health = client.get("/health", headers={"X-Request-ID": "same-1"})
    assert [name for name, _ in health.headers] == ["Content-Type", "Content-Length", *expected_tail]
    assert health.headers["X-Request-ID"] == "same-1"
    missing = client.get("/api/nowhere")
    assert [name for name, _ in missing.headers][-7:] == [*expected_tail, "Cache-Control"]
    assert missing.headers["Cache-Control"] == "no-store"


# ---------------------------------------------------------------------- the application and response classes


def test_hooks_and_views_are_asked_about_once_and_still_all_run(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    import flask.app

    asked: list[object] = []
    real = inspect.iscoroutinefunction
    monkeypatch.setattr(flask.app, "iscoroutinefunction", lambda func: asked.append(func) or real(func))
    ran: list[str] = []

    @app.before_request
    def _before() -> None:
        ran.append("before")

    @app.after_request
    def _after(response):  # noqa: ANN001, ANN202
        ran.append("after")
        return response

    client = app.test_client()
    for _ in range(5):
        assert client.get("/health").status_code == 200
    assert ran == ["before", "after"] * 5
    assert asked.count(_before) == 1
    assert asked.count(_after) == 1
    assert len(asked) == len(set(map(id, asked)))  # nothing asked twice


def test_a_coroutine_function_is_still_handed_to_async_to_sync_every_time(app: Flask,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async def view() -> str:
        return "never awaited here"

    def plain() -> str:
        return "plain"

    wrapped: list[object] = []
    monkeypatch.setattr(app, "async_to_sync", lambda func: wrapped.append(func) or (lambda: "synced"))
    assert app.ensure_sync(view)() == "synced"
    assert app.ensure_sync(view)() == "synced"
    assert wrapped == [view, view]
    assert app.ensure_sync(plain) is plain
    assert app.ensure_sync(plain) is plain
    unhashable = type("Unhashable", (), {"__call__": lambda self: "called", "__hash__": None})()
    assert app.ensure_sync(unhashable) is unhashable


@settings(max_examples=300, deadline=None)
@given(status=st.sampled_from([100, 101, 200, 201, 204, 301, 302, 304, 400, 404, 409, 500]),
       extra=st.lists(st.tuples(st.sampled_from(["Location", "content-location", "Content-Length", "ETag", "Vary",
                                                 "Content-Type", "Expires", "X-Other"]),
                                st.sampled_from(["/x/ä", "http://h/p?q=1", "7", "v"])), max_size=5),
       body=st.sampled_from([b"", b"{}", b"x" * 100]), streamed=st.booleans())
def test_the_response_hands_the_server_the_headers_werkzeug_would(
        status: int, extra: list[tuple[str, str]], body: bytes, streamed: bool) -> None:
    from flask import Response as FlaskResponse
    from werkzeug.test import EnvironBuilder

    from ledger.app import LedgerResponse

    environ = EnvironBuilder(path="/api/a/b", base_url="http://example.test/").get_environ()
    answers = []
    for response_class in (LedgerResponse, FlaskResponse):
        response = response_class(iter([body]) if streamed else body, status=status)
        for name, value in extra:
            response.headers.add(name, value)
        answers.append(response.get_wsgi_headers(environ).to_wsgi_list())
    assert answers[0] == answers[1]


# ------------------------------------------------------------------------------ rate limits, checked lean


def _limit_scenario(app: Flask, address: str) -> list[tuple]:
    """Logins (failed and successful), registrations and transfers past their limits, answer by answer: the
    status, the limit headers (the reset time only as "present") and the error body of refusals."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address  # limits per address start from zero for this scenario
    api = Api(client)
    seen: list[tuple] = []

    def record(response) -> None:
        headers = response.headers
        seen.append((response.status_code, headers.get("X-RateLimit-Limit"), headers.get("X-RateLimit-Remaining"),
                     "X-RateLimit-Reset" in headers, "Retry-After" in headers,
                     response.get_json() if response.status_code == 429 else None))

    _, token = api.user()
    source, target = api.funded_account(token, 1000), api.open_account(api.user()[1])
    for _ in range(4):
        record(api.request("POST", "/api/transactions", token,
                           json={"fromAccount": source, "toAccount": target, "amount": 1,
                                 "idempotencyKey": unique_email()}))
    email = unique_email()
    for attempt in range(5):
        record(api.request("POST", "/api/auth/register",
                           json={"email": email if attempt < 2 else unique_email(), "password": "right-password",
                                 "name": "Limit Tester"}))
    for attempt in range(7):
        record(api.request("POST", "/api/auth/login",
                           json={"email": email, "password": "right-password" if attempt % 3 == 1 else "wrong"}))
    return seen


def test_limits_checked_lean_answer_exactly_as_flask_limiter_checks_them(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="3 per minute", RATELIMIT_REGISTER="2 per minute",
                   RATELIMIT_LOGIN_PER_ADDRESS="6 per minute", RATELIMIT_REGISTER_PER_ADDRESS="4 per minute",
                   RATELIMIT_TRANSFER="2 per minute")
    try:
        lean_checks: list[str] = []
        real_check = ratelimit._check_view_limits
        monkeypatch.setattr(ratelimit, "_check_view_limits",
                            lambda name: lean_checks.append(name) or real_check(name))
        lean = _limit_scenario(app, "192.0.2.31")
        assert set(lean_checks) == {"ledger.api.auth.register.register", "ledger.api.auth.login.login",
                                    "ledger.api.transactions.create_transaction.create_transaction"}

        monkeypatch.setattr(ratelimit, "_check_view_limits", lambda _name: False)  # flask-limiter's own wrapper
        by_flask_limiter = _limit_scenario(app, "192.0.2.32")
    finally:
        drop_database(app)

    assert lean == by_flask_limiter
    statuses = [answer[0] for answer in lean]
    for part in (statuses[:4], statuses[4:9], statuses[9:]):  # every limit was reached
        assert 429 in part


def test_a_flask_limiter_without_the_private_state_read_is_left_to_check_every_limit_itself(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """As after an upgrade that renamed something the lean path reads: it stands aside (decided at start-up,
    with a warning), flask-limiter checks each limit, and the answers are the lean path's, 429s included."""
    limits = {"RATELIMIT_ENABLED": True, "RATELIMIT_LOGIN": "3 per minute", "RATELIMIT_REGISTER": "2 per minute",
              "RATELIMIT_LOGIN_PER_ADDRESS": "6 per minute", "RATELIMIT_REGISTER_PER_ADDRESS": "4 per minute",
              "RATELIMIT_TRANSFER": "2 per minute"}
    monkeypatch.setattr(ratelimit, "_lean_path", True)  # put back after the test (the next app decides again)
    app = make_app(**limits)
    try:
        assert ratelimit._lean_path is True
        lean = _limit_scenario(app, "192.0.2.41")
    finally:
        drop_database(app)

    monkeypatch.setattr(ratelimit, "_PRIVATE_LIMITER", (*ratelimit._PRIVATE_LIMITER, "_renamed_in_a_later_release"))
    counted: list[object] = []
    real_count = ratelimit._count
    monkeypatch.setattr(ratelimit, "_count", lambda *args: counted.append(args) or real_count(*args))
    with caplog.at_level("WARNING"):
        app = make_app(**limits)
    assert "lacks what the lean rate-limit path reads" in caplog.text
    try:
        assert ratelimit._lean_path is False
        standing_aside = _limit_scenario(app, "192.0.2.42")
    finally:
        drop_database(app)

    assert counted == []  # nothing went through the lean path
    assert standing_aside == lean
    statuses = [answer[0] for answer in standing_aside]
    for part in (statuses[:4], statuses[4:9], statuses[9:]):
        assert 429 in part


def test_limits_are_resolved_once_per_configured_limit_string(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_TRANSFER="50 per minute")
    try:
        resolved: list[str] = []
        real = ratelimit.limiter.limit_manager.decorated_limits
        monkeypatch.setattr(ratelimit.limiter.limit_manager, "decorated_limits",
                            lambda name: resolved.append(name) or real(name))
        monkeypatch.setattr(ratelimit, "_RESOLVED", {})
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = "192.0.2.33"
        api = Api(client)
        _, token = api.user()
        source, target = api.funded_account(token, 1000), api.open_account(api.user()[1])

        def transfer() -> object:
            return api.request("POST", "/api/transactions", token, json={
                "fromAccount": source, "toAccount": target, "amount": 1, "idempotencyKey": unique_email()})

        first = [transfer() for _ in range(3)]
        app.config["RATELIMIT_TRANSFER"] = "1 per minute"  # a new limit string is resolved again, and applies
        second = [transfer() for _ in range(2)]
    finally:
        drop_database(app)

    assert [r.status_code for r in first] == [200, 200, 200]
    assert [r.headers["X-RateLimit-Limit"] for r in first] == ["50"] * 3
    assert [r.headers["X-RateLimit-Remaining"] for r in first] == ["49", "48", "47"]
    assert resolved.count("ledger.api.transactions.create_transaction.create_transaction") == 2
    assert [r.status_code for r in second] == [200, 429]  # the new limit counts on its own


def test_services_are_handed_the_callers_document_itself_not_a_proxy(app: Flask, api: Api,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from flask_jwt_extended import current_user

    from ledger.services import transfers

    handed: list[tuple[object, object]] = []
    real_transfer = transfers.transfer

    def spy(initiator, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        handed.append((initiator, current_user._get_current_object()))
        return real_transfer(initiator, *args, **kwargs)

    monkeypatch.setattr(transfers, "transfer", spy)
    user_id, token = api.user()
    source, target = api.funded_account(token, 100), api.open_account(api.user()[1])
    assert api.transfer(token, source, target, 1).status_code == 200
    ((initiator, loaded),) = handed
    assert type(initiator) is dict
    assert initiator is loaded
    assert str(initiator["_id"]) == user_id


def test_a_forked_worker_generates_request_ids_of_its_own() -> None:
    import os

    from ledger import observability

    observability.new_request_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then leave without running anything else of the test process
        os.close(read_end)
        os.write(write_end, "".join(observability.new_request_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write_end)
    parents = "".join(observability.new_request_id() for _ in range(4))
    with os.fdopen(read_end, "rb") as pipe:
        childs = pipe.read().decode()
    os.waitpid(pid, 0)
    assert len(childs) == len(parents) == 128
    assert {childs[i:i + 32] for i in range(0, 128, 32)}.isdisjoint({parents[i:i + 32] for i in range(0, 128, 32)})


@pytest.mark.parametrize("retry_header", [None, "X-Retry-After"])
def test_the_limit_headers_written_in_one_pass_are_flask_limiters_after_the_retry_after_correction(
        retry_header: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer a limited view can give (statuses, a Retry-After of the view's own, a limit with room or
    breached), with the retry header's default name and a renamed one: the one-pass hook leaves exactly the
    headers flask-limiter's hook and the correction leave."""
    import functools
    import itertools

    from flask import Response
    from flask_limiter import Limiter, RateLimitExceeded
    from flask_limiter.constants import HeaderNames

    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_TRANSFER="3 per minute")
    if retry_header:  # as RATELIMIT_HEADER_RETRY_AFTER sets it (on the process's one limiter, at its first app)
        monkeypatch.setitem(ratelimit.limiter._header_mapping, HeaderNames.RETRY_AFTER, retry_header)
    inject = functools.partial(Limiter._Limiter__inject_headers, ratelimit.limiter)
    view = "ledger.api.transactions.create_transaction.create_transaction"
    statuses = (200, 201, 204, 400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503)
    retry_afters = (None, "0", "1", "30", "Wed, 21 Oct 2026 07:28:00 GMT")
    one_pass = 0
    try:
        for address, (status, retry_after) in enumerate(itertools.product(statuses, retry_afters)):
            for attempt in range(5):  # room left, the last request within the limit, then breached
                with app.test_request_context("/api/transactions", method="POST",
                                              environ_base={"REMOTE_ADDR": f"198.51.100.{address}"}):
                    with contextlib.suppress(RateLimitExceeded):
                        assert ratelimit._check_view_limits(view)
                    answers = [Response("{}", status=status, mimetype="application/json") for _ in range(2)]
                    if retry_after is not None:
                        for answer in answers:
                            answer.headers["Retry-After"] = retry_after
                    original = ratelimit._retry_after_only_when_refused(inject(answers[0]))
                    real_inject = inject
                    took_one_pass = []

                    def counting_inject(response, real=real_inject, seen=took_one_pass):
                        seen.append(False)
                        return real(response)

                    lean = ratelimit._limit_headers(answers[1], counting_inject)
                    one_pass += not took_one_pass
                    assert list(lean.headers.items()) == list(original.headers.items()), (status, retry_after,
                                                                                          attempt)
                    assert lean.headers.get("X-RateLimit-Limit") == "3"
    finally:
        drop_database(app)
    if retry_header is None:
        assert one_pass > 0  # the one-pass path was taken, not only the fallback
    else:
        assert one_pass == 0  # a renamed retry header stays where the correction would leave it


# ------------------------------------------------------------------------------ request bodies, inspected lean

_JSON_LEAVES = (st.none() | st.booleans() | st.integers() | st.text(max_size=6)
                | st.sampled_from(["\ud800", "a\udfffb", "\\u", "{[", "é", "\u2028"]))
_JSON_VALUES = st.recursive(_JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=4) | st.sampled_from(["\udc80", "k"]), inner,
                                              max_size=3), max_leaves=25)


@settings(max_examples=600, deadline=None)
@given(value=_JSON_VALUES, ensure_ascii=st.booleans(), limit=st.integers(1, 6))
def test_a_body_the_lean_check_passes_is_one_the_full_walk_finds_nothing_in(value, ensure_ascii: bool,
                                                                             limit: int) -> None:
    """Whatever JSON a client can send (valid UTF-8 on the wire): when ``needs_inspection`` says no walk is needed,
    the walk would have found the body within the depth limit and free of lone surrogates."""
    import json as json_module

    from hypothesis import assume

    from ledger.jsonio import _inspect, needs_inspection

    try:
        text = json_module.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8").decode("utf-8")
    except UnicodeEncodeError:
        assume(False)  # a raw surrogate is not UTF-8: no client can send it unescaped
    parsed = json_module.loads(text)
    if not needs_inspection(text, limit):
        depth, not_unicode = _inspect(parsed, limit)
        assert depth <= limit
        assert not_unicode is None
