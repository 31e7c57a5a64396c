"""The Flask application and response classes: Flask's own, minus per-request work whose answer never changes.

Flask asks ``inspect.iscoroutinefunction`` about every hook and view on every request (``ensure_sync``), and
werkzeug copies a response's headers value by value, checking each again for newlines, when it hands them to
the server (``get_wsgi_headers``). Both answers are the same for every request; these classes give them once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from flask import Response as FlaskResponse
from werkzeug.datastructures import Headers

# Functions that are hooks or views, whose sync-ness is known; bounded in case something hands ensure_sync a new
# callable per request (a bound method or a lambda would then be asked about each time, as Flask does).
_SYNC_CACHE_LIMIT = 4096


class LedgerResponse(FlaskResponse):
    """Flask's response, handing its headers to the server without re-checking each value."""

    def get_wsgi_headers(self, environ: dict[str, Any]) -> Headers:
        """werkzeug's answer, taken as a plain copy of the list when werkzeug would change nothing in it.

        werkzeug rewrites ``Location`` and ``Content-Location``, drops ``Content-Length`` from 1xx/204/304
        answers (and entity headers from 304) and computes a missing ``Content-Length``; otherwise it returns a
        copy of the headers, built with ``Headers.add``, which checks every value for newlines. The values were
        checked when they were set, so where none of those cases applies the copy is a list copy.
        """
        own = self.headers
        status = self.status_code
        if type(own) is Headers and status >= 200 and status != 204 and status != 304:  # noqa: PLR1714
            has_length = False
            for name, _value in own._list:
                lowered = name.lower()
                if lowered == "content-length":
                    has_length = True
                elif lowered == "location" or lowered == "content-location":  # noqa: PLR1714
                    has_length = False
                    break
            if has_length:
                copy = Headers()
                copy._list = own._list.copy()
                return copy
        return super().get_wsgi_headers(environ)


class LedgerFlask(Flask):
    """Flask, remembering which hooks and views are plain functions instead of asking on every request."""

    response_class = LedgerResponse

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._known_sync: dict[Callable[..., Any], bool] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            if self._known_sync[func]:
                return func
        except KeyError:
            pass
        except TypeError:  # an unhashable callable: ask every time, as Flask does
            return super().ensure_sync(func)
        synced = super().ensure_sync(func)
        if synced is func and len(self._known_sync) < _SYNC_CACHE_LIMIT:
            self._known_sync[func] = True
        return synced
