"""gunicorn settings, all overridable from the environment.

The embedded engine (MONGO_URI unset) keeps its data in one process, so it always runs one worker with
threads. Against MongoDB, WEB_CONCURRENCY workers each build their own client after fork (the app creates it
lazily), so nothing network-bound crosses the fork.
"""

import multiprocessing
import os

_port = os.environ.get("PORT", "3000")
bind = os.environ.get("BIND", f"0.0.0.0:{_port}")

if os.environ.get("MONGO_URI"):
    workers = int(os.environ.get("WEB_CONCURRENCY", str(min(4, multiprocessing.cpu_count() * 2))))
else:
    workers = 1  # the embedded engine lives inside one process
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = "gthread"

timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))

# Recycle workers now and then so a slow leak can never take a worker down; jitter avoids a thundering herd.
# The embedded engine would lose its data on recycle, so it never recycles.
if os.environ.get("MONGO_URI"):
    max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "10000"))
    max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "1000"))

accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
