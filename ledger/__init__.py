"""Banking Ledger: a double-entry ledger HTTP API, drop-in compatible with the Node.js service it replaces."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask
from pymongo.errors import ConnectionFailure


def create_app(test_config: dict[str, Any] | None = None, config_name: str | None = None) -> Flask:
    """Build the application. One factory serves production, development and tests.

    ``config_name`` picks a configuration class (default: ``APP_ENV``/``NODE_ENV``); ``test_config``
    overrides individual keys afterwards.
    """
    from config import load_config
    from ledger.app import LedgerFlask

    app = LedgerFlask(__name__, static_folder=None)  # an API: no static files, so no undocumented /static route
    app.url_map.strict_slashes = False  # as Express routes: /api/accounts/ is /api/accounts
    app.config.from_object(load_config(config_name or ("testing" if test_config is not None else None)))
    if test_config:
        app.config.update(test_config)

    configure_logging(app)
    configure_proxies(app)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_request_hooks(app)
    register_commands(app)
    initialize_database(app)
    return app


def configure_proxies(app: Flask) -> None:
    """Trust X-Forwarded-For/-Proto from exactly TRUSTED_PROXIES hops (0: trust nothing, the default)."""
    hops = int(app.config.get("TRUSTED_PROXIES") or 0)
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]


def configure_logging(app: Flask) -> None:
    from ledger.observability import configure_logging as setup

    setup(app)


def register_extensions(app: Flask) -> None:
    from ledger import jwt_parse, mailer, ratelimit, security
    from ledger.jsonio import LedgerJSONProvider

    jwt_parse.install()  # each bearer token parsed once per process (verification unchanged)

    app.json_provider_class = LedgerJSONProvider
    app.json = LedgerJSONProvider(app)
    security.init_app(app)
    mailer.init_app(app)
    ratelimit.init_app(app)


# Werkzeug compiles every URL rule with ``ast.parse``, and CPython before 3.11.8 can fail ``ast`` work done in
# several threads at once ("SystemError: AST constructor recursion depth mismatch", CPython gh-106905). Apps
# built concurrently in one process (the concurrent start-up test does that) register their routes in turn.
_ROUTE_COMPILATION = threading.Lock()


def register_blueprints(app: Flask) -> None:
    from ledger import routing
    from ledger.api import register_blueprints as register

    with _ROUTE_COMPILATION:
        register(app)
    routing.init_app(app)  # paths match case-insensitively, as Express matched them


def register_error_handlers(app: Flask) -> None:
    from ledger.errors import register_error_handlers as register

    register(app)


def register_request_hooks(app: Flask) -> None:
    from ledger.observability import init_app

    init_app(app)


def register_commands(app: Flask) -> None:
    from ledger.cli import init_app

    init_app(app)


def initialize_database(app: Flask) -> None:
    from ledger import db
    from ledger.services.system import bootstrap_from_config

    if app.config.get("GENERATED_JWT_SECRET") and app.config.get("JWT_SECRET_STORED"):
        app.logger.warning(
            "JWT_SECRET is not set: using the GENERATED DEVELOPMENT SECRET kept in %s (it survives restarts "
            "on that folder); never run like this in production (APP_ENV=production refuses to start without "
            "JWT_SECRET).", app.config.get("LEDGER_DATA_DIR")
        )
    elif app.config.get("GENERATED_JWT_SECRET"):
        app.logger.warning(
            "JWT_SECRET is not set: using a GENERATED DEVELOPMENT SECRET. Tokens die with this process; "
            "never run like this in production (APP_ENV=production refuses to start without JWT_SECRET)."
        )
    with app.app_context():
        try:
            db.init_app(app)
            bootstrap_from_config(app)
        except (ConnectionFailure, db.DatabaseUnavailable) as exc:
            # Start anyway (/health answers, /ready says 503) and finish once the database answers, rather
            # than crash-looping while a replica set is still electing a primary.
            app.logger.error("database unreachable at start-up (%s): indexes and the system user will be set "
                             "up in the background once it answers", type(exc).__name__)
            _defer_startup(app)
    from ledger import mailer

    mailer.start_background_sender(app)
    from ledger.services import holds

    holds.install_sweeper(app)


STARTUP_RETRY_SECONDS = 5.0


def _defer_startup(app: Flask) -> None:
    """Finish start-up (indexes, system user) in a background thread once the database answers.

    The thread is started by the first request of each process (never in a gunicorn master before fork), and
    requests never wait for it: /health keeps answering at once while /ready reports 503.
    """
    import os
    import threading
    import time

    from ledger import db
    from ledger.services.system import bootstrap_from_config

    started_in: set[int] = set()
    guard = threading.Lock()

    def retry_until_done() -> None:
        while True:
            try:
                with app.app_context():
                    db.ensure_indexes(db.get_db(app))
                    db.mark_indexes_ready(app)
                    bootstrap_from_config(app)
            except (ConnectionFailure, db.DatabaseUnavailable) as exc:
                app.logger.warning("start-up still pending: database unreachable (%s)", type(exc).__name__)
                time.sleep(STARTUP_RETRY_SECONDS)
                continue
            except Exception:  # a misconfiguration (e.g. the system email is an ordinary user): say so, stop
                app.logger.exception("start-up could not complete; fix the configuration and restart")
                return
            app.logger.info("start-up completed: indexes and system user in place")
            return

    @app.before_request
    def _start_retrying() -> None:
        if os.getpid() in started_in:
            return
        with guard:
            if os.getpid() not in started_in:
                started_in.add(os.getpid())
                threading.Thread(target=retry_until_done, name="ledger-startup", daemon=True).start()
