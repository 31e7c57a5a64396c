"""Start the service under gunicorn on a free loopback port for end-to-end tests, and always stop it.

The command line is the one an operator (and the external acceptance suite) uses:
``python -m gunicorn -w 1 --threads 16 -b 127.0.0.1:$PORT wsgi:app``, on the embedded engine, with only the
environment a deployment would give it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 30
# Variables of the test runner's environment that must not leak into the server under test.
_NOT_INHERITED = {"MONGO_URI", "MONGO_DB_NAME", "APP_ENV", "NODE_ENV", "LEDGER_TEST_MONGO_URI", "MAIL_SERVER",
                  "COOKIE_SECURE", "LEDGER_DATA_DIR", "LEDGER_DATA_LOCK_FD"}
# Mail settings, and the Node service's Gmail OAuth2 ones that stop start-up, must not leak in either.
_NOT_INHERITED |= {"MAIL_BACKEND", "MAIL_USERNAME", "MAIL_PASSWORD", "EMAIL_USER", "EMAIL_PASS", "CLIENT_ID",
                   "CLIENT_SECRET", "REFRESH_TOKEN", "ACCESS_TOKEN"}


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class GunicornProcess:
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, size: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-size:]


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def running_gunicorn(log_dir: Path, environment: dict[str, str]) -> Iterator[GunicornProcess]:
    """Run gunicorn with ``environment`` on top of the runner's own (minus database and mode variables)."""
    port = free_loopback_port()
    env = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    # The embedded engine keeps its folder next to the log unless the test names one (never the repository's).
    env.update({"PORT": str(port), "BCRYPT_ROUNDS": "4", "PYTHONUNBUFFERED": "1",
                "LEDGER_DATA_DIR": str(log_dir / "ledger-data"), **environment})
    log_path = log_dir / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - a fixed command line, no shell
            [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "16", "-b", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = GunicornProcess(port, process, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _healthy(port):
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited with {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not answer /health within {START_TIMEOUT_SECONDS}s:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
