"""``GET /api/docs``: interactive API documentation (Swagger UI) for ``/api/openapi.json``.

Swagger UI's files come from the ``flask-swagger-ui`` distribution (its ``dist`` folder), served by this
blueprint from memory: nothing is fetched from a CDN at run time, and the page's Content-Security-Policy
allows this origin only. The page has no inline script or style; Swagger UI is started by
``ledger-docs.js``, a file of ours beside the page's template.

Asset URLs carry ``?v=<content hash>``. A request naming the current hash may be cached for a year
(``immutable``); any other is answered ``no-cache`` with an ``ETag``, so a browser revalidates (304).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath

from flask import Blueprint, Response, g, render_template, request, url_for
from werkzeug.exceptions import NotFound

from ledger.api.contract import PUBLIC, declare, errors, ok, path, query
from ledger.api.schemas import AssetQuery, PathParameter

bp = Blueprint("docs", __name__)

PAGE_TITLE = "Banking Ledger API"
#: The page's policy: scripts, styles, images and fetches from this origin only; ``data:`` images are the
#: icons inside swagger-ui.css. Swagger UI needs neither inline code nor eval.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

#: Files of Swagger UI's distribution that the page uses (the standalone preset and the OAuth2 redirect
#: page are not needed: no top bar, no OAuth2 flows).
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "index.css", "favicon-32x32.png",
                    "favicon-16x16.png")
OWN_FILES = ("ledger-docs.js",)
ASSET_NAMES = tuple(sorted(SWAGGER_UI_FILES + OWN_FILES))
_MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    mimetype: str
    digest: str  # the first 16 hex digits of its SHA-256: the ETag and the ?v= of its URL


_assets: dict[str, Asset] | None = None
_assets_lock = threading.Lock()


def swagger_ui_version() -> str:
    return (resources.files("flask_swagger_ui") / "dist" / "VERSION").read_text().strip()


def load_assets() -> dict[str, Asset]:
    """Every asset by name, read once per process (about 2 MB)."""
    global _assets
    if _assets is None:
        with _assets_lock:
            if _assets is None:
                dist = resources.files("flask_swagger_ui") / "dist"
                own = resources.files("ledger") / "templates" / "docs"
                loaded = {}
                for name in ASSET_NAMES:
                    body = ((own if name in OWN_FILES else dist) / name).read_bytes()
                    loaded[name] = Asset(name, body, _MEDIA_TYPES[PurePosixPath(name).suffix],
                                         hashlib.sha256(body).hexdigest()[:16])
                _assets = loaded
    return _assets


@bp.get("/api/docs")
@declare("apiDocs", tag="operations", summary="Interactive documentation (Swagger UI)", security=PUBLIC,
         description="An HTML page rendering this document; \"Try it out\" calls this server. Its assets are "
                     "served by this server (no CDN); its Content-Security-Policy allows this origin only.",
         responses={200: ok("The HTML page.", media="text/html")})
def page() -> Response:
    assets = {name: url_for("docs.asset", asset_name=name, v=asset.digest) for name, asset in load_assets().items()}
    html = render_template("docs/index.html", title=PAGE_TITLE, assets=assets,
                           spec_url=url_for("openapi.document"))
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


@bp.get("/api/docs/assets/<asset_name>")
@declare("apiDocsAsset", tag="operations", summary="A file of the documentation page", security=PUBLIC,
         query=AssetQuery, path={"asset_name": PathParameter({"type": "string", "enum": list(ASSET_NAMES)}, str)},
         responses={200: ok("The file.", None, ("ETag", {"schema": {"type": "string"}}),
                            ("Cache-Control", {"schema": {"type": "string"}}),
                            media=tuple(dict.fromkeys(_MEDIA_TYPES.values()))),
                    304: ok("Not modified (If-None-Match named the current ETag).", media=None),
                    **errors(404)})
def asset(asset_name: str) -> Response:
    found = load_assets().get(path("asset_name"))
    if found is None:
        raise NotFound()
    response = Response(found.body, mimetype=found.mimetype)
    response.set_etag(found.digest)
    response.headers["Cache-Control"] = IMMUTABLE if query().v == found.digest else REVALIDATE
    g.cacheable_response = True  # keeps this Cache-Control (every other /api answer is no-store)
    return response.make_conditional(request)
