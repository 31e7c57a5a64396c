"""HTTP blueprints, one module per Node controller. They parse input into primitives, call one service
function and serialise the result; no database access happens here."""

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from ledger.api import accounts, auth, docs, holds, openapi, ops, transactions, verification

    app.register_blueprint(ops.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(auth.bp, url_prefix="/api/auth")
    app.register_blueprint(accounts.bp, url_prefix="/api/accounts")
    app.register_blueprint(transactions.bp, url_prefix="/api/transactions")
    app.register_blueprint(holds.bp, url_prefix="/api/holds")
    app.register_blueprint(verification.bp, url_prefix="/api/ledger")
