"""``/api/docs`` in a real headless browser: Debian's chromium, driven by Playwright, against gunicorn.

The page must load from this server alone (no CDN, no Content-Security-Policy violation), list every
operation of ``/api/openapi.json``, and its "Try it out" must really work: register and log in by clicking
and typing in the page, then call an authenticated route with the HTTP-only cookie that login set, and with
the Bearer token entered through "Authorize".

Needs ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it when missing) and the ``playwright``
package of the test extras; Playwright's own browser download is never used. Outside CI a missing browser
skips these tests with the reason; with ``CI=true`` it fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gunicorn_process import GunicornProcess, running_gunicorn

pytestmark = pytest.mark.e2e

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
TIMEOUT_MS = 20_000
PASSWORD = "password-123"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"the browser test must run in CI, but {reason}", pytrace=False)
    pytest.skip(reason)


def _chromium_path() -> str | None:
    configured = os.environ.get("LEDGER_TEST_CHROMIUM")
    if configured:
        return configured
    return next((found for name in BROWSER_NAMES if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornProcess]:
    environment = {"JWT_SECRET": f"docs-e2e-{uuid.uuid4().hex}{uuid.uuid4().hex}"}
    with running_gunicorn(tmp_path_factory.mktemp("gunicorn"), environment) as running:
        yield running


@pytest.fixture(scope="module")
def spec(server: GunicornProcess) -> dict[str, Any]:
    with urllib.request.urlopen(server.base_url + "/api/openapi.json", timeout=10) as response:  # noqa: S310
        return json.load(response)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"playwright is not installed ({exc}): pip install -e '.[test]'")
    executable = _chromium_path()
    if executable is None:
        _unavailable(f"no Chromium found (looked for {', '.join(BROWSER_NAMES)} on PATH and LEDGER_TEST_CHROMIUM): "
                     "apt-get install chromium")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


class DocsPage:
    """The Swagger UI page of one fresh browser context, recording every request and console error."""

    def __init__(self, browser: Any, server: GunicornProcess) -> None:
        self.server = server
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requested: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requested.append(request.url))
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _console(self, message: Any) -> None:
        # Chromium also logs every 4xx fetch as an error; statuses are asserted where they are expected.
        if message.type == "error" and "the server responded with a status of" not in message.text:
            self.errors.append(message.text)

    def open(self) -> DocsPage:
        self.page.goto(self.server.base_url + "/api/docs")
        self.page.locator(".opblock").first.wait_for()
        return self

    def listed_operations(self) -> set[tuple[str, str]]:
        listed = set()
        for block in self.page.locator(".opblock").all():
            method = block.locator(".opblock-summary-method").inner_text().strip().lower()
            path = block.locator(".opblock-summary-path").get_attribute("data-path")
            listed.add((method, path))
        return listed

    def operation(self, method: str, path: str) -> Any:
        block = self.page.locator(f".opblock.opblock-{method}").filter(
            has=self.page.locator(f'.opblock-summary-path[data-path="{path}"]'))
        assert block.count() == 1, f"{method.upper()} {path}: {block.count()} blocks on the page"
        return block

    def try_it_out(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str, str]:
        """Open the operation, click "Try it out", type ``body``, click Execute: (status, body, curl) shown."""
        block = self.operation(method, path)
        if not block.locator("button.execute").is_visible():
            if not block.locator("button.try-out__btn").is_visible():
                block.locator(".opblock-summary").click()
            block.locator("button.try-out__btn").click()
        clear = block.locator("button.btn-clear")
        if clear.count() and clear.is_visible():
            clear.click()
        if body is not None:
            # fill() focuses the field, selects the example and types over it with the browser's own input
            # events (as a paste would); key-by-key typing re-renders Swagger UI per key, far too slowly.
            block.locator("textarea.body-param__text").fill(json.dumps(body))
        block.locator("button.execute").click()
        status = block.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for()
        shown = block.locator(".live-responses-table .response-col_description .highlight-code pre").first
        curl = block.locator(".curl-command").first.inner_text()
        return int(status.inner_text().strip()), shown.inner_text(), curl

    def authorize_bearer(self, token: str) -> None:
        self.page.locator(".auth-wrapper button.authorize").click()
        modal = self.page.locator(".modal-ux")
        section = modal.locator(".auth-container").filter(has_text="bearerAuth")
        section.locator("#auth-bearer-value").fill(token)
        section.locator("button.authorize").click()
        section.locator("h6", has_text="Authorized").wait_for()  # Swagger UI's sign that it took the token
        section.locator("button.btn-done").click()
        modal.wait_for(state="detached")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def docs(browser: Any, server: GunicornProcess) -> Iterator[DocsPage]:
    opened = DocsPage(browser, server)
    try:
        yield opened
    finally:
        opened.close()


def _operations_of(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in spec["paths"].items() for method in item if method != "parameters"}


def test_the_page_lists_every_operation_of_the_spec_and_loads_nothing_from_elsewhere(
        docs: DocsPage, spec: dict[str, Any], server: GunicornProcess) -> None:
    docs.open()

    assert docs.listed_operations() == _operations_of(spec)
    assert docs.page.locator(".info .title").inner_text().startswith(spec["info"]["title"])
    assert docs.requested, "the browser made no request"
    assert [url for url in docs.requested if not url.startswith(server.base_url + "/")] == []
    assert server.base_url + "/api/openapi.json" in docs.requested
    assert docs.errors == []  # a Content-Security-Policy violation is reported here too


def test_the_welcome_page_links_a_browser_to_the_docs(docs: DocsPage, server: GunicornProcess) -> None:
    docs.page.goto(server.base_url + "/")
    docs.page.get_by_role("link", name="/api/docs").click()
    docs.page.locator(".opblock").first.wait_for()

    assert docs.page.url == server.base_url + "/api/docs"
    assert docs.errors == []


def test_try_it_out_registers_and_logs_in_and_the_cookie_then_authenticates(docs: DocsPage) -> None:
    docs.open()
    email = f"docs-{uuid.uuid4().hex[:12]}@example.test"

    status, shown, _ = docs.try_it_out("post", "/api/auth/register",
                                       {"email": email, "password": PASSWORD, "name": "Docs Reader"})
    assert status == 201, shown
    docs.context.clear_cookies()  # so that only login's cookie can authenticate what follows

    status, shown, _ = docs.try_it_out("post", "/api/auth/login", {"email": email, "password": PASSWORD})
    assert status == 200, shown
    session = json.loads(shown)
    assert session["user"]["email"] == email
    assert session["user"]["name"] == "Docs Reader"
    assert "password" not in session["user"]
    cookie = next(c for c in docs.context.cookies() if c["name"] == "token")
    assert cookie["value"] == session["token"]
    assert cookie["httpOnly"] is True

    status, shown, curl = docs.try_it_out("get", "/api/accounts")
    assert status == 200, shown
    assert "Authorization" not in curl  # the HTTP-only cookie did it
    assert docs.errors == []


def test_authorize_with_the_bearer_token_authenticates_try_it_out(docs: DocsPage, server: GunicornProcess) -> None:
    docs.open()
    email = f"docs-{uuid.uuid4().hex[:12]}@example.test"
    status, shown, _ = docs.try_it_out("post", "/api/auth/register",
                                       {"email": email, "password": PASSWORD, "name": "Bearer Reader"})
    assert status == 201, shown
    token = json.loads(shown)["token"]
    docs.context.clear_cookies()

    status, shown, _ = docs.try_it_out("get", "/api/accounts")
    assert status == 401, shown  # neither cookie nor header: the route really is protected

    docs.authorize_bearer(token)
    status, shown, curl = docs.try_it_out("post", "/api/accounts", {"currency": "INR"})
    assert status == 201, shown
    opened = json.loads(shown)
    status, shown, curl = docs.try_it_out("get", "/api/accounts")

    assert status == 200, shown
    assert f"Authorization: Bearer {token}" in curl
    assert opened["account"]["_id"] in shown
    assert docs.context.cookies() == []
    assert docs.errors == []
