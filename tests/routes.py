"""Every route of an app, as requests a test can send: for the property tests that run over all of them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bson import ObjectId
from flask import Flask

_PARAMETER = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")
SOME_ID = str(ObjectId("5f0c0ffee0ddba11c0ffee01"))  # a well-formed id that names nothing


@dataclass(frozen=True)
class Route:
    method: str
    rule: str
    path: str  # the rule with SOME_ID for each parameter

    def __str__(self) -> str:
        return f"{self.method} {self.rule}"


def all_routes(app: Flask) -> list[Route]:
    routes = []
    for rule in app.url_map.iter_rules():
        path = _PARAMETER.sub(SOME_ID, rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append(Route(method, rule.rule, path))
    return sorted(routes, key=str)


def protected_routes(app: Flask) -> list[Route]:
    """The routes that answer 401 "token is missing" to a request without any credentials."""
    client = app.test_client(use_cookies=False)
    found = []
    for route in all_routes(app):
        response = client.open(route.path, method=route.method, json={})
        body = response.get_json(silent=True) or {}
        if response.status_code == 401 and body.get("message") == "Unauthorized, token is missing":
            found.append(route)
    return found
