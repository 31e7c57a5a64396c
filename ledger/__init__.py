"""Banking Ledger: a double-entry ledger HTTP API, drop-in compatible with the Node.js service it replaces."""

from __future__ import annotations

from typing import Any

from flask import Flask


def create_app(test_config: dict[str, Any] | None = None, config_name: str | None = None) -> Flask:
    """Build the application. One factory serves production, development and tests.

    ``config_name`` picks a configuration class (default: ``APP_ENV``/``NODE_ENV``); ``test_config``
    overrides individual keys afterwards.
    """
    from config import load_config

    app = Flask(__name__, static_folder=None)  # an API: no static files, so no undocumented /static route
    app.url_map.strict_slashes = False  # as Express routes: /api/accounts/ is /api/accounts
    app.config.from_object(load_config(config_name or ("testing" if test_config is not None else None)))
    if test_config:
        app.config.update(test_config)

    configure_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_request_hooks(app)
    register_commands(app)
    initialize_database(app)
    return app


def configure_logging(app: Flask) -> None:
    from ledger.observability import configure_logging as setup

    setup(app)


def register_extensions(app: Flask) -> None:
    from ledger import mailer, ratelimit, security
    from ledger.jsonio import LedgerJSONProvider

    app.json_provider_class = LedgerJSONProvider
    app.json = LedgerJSONProvider(app)
    security.init_app(app)
    mailer.init_app(app)
    ratelimit.init_app(app)


def register_blueprints(app: Flask) -> None:
    from ledger.api import register_blueprints as register

    register(app)


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

    if app.config.get("GENERATED_JWT_SECRET"):
        app.logger.warning(
            "JWT_SECRET is not set: using a GENERATED DEVELOPMENT SECRET. Tokens die with this process; "
            "never run like this in production (APP_ENV=production refuses to start without JWT_SECRET)."
        )
    with app.app_context():
        db.init_app(app)
        bootstrap_from_config(app)
    from ledger import mailer

    mailer.start_background_sender(app)
