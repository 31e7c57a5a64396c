"""gunicorn settings, all overridable from the environment: ``gunicorn -c gunicorn.conf.py [wsgi:app]``.

Workers and fork safety. The app is loaded in each worker after the fork (``preload_app`` stays off), so the
master never holds a database client. No ``post_fork`` hook is needed either way: ``ledger.db`` creates the
``MongoClient`` lazily on first use and keys it by process id, so even a preloaded app would get a fresh client
in every worker instead of reusing sockets and monitor threads from the parent (which pymongo forbids). The
email outbox sender thread is likewise started by each worker on its first request.

The embedded engine (``MONGO_URI`` unset) keeps its data inside one process, so it always runs one worker with
threads, is never recycled and must not be preloaded (the workers would start from an empty copy). Against
MongoDB, ``WEB_CONCURRENCY`` workers each run ``GUNICORN_THREADS`` threads.
"""

import multiprocessing
import os

_MONGO = bool(os.environ.get("MONGO_URI"))

wsgi_app = "wsgi:app"
_port = os.environ.get("PORT", "3000")
bind = os.environ.get("BIND", f"0.0.0.0:{_port}")

# The embedded engine lives inside one process: one worker, whatever WEB_CONCURRENCY says.
workers = int(os.environ.get("WEB_CONCURRENCY", str(min(4, multiprocessing.cpu_count() * 2)))) if _MONGO else 1
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = "gthread"
preload_app = False

# A worker silent for `timeout` seconds is killed and replaced. On SIGTERM (docker stop, a rolling deploy) the
# workers get `graceful_timeout` seconds to finish in-flight requests: keep the orchestrator's grace period
# longer (docker-compose.yml: stop_grace_period 30s). Transfers give up retrying after
# TRANSACTION_TIMEOUT_SECONDS (10 s by default), well inside both.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))

# Recycle workers now and then so a slow leak can never take a worker down; jitter avoids a thundering herd.
# The embedded engine would lose its data on recycle, so it never recycles.
if _MONGO:
    max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "10000"))
    max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "1000"))

# The heartbeat file lives in memory where there is /dev/shm (in containers a disk-backed temp directory can
# stall the heartbeat and get healthy workers killed). gunicorn creates it with mkstemp: a private, random name.
if os.path.isdir("/dev/shm"):  # noqa: S108
    worker_tmp_dir = "/dev/shm"  # noqa: S108

# gunicorn >= 25.1 opens a control socket under ~/.gunicorn by default; this service needs none (several
# instances on one host would fight over the one path, and the image's user has no home). Older gunicorns
# ignore the setting.
control_socket_disable = os.environ.get("GUNICORN_CONTROL_SOCKET", "").lower() not in {"1", "true", "yes", "on"}

accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")  # "-" is stdout
errorlog = "-"  # stderr
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(server):
    """Before any port is bound: refuse a configuration error (``config.load_config``: e.g. production without
    JWT_SECRET, an unusable MONGO_URI) with one paragraph on stderr and exit status 78, and refuse a
    configuration that would lose data: the embedded engine with a preloaded app, or a second server on a data
    folder another process owns (checked here, before any worker starts, so it fails at once)."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # config.py sits beside this file
    try:
        import config
    finally:
        sys.path.pop(0)
    config.preflight()
    if server.cfg.preload_app and not _MONGO:
        raise RuntimeError("--preload cannot be used with the embedded engine (MONGO_URI unset): each worker "
                           "would start from an empty copy of the in-memory database")
    if not _MONGO:
        from config import MEMORY_DATA_DIR, data_dir_for, environment_name

        environment = environment_name()
        data_dir = data_dir_for(environment)
        # Production without MONGO_URI is refused by the app itself, with its own message.
        if data_dir != MEMORY_DATA_DIR and environment != "production":
            from ledger.embedded_journal import lock_for_server

            # The master holds the folder's lock; the worker it forks inherits it (LEDGER_DATA_LOCK_FD).
            lock_for_server(data_dir)


def post_worker_init(worker):
    """Once the worker has loaded the app: move everything that exists now (imported modules, the app, on the
    embedded engine its loaded data) out of the cyclic garbage collector's generations. These objects live as
    long as the worker, and every full collection would otherwise walk all of them again; with several
    workers it also keeps the collector from touching (and so copying) pages shared with the master."""
    import gc

    gc.freeze()
