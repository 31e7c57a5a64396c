"""``/api/docs`` (Swagger UI) through the Flask client: a page of local assets only, served with the right types,
cache headers and a page-only Content-Security-Policy; ``GET /`` links to it for browsers only.

The browser itself runs in ``tests/test_e2e_docs_browser.py``.
"""

from __future__ import annotations

import re
import urllib.parse
from html.parser import HTMLParser
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.api import docs
from ledger.observability import SECURITY_HEADERS

# http://, https://, ftp://..., or a scheme-relative "//cdn..." in quotes or url(); not a // comment.
EXTERNAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://|[\"'`(=]\s*//", re.IGNORECASE)
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.inline_scripts: list[str] = []
        self.styles = 0
        self.style_attributes = 0
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.urls += [value for name, value in attrs if name in {"src", "href", "data-spec-url"} and value]
        self.style_attributes += "style" in attributes
        self.handlers += [name for name in attributes if name.startswith("on")]
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True
        self.styles += tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def _parse(html: str) -> _Tags:
    tags = _Tags()
    tags.feed(html)
    return tags


@pytest.fixture
def page(client):
    response = client.get("/api/docs")
    assert response.status_code == 200
    return response


def test_the_page_is_html_that_references_local_urls_only(page) -> None:
    html = page.get_data(as_text=True)
    tags = _parse(html)

    assert page.mimetype == "text/html"
    assert EXTERNAL_URL.search(html) is None, EXTERNAL_URL.search(html)
    assert tags.urls, "no asset referenced"
    for url in tags.urls:
        assert url.startswith("/api/"), url
    assert "/api/openapi.json" in tags.urls
    assert {urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] for url in tags.urls
            if url.startswith("/api/docs/assets/")} == set(docs.ASSET_NAMES)


def test_the_page_has_no_inline_code_so_its_policy_needs_no_unsafe_inline(page) -> None:
    tags = _parse(page.get_data(as_text=True))

    assert [script.get("src") for script in tags.scripts if not script.get("src")] == []
    assert tags.inline_scripts == []
    assert (tags.styles, tags.style_attributes, tags.handlers) == (0, 0, [])


def test_the_page_policy_allows_this_origin_only_and_nothing_inline(page, client) -> None:
    policy = page.headers["Content-Security-Policy"]
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}

    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]
    assert directives["img-src"] == ["'self'", "data:"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "unsafe" not in policy
    assert "*" not in policy
    assert "http" not in policy
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    # Only the page is loosened: every other answer keeps the API's policy.
    for path in ("/health", "/api/openapi.json", "/api/docs/assets/swagger-ui-bundle.js", "/api/docs/assets/nope"):
        assert client.get(path).headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]


def test_every_asset_is_served_with_its_type_hash_and_a_year_of_cache(page, client) -> None:
    urls = [url for url in _parse(page.get_data(as_text=True)).urls if url.startswith("/api/docs/assets/")]
    for url in urls:
        name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
        version = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["v"]
        response = client.get(url)

        assert response.status_code == 200, url
        assert response.headers["Content-Type"] == MEDIA_TYPES[name[name.rindex("."):]], url
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable", url
        assert response.headers["ETag"] == f'"{version[0]}"', url
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert int(response.headers["Content-Length"]) == len(response.data) > 0


@pytest.mark.parametrize("name", docs.SWAGGER_UI_FILES)
def test_swagger_ui_files_are_the_packages_own_bytes(client, name: str) -> None:
    shipped = (resources.files("flask_swagger_ui") / "dist" / name).read_bytes()
    assert client.get(f"/api/docs/assets/{name}").data == shipped


def test_our_initializer_names_no_external_url_and_turns_off_the_public_validator(client) -> None:
    script = client.get("/api/docs/assets/ledger-docs.js").get_data(as_text=True)
    assert EXTERNAL_URL.search(script) is None
    assert "validatorUrl: null" in script
    assert "SwaggerUIBundle(" in script


@pytest.mark.parametrize("query", ["", "?v=", "?v=0000000000000000", "?v=stale&v=", "?x=1"])
def test_an_asset_without_its_current_hash_must_be_revalidated(client, query: str) -> None:
    response = client.get(f"/api/docs/assets/swagger-ui.css{query}")

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["ETag"]


def test_a_matching_if_none_match_is_a_304_without_a_body(client) -> None:
    etag = client.get("/api/docs/assets/swagger-ui-bundle.js").headers["ETag"]

    unchanged = client.get("/api/docs/assets/swagger-ui-bundle.js", headers={"If-None-Match": etag})
    changed = client.get("/api/docs/assets/swagger-ui-bundle.js", headers={"If-None-Match": '"0000"'})
    head = client.head("/api/docs/assets/swagger-ui-bundle.js")

    assert (unchanged.status_code, unchanged.data) == (304, b"")
    assert unchanged.headers["ETag"] == etag
    assert changed.status_code == 200
    assert len(changed.data) > 100_000
    assert head.status_code == 200
    assert head.data == b""


BAD_NAMES = ["", ".", "..", "../setup.cfg", "..%2Fsetup.cfg", "%2e%2e%2fsetup.cfg", "VERSION", "LICENSE",
             "swagger-ui.js", "swagger-ui-standalone-preset.js", "oauth2-redirect.html", "index.template.html",
             "index.html", "SWAGGER-UI.CSS", "swagger-ui.css%00", "swagger-ui.css.map", "docs.py", "__init__.py",
             "ledger-docs.js%20", "%00", "index.css/x", "favicon-32x32.png%3F", "swagger-ui.css;v=1"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_anything_but_a_listed_asset_is_a_json_404(client, name: str) -> None:
    response = client.get(f"/api/docs/assets/{name}")

    assert response.status_code == 404, name
    assert response.get_json()["status"] == "failed"
    assert response.headers["Cache-Control"] == "no-store"


# The client is only read from (GETs of fixed files), so one per test serves every example.
REUSED_CLIENT = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=150, **REUSED_CLIENT)
@given(name=st.one_of(st.text(min_size=1, max_size=40).filter(lambda text: "/" not in text),  # routing: above
                      st.sampled_from(docs.ASSET_NAMES).flatmap(
                          lambda known: st.sampled_from([known.upper(), known + " ", " " + known, known + "/x",
                                                         known.replace(".", "%2E"), known[:-1]]))))
def test_any_other_asset_name_is_a_json_404(client, name: str) -> None:
    response = client.get("/api/docs/assets/" + urllib.parse.quote(name, safe=""))
    if name in docs.ASSET_NAMES:
        assert response.status_code == 200
        return
    assert response.status_code == 404, name
    assert response.get_json()["status"] == "failed"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_the_docs_answer_other_methods_with_a_json_405(client, method: str) -> None:
    for path in ("/api/docs", "/api/docs/assets/swagger-ui.css"):
        response = client.open(path, method=method)
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
        assert response.get_json()["status"] == "failed"


# ----------------------------------------------------------------------------------------------- GET /

BROWSERS = [
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7",  # Chromium
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # Firefox, Safari
    "text/html",
]
API_CLIENTS = [None, "*/*", "application/json", "text/plain", "text/*", "text/html, text/plain",
               "text/plain, text/html", "text/html;q=0.5, text/plain", "application/json, */*;q=0.1", "", "garbage"]


@pytest.mark.parametrize("accept", BROWSERS)
def test_a_browser_gets_the_welcome_with_links_to_the_docs(client, accept: str) -> None:
    response = client.get("/", headers={"Accept": accept})
    tags = _parse(response.get_data(as_text=True))

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "Welcome to the banking app" in response.get_data(as_text=True)
    assert {"/api/docs", "/api/openapi.json"} <= set(tags.urls)
    assert response.headers["Vary"] == "Accept"
    assert EXTERNAL_URL.search(response.get_data(as_text=True)) is None
    assert response.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]


@pytest.mark.parametrize("accept", API_CLIENTS)
def test_an_api_client_gets_the_node_plain_text_unchanged(client, accept: str | None) -> None:
    response = client.get("/", headers={"Accept": accept} if accept is not None else {})

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.get_data(as_text=True) == "Welcome to the banking app"
    assert response.headers["Vary"] == "Accept"


QUALITY = st.integers(min_value=0, max_value=1000).map(lambda q: q / 1000)


@settings(max_examples=100, **REUSED_CLIENT)
@given(html=QUALITY, plain=QUALITY, html_first=st.booleans())
def test_html_only_when_the_client_strictly_prefers_it(client, html: float, plain: float, html_first: bool) -> None:
    offers = [f"text/html;q={html}", f"text/plain;q={plain}"]
    accept = ", ".join(offers if html_first else offers[::-1])

    response = client.get("/", headers={"Accept": accept})

    expected = "text/html" if html > plain else "text/plain"
    if html == plain == 0:
        expected = "text/plain"  # nothing acceptable: the API's own answer
    assert response.mimetype == expected, accept

