"""Benchmark the ledger over real HTTP: transfer throughput and latency, retries, commands per request, profile.

``scripts/bench`` runs this inside the project's virtual environment. It

1. starts the service under gunicorn on a free 127.0.0.1 port (the embedded engine unless ``MONGO_URI`` is
   set; then a database of its own on that replica set, dropped afterwards unless ``--keep-data``);
2. registers users, opens accounts and funds them from the system user (bootstrapped from the
   ``SYSTEM_USER_*`` variables this script sets for the server);
3. drives load with wrk when it is on PATH (C, event-driven, one thread, so the server keeps a core; a
   generated Lua script holds the plan), else with locust (as a library, headless); either way closed loop:
   ``--concurrency`` connections, each sending its next request when the last one answered, for
   ``--duration`` seconds per phase (``LEDGER_BENCH_LOAD=wrk|locust|auto`` forces the choice; default auto):
   ``GET /health`` (the reference), transfers spread over every account, and transfers on one hot pair;
4. compares ``GET /health`` with bare Flask (``scripts/bench_bare.py``) served the same way, in interleaved
   rounds (``--health-rounds``), twice on the first server: as started, before any data exists in the worker
   (our cost per request, as a worker against MongoDB pays it; the target), and again after its load phases,
   when the embedded engine's data lives in the worker's heap;
5. prints requests/s, p50/p95/p99 latency, errors and transaction retries (from ``GET /metrics``) per phase,
   the database commands per request (``scripts/bench_inprocess.py commands``), the in-process overhead table
   against bare Flask (``scripts/bench_inprocess.py overhead``) and, with ``--profile``, where the CPU of a
   transfer goes (``scripts/bench_inprocess.py profile``);
6. writes ``bench-results/<timestamp>.json`` and ``.md``.

Everything is bounded: each phase by time, setup by count, the server by a start-up deadline, and the server is
stopped at the end whatever happens. Traffic goes to 127.0.0.1 only.
"""

# ruff: noqa: E402 - gevent must patch the standard library before anything imports it (locust path only)
import atexit
import os
import shutil


def choose_load_generator() -> str:
    """``wrk`` if it is on PATH (or forced by ``LEDGER_BENCH_LOAD=wrk``), else ``locust``."""
    wanted = os.environ.get("LEDGER_BENCH_LOAD", "auto").strip().lower() or "auto"
    if wanted not in ("auto", "wrk", "locust"):
        raise SystemExit(f"LEDGER_BENCH_LOAD must be auto, wrk or locust, not {wanted!r}")
    if wanted == "wrk" and not shutil.which("wrk"):
        raise SystemExit("LEDGER_BENCH_LOAD=wrk but wrk is not on PATH (Debian/Ubuntu: apt-get install -y wrk)")
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "locust"
    return wanted


if __name__ == "__main__" and choose_load_generator() == "locust":
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import platform
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
SYSTEM_EMAIL = "bench-system@ledger.local"
SYSTEM_PASSWORD = "bench-system-password"
FUNDS_PER_ACCOUNT = 10_000_000  # major units: no transfer of 1 can ever run out during a run
MAX_SAMPLES_PER_PHASE = 2_000_000  # latency samples kept per phase (memory bound)
STARTUP_DEADLINE_SECONDS = 60


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str
    log_path: Path
    database: str | None


def start_server(args: argparse.Namespace, log_path: Path, data_dir: str | None = None,
                 bare: bool = False) -> Server:
    """gunicorn with the project's ``gunicorn.conf.py`` serving the service (on ``data_dir`` for the embedded
    engine), or with ``bare`` the bare Flask app of ``scripts/bench_bare.py`` served in exactly the same way."""
    port = free_port()
    env = dict(os.environ)
    if data_dir is not None:
        env["LEDGER_DATA_DIR"] = data_dir
    mongo_uri = os.environ.get("MONGO_URI") or None
    database = None
    if mongo_uri and not os.environ.get("MONGO_DB_NAME"):
        database = f"ledger-bench-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}"
        env["MONGO_DB_NAME"] = database
    env.update({
        "PORT": str(port),
        "BIND": f"{HOST}:{port}",
        "APP_ENV": env.get("APP_ENV", "development"),
        "JWT_SECRET": env.get("JWT_SECRET") or secrets.token_urlsafe(48),
        "SYSTEM_USER_EMAIL": SYSTEM_EMAIL,
        "SYSTEM_USER_PASSWORD": SYSTEM_PASSWORD,
        "SYSTEM_USER_NAME": "Bench System",
        "GUNICORN_THREADS": str(args.threads),
        # The limiter stays on (its cost is part of every request) with limits the benchmark never reaches.
        "RATELIMIT_LOGIN": "1000000 per minute",
        "RATELIMIT_LOGIN_PER_ADDRESS": "1000000 per minute",
        "RATELIMIT_REGISTER_PER_ADDRESS": "1000000 per minute",
        "RATELIMIT_REGISTER": "1000000 per minute",
        "RATELIMIT_TRANSFER": "1000000 per minute",
        "OUTBOX_SENDER_ENABLED": "true" if outbox_sender_on(args) else "false",
    })
    if mongo_uri:
        # /metrics is per process, so the retry count is exact only with one worker (the default here).
        env["WEB_CONCURRENCY"] = str(args.workers or 1)
    command = [PYTHON, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"]
    if bare:
        command[-1:] = ["--pythonpath", str(ROOT / "scripts"), "bench_bare:app"]
    ready_path = "/health" if bare else "/ready"
    log_file = log_path.open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = Server(process, f"http://{HOST}:{port}", log_path, database)
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited during start-up (code {process.returncode}); see {log_path}")
        try:
            if requests.get(f"{server.base_url}{ready_path}", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise SystemExit(f"the server was not ready within {STARTUP_DEADLINE_SECONDS} s; see {log_path}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


def outbox_sender_on(args: argparse.Namespace) -> bool:
    if args.outbox_sender == "auto":
        # Off on the embedded engine, as in earlier runs, so the phases compare with them: the sender shares
        # the one process (and its lock) with the requests, and its work (one or two emails per transfer) would
        # be counted against the transfer rate. `--outbox-sender on` includes it.
        return bool(os.environ.get("MONGO_URI"))
    return args.outbox_sender == "on"


def drop_bench_database(server: Server) -> None:
    if server.database is None:
        return
    from pymongo import MongoClient

    with MongoClient(os.environ["MONGO_URI"], serverSelectionTimeoutMS=5000) as client:
        client.drop_database(server.database)


# -------------------------------------------------------------------------------------------- setup


@dataclass
class Owner:
    token: str
    accounts: list[str]
    first_index: int = 0  # where its accounts start in Plan.all_accounts


@dataclass
class Plan:
    owners: list[Owner] = field(default_factory=list)
    all_accounts: list[str] = field(default_factory=list)

    def add(self, owner: Owner) -> None:
        owner.first_index = len(self.all_accounts)
        self.owners.append(owner)
        self.all_accounts.extend(owner.accounts)


def _checked(response: requests.Response, expected: int, what: str) -> dict[str, Any]:
    if response.status_code != expected:
        raise SystemExit(f"setup failed: {what} answered {response.status_code}: {response.text[:300]}")
    return response.json()


def build_plan(base_url: str, users: int, accounts_per_user: int) -> Plan:
    """Register ``users`` users with ``accounts_per_user`` funded accounts each, over HTTP."""
    http = requests.Session()
    system = _checked(http.post(f"{base_url}/api/auth/login", timeout=30,
                                json={"email": SYSTEM_EMAIL, "password": SYSTEM_PASSWORD}), 200, "system login")
    system_headers = {"Authorization": f"Bearer {system['token']}"}
    plan = Plan()
    for index in range(users):
        body = {"email": f"bench-{uuid.uuid4().hex[:12]}@ledger.local", "password": "bench-password-1",
                "name": f"Bench User {index}"}
        token = _checked(http.post(f"{base_url}/api/auth/register", json=body, timeout=30), 201, "register")["token"]
        headers = {"Authorization": f"Bearer {token}"}
        owner = Owner(token, [])
        for _ in range(accounts_per_user):
            account = _checked(http.post(f"{base_url}/api/accounts", headers=headers, timeout=30), 201,
                               "open account")["account"]["_id"]
            _checked(http.post(f"{base_url}/api/transactions/system/initial-funds", headers=system_headers,
                               json={"toAccount": account, "amount": FUNDS_PER_ACCOUNT,
                                     "idempotencyKey": uuid.uuid4().hex}, timeout=30), 201, "initial funds")
            owner.accounts.append(account)
        plan.add(owner)
        log(f"  setup: {index + 1}/{users} users, {len(plan.all_accounts)} funded accounts")
    return plan


# --------------------------------------------------------------------------------------------- load

PLAN = Plan()


def locust_users() -> dict[str, type]:
    """The locust user classes per phase, imported lazily: only the locust path needs gevent and locust."""
    from locust import FastHttpUser, constant, task

    class HealthUser(FastHttpUser):
        """The reference: the cheapest route the service has, through the same server, framework and hooks."""

        wait_time = constant(0)

        @task
        def health(self) -> None:
            self.client.get("/health", name="GET /health")


    class _TransferUser(FastHttpUser):
        abstract = True
        wait_time = constant(0)

        def send(self, owner: Owner, source: str, target: str) -> None:
            body = {"fromAccount": source, "toAccount": target, "amount": 1, "idempotencyKey": uuid.uuid4().hex}
            self.client.post("/api/transactions", json=body, name="POST /api/transactions",
                             headers={"Authorization": f"Bearer {owner.token}"})


    class SpreadTransferUser(_TransferUser):
        """Transfers from a random owner's random account to any other account."""

        @task
        def transfer(self) -> None:
            owner = random.choice(PLAN.owners)
            source_index = PLAN.all_accounts.index(random.choice(owner.accounts), owner.first_index)
            target_index = random.randrange(len(PLAN.all_accounts) - 1)
            target_index += target_index >= source_index  # any account but the source, uniformly
            self.send(owner, PLAN.all_accounts[source_index], PLAN.all_accounts[target_index])


    class HotPairTransferUser(_TransferUser):
        """Every client moves money between the same two accounts (one owner), in both directions."""

        @task
        def transfer(self) -> None:
            owner = PLAN.owners[0]
            first, second = owner.accounts[0], owner.accounts[1]
            source, target = (first, second) if random.random() < 0.5 else (second, first)
            self.send(owner, source, target)

    return {"health": HealthUser, "spread": SpreadTransferUser, "hot": HotPairTransferUser}


@dataclass
class PhaseResult:
    name: str
    route: str
    seconds: float = 0.0
    requests: int = 0
    ok: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    retries: float = 0.0
    fixed_latencies_ms: dict[Any, float | None] | None = None  # wrk's own percentiles (it keeps no samples)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        fixed = self.fixed_latencies_ms
        return {
            "phase": self.name,
            "route": self.route,
            "seconds": round(self.seconds, 2),
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "statuses": self.statuses,
            "ok_per_second": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": fixed[50] if fixed else percentile(ordered, 50),
            "p95_ms": fixed[95] if fixed else percentile(ordered, 95),
            "p99_ms": fixed[99] if fixed else percentile(ordered, 99),
            "max_ms": fixed["max"] if fixed else (round(ordered[-1], 2) if ordered else None),
            "transaction_retries": int(self.retries),
        }


def percentile(ordered: list[float], pct: float) -> float | None:
    if not ordered:
        return None
    rank = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))  # nearest-rank
    return round(ordered[rank], 2)


def metric_sum(base_url: str, name: str) -> float:
    response = requests.get(f"{base_url}/metrics", timeout=30)
    if response.status_code != 200:  # the bare Flask app has no metrics
        return 0.0
    text = response.text
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$")
    return sum(float(match.group(1)) for line in text.splitlines() if (match := pattern.match(line)))


# ---------------------------------------------------------------------------------------------- wrk

WRK_THREADS = 1  # one event loop drives 16+ connections at thousands of req/s; the other core is the server's
WRK_WARMUP_SECONDS = 1  # an unmeasured run first: connections open, server caches and JIT-free paths warm
WRK_MARKER = "LEDGER_BENCH_WRK "
_LUA_SAFE = re.compile(r"^[A-Za-z0-9._~+/=-]+$")  # JWTs and ObjectId hex: nothing to escape


def _lua_string(value: str) -> str:
    if not _LUA_SAFE.match(value):
        raise ValueError(f"unexpected characters in a plan value: {value[:40]!r}")
    return f'"{value}"'


def wrk_lua(kind: str, plan: Plan, run_id: str) -> str:
    """The wrk script for phase ``kind``: the plan (tokens, accounts) as Lua tables, one request per call, status
    counting in ``response`` and a JSON summary line (``WRK_MARKER`` + JSON) printed by ``done``.

    Idempotency keys are ``run_id`` (fresh per wrk run) + the wrk thread's number + a per-thread counter, so they
    are unique across threads, phases and runs."""
    if kind not in PHASES:
        raise ValueError(f"unknown phase {kind!r}")
    if kind != "health" and (not plan.owners or len(plan.all_accounts) < 2 or len(plan.owners[0].accounts) < 2):
        raise ValueError("transfer phases need a plan with at least two accounts for owner 0")
    if not re.fullmatch(r"[A-Za-z0-9]+", run_id):
        raise ValueError("run_id must be alphanumeric")
    owners = ",\n".join(f"  {{token = {_lua_string(owner.token)}, first = {owner.first_index + 1}, "
                        f"n = {len(owner.accounts)}}}" for owner in plan.owners)
    accounts = ", ".join(_lua_string(account) for account in plan.all_accounts)
    return f'''-- generated by scripts/bench.py for one wrk run; not kept
local kind = "{kind}"
local run_id = "{run_id}"
local owners = {{
{owners}
}}
local accounts = {{{accounts}}}
local threads = {{}}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

local counter = 0
statuses = {{}}  -- a global: done() reads it per thread with thread:get
local health_request
local headers_by_owner = {{}}

function init(args)
  math.randomseed(os.time() * 1000 + tid)
  health_request = wrk.format("GET", "/health")
  for i, owner in ipairs(owners) do
    headers_by_owner[i] = {{["Authorization"] = "Bearer " .. owner.token, ["Content-Type"] = "application/json"}}
  end
end

local function transfer(o, source, target)
  counter = counter + 1
  local body = '{{"fromAccount":"' .. source .. '","toAccount":"' .. target ..
    '","amount":1,"idempotencyKey":"' .. run_id .. "-" .. tid .. "-" .. counter .. '"}}'
  return wrk.format("POST", "/api/transactions", headers_by_owner[o], body)
end

function request()
  if kind == "health" then
    return health_request
  elseif kind == "spread" then
    local o = math.random(#owners)
    local owner = owners[o]
    local source = owner.first + math.random(owner.n) - 1
    local target = math.random(#accounts - 1)
    if target >= source then target = target + 1 end
    return transfer(o, accounts[source], accounts[target])
  else
    local owner = owners[1]
    local a, b = accounts[owner.first], accounts[owner.first + 1]
    if math.random() < 0.5 then return transfer(1, a, b) end
    return transfer(1, b, a)
  end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {{}}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  local parts = {{}}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format('{WRK_MARKER}{{"duration_us":%d,"requests":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"statuses":{{%s}}}}\\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    table.concat(parts, ",")))
end
'''


def parse_wrk_output(stdout: str, name: str, route: str) -> PhaseResult:
    """The ``PhaseResult`` from a wrk run's stdout (the JSON line ``done`` printed; latencies are µs in it)."""
    line = next((line for line in stdout.splitlines() if line.startswith(WRK_MARKER)), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary line ({WRK_MARKER.strip()}); its output:\n{stdout[-2000:]}")
    data = json.loads(line[len(WRK_MARKER):])
    statuses = {str(status): int(count) for status, count in sorted(data["statuses"].items())}
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    if socket_errors:
        statuses["error"] = socket_errors
    ok = sum(count for status, count in statuses.items() if status.startswith("2"))
    result = PhaseResult(name, route, seconds=data["duration_us"] / 1e6, requests=data["requests"] + socket_errors,
                         ok=ok)
    result.errors = result.requests - ok
    result.statuses = statuses
    result.fixed_latencies_ms = {pct: round(data[f"p{pct}_us"] / 1000, 2) for pct in (50, 95, 99)}
    result.fixed_latencies_ms["max"] = round(data["max_us"] / 1000, 2)
    return result


def wrk_command(base_url: str, script: Path, concurrency: int, seconds: int) -> list[str]:
    return ["wrk", "--threads", str(min(WRK_THREADS, concurrency)), "--connections", str(concurrency),
            "--duration", f"{seconds}s", "--timeout", "10s", "--script", str(script), base_url]


def _run_wrk(command: list[str], seconds: int) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"wrk did not finish within {seconds + 60} s: {' '.join(command)}") from None
    if completed.returncode != 0:
        raise SystemExit(f"wrk failed (exit {completed.returncode}): {' '.join(command)}\n"
                         f"{completed.stderr.decode(errors='replace')[-2000:]}{completed.stdout.decode()[-2000:]}")
    return completed.stdout.decode(errors="replace")


def run_phase_wrk(base_url: str, name: str, kind: str, route: str, concurrency: int,
                  duration: float) -> PhaseResult:
    """``concurrency`` wrk connections on phase ``kind`` for ``duration`` seconds, after an unmeasured warm-up."""
    seconds = max(1, round(duration))
    with tempfile.TemporaryDirectory(prefix="ledger-bench-wrk-") as folder:
        script = Path(folder) / "plan.lua"
        script.write_text(wrk_lua(kind, PLAN, uuid.uuid4().hex[:12]), encoding="utf-8")
        _run_wrk(wrk_command(base_url, script, concurrency, WRK_WARMUP_SECONDS), WRK_WARMUP_SECONDS)
        script.write_text(wrk_lua(kind, PLAN, uuid.uuid4().hex[:12]), encoding="utf-8")
        retries_before = metric_sum(base_url, "ledger_transaction_retries_total")
        result = parse_wrk_output(_run_wrk(wrk_command(base_url, script, concurrency, seconds), seconds), name, route)
    result.retries = metric_sum(base_url, "ledger_transaction_retries_total") - retries_before
    return result


def run_phase(base_url: str, name: str, kind: str, concurrency: int, duration: float,
              generator: str) -> PhaseResult:
    """Phase ``kind`` (health, spread or hot) with ``generator`` (wrk or locust); ``name`` labels it."""
    route = PHASES[kind]
    if generator == "wrk":
        return run_phase_wrk(base_url, name, kind, route, concurrency, duration)
    return run_phase_locust(base_url, name, route, locust_users()[kind], concurrency, duration)


def run_phase_locust(base_url: str, name: str, route: str, user_class: type, concurrency: int,
                     duration: float) -> PhaseResult:
    """``concurrency`` locust users on ``user_class`` for ``duration`` seconds once all are running."""
    import gevent
    from locust.env import Environment

    result = PhaseResult(name, route)
    measuring = {"on": False}

    def on_request(response_time: float, exception: Any = None, response: Any = None, **_: Any) -> None:
        if not measuring["on"]:
            return
        result.requests += 1
        status = str(getattr(response, "status_code", None) or "error")
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if exception is None and status.startswith("2"):
            result.ok += 1
        else:
            result.errors += 1
        if len(result.latencies_ms) < MAX_SAMPLES_PER_PHASE:
            result.latencies_ms.append(response_time)

    env = Environment(user_classes=[user_class], host=base_url)
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    retries_before = metric_sum(base_url, "ledger_transaction_retries_total")
    spawn_rate = min(100, concurrency * 4)  # locust warns above 100 users/s
    runner.start(concurrency, spawn_rate=spawn_rate)
    gevent.sleep(concurrency / spawn_rate + 0.5)  # every simulated client running before measuring starts
    measuring["on"] = True
    started = time.monotonic()
    next_report = started + 2
    while (elapsed := time.monotonic() - started) < duration:
        gevent.sleep(min(0.25, duration - elapsed))
        if time.monotonic() >= next_report:
            next_report += 2
            seconds = time.monotonic() - started
            log(f"  [{name}] {seconds:5.1f}/{duration:.0f} s  {result.requests} requests  "
                f"{result.ok / seconds:7.1f} ok/s  {result.errors} errors")
    measuring["on"] = False
    result.seconds = time.monotonic() - started
    runner.quit()
    runner.greenlet.join(timeout=30)
    result.retries = metric_sum(base_url, "ledger_transaction_retries_total") - retries_before
    return result


# ------------------------------------------------------------------------------------- in-process parts


def in_process(what: list[str], timeout: float) -> dict[str, Any] | None:
    """Run ``scripts/bench_inprocess.py`` (without gevent) and return its JSON, or None if it failed."""
    command = [PYTHON, str(ROOT / "scripts" / "bench_inprocess.py"), *what]
    try:
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        log(f"  {what[0]}: gave up after {timeout:.0f} s")
        return None
    if completed.returncode != 0:
        log(f"  {what[0]} failed:\n{completed.stderr.decode(errors='replace')[-2000:]}")
        return None
    return json.loads(completed.stdout.decode().strip().splitlines()[-1])


def commands_line(counts: dict[str, Any] | None) -> str:
    if not counts:
        return "Database commands per request: not measured."
    sizes = " / ".join(f"{int(size):,}" for size in counts["transfer"])
    lines = [f"Database commands per request (its own + authentication) at {sizes} prior ledger entries:"]
    for kind in ("transfer", "balance"):
        shown = " / ".join(f"{entry['own']}+{entry['auth']}" for entry in counts[kind].values())
        lines.append(f"- {kind}: {shown}")
    timings = [entry.get("ms_per_transfer", {}) for entry in counts["transfer"].values()]
    if timings and all("engine" in t for t in timings):
        lines.append("- ms per transfer at those sizes (in-process): inside the embedded engine "
                     + " / ".join(str(t["engine"]) for t in timings) + "; outside it (ours, libraries, framework) "
                     + " / ".join(str(t["outside_engine"]) for t in timings))
    elif timings and all("total" in t for t in timings):
        lines.append("- ms per transfer at those sizes (in-process): " + " / ".join(str(t["total"]) for t in timings))
    return "\n".join(lines)


def compare_health(args: argparse.Namespace, server: Server, stamp: str, when: str) -> dict[str, Any]:
    """``GET /health`` on the service against bare Flask served the same way: interleaved rounds, best kept."""
    log(f"==> {when}: starting bare Flask (scripts/bench_bare.py) under gunicorn, configured as the service")
    bare = start_server(args, args.output / f"{stamp}-bare-server-{when.replace(' ', '-')}.log", data_dir=":memory:",
                        bare=True)
    rounds: list[dict[str, Any]] = []
    try:
        for index in range(args.health_rounds):
            for which, target in (("service", server), ("bare", bare)):
                log(f"==> GET /health on {which}, round {index + 1}/{args.health_rounds}, {args.concurrency} clients, "
                    f"{args.health_duration:.0f} s")
                phase = run_phase(target.base_url, f"health-{which}", "health", args.concurrency,
                                  args.health_duration, args.load_generator).summary()
                phase["round"] = index + 1
                rounds.append(phase)
                log(f"    {phase['ok_per_second']} ok/s, p50 {phase['p50_ms']} ms, {phase['errors']} errors")
    finally:
        stop_server(bare)
    best = {which: max((r for r in rounds if r["phase"] == f"health-{which}"), key=lambda r: r["ok_per_second"])
            for which in ("service", "bare")}
    ratio = best["service"]["ok_per_second"] / best["bare"]["ok_per_second"] if best["bare"]["ok_per_second"] else 0
    return {"rounds": rounds, "best_service": best["service"], "best_bare": best["bare"],
            "service_share_of_bare": round(ratio, 3)}


TARGETS = {"trivial": "ours ≤ 1.3x bare", "balance": "outside engine ≤ 500 µs", "transfer": "outside engine ≤ 1,000 µs"}


def overhead_lines(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    overhead = report.get("overhead")
    if overhead:
        lines += [f"Our cost per request, in-process (Flask test client, thread CPU time, best of "
                  f"{overhead['rounds']} interleaved rounds; load average at the end {overhead['load_average']}):",
                  "", "| request | bare Flask µs | ours µs | inside the engine µs | ours outside the engine µs | "
                      "ratio to bare | target |", "|---|---:|---:|---:|---:|---:|---|"]
        for row in overhead["table"]:
            lines.append(f"| `{row['route']}` | {row['bare_us']} | {row['ours_us']} | {row['engine_us']} | "
                         f"{row['ours_outside_engine_us']} | {row['ratio_outside_engine']}x | {TARGETS[row['case']]} |")
        cost = overhead.get("clock_cost_outside_us_per_call")
        if cost is not None:
            lines += ["", f"Outside the engine is ours less the engine clock's own work around each timed call "
                          f"({cost} µs per call, measured in the same run; "
                          + ", ".join(f"{row['clock_calls_per_request']} calls per {row['case']} request"
                                      for row in overhead["table"] if row.get("clock_calls_per_request"))
                          + "). Without that subtraction: "
                          + " / ".join(f"{row.get('ours_outside_engine_unadjusted_us')} µs"
                                       for row in overhead["table"]) + "."]
        lines.append("")
    for key, when in (("health_vs_bare", "the service as started (no data in the worker yet: the target's "
                                         "measure)"),
                      ("health_vs_bare_after_load", "the same service after its load phases (the embedded engine's "
                                                    "data in the worker's heap; not a target)")):
        health = report.get(key)
        if not health:
            continue
        service, bare = health["best_service"], health["best_bare"]
        target = " (target ≥ 90%)" if key == "health_vs_bare" else ""
        lines += [f"`GET /health` under gunicorn, {when} (same `gunicorn.conf.py`, {report['config']['threads']} "
                  f"threads, {report['config']['concurrency']} keep-alive clients, best of "
                  f"{len(health['rounds']) // 2} interleaved rounds): service **{service['ok_per_second']}** ok/s "
                  f"(p50 {service['p50_ms']} ms), bare Flask **{bare['ok_per_second']}** ok/s (p50 "
                  f"{bare['p50_ms']} ms): **{health['service_share_of_bare']:.0%}** of bare Flask{target}.", ""]
    return lines


# ------------------------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark {report['started']}",
        "",
        f"- engine: **{report['engine']}**" + (" (mongomock-ng with in-memory indexes, a journal with group-commit "
                                              "fsync and snapshots; its absolute speed says nothing about MongoDB)"
                                              if report["engine"] == "embedded" else ""),
        f"- machine: {report['machine']['cpus']} CPUs, load average at start {report['machine']['load_start']}, "
        f"at end {report['machine']['load_end']}; git {report['git']}",
        f"- server: gunicorn, {report['config']['workers']} worker(s) x {report['config']['threads']} threads; "
        f"outbox sender {'on' if report['config']['outbox_sender'] else 'off'}",
        f"- load: {load_generator_text(report['config'])}, {report['config']['concurrency']} concurrent clients "
        f"(closed loop), {report['config']['duration']} s per phase, {report['config']['users']} users x "
        f"{report['config']['accounts_per_user']} accounts",
        "",
        "| run | phase | route | ok/s | p50 ms | p95 ms | p99 ms | max ms | requests | errors | txn retries |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in report["phases"]:
        lines.append(f"| {phase.get('run') or '-'} | {phase['phase']} | `{phase['route']}` | "
                     f"{phase['ok_per_second']} | {phase['p50_ms']} | "
                     f"{phase['p95_ms']} | {phase['p99_ms']} | {phase['max_ms']} | {phase['requests']} | "
                     f"{phase['errors']} | {phase['transaction_retries']} |")
    if report["config"]["workers"] != 1:
        lines += ["", "Transaction retries are one worker's count: `GET /metrics` is per worker process."]
    lines += ["", report["ratios"], "", *engine_lines(report), "", report["commands_line"], ""]
    lines += overhead_lines(report)
    profile = report.get("profile")
    if profile:
        basis = profile["basis"]
        total = profile["cpu_ms_per_transfer" if basis == "CPU" else "wall_ms_per_transfer"]
        lines += [f"Profile (in-process, {profile['transfers']} transfers): {total} ms {basis} per transfer, "
                  f"of which outside the storage engine {profile['outside_engine_ms_per_transfer']} ms.", "",
                  f"| where | ms {basis} per transfer |", "|---|---:|"]
        lines += [f"| {name} | {ms} |" for name, ms in profile["ms_per_transfer_by_category"].items()]
        lines += ["", "| our function (with the libraries it calls, engine excluded) | ms per transfer |",
                  "|---|---:|"]
        lines += [f"| `{item['function']}` | {item['ms']} |" for item in profile["top_costs_of_ours_ms_per_transfer"]]
        lines.append("")
    return "\n".join(lines)


def load_generator_text(config: dict[str, Any]) -> str:
    if "load_generator" not in config:  # reports written before wrk was an option
        return f"locust {config.get('locust', '?')}"
    text = config.get("load_generator_version") or config["load_generator"]
    if config["load_generator"] == "wrk":
        text += (f" ({config.get('wrk_threads', 1)} thread, {config.get('wrk_warmup_seconds', 0)} s unmeasured "
                 "warm-up per phase)")
    return text


def ratio_line(phases: list[dict[str, Any]]) -> str:
    parts = []
    for run in dict.fromkeys(phase.get("run", "") for phase in phases):
        in_run = [phase for phase in phases if phase.get("run", "") == run]
        health = next((p for p in in_run if p["phase"] == "health"), None)
        for phase in in_run:
            if phase is health or not health or not health["ok_per_second"] or not health["p50_ms"]:
                continue
            parts.append(f"{phase['phase']}{' (' + run + ')' if run else ''}: "
                         f"{100 * phase['ok_per_second'] / health['ok_per_second']:.0f}% of GET /health's "
                         f"requests/s, {phase['p50_ms'] / health['p50_ms']:.1f}x its p50 latency")
    return "Against the reference: " + "; ".join(parts) if parts else "No reference ratio (needs the health phase)."


def engine_lines(report: dict[str, Any]) -> list[str]:
    engine = report.get("engine_figures") or {}
    lines = []
    for label, figures in engine.items():
        if not figures:
            continue
        sizes = list(figures["sizes"])
        lines.append(f"In-process, {label} ({figures['transfers_timed']} transfers timed per size), at "
                     + " / ".join(f"{int(size):,}" for size in sizes) + " prior ledger entries:")
        lines.append("- ms per transfer inside the engine, CPU: "
                     + " / ".join(str(figures["sizes"][size]["cpu_engine"]) for size in sizes)
                     + "; wall (with fsync waits): "
                     + " / ".join(str(figures["sizes"][size]["engine"]) for size in sizes))
        lines.append("- ms per transfer in all (framework and ours included), CPU: "
                     + " / ".join(str(figures["sizes"][size]["cpu_total"]) for size in sizes)
                     + "; wall: " + " / ".join(str(figures["sizes"][size]["total"]) for size in sizes))
        lines.append(f"- resident memory: {figures['rss_bytes_per_stored_transfer']:,} bytes per stored transfer "
                     f"(transaction + 2 ledger entries) over {figures['stored_transfers_seeded']:,}; process "
                     f"{figures['rss_mb']} MB")
        if "compact_seconds" in figures:
            lines.append(f"- compaction at that size (snapshot of everything, writes paused): "
                         f"{figures['compact_seconds']} s for a {figures['snapshot_mb']} MB snapshot")
        if "startup_seconds" in figures:
            lines.append(f"- start-up at that size (open the folder: snapshot + journal replay + indexes): "
                         f"{figures['startup_seconds']} s for {figures['disk_mb']} MB on disk")
    if report.get("startup_seconds"):
        lines.append("- server start-up until ready (gunicorn, app, recovery): " + ", ".join(
            f"{label} {seconds} s" for label, seconds in report["startup_seconds"].items()))
    if report.get("server_rss_mb"):
        lines.append("- server resident memory after its phases: " + ", ".join(
            f"{label} {mb} MB" for label, mb in report["server_rss_mb"].items()))
    return lines


def _rss_mb(pid: int) -> float | None:
    """Resident memory of the gunicorn worker (the master's child), in MB."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        target = int(children[0]) if children else pid
        pages = int(Path(f"/proc/{target}/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, timeout=10,
                             check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, timeout=10, check=False).stdout.strip()
        return out.stdout.decode().strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the ledger over HTTP (see BENCHMARKS.md).")
    parser.add_argument("--duration", type=float, default=30, help="seconds per load phase (default 30)")
    parser.add_argument("--users", type=int, default=10, help="users to register (default 10)")
    parser.add_argument("--accounts", type=int, default=2, help="funded accounts per user (default 2, min 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker (default 8)")
    parser.add_argument("--workers", type=int, default=0,
                        help="gunicorn workers with MONGO_URI (default 1: /metrics, and so the retry count, "
                             "is per worker process)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~1-2 min): short phases, few users")
    parser.add_argument("--profile", action="store_true", help="also profile transfers in-process (pyinstrument)")
    parser.add_argument("--profile-transfers", type=int, default=300, help="transfers to profile (default 300)")
    parser.add_argument("--phases", default="health,spread,hot", help="comma-separated: health, spread, hot")
    parser.add_argument("--outbox-sender", choices=("auto", "on", "off"), default="auto",
                        help="run the email outbox sender in the server (auto: only with MONGO_URI)")
    parser.add_argument("--health-rounds", type=int, default=6,
                        help="interleaved rounds of GET /health against the service and against bare Flask served "
                             "the same way (default 6; 0 skips the comparison)")
    parser.add_argument("--health-duration", type=float, default=4, help="seconds per such round (default 4)")
    parser.add_argument("--overhead-rounds", type=int, default=10,
                        help="rounds of the in-process overhead table (default 10; 0 skips it)")
    parser.add_argument("--overhead-scale", type=int, default=1000,
                        help="trivial requests per overhead round; a quarter as many reads, a tenth transfers")
    parser.add_argument("--no-commands", action="store_true",
                        help="skip counting database commands per request at 10 / 1,000 / 10,000 prior entries")
    parser.add_argument("--keep-data", action="store_true", help="with MONGO_URI, keep the benchmark database")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results", help="results directory")
    parser.add_argument("--data-dir", default=None,
                        help="embedded engine: the server's LEDGER_DATA_DIR (default: a fresh temporary folder)")
    parser.add_argument("--compare-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="embedded engine: run the phases again on LEDGER_DATA_DIR=:memory: (default on)")
    parser.add_argument("--prefill", type=int, default=100_000,
                        help="embedded engine: run the phases again on a folder holding this many prior transfers "
                             "(default 100000; 0 skips)")
    parser.add_argument("--engine-sizes", default="10,1000,10000,100000",
                        help="embedded engine: history sizes for the in-process engine figures ('' skips)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.users, args.accounts, args.concurrency = 4, 4, 2, 8
        args.prefill = min(args.prefill, 10_000)
        args.engine_sizes = "10,1000,10000" if args.engine_sizes else ""
        args.profile_transfers = min(args.profile_transfers, 100)
        args.health_rounds, args.health_duration = min(args.health_rounds, 3), min(args.health_duration, 2)
        args.overhead_rounds, args.overhead_scale = min(args.overhead_rounds, 3), min(args.overhead_scale, 300)
    # Bounds: everything this script does is finite and small enough for a laptop.
    args.duration = max(1.0, min(args.duration, 3600.0))
    args.users = max(1, min(args.users, 1000))
    args.accounts = max(2, min(args.accounts, 20))
    args.concurrency = max(1, min(args.concurrency, 512))
    args.threads = max(1, min(args.threads, 64))
    args.profile_transfers = max(10, min(args.profile_transfers, 5000))
    args.health_rounds = max(0, min(args.health_rounds, 20))
    args.health_duration = max(1.0, min(args.health_duration, 600.0))
    args.overhead_rounds = max(0, min(args.overhead_rounds, 50))
    args.overhead_scale = max(10, min(args.overhead_scale, 100_000))
    args.prefill = max(0, min(args.prefill, 1_000_000))
    args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    unknown = [name for name in args.phases if name not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    return args


PHASES = {"health": "GET /health", "spread": "POST /api/transactions", "hot": "POST /api/transactions"}


def main() -> None:
    args = parse_args()
    args.load_generator = choose_load_generator()
    if args.load_generator == "wrk":
        version = subprocess.run(["wrk", "--version"], capture_output=True, timeout=10, check=False)
        generator_version = (version.stdout or version.stderr).decode(errors="replace").split("Copyright")[0].strip()
    else:
        import locust

        generator_version = f"locust {locust.__version__}"

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.output.mkdir(parents=True, exist_ok=True)
    engine = "mongodb" if os.environ.get("MONGO_URI") else "embedded"
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "engine": engine,
        "git": git_revision(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_start": [round(x, 2) for x in os.getloadavg()]},
        "config": {"duration": args.duration, "users": args.users, "accounts_per_user": args.accounts,
                   "concurrency": args.concurrency, "threads": args.threads,
                   "workers": 1 if engine == "embedded" else (args.workers or 1),
                   "outbox_sender": outbox_sender_on(args), "load_generator": args.load_generator,
                   "load_generator_version": generator_version,
                   **({"wrk_threads": WRK_THREADS, "wrk_warmup_seconds": WRK_WARMUP_SECONDS}
                      if args.load_generator == "wrk" else {})},
        "phases": [],
    }
    log(f"==> benchmark on the {engine} engine; load generator: {generator_version}"
        + (f" ({WRK_THREADS} thread, {WRK_WARMUP_SECONDS} s unmeasured warm-up per phase)"
           if args.load_generator == "wrk" else " (wrk not on PATH or LEDGER_BENCH_LOAD=locust)"))
    log(f"==> results in {args.output}/{stamp}.*")
    runs: list[tuple[str, str | None]] = [("", None)]
    if engine == "embedded":
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
        # The servers' folders and the prefilled one (~100 MB at 100,000 transfers) go when the script ends.
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        runs = [("durable", args.data_dir or str(scratch / "durable"))]
        if args.compare_memory:
            runs.append(("memory", ":memory:"))
        if args.prefill:
            prefilled = str(scratch / "prefilled")
            log(f"==> writing {args.prefill:,} transfers into {prefilled} (in-process)")
            report["prefill"] = in_process(["seed", "--data-dir", prefilled, "--transfers", str(args.prefill)],
                                           timeout=3600)
            runs.append((f"durable, {args.prefill:,} prior transfers", prefilled))
    for label, data_dir in runs:
        log(f"==> starting gunicorn on 127.0.0.1{' (' + label + ')' if label else ''}")
        started = time.perf_counter()
        server = start_server(args, args.output / f"{stamp}-server{'-' + label.split(',')[0] if label else ''}.log",
                              data_dir)
        report.setdefault("startup_seconds", {})[label or engine] = round(time.perf_counter() - started, 2)
        try:
            compare = args.health_rounds and "health_vs_bare" not in report  # once, beside the first server
            if compare:
                # Our cost per request, as a worker pays it with MongoDB: a process that holds no ledger data.
                report["health_vs_bare"] = compare_health(args, server, stamp, "as started")
            log(f"==> server ready at {server.base_url}; creating {args.users} users x {args.accounts} accounts")
            plan = build_plan(server.base_url, args.users, args.accounts)
            PLAN.owners, PLAN.all_accounts = plan.owners, plan.all_accounts
            for name in args.phases:
                log(f"==> phase {name}: {PHASES[name]}, {args.concurrency} clients, {args.duration:.0f} s "
                    f"({args.load_generator})")
                phase = run_phase(server.base_url, name, name, args.concurrency, args.duration,
                                  args.load_generator).summary()
                phase["run"] = label
                report["phases"].append(phase)
                log(f"    {phase['ok_per_second']} ok/s, p50 {phase['p50_ms']} ms, p95 {phase['p95_ms']} ms, "
                    f"p99 {phase['p99_ms']} ms, {phase['errors']} errors, {phase['transaction_retries']} retries")
            if compare and args.phases:
                # Again once the embedded engine's data from the phases lives in the worker's heap (BENCHMARKS.md,
                # round 5: it slows every request of the process, /health included).
                report["health_vs_bare_after_load"] = compare_health(args, server, stamp, "after the load phases")
            report.setdefault("transfers_total", {})[label or engine] = {
                outcome: int(metric_sum(server.base_url, f'ledger_transfers_total{{outcome="{outcome}"}}'))
                for outcome in ("completed", "rejected", "replayed", "timeout")
            }
            report.setdefault("server_rss_mb", {})[label or engine] = _rss_mb(server.process.pid)
        finally:
            stop_server(server)
            if not args.keep_data:
                drop_bench_database(server)
    report["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    if engine == "embedded" and args.engine_sizes:
        sizes = args.engine_sizes
        for label, data_dir in (("durable", None), ("memory", ":memory:")):
            log(f"==> in-process: a transfer's time inside the engine at {sizes} prior entries ({label})")
            extra = ["--data-dir", data_dir] if data_dir else []
            report.setdefault("engine_figures", {})[label] = in_process(["engine", "--sizes", sizes, *extra],
                                                                timeout=3600)
    if args.no_commands:
        report["commands"] = None
    else:
        log("==> counting database commands per request at 10, 1,000 and 10,000 prior ledger entries")
        report["commands"] = in_process(["commands", "--sizes", "10,1000,10000"], timeout=600)
    report["commands_line"] = commands_line(report["commands"])
    if args.overhead_rounds:
        log(f"==> in-process overhead: bare Flask against the service, {args.overhead_rounds} interleaved rounds")
        report["overhead"] = in_process(["overhead", "--rounds", str(args.overhead_rounds),
                                         "--scale", str(args.overhead_scale)], timeout=1800)
    if args.profile:
        log(f"==> profiling {args.profile_transfers} transfers in-process with pyinstrument")
        report["profile"] = in_process(["profile", "--transfers", str(args.profile_transfers),
                                        "--out", str(args.output), "--label", stamp], timeout=1800)
    report["ratios"] = ratio_line(report["phases"])
    json_path, md_path = args.output / f"{stamp}.json", args.output / f"{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    log(f"==> wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
