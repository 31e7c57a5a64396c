"""Each route's contract, declared once on its view, read by the route itself and by ``/api/openapi.json``.

::

    @bp.post("")
    @declare("createTransaction", tag="transactions", summary="Transfer between accounts",
             body=TransferRequest, idempotency_header=True,
             responses={200: ok("Completed.", TransactionResponse, "Idempotent-Replayed"), **errors(401, 503)})
    @jwt_required()
    def create_transaction():
        transfer = body()          # the declared model, validated: the first broken rule is the 400
        ...

:func:`declare` only attaches a :class:`Declaration` to the view (no wrapper, nothing added per request).
:func:`body`, :func:`query` and :func:`path` validate the request against the *declared* models and path rules
of the endpoint being served, so a route cannot read input other than the one it documents; each is called
where the view needs it, so the order of checks (403 before 400, path before body) stays the route's.
:func:`build_spec` walks ``app.url_map`` and writes every operation from those declarations; a route without
one is left out and reported by :func:`undocumented_routes`, an undescribed path argument by
:func:`undeclared_path_parameters` (tests keep both lists empty).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, request
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from werkzeug.routing import Rule

from ledger import validation
from ledger.api import schemas
from ledger.errors import ValidationFailed
from ledger.jsonio import json_body

OPENAPI_VERSION = "3.0.3"
_IGNORED_METHODS = {"HEAD", "OPTIONS"}  # answered by Flask itself for every route
_CONVERTER = re.compile(r"<(?:[a-zA-Z_][a-zA-Z0-9_]*(?:\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")
_ATTRIBUTE = "__ledger_contract__"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


# ----------------------------------------------------------------------------------------- shared components

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"description": "The client's X-Request-ID when it is safe (1-128 of [A-Za-z0-9._:-]), "
                                    "else a generated one. Present on every response.",
                     "required": True, "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "`true` when this answer replays an earlier request with the same "
                                           "idempotency key.", "schema": {"type": "string", "enum": ["true"]}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}},
    "X-RateLimit-Limit": {"description": "Requests allowed in the current window.", "schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"description": "Requests left in the current window.",
                              "schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"description": "Unix time at which the window resets.", "schema": {"type": "integer"}},
    "Set-Cookie": {"description": "`token=<jwt>; HttpOnly; SameSite=Lax; Path=/; Max-Age=604800` (plus `Secure` "
                                  "when COOKIE_SECURE or production).", "schema": {"type": "string"}},
}
RATE_LIMITED = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _headers(*names: str | tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """X-Request-ID plus the named shared headers (or ``(name, header object)`` pairs)."""
    found: dict[str, Any] = {"X-Request-ID": _ref("headers", "X-Request-ID")}
    for name in names:
        if isinstance(name, tuple):
            found[name[0]] = name[1]
        else:
            found[name] = _ref("headers", name)
    return found


def error(description: str, *headers: str) -> dict[str, Any]:
    """An error response (the ``Error`` envelope) with its own description."""
    return {"description": description, "headers": _headers(*headers),
            "content": {"application/json": {"schema": schemas.Error}}}


RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": error("Invalid input: malformed or non-object JSON, nesting deeper than 32, a missing or "
                        "wrongly typed field, or a business rule (see the message)."),
    "Unauthorized": error("No token (`Unauthorized, token is missing`), a revoked one (`... is blacklisted`) "
                          "or a bad, expired or alg=none one (`... is invalid`)."),
    "Forbidden": error("`Forbidden, user is not a system user`."),
    "NotFound": error("`Account not found`: absent or not owned by the caller (no existence oracle)."),
    "MethodNotAllowed": error("The path exists but not with this method; `Allow` lists the methods."),
    "Conflict": error("`Transaction is still pending`: the same key is being processed; retry shortly.",
                      "Retry-After"),
    "PayloadTooLarge": error("Request body over 100 KB."),
    "UnsupportedMediaType": error("A body whose Content-Type is not application/json."),
    "Unprocessable": error("Email already registered, or an idempotency key reused with a different request."),
    "TooManyRequests": error("Rate limit reached.", "Retry-After", *RATE_LIMITED),
    "ServiceUnavailable": error("The database is unreachable or a transaction kept conflicting; retry.",
                                "Retry-After"),
}
_SHARED_ERRORS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
                  413: "PayloadTooLarge", 415: "UnsupportedMediaType", 422: "Unprocessable", 429: "TooManyRequests",
                  503: "ServiceUnavailable"}

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "`Authorization: Bearer <jwt>` (checked before the cookie)."},
    "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "token",
                   "description": "The `token` cookie set by register and login."},
}
AUTHENTICATED = [{"bearerAuth": []}, {"cookieAuth": []}]
PUBLIC: list[dict[str, list[str]]] = []
OPTIONAL_AUTH = [*AUTHENTICATED, {}]

IDEMPOTENCY_KEY_HEADER = {
    "name": "Idempotency-Key", "in": "header", "required": False, "schema": schemas.ref("IdempotencyKey"),
    "description": "Alternative to the body's idempotencyKey; both present and different is a 400.",
}

TAGS = ("auth", "accounts", "transactions", "holds", "ledger", "operations")

INFO_DESCRIPTION = (
    "A double-entry banking ledger, drop-in compatible with the Node.js service. Money is a JSON number "
    "in major units; ids are 24-hex ObjectIds; every error is `{message, status: \"failed\"}`. Any "
    "method a path does not list answers 405 with `Allow`; unknown paths answer 404. Bodies over "
    "100 KB answer 413, JSON nested deeper than 32 levels answers 400. Every response carries "
    "X-Request-ID; every /api response but the files of `/api/docs` carries `Cache-Control: no-store`."
)


# ----------------------------------------------------------------------------------------- declaring


def ok(description: str, model: type[BaseModel] | None = None, *headers: str | tuple[str, dict[str, Any]],
       media: str | tuple[str, ...] | None = "application/json") -> dict[str, Any]:
    """A successful response: a JSON ``model`` (or any object), text in the given media type(s), or no body
    (``media=None``)."""
    if media is None:
        return {"description": description, "headers": _headers(*headers)}
    if media == "application/json":
        content = {media: {"schema": model if model is not None else {"type": "object"}}}
    else:
        content = {kind: {"schema": {"type": "string"}} for kind in ((media,) if isinstance(media, str) else media)}
    return {"description": description, "headers": _headers(*headers), "content": content}


def errors(*codes: int) -> dict[int, dict[str, str]]:
    """The shared error responses of these status codes."""
    return {code: _ref("responses", _SHARED_ERRORS[code]) for code in codes}


@dataclass(frozen=True)
class Declaration:
    operation_id: str
    tag: str
    summary: str
    responses: dict[int, Any]
    description: str | None = None
    security: list[dict[str, list[str]]] | None = None  # None: the document's default (authenticated)
    body: type[schemas.RequestModel] | None = None
    body_required: bool = True
    query: type[schemas.QueryModel] | None = None
    idempotency_header: bool = False
    path: dict[str, schemas.PathParameter] = field(default_factory=dict)


def declare(operation_id: str, *, tag: str, summary: str, responses: dict[int, Any], **options: Any):
    """Attach the route's contract to its view (place it under the route decorators)."""
    declaration = Declaration(operation_id, tag, summary, responses, **options)

    def attach(view):
        setattr(view, _ATTRIBUTE, declaration)
        return view
    return attach


def declaration_of(view: Any) -> Declaration | None:
    return getattr(view, _ATTRIBUTE, None)


def _current() -> Declaration:
    declaration = declaration_of(current_app.view_functions[request.endpoint])
    if declaration is None:  # pragma: no cover - a programming error, caught by the documented-routes test
        raise LookupError(f"{request.endpoint} has no declared contract")
    return declaration


# ----------------------------------------------------------------------------------------- reading requests


def with_header_key(body: dict[str, Any]) -> dict[str, Any]:
    """Take ``idempotencyKey`` from the body or the ``Idempotency-Key`` header; both and different is a 400."""
    header_key = request.headers.get("Idempotency-Key")
    body_key = body.get("idempotencyKey")
    if header_key is not None and not validation.is_missing(body_key) and body_key != header_key:
        raise ValidationFailed(
            "Idempotency-Key header and idempotencyKey field differ",
            errors={"idempotencyKey": "differs from the Idempotency-Key header"},
        )
    if header_key is not None and validation.is_missing(body_key):
        return {**body, "idempotencyKey": header_key}
    return body


def body() -> Any:
    """The request's JSON body, validated by the endpoint's declared model (a 400/413/415 otherwise)."""
    declaration = _current()
    if declaration.body is None:  # pragma: no cover - a programming error
        raise LookupError(f"{request.endpoint} declares no body")
    raw = json_body(required=declaration.body_required)
    if declaration.idempotency_header:
        raw = with_header_key(raw)
    return declaration.body.model_validate(raw)


def query() -> Any:
    """The query string, validated by the endpoint's declared model (an absent parameter is ``None``)."""
    model = _current().query
    if model is None:  # pragma: no cover - a programming error
        raise LookupError(f"{request.endpoint} declares no query parameters")
    args = request.args
    return model.model_validate({info.alias or name: args.get(info.alias or name)
                                 for name, info in model.model_fields.items()})


def path(name: str) -> Any:
    """The path segment ``name``, read by the endpoint's declared rule."""
    return _current().path[name].parse(request.view_args[name])


# ----------------------------------------------------------------------------------------- the document


class OpenAPI30Schema(GenerateJsonSchema):
    """pydantic's JSON Schema, spoken as OpenAPI 3.0: ``nullable`` instead of a null type, ``enum`` instead of
    ``const``, no titles."""

    def nullable_schema(self, schema):
        inner = self.generate_inner(schema["schema"])
        if "enum" in inner and None not in inner["enum"]:
            inner = {**inner, "enum": [*inner["enum"], None]}
        return {**inner, "nullable": True}

    def literal_schema(self, schema):
        generated = super().literal_schema(schema)
        if "const" in generated:
            generated["enum"] = [generated.pop("const")]
        return generated

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def handle_ref_overrides(self, json_schema):
        # A reference to a scalar component (schemas.SCALARS) is not one of pydantic's definitions: keep it,
        # with its siblings (description, nullable), as written.
        if "$ref" in json_schema and json_schema["$ref"] not in self.json_to_defs_refs:
            return json_schema
        return super().handle_ref_overrides(json_schema)


def _tidy(schema: Any) -> Any:
    """Drop model titles and ``default: null`` (an optional field that is absent, never null)."""
    if isinstance(schema, list):
        return [_tidy(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tidy = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key == "default" and value is None:
            continue
        tidy[key] = {name: _tidy(item) for name, item in value.items()} if key == "properties" else _tidy(value)
    return tidy


def _collect_models(value: Any, found: dict[str, type[BaseModel]]) -> Any:
    """A copy of ``value`` with every model class replaced by a reference to its component (and noted)."""
    if isinstance(value, type) and issubclass(value, BaseModel):
        found[value.__name__] = value
        return schemas.ref(value.__name__)
    if isinstance(value, dict):
        return {key: _collect_models(item, found) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_collect_models(item, found) for item in value]
    return value


def model_schemas(models: list[type[BaseModel]]) -> dict[str, dict[str, Any]]:
    """The components of these models and of every model they use, by class name."""
    _, document = models_json_schema([(model, "validation") for model in models], ref_template=schemas.SCHEMA_REF,
                                     schema_generator=OpenAPI30Schema)
    found = {name: _tidy(schema) for name, schema in document.get("$defs", {}).items()}
    for schema in found.values():  # a docstring's line breaks are not part of the sentence
        if "description" in schema:
            schema["description"] = " ".join(schema["description"].split())
    return found


def _query_parameters(model: type[schemas.QueryModel]) -> list[dict[str, Any]]:
    generated = model_schemas([model])[model.__name__]
    required = set(generated.get("required", []))
    parameters = []
    for name, schema in generated["properties"].items():
        schema = dict(schema)
        parameter = {"name": name, "in": "query", "required": name in required, "schema": schema}
        if "description" in schema:
            parameter["description"] = schema.pop("description")
        parameters.append(parameter)
    return parameters


def operation(declaration: Declaration, found: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """The OpenAPI operation object of a declaration (models it names are added to ``found``)."""
    described: dict[str, Any] = {"tags": [declaration.tag], "operationId": declaration.operation_id,
                                 "summary": declaration.summary}
    if declaration.description:
        described["description"] = declaration.description
    if declaration.security is not None:
        described["security"] = declaration.security
    parameters = [IDEMPOTENCY_KEY_HEADER] if declaration.idempotency_header else []
    if declaration.query is not None:
        parameters += _query_parameters(declaration.query)
    if parameters:
        described["parameters"] = parameters
    if declaration.body is not None:
        described["requestBody"] = {"required": declaration.body_required,
                                    "content": {"application/json": {"schema": declaration.body}}}
    described["responses"] = {str(code): response for code, response in declaration.responses.items()}
    return _collect_models(described, found)


def openapi_path(rule: Rule) -> str:
    """``/api/accounts/<account_id>`` -> ``/api/accounts/{account_id}``."""
    return _CONVERTER.sub(r"{\1}", rule.rule)


def documented_methods(rule: Rule) -> set[str]:
    return {m.lower() for m in (rule.methods or set()) - _IGNORED_METHODS}


def declared_endpoints(app: Flask) -> set[str]:
    """The endpoints whose view carries a declaration."""
    return {endpoint for endpoint, view in app.view_functions.items() if declaration_of(view) is not None}


def undocumented_routes(app: Flask) -> list[str]:
    """``METHOD path`` of every route the document leaves out (should be none)."""
    return [f"{m.upper()} {rule.rule}" for rule in app.url_map.iter_rules()
            if declaration_of(app.view_functions.get(rule.endpoint)) is None
            for m in sorted(documented_methods(rule))]


def undeclared_path_parameters(app: Flask) -> list[str]:
    """``<name> in path`` of every path argument of a declared route that its declaration does not describe."""
    return [f"<{arg}> in {rule.rule}" for rule in app.url_map.iter_rules()
            if (declaration := declaration_of(app.view_functions.get(rule.endpoint))) is not None
            for arg in sorted(rule.arguments) if arg not in declaration.path]


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.0 document of every declared route of ``app``."""
    found: dict[str, type[BaseModel]] = {}
    shared_responses = {name: _collect_models(response, found) for name, response in RESPONSES.items()}
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        declaration = declaration_of(app.view_functions.get(rule.endpoint))
        if declaration is None:
            continue
        path = openapi_path(rule)
        item = paths.setdefault(path, {})
        for method in sorted(documented_methods(rule)):
            described = operation(declaration, found)
            if described["operationId"] in operation_ids:
                # A second path for the same view (POST /api/accounts/create): same operation, its own id.
                described["operationId"] += "Via" + path.rstrip("/").rsplit("/", 1)[-1].title()
            operation_ids.add(described["operationId"])
            item[method] = described
        if rule.arguments:
            item["parameters"] = [{"name": arg, "in": "path", "required": True,
                                   "schema": declaration.path[arg].schema if arg in declaration.path
                                   else {"type": "string"}}
                                  for arg in sorted(rule.arguments)]
    components_schemas = {**schemas.SCALARS, **model_schemas(list(found.values()))}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Banking Ledger API", "version": str(app.config.get("API_VERSION", "1.0.0")),
                 "description": INFO_DESCRIPTION},
        "paths": paths,
        "tags": [{"name": tag} for tag in TAGS],
        "security": AUTHENTICATED,
        "components": {"schemas": dict(sorted(components_schemas.items())), "headers": HEADERS,
                       "responses": shared_responses, "securitySchemes": SECURITY_SCHEMES},
    }
