"""Rate limits (flask-limiter): login and registration per client address and per email, transfers per user.

The limiter is an unbound singleton bound in :func:`init_app`; its own settings come from the app config
(``RATELIMIT_ENABLED``, ``RATELIMIT_STORAGE_URI``, ``RATELIMIT_STRATEGY``, ``RATELIMIT_HEADERS_ENABLED``, ...),
and the limit strings from ``RATELIMIT_LOGIN``/``RATELIMIT_REGISTER`` (per email),
``RATELIMIT_LOGIN_PER_ADDRESS``/``RATELIMIT_REGISTER_PER_ADDRESS`` and ``RATELIMIT_TRANSFER`` (per user), read when a
request is checked. Counters live in memory per process by default; ``RATELIMIT_STORAGE_URI`` (``redis://`` or
``mongodb://``) shares them between gunicorn workers and machines.

A breach raises flask-limiter's ``RateLimitExceeded`` (a 429 ``HTTPException``), which ``ledger.errors``
renders in our JSON envelope; flask-limiter's after-request hook adds ``Retry-After`` and ``X-RateLimit-*``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, request
from flask.globals import _cv_request
from flask_jwt_extended import get_jwt_identity
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from flask_limiter.constants import HeaderNames
from flask_limiter.util import get_qualified_name, get_remote_address
from limits.storage import MemoryStorage

# Bodies of login and register are tiny; a key function never parses more than this (the view refuses
# oversized bodies itself, with a 413).
_KEY_BODY_LIMIT = 4096

limiter = Limiter(key_func=get_remote_address)


def client_address() -> str:
    """The client address: the peer, or behind TRUSTED_PROXIES balancers the forwarded client address."""
    return "addr:" + get_remote_address()


def email_or_address() -> str:
    """The normalised email of a login/register body (hashed: no addresses in the limiter's storage).

    Never raises: a body that is missing, oversized, malformed, deeply nested or not an object falls back to
    the client address, and the view answers it with its usual 400/413/415.
    """
    try:
        raw = request.get_data(cache=True)
        if len(raw) <= _KEY_BODY_LIMIT:
            body = json.loads(raw)
            email = body.get("email") if isinstance(body, dict) else None
            if isinstance(email, str) and email.strip():
                digest = hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()
                return "email:" + digest
    except Exception:  # noqa: S110 - any unreadable body just means "no email to key on"
        pass
    return client_address()


def user_or_address() -> str:
    """The authenticated caller's id; the limit decorator sits inside ``jwt_required`` so it is verified."""
    try:
        identity = get_jwt_identity()
    except Exception:  # pragma: no cover - only reachable if the decorator order is wrong
        identity = None
    return f"user:{identity}" if identity else client_address()


def _configured(name: str) -> Callable[[], str]:
    def limit_value() -> str:
        return str(current_app.config[name])

    limit_value.__name__ = f"limit_from_{name.lower()}"
    return limit_value


def _limits_switched_off() -> bool:
    # The limiter is a process-wide singleton; this keeps an app configured with RATELIMIT_ENABLED=false
    # unlimited even when another app in the same process (as in the test suite) switched it on.
    return not current_app.config.get("RATELIMIT_ENABLED", True)


limiter.request_filter(_limits_switched_off)

class _ViewLimit:
    """A flask-limiter limit on a view (``limiter.limit(...)``), checked without re-resolving it per request.

    flask-limiter, on every request to a limited view, re-reads and re-parses the limit strings, resolves
    default, blueprint and hinted limits, works out exemptions (three lookups), and only then counts the hit.
    For this service's limits (decorators on views; no application, default, blueprint, meta or fallback
    limits; no exemptions, breach callbacks or other request filters) the answer is the view's decorated
    limits, the same on every request until the configured limit string changes: :func:`_check_view_limits`
    takes them from a cache keyed by those strings and then counts exactly as flask-limiter does (same
    storage keys, ``hit``/``test`` with the same cost, the same request state for its after-request hook, which
    still writes the ``X-RateLimit-*`` headers and the failed-login deductions, and the same breach). Whenever
    any of those conditions does not hold, flask-limiter's own wrapper checks the request as before.
    """

    def __init__(self, config_name: str, key_func: Callable[[], str], scope: str,
                 deduct_when: Callable[[Response], bool] | None = None) -> None:
        self.config_name = config_name
        self.flask_limit = limiter.limit(_configured(config_name), key_func=key_func, scope=scope,
                                         deduct_when=deduct_when)

    def __call__(self, view: Callable[..., Any]) -> Callable[..., Any]:
        name = get_qualified_name(view)
        _VIEW_LIMIT_CONFIG.setdefault(name, []).append(self.config_name)
        checked_by_flask_limiter = self.flask_limit(view)  # registers the limit under the view's name
        if getattr(view, _WRAPPER_MARK, None) is limiter:
            # Stacked: the wrapper below this one checks every limit of the view (as flask-limiter's do).
            return checked_by_flask_limiter

        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if not _check_view_limits(name):
                return checked_by_flask_limiter(*args, **kwargs)
            return current_app.ensure_sync(view)(*args, **kwargs)

        setattr(checked, _WRAPPER_MARK, limiter)
        return checked


_WRAPPER_MARK = "__wrapper-limiter-instance"  # flask-limiter's mark of a view it already checks
_VIEW_LIMIT_CONFIG: dict[str, list[str]] = {}  # view name -> the config keys of its limits
_RESOLVED: dict[tuple[str, tuple[str, ...]], list[Any]] = {}  # (view name, limit strings) -> sorted limits


# The lean path reads flask-limiter's private state (as of 4.1). If an upgrade renamed any of it, the lean
# path stands aside and flask-limiter checks every limit itself, as it would without this module:
# checked once per app at start-up (``_lean_path_supported``), never guessed at on a request.
_PRIVATE_LIMITER = ("_storage_dead", "_request_filters", "_on_breach", "_check_request_limit", "_swallow_errors",
                    "_key_prefix", "_fail_on_first_breach", "_in_memory_fallback_enabled", "_headers_enabled",
                    "_header_mapping")
_PRIVATE_MANAGER = ("_blueprint_limits", "_route_exemptions", "_blueprint_exemptions", "decorated_limits",
                    "has_hints")
_lean_path = True  # whether the running flask-limiter has what the lean path reads (set by init_app)


def _lean_path_supported(app: Flask) -> bool:
    manager = limiter.limit_manager
    if not (all(hasattr(limiter, name) for name in _PRIVATE_LIMITER)
            and all(hasattr(manager, name) for name in _PRIVATE_MANAGER)):
        return False
    with app.test_request_context():  # where flask-limiter keeps a request's state: looked at by the hooks
        limiter.context  # noqa: B018 - creates it
        return _LIMITER_CONTEXT in _cv_request.get().__dict__


def _flask_limiter_would_only_check_decorated_limits(endpoint: str | None) -> bool:
    manager = limiter.limit_manager
    return bool(
        endpoint and limiter.enabled and limiter.initialized and not limiter._storage_dead
        and limiter._request_filters == [_limits_switched_off] and not _limits_switched_off()
        and not (_limits_outside_views() or manager._blueprint_limits or manager._route_exemptions
                 or manager._blueprint_exemptions or manager.has_hints(endpoint) or limiter._on_breach)
    )


def _check_view_limits(name: str) -> bool:
    """Count this request against the view's limits as flask-limiter would, raising its ``RateLimitExceeded``
    on a breach; False (nothing counted) when flask-limiter's own wrapper must check the request instead."""
    if not _lean_path:
        return False
    endpoint = limiter.identify_request()
    if not _flask_limiter_would_only_check_decorated_limits(endpoint):
        return False
    config = current_app.config
    strings = tuple(str(config[key]) for key in _VIEW_LIMIT_CONFIG[name])
    limits = _RESOLVED.get((name, strings))
    if limits is None:
        limits = sorted(limiter.limit_manager.decorated_limits(name), key=lambda runtime: runtime.limit)
        if any(runtime.on_breach or runtime.meta_limits for runtime in limits):
            return False
        if len(_RESOLVED) < 256:
            _RESOLVED[(name, strings)] = limits
    try:
        _count(endpoint, limits)
    except RateLimitExceeded:
        raise
    except Exception:  # the storage failed: flask-limiter's own handling (in-memory fallback, swallow or raise)
        if limiter._in_memory_fallback_enabled and not limiter._storage_dead:
            limiter.logger.warning("Rate limit storage unreachable - falling back to in-memory storage")
            limiter._storage_dead = True
            limiter.context.seen_limits.clear()
            limiter._check_request_limit(callable_name=name, in_middleware=False)
        elif limiter._swallow_errors:
            limiter.logger.exception("Failed to rate limit. Swallowing error")
        else:
            raise
    return True


def _count(endpoint: str, limits: list[Any]) -> None:
    """flask-limiter's evaluation of a view's limits (without meta limits or breach callbacks)."""
    context = limiter.context
    strategy = limiter.limiter
    method = request.method
    prefix = limiter._key_prefix
    view_limits: list[RequestLimit] = []
    failed: list[Any] = []
    header_limit: RequestLimit | None = None
    for runtime in limits:
        if runtime.is_exempt or runtime.method_exempt:
            continue
        scope = runtime.scope_for(endpoint, method)
        key = runtime.key_func()
        args = [key, scope]
        if not all(args):
            limiter.logger.error(f"Skipping limit: {runtime.limit}. Empty value found in parameters.")
            continue
        if prefix:
            args = [prefix, *args]
        if runtime.deduct_when:
            context.conditional_deductions[runtime] = args
            counted = strategy.test
        else:
            counted = strategy.hit
        request_limit = RequestLimit(limiter, runtime.limit, args, False, runtime.shared)
        view_limits.append(request_limit)
        if not counted(runtime.limit, *args, cost=runtime.deduction_amount):
            limiter.logger.info("ratelimit %s (%s) exceeded at endpoint: %s", runtime.limit, key, scope)
            failed.append(runtime)
            request_limit.breached = True
            header_limit = request_limit
            if limiter._fail_on_first_breach:
                break
    if header_limit is None and view_limits:
        explicit = [limit for limit in view_limits if not limit.shared]
        header_limit = explicit[0] if explicit else view_limits[0]
    context.view_rate_limit = header_limit
    context.view_rate_limits = view_limits
    if failed:
        raise RateLimitExceeded(sorted(failed, key=lambda runtime: runtime.limit)[0], response=None)


#: Decorators for the views. Put them *below* ``@jwt_required()`` so the user key is a verified identity.
login_per_address = _ViewLimit("RATELIMIT_LOGIN_PER_ADDRESS", key_func=client_address, scope="login-addr")
# Per email only failed logins count: a lockout is for guessing, not for a user (or a client suite) that logs in
# often with the right password.
login_per_email = _ViewLimit("RATELIMIT_LOGIN", key_func=email_or_address, scope="login-email",
                             deduct_when=lambda response: response.status_code == 401)
register_per_address = _ViewLimit("RATELIMIT_REGISTER_PER_ADDRESS", key_func=client_address, scope="register-addr")
register_per_email = _ViewLimit("RATELIMIT_REGISTER", key_func=email_or_address, scope="register-email")
transfer_per_user = _ViewLimit("RATELIMIT_TRANSFER", key_func=user_or_address, scope="transfer-user")


def init_app(app: Flask) -> None:
    """Bind the limiter when ``RATELIMIT_ENABLED`` (the default outside tests).

    A disabled app is not bound at all, rather than bound "disabled": flask-limiter keeps its on/off switch
    on the (process-wide) instance, and binding a disabled app would switch limiting off for every other app
    of the process. The request filter above keeps a disabled app unlimited either way.
    """
    if app.config.get("RATELIMIT_ENABLED", True):
        # Registered before the limiter's own hook, so it runs after it (Flask runs these in reverse order).
        app.after_request(_retry_after_only_when_refused)
        swept = app.config.get("RATELIMIT_STORAGE_URI") == "memory://"
        if swept:  # the default: same counters, swept by one thread rather than one per hit
            app.config["RATELIMIT_STORAGE_URI"] = SweptMemoryStorage.URI
        try:
            limiter.init_app(app)
        finally:
            if swept:  # the app's own setting stays what it was
                app.config["RATELIMIT_STORAGE_URI"] = "memory://"
        _swept_fallback()
        global _lean_path
        _lean_path = _lean_path_supported(app)
        if _lean_path:
            _only_where_limits_apply(app)
        else:
            app.logger.warning("flask-limiter %s lacks what the lean rate-limit path reads: every limit is "
                               "checked by flask-limiter itself (correct, slower)", _limiter_version())


_RETRYABLE_STATUSES = {409, 429, 503}


def _retry_after_only_when_refused(response: Response) -> Response:
    """flask-limiter sets ``Retry-After`` on every limited answer, successes included; keep it where it means
    "try again later", and never let it say 0 seconds (in a window's last second it rounds down to 0)."""
    if response.status_code not in _RETRYABLE_STATUSES:
        response.headers.pop("Retry-After", None)
    elif response.headers.get("Retry-After") == "0":
        response.headers["Retry-After"] = "1"
    return response


# ----------------------------------------------------------------------------------- per-request cost

# The attribute flask-limiter keeps on the request context once it has checked a limit for the request.
_LIMITER_CONTEXT = "_limiter_request_context"


def _limits_outside_views() -> bool:
    """Whether any limit applies to requests as such, rather than to a decorated view: application-wide or
    default limits, meta limits, or in-memory fallback limits. This service configures none."""
    manager = limiter.limit_manager
    return bool(manager.application_limits or manager.default_limits or getattr(limiter, "_meta_limits", True)
                or getattr(limiter, "_in_memory_fallback", True))


def _only_where_limits_apply(app: Flask) -> None:
    """Keep flask-limiter's per-request hooks off the requests that have no limit to check.

    flask-limiter registers a before-request check on every route (resolving and filtering limits each time)
    and an after-request and teardown hook that look at what it checked. Our limits are all decorators on
    views, which check themselves when the view runs, so, decided once here at start-up:

    * with no application-wide, default, meta or fallback limits the before-request check has nothing to
      evaluate on any route, and is removed (should a configuration add such limits, it stays);
    * the after-request hook (``X-RateLimit-*``, ``Retry-After``, deductions such as failed logins), our
      ``Retry-After`` correction and the teardown run only for requests whose view checked a limit, i.e. whose
      request context carries flask-limiter's state; for the others they would find nothing and do nothing.
    """
    before = app.before_request_funcs.get(None, [])
    if not _limits_outside_views():
        before[:] = [hook for hook in before if hook != limiter._check_request_limit]
    after = app.after_request_funcs.get(None, [])
    for index, hook in enumerate(after):
        if isinstance(hook, functools.partial) and hook.args == (limiter,):
            # Retry-After comes from flask-limiter only on limited requests (our own handlers set it on 409,
            # 429 and 503 answers only), so its correction runs there too, right after flask-limiter's hook.
            after[index] = _where_limited(lambda response, inject=hook: _limit_headers(response, inject),
                                          lambda response: response)
            after.remove(_retry_after_only_when_refused)
            break
    teardown = app.teardown_request_funcs.get(None, [])
    for index, hook in enumerate(teardown):
        if getattr(hook, "__self__", None) is limiter and hook.__name__.endswith("__release_context"):
            teardown[index] = _where_limited(hook, lambda _exc=None: None)


def _limit_headers(response: Response, inject: Callable[[Response], Response]) -> Response:
    """flask-limiter's after-request hook followed by our ``Retry-After`` correction, in one pass for the usual
    answer: a success or a plain error that checked limits but deducts nothing after the fact and carries no
    ``Retry-After`` of its own. flask-limiter would add the three ``X-RateLimit-*`` headers, then a
    ``Retry-After`` that the correction removes again; here only the three are added, from the same window
    figures. Anything else (a 409/429/503, a ``Retry-After`` set by the view, a deduction such as a failed
    login's, a storage that fails to answer) is left to flask-limiter's hook and the correction, as before.
    """
    context = _cv_request.get().__dict__[_LIMITER_CONTEXT].get(limiter)
    headers = response.headers
    mapping = limiter._header_mapping
    if (context is None or context.conditional_deductions or response.status_code in _RETRYABLE_STATUSES
            or "Retry-After" in headers or mapping.get(HeaderNames.RETRY_AFTER, "Retry-After") != "Retry-After"):
        # (A renamed retry header, RATELIMIT_HEADER_RETRY_AFTER, is one the correction leaves in place.)
        return _retry_after_only_when_refused(inject(response))
    header_limit = context.view_rate_limit
    if not (limiter.enabled and limiter._headers_enabled and header_limit and mapping):
        return response
    try:
        reset_at = header_limit.reset_at
        remaining = header_limit.remaining
    except Exception:  # noqa: BLE001 - the storage failed: flask-limiter's own handling (fallback, swallow or raise)
        return _retry_after_only_when_refused(inject(response))
    headers.add(mapping[HeaderNames.LIMIT], str(header_limit.limit.amount))
    headers.add(mapping[HeaderNames.REMAINING], str(remaining))
    headers.add(mapping[HeaderNames.RESET], str(reset_at))
    return response


def _where_limited(hook: Callable[..., Any], otherwise: Callable[..., Any]) -> Callable[..., Any]:
    def only_where_limited(arg: Any = None) -> Any:
        # The request context's own attributes, without the AttributeError a hasattr() through the
        # ``request_ctx`` proxy raises on every request that checked no limit.
        if _LIMITER_CONTEXT in _cv_request.get().__dict__:
            return hook(arg)
        return otherwise(arg)

    only_where_limited.__wrapped__ = hook  # type: ignore[attr-defined]
    return only_where_limited


SWEEP_SECONDS = 1.0


class SweptMemoryStorage(MemoryStorage):
    """limits' in-memory storage (``memory://``), with its expired entries swept by one long-lived thread.

    The original starts a new 10 ms ``threading.Timer`` on any hit that finds the last one finished, which
    with requests more than 10 ms apart is nearly every limited request: a thread start (and the wait for it
    to run) on the request path. Counting and limiting are the original's, and they never depended on the
    sweep (every read compares timestamps itself); the sweep only frees expired entries, here once a second
    from a daemon thread that ends when the storage is gone.
    """

    STORAGE_SCHEME = ["ledger-swept-memory"]
    URI = "ledger-swept-memory://"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sweeper: threading.Thread | None = None
        self._sweeper_guard = threading.Lock()
        super().__init__(*args, **kwargs)

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - replaces the parent's private method
        sweeper = self._sweeper
        if sweeper is not None and sweeper.is_alive():
            return
        with self._sweeper_guard:  # first hit of the process (or after a fork): start the sweeper once
            if self._sweeper is None or not self._sweeper.is_alive():
                self._sweeper = threading.Thread(target=_sweep, args=(weakref.ref(self),),
                                                 name="ledger-ratelimit-sweeper", daemon=True)
                self._sweeper.start()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_sweeper", None)
        state.pop("_sweeper_guard", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.update(_sweeper=None, _sweeper_guard=threading.Lock())
        super().__setstate__(state)


def _swept_fallback() -> None:
    """The in-memory storage flask-limiter falls back to while a shared storage is down, swept the same way."""
    fallback = getattr(limiter, "_fallback_storage", None)
    strategy = getattr(limiter, "_fallback_limiter", None)
    if type(fallback) is MemoryStorage and strategy is not None:
        limiter._fallback_storage = swept = SweptMemoryStorage()
        limiter._fallback_limiter = type(strategy)(swept)


def _sweep(storage_ref: weakref.ReferenceType[SweptMemoryStorage]) -> None:
    while True:
        time.sleep(SWEEP_SECONDS)
        storage = storage_ref()
        if storage is None:
            return
        storage._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        del storage


def _limiter_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flask-limiter")
    except PackageNotFoundError:  # pragma: no cover - imported above, so installed
        return "?"
