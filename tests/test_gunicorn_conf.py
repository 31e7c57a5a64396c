"""gunicorn.conf.py: worker model per engine, recycling, and why no post_fork hook is needed."""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

from ledger import db

CONF = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"


def load_conf(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict:
    for name in ("MONGO_URI", "WEB_CONCURRENCY", "PORT", "BIND", "GUNICORN_CONTROL_SOCKET", "APP_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEDGER_DATA_DIR", ":memory:")  # never lock the repository's .ledger-data
    monkeypatch.setenv("LEDGER_DATA_LOCK_FD", "")  # on_starting sets it; restored (removed) after the test
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_the_embedded_engine_runs_one_threaded_worker_that_is_never_recycled(monkeypatch):
    conf = load_conf(monkeypatch, WEB_CONCURRENCY="8")
    assert (conf["workers"], conf["worker_class"], conf["threads"]) == (1, "gthread", 8)
    assert "max_requests" not in conf
    assert conf["bind"] == "0.0.0.0:3000"
    assert conf["wsgi_app"] == "wsgi:app"


def test_mongodb_runs_web_concurrency_workers_recycled_with_jitter(monkeypatch):
    conf = load_conf(monkeypatch, MONGO_URI="mongodb://mongo1:27017/?replicaSet=rs0", WEB_CONCURRENCY="3",
                     PORT="8080")
    assert conf["workers"] == 3
    assert (conf["max_requests"], conf["max_requests_jitter"]) == (10000, 1000)
    assert conf["bind"] == "0.0.0.0:8080"
    assert conf["preload_app"] is False
    assert conf["control_socket_disable"] is True


def test_preloading_the_embedded_engine_is_refused_at_start(monkeypatch):
    conf = load_conf(monkeypatch)
    server = SimpleNamespace(cfg=SimpleNamespace(preload_app=True))
    with pytest.raises(RuntimeError, match="--preload cannot be used with the embedded engine"):
        conf["on_starting"](server)
    conf["on_starting"](SimpleNamespace(cfg=SimpleNamespace(preload_app=False)))  # the default starts


def test_a_second_server_on_an_owned_data_folder_fails_at_start_naming_the_holder(monkeypatch, tmp_path):
    import fcntl

    data_dir = tmp_path / "data"
    conf = load_conf(monkeypatch, LEDGER_DATA_DIR=str(data_dir))
    conf["on_starting"](SimpleNamespace(cfg=SimpleNamespace(preload_app=False)))
    fd = int(os.environ["LEDGER_DATA_LOCK_FD"])  # the master holds the lock; its workers inherit this fd
    try:
        assert os.get_inheritable(fd)
        assert f'"pid": {os.getpid()}' in (data_dir / "LOCK").read_text()
        monkeypatch.setenv("LEDGER_DATA_LOCK_FD", "")  # what another, unrelated process would have
        with pytest.raises(RuntimeError, match=rf"in use by a running server \(pid {os.getpid()} on "):
            conf["on_starting"](SimpleNamespace(cfg=SimpleNamespace(preload_app=False)))
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_a_forked_worker_gets_its_own_client_so_no_post_fork_hook_is_needed(app, monkeypatch):
    # A holder of our own, so the process-wide client (and every app using it) is left alone.
    holder = db._ClientHolder()
    monkeypatch.setattr(db, "_holder", holder)
    parent_client = db.get_client(app)
    assert db.get_client(app) is parent_client  # one client per process

    with monkeypatch.context() as forked:
        child_pid = os.getpid() + 1
        forked.setattr(os, "getpid", lambda: child_pid)  # what a gunicorn worker sees after the fork
        child_client = db.get_client(app)
    holder.reset()  # closes the "child's" client (a real MongoClient must be closed)
    if not db.is_embedded(app):
        parent_client.close()

    assert child_client is not parent_client


def test_a_worker_freezes_what_it_loaded_out_of_the_garbage_collectors_walks(monkeypatch):
    conf = load_conf(monkeypatch)
    calls = []
    monkeypatch.setattr("gc.freeze", lambda: calls.append("freeze"))
    conf["post_worker_init"](SimpleNamespace())
    assert calls == ["freeze"]
