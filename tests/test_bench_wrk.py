"""scripts/bench.py's wrk path: the generated Lua plan and the parsing of wrk's summary line.

Pure functions on canned input, plus (when wrk is installed) one short real wrk run against a tiny local HTTP
server that records what wrk sent. No benchmark figures are asserted here."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("requests", reason="scripts/bench.py needs requests (installed with the bench/test extras)")

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("ledger_bench_script", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _plan(owners: int = 3, per_owner: int = 2):
    plan = bench.Plan()
    for index in range(owners):
        plan.add(bench.Owner(f"tok.en-{index}_x", [f"{index:02d}{n:022x}" for n in range(per_owner)]))
    return plan


def _canned(**overrides):
    data = {"duration_us": 4_000_000, "requests": 1000, "connect": 0, "read": 0, "write": 0, "status": 12,
            "timeout": 0, "p50_us": 2660, "p95_us": 9300, "p99_us": 19380, "max_us": 45123,
            "statuses": {"200": 988, "409": 10, "500": 2}}
    data.update(overrides)
    return ("Running 4s test @ http://127.0.0.1:1\n  1 threads and 8 connections\n"
            f"{bench.WRK_MARKER}{json.dumps(data)}\nRequests/sec: 250.00\n")


def test_parse_wrk_output_reads_counts_and_microsecond_latencies():
    result = bench.parse_wrk_output(_canned(), "spread", "POST /api/transactions").summary()
    assert (result["requests"], result["ok"], result["errors"]) == (1000, 988, 12)
    assert result["statuses"] == {"200": 988, "409": 10, "500": 2}
    assert (result["seconds"], result["ok_per_second"]) == (4.0, 247.0)
    assert (result["p50_ms"], result["p95_ms"], result["p99_ms"], result["max_ms"]) == (2.66, 9.3, 19.38, 45.12)


@pytest.mark.parametrize("field", ["connect", "read", "write", "timeout"])
def test_socket_errors_count_as_requests_and_errors(field):
    result = bench.parse_wrk_output(_canned(**{field: 7}), "hot", "POST /api/transactions").summary()
    assert (result["requests"], result["errors"], result["statuses"]["error"]) == (1007, 19, 7)


def test_parse_wrk_output_without_summary_line_is_a_clear_error():
    with pytest.raises(SystemExit, match="no summary line"):
        bench.parse_wrk_output("PANIC: unprotected error in call to Lua API\n", "health", "GET /health")


def test_lua_holds_the_plan_and_rejects_unsafe_values():
    plan = _plan()
    lua = bench.wrk_lua("spread", plan, "abc123")
    for owner in plan.owners:
        assert f'token = "{owner.token}", first = {owner.first_index + 1}, n = 2' in lua
    assert all(f'"{account}"' in lua for account in plan.all_accounts)
    hostile = _plan()
    hostile.owners[1].token = 'x" .. os.execute("rm") .. "'
    with pytest.raises(ValueError, match="unexpected characters"):
        bench.wrk_lua("spread", hostile, "abc123")
    with pytest.raises(ValueError, match="at least two accounts"):
        bench.wrk_lua("hot", _plan(owners=1, per_owner=1), "abc123")
    with pytest.raises(ValueError, match="alphanumeric"):
        bench.wrk_lua("spread", plan, "not-alnum")
    with pytest.raises(ValueError, match="unknown phase"):
        bench.wrk_lua("nope", plan, "abc123")


def test_load_generator_choice(monkeypatch):
    monkeypatch.setenv("LEDGER_BENCH_LOAD", "locust")
    assert bench.choose_load_generator() == "locust"
    monkeypatch.setenv("LEDGER_BENCH_LOAD", "bogus")
    with pytest.raises(SystemExit, match="auto, wrk or locust"):
        bench.choose_load_generator()
    monkeypatch.setenv("LEDGER_BENCH_LOAD", "auto")
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    assert bench.choose_load_generator() == "locust"
    monkeypatch.setenv("LEDGER_BENCH_LOAD", "wrk")
    with pytest.raises(SystemExit, match="not on PATH"):
        bench.choose_load_generator()


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict]] = []
    lock = threading.Lock()

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self):  # noqa: N802
        self._answer(200 if self.path == "/health" else 404)

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.seen.append((self.path, self.headers["Authorization"], body))
        self._answer(200 if len(self.seen) % 5 else 409)  # some non-2xx to count

    def handle(self):
        try:
            super().handle()
        except ConnectionError:  # wrk resets its connections when its time is up
            pass
        finally:
            self.connection.close()

    def log_message(self, *args):
        pass


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed (apt-get install -y wrk)")
@pytest.mark.parametrize("kind", ["spread", "hot", "health"])
def test_real_wrk_run_sends_the_phase_requests(kind, monkeypatch):
    plan = _plan(owners=3, per_owner=3)
    monkeypatch.setattr(bench, "PLAN", plan)
    monkeypatch.setattr(bench, "WRK_THREADS", 2)  # keys must stay unique across wrk threads
    monkeypatch.setattr(bench, "metric_sum", lambda *_: 0.0)
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = bench.run_phase_wrk(f"http://127.0.0.1:{server.server_port}", kind, kind, bench.PHASES[kind],
                                     4, 1).summary()
    finally:
        server.shutdown()
        server.server_close()
    assert result["requests"] > 0
    assert result["p50_ms"] is not None
    assert result["ok"] + result["errors"] == result["requests"]
    if kind == "health":
        assert _Recorder.seen == []
        assert result["statuses"] == {"200": result["requests"]}
        return
    assert result["statuses"].get("409", 0) > 0
    owner_of = {account: owner for owner in plan.owners for account in owner.accounts}
    keys = [body["idempotencyKey"] for _, _, body in _Recorder.seen]
    assert len(keys) == len(set(keys)), "idempotency keys repeat (warm-up + measured run, two threads)"
    for path, authorization, body in _Recorder.seen:
        assert path == "/api/transactions"
        assert body["amount"] == 1
        assert body["fromAccount"] != body["toAccount"]
        assert authorization == f"Bearer {owner_of[body['fromAccount']].token}"
        if kind == "hot":
            assert {body["fromAccount"], body["toAccount"]} == set(plan.owners[0].accounts[:2])
    if kind == "spread":
        assert len({body["fromAccount"] for _, _, body in _Recorder.seen}) == len(plan.all_accounts)
        assert len({body["toAccount"] for _, _, body in _Recorder.seen}) == len(plan.all_accounts)
