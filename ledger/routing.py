"""Paths match as Express matched them: case-insensitively, with or without a trailing slash.

Express routes ignore case by default and ``strict: false`` lets ``/api/accounts/`` reach ``/api/accounts``;
Node clients may rely on either. Werkzeug compares the static parts of a rule exactly, so this WSGI middleware
rewrites a request path whose static parts differ from a route's only in case (or by a trailing slash) into
the route's own spelling before Flask routes it. Path parameters (ids) are passed on exactly as sent.

The common case costs one comparison: a path that is already lower-case and has no trailing slash is left
alone without looking at the routes (every route we declare is spelled in lower case).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

_PARAMETER = re.compile(r"<(?:[^<>:]+:)?[^<>]+>")


class _Route:
    """One rule as a case-insensitive pattern over the path, and the way to spell a match canonically."""

    def __init__(self, rule: str) -> None:
        self.static_parts = _PARAMETER.split(rule)
        self.parameter_count = len(self.static_parts) - 1
        pattern = "([^/]+)".join(re.escape(part) for part in self.static_parts)
        self.pattern = re.compile(pattern.rstrip("/") + "/?" if pattern != "/" else "/", re.IGNORECASE | re.ASCII)
        self.static_length = sum(len(part) for part in self.static_parts)

    def rewrite(self, path: str) -> str | None:
        match = self.pattern.fullmatch(path)
        if match is None:
            return None
        spelled = self.static_parts[0]
        for value, static in zip(match.groups(), self.static_parts[1:], strict=True):
            spelled += value + static
        return spelled


class CaseInsensitivePaths:
    """WSGI middleware: ``/API/Accounts/`` reaches ``/api/accounts``; ids in the path are untouched."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], flask_app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.flask_app = flask_app
        self._routes: list[_Route] | None = None

    def routes(self) -> list[_Route]:
        if self._routes is None:  # built once the blueprints are all registered (the first odd path)
            rules = {rule.rule for rule in self.flask_app.url_map.iter_rules()}
            # Like werkzeug: a route with more static text wins over one that captures it as a parameter.
            self._routes = sorted((_Route(rule) for rule in rules),
                                  key=lambda route: (route.parameter_count, -route.static_length))
        return self._routes

    def canonical_path(self, path: str) -> str:
        if path == path.lower() and (len(path) <= 1 or not path.endswith("/")):
            return path
        for route in self.routes():
            spelled = route.rewrite(path)
            if spelled is not None:
                return spelled
        return path

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        canonical = self.canonical_path(path)
        if canonical != path:
            environ["PATH_INFO"] = canonical
        return self.wsgi_app(environ, start_response)


def init_app(app: Flask) -> None:
    app.wsgi_app = CaseInsensitivePaths(app.wsgi_app, app)  # type: ignore[method-assign]
