"""The in-process half of ``scripts/bench``: database commands per request, and a profile of the transfer path.

Run by ``scripts/bench.py`` in a process of its own (the load generator's gevent patching must not reach the
application), it prints one JSON object on stdout:

``commands``  Counts the commands of one transfer and one balance read at 10, 1,000 and 10,000 prior ledger
              entries on the account (history written directly, see ``tests/history.py``), through the Flask
              test client, with :class:`ledger.command_count.CommandCounter`.
``overhead``  Bare Flask (``scripts/bench_bare.py``) against the service through the Flask test client:
              µs of thread CPU time per request for a trivial route, a balance read and a transfer, with the
              time inside the storage engine (``EngineClock``) subtracted.
``profile``   Runs transfers through the Flask test client under pyinstrument and splits the time between our
              code (``ledger/``), the storage engine (mongomock-ng and its lock), the driver and schema
              libraries, and the web framework; writes the HTML profile next to the results.

With ``MONGO_URI`` set both run against that replica set, in a database of their own that is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from ledger import command_count  # noqa: E402  (import before any client exists, so pymongo reports to it)

AUTH_COLLECTIONS = ("tokenblacklists", "users")
SYSTEM_EMAIL = "bench-system@ledger.local"
SYSTEM_PASSWORD = "bench-system-password"


class InProcessApi:
    """Just enough of the API, through the Flask test client, to build data and send transfers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.client = app.test_client()
        self.system_token = self.login(SYSTEM_EMAIL, SYSTEM_PASSWORD)

    def call(self, method: str, path: str, token: str | None = None, body: Any = None,
             expected: int | None = None) -> Any:
        self.client._cookies.clear()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.client.open(path, method=method, json=body, headers=headers)
        if expected is not None and response.status_code != expected:
            raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.get_data(as_text=True)}")
        return response

    def login(self, email: str, password: str) -> str:
        return self.call("POST", "/api/auth/login", body={"email": email, "password": password},
                         expected=200).get_json()["token"]

    def user(self) -> str:
        body = {"email": f"bench-{uuid.uuid4().hex[:12]}@ledger.local", "password": "bench-password",
                "name": "Bench User"}
        return self.call("POST", "/api/auth/register", body=body, expected=201).get_json()["token"]

    def account(self, token: str, funds: int = 0) -> str:
        account_id = self.call("POST", "/api/accounts", token, expected=201).get_json()["account"]["_id"]
        if funds:
            self.call("POST", "/api/transactions/system/initial-funds", self.system_token,
                      {"toAccount": account_id, "amount": funds, "idempotencyKey": uuid.uuid4().hex}, expected=201)
        return account_id

    def transfer(self, token: str, source: str, target: str, amount: int = 1) -> Any:
        return self.call("POST", "/api/transactions", token,
                         {"fromAccount": source, "toAccount": target, "amount": amount,
                          "idempotencyKey": uuid.uuid4().hex}, expected=200)


def build_app(data_dir: str | None = None) -> Any:
    """The development configuration, as ``scripts/serve`` runs it, on a database of its own (the embedded
    engine in ``data_dir``: ``LEDGER_DATA_DIR`` when set, else a fresh temporary folder)."""

    from ledger import create_app

    if data_dir is None:
        data_dir = os.environ.get("LEDGER_DATA_DIR") or _temporary_folder()
    # The configuration reads it (the development JWT secret lives in the folder) before overrides apply.
    os.environ["LEDGER_DATA_DIR"] = data_dir
    overrides = {
        "LEDGER_DATA_DIR": data_dir,
        "MONGO_URI": os.environ.get("MONGO_URI") or None,
        "MONGO_DB_NAME": f"ledger-bench-{uuid.uuid4().hex[:8]}",
        "SYSTEM_USER_EMAIL": SYSTEM_EMAIL,
        "SYSTEM_USER_PASSWORD": SYSTEM_PASSWORD,
        "SYSTEM_USER_NAME": "Bench System",
        "OUTBOX_SENDER_ENABLED": False,
        "BCRYPT_ROUNDS": 4,
        # The limiter stays on (its cost is part of every request) with limits the benchmark never reaches.
        "RATELIMIT_LOGIN": "1000000 per minute",
        "RATELIMIT_LOGIN_PER_ADDRESS": "1000000 per minute",
        "RATELIMIT_REGISTER_PER_ADDRESS": "1000000 per minute",
        "RATELIMIT_REGISTER": "1000000 per minute",
        "RATELIMIT_TRANSFER": "1000000 per minute",
    }
    return create_app(overrides, config_name="development")


def _temporary_folder() -> str:
    """A fresh folder for the embedded engine, removed when this process ends."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="ledger-bench-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def drop(app: Any) -> None:
    from ledger import db

    with app.app_context():
        db.get_client(app).drop_database(db.database_name(app))


# --------------------------------------------------------------------------------------- command counts


def _counted(app: Any, action: Any) -> dict[str, Any]:
    from ledger import db

    with command_count.CommandCounter(db.get_client(app)) as counter:
        action()
    own = counter.not_on(*AUTH_COLLECTIONS)
    return {"own": len(own), "auth": len(counter.on(*AUTH_COLLECTIONS)), "total": counter.count,
            "commands": [f"{c.name}:{c.collection}" for c in counter.commands]}


TIMED_TRANSFERS = 3


class EngineClock:
    """Time spent inside the database's API by this thread, measured at the app/engine boundary.

    It wraps the methods of whatever classes the app's database hands out, found at run time from
    ``ledger.db.get_client``/``get_db`` (the client, database, collection, cursor and session classes), so it
    times the embedded engine, any engine that replaces it, or pymongo against MongoDB (then network waits
    included) alike: database and collection lookups, every pymongo-shaped collection call, cursor step,
    session start/end and transaction start/commit/abort. Only the outermost call of a thread counts
    (engine methods that call each other are not counted twice).
    """

    COLLECTION_METHODS = (
        "insert_one", "insert_many", "update_one", "update_many", "replace_one", "delete_one", "delete_many",
        "find", "find_one", "find_one_and_update", "find_one_and_delete", "find_one_and_replace",
        "count_documents", "estimated_document_count", "distinct", "aggregate", "bulk_write",
        "create_index", "create_indexes", "drop_index", "drop_indexes", "index_information", "list_indexes",
        "drop",
    )
    CURSOR_METHODS = ("__next__", "next", "to_list")
    SESSION_METHODS = ("start_transaction", "commit_transaction", "abort_transaction", "end_session")
    CLIENT_METHODS = ("start_session", "get_database", "__getitem__")
    DATABASE_METHODS = ("get_collection", "__getitem__", "__getattr__")

    def __init__(self, app: Any, clock: Any = time.perf_counter) -> None:
        self.app = app
        self.clock = clock
        self.seconds = 0.0
        self.calls = 0
        self.cpu_seconds = 0.0
        self._depth = threading.local()
        self._patched: list[tuple[type, str, Any, bool]] = []

    def __enter__(self) -> EngineClock:
        from ledger import db

        with self.app.app_context():
            client, database = db.get_client(self.app), db.get_db(self.app)
            collection = database["engine_clock_probe"]
            cursor = collection.find({})
            session = client.start_session()
            session.end_session()
        for owner, names in ((type(collection), self.COLLECTION_METHODS), (type(cursor), self.CURSOR_METHODS),
                             (type(session), self.SESSION_METHODS), (type(client), self.CLIENT_METHODS),
                             (type(database), self.DATABASE_METHODS)):
            for name in names:
                if not hasattr(owner, name):
                    continue
                own = name in vars(owner)
                original = vars(owner)[name] if own else getattr(owner, name)
                self._patched.append((owner, name, original, own))
                setattr(owner, name, self._timed(original))
        return self

    def _timed(self, method: Any) -> Any:
        clock = self
        local = self._depth
        now = self.clock
        cpu_now = time.thread_time

        if now is cpu_now:  # the overhead table's clock: one reading per boundary (each is a system call)
            def timed(*args: Any, **kwargs: Any) -> Any:
                if getattr(local, "value", 0):
                    return method(*args, **kwargs)
                local.value = 1
                started = cpu_now()
                try:
                    return method(*args, **kwargs)
                finally:
                    spent = cpu_now() - started
                    clock.seconds += spent
                    clock.cpu_seconds += spent
                    clock.calls += 1
                    local.value = 0

            return timed

        def timed(*args: Any, **kwargs: Any) -> Any:  # noqa: F811 - one of the two, chosen above
            depth = getattr(local, "value", 0)
            if depth:
                return method(*args, **kwargs)
            local.value = 1
            started, cpu_started = now(), cpu_now()
            try:
                return method(*args, **kwargs)
            finally:
                clock.seconds += now() - started
                clock.cpu_seconds += cpu_now() - cpu_started
                clock.calls += 1
                local.value = 0

        return timed

    def __exit__(self, *exc_info: object) -> None:
        for owner, name, original, own in reversed(self._patched):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._patched.clear()


def _split(app: Any, action: Any, transfers: int) -> dict[str, float]:
    """Milliseconds per transfer in all, and inside the storage engine's commands (embedded engine only)."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    with EngineClock(app) as clock:
        action()
    total = (time.perf_counter() - started) * 1000 / transfers
    cpu_total = (time.thread_time() - cpu_started) * 1000 / transfers
    if os.environ.get("MONGO_URI"):  # the clock times the embedded engine only; MongoDB's time is in the total
        return {"total": round(total, 2)}
    engine = clock.seconds * 1000 / transfers
    # CPU time is what a busy machine does not distort; wall time adds waiting (fsync, other processes).
    return {"total": round(total, 2), "engine": round(engine, 2), "outside_engine": round(total - engine, 2),
            "cpu_total": round(cpu_total, 2), "cpu_engine": round(clock.cpu_seconds * 1000 / transfers, 2)}


def count_commands(sizes: list[int]) -> dict[str, Any]:
    from bson import ObjectId

    from ledger import db
    from tests.history import seed_history

    app = build_app()
    try:
        api = InProcessApi(app)
        token = api.user()
        busy, other = api.account(token, 1_000_000), api.account(token)
        recipient = api.account(api.user())
        result: dict[str, Any] = {"transfer": {}, "balance": {}, "entries_page": {}, "balance_at": {}}
        for _ in range(3):  # warm up (first-request work is not per-request work)
            api.transfer(token, busy, recipient)
        for size in sizes:
            with app.app_context():
                entries = db.get_db(app).accounts.find_one({"_id": ObjectId(busy)}, {"seq": 1})["seq"]
            seed_history(app, busy, other, size - entries)
            result["balance"][size] = _counted(app, lambda: api.call("GET", f"/api/accounts/balance/{busy}",
                                                                      token, expected=200))
            result["transfer"][size] = _counted(app, lambda: api.transfer(token, busy, recipient))
            result["entries_page"][size] = _counted(app, lambda: api.call(
                "GET", f"/api/accounts/{busy}/entries?limit=50", token, expected=200))
            result["balance_at"][size] = _counted(app, lambda: api.call(
                "GET", f"/api/accounts/balance/{busy}?at=2026-01-01T00:00:00Z", token, expected=200))
            result["transfer"][size]["ms_per_transfer"] = _split(
                app, lambda: [api.transfer(token, busy, recipient) for _ in range(TIMED_TRANSFERS)], TIMED_TRANSFERS)
        return result
    finally:
        drop(app)


# ---------------------------------------------------------------------------------------- overhead


def build_bare_app() -> Any:
    from bench_bare import build_bare_app as build

    return build()


OVERHEAD_CASES = (
    ("trivial", "GET /health"),
    ("balance", "GET /api/accounts/balance/:id"),
    ("transfer", "POST /api/transactions"),
)


def overhead(rounds: int, scale: int) -> dict[str, Any]:
    """Microseconds per request, bare Flask against ours, through the Flask test client (same process, same
    run, rounds interleaved): bare Flask's best round, and of ours the round with the least time outside the
    storage engine, in all, inside the engine (``EngineClock``) and outside it. ``scale`` requests of the
    trivial route per round, a quarter as many reads, a tenth as many transfers.

    Times are this thread's CPU time (``time.thread_time``), which other processes on a shared machine
    disturb far less than wall time; on the embedded engine a request is CPU work throughout (no I/O).
    """
    app = build_app()
    try:
        api = InProcessApi(app)
        token = api.user()
        source, target = api.account(token, 1_000_000_000), api.account(api.user())
        bare = build_bare_app()
        clients = {"ours": app.test_client(use_cookies=False), "bare": bare.test_client(use_cookies=False)}
        auth = {"Authorization": f"Bearer {token}"}
        counts = {"trivial": scale, "balance": max(1, scale // 4), "transfer": max(1, scale // 10)}

        def fresh_history() -> None:
            # Every transfer batch starts from the same small database: the embedded engine scans whole
            # collections, and its growing scans would both add engine time and evict the CPU caches the code
            # outside it runs from, so the figure outside the engine would grow round over round.
            from ledger import db

            with app.app_context():
                for name in ("transactions", "ledgers", "notifications"):
                    db.get_db(app)[name].delete_many({})

        def requests_for(case: str, count: int) -> list[tuple[str, str, dict[str, str], Any]]:
            if case == "trivial":
                return [("GET", "/health", {}, None)] * count
            if case == "balance":
                return [("GET", f"/api/accounts/balance/{source}", auth, None)] * count
            return [("POST", "/api/transactions", auth, {"fromAccount": source, "toAccount": target, "amount": 1,
                                                         "idempotencyKey": uuid.uuid4().hex})
                    for _ in range(count)]

        def run(which: str, case: str, count: int) -> tuple[float, float]:
            client = clients[which]
            batch = requests_for(case, count)
            if which == "ours" and case == "transfer":
                fresh_history()
            statuses = set()
            with EngineClock(app, time.thread_time) as clock:
                started = time.thread_time()
                for method, path, headers, body in batch:
                    statuses.add(client.open(path, method=method, headers=headers, json=body).status_code)
                elapsed = time.thread_time() - started
            if statuses != {200}:
                raise RuntimeError(f"{which} {case}: answered {sorted(statuses)}")
            engine = clock.seconds if which == "ours" else 0.0
            calls[case] = clock.calls / count if which == "ours" else calls.get(case, 0.0)
            return elapsed * 1e6 / count, engine * 1e6 / count

        calls: dict[str, float] = {}
        clock_cost = clock_cost_outside_us()

        for case in counts:  # warm up: first-request work (imports, caches) is not per-request work
            run("bare", case, 20)
            run("ours", case, 20)
        best: dict[str, dict[str, float]] = {case: {} for case in counts}
        for _ in range(rounds):
            for case, count in counts.items():
                bare_us, _ = run("bare", case, count)
                ours_us, engine_us = run("ours", case, count)
                # The clock's own work around each timed call falls outside the engine: measured, subtracted.
                outside = ours_us - engine_us - calls[case] * clock_cost
                kept = best[case]
                kept["bare"] = min(bare_us, kept.get("bare", bare_us))
                if outside <= kept.get("outside", outside):
                    # ours: the round with the least time outside the engine, its figures together
                    kept.update(ours=ours_us, engine=engine_us, outside=outside, calls=calls[case],
                                unadjusted=ours_us - engine_us)
    finally:
        drop(app)
    table = []
    for case, route in OVERHEAD_CASES:
        b = best[case]
        table.append({"case": case, "route": route, "requests_per_round": counts[case], "bare_us": round(b["bare"], 1),
                      "ours_us": round(b["ours"], 1), "engine_us": round(b["engine"], 1),
                      "ours_outside_engine_us": round(b["outside"], 1),
                      "clock_calls_per_request": round(b["calls"], 1),
                      "ours_outside_engine_unadjusted_us": round(b["unadjusted"], 1),
                      "ratio_outside_engine": round(b["outside"] / b["bare"], 2)})
    return {"rounds": rounds, "load_average": [round(x, 2) for x in os.getloadavg()], "table": table,
            "clock_cost_outside_us_per_call": round(clock_cost, 3)}


def clock_cost_outside_us(calls: int = 20_000) -> float:
    """What :class:`EngineClock` itself adds outside the engine per timed call (µs of thread CPU time): its
    wrapper around a function that does nothing, less the part the clock counts as inside. Best of 5."""
    clock = EngineClock(None, time.thread_time)
    timed = clock._timed(lambda: None)
    best = float("inf")
    for _ in range(5):
        clock.seconds = 0.0
        started = time.thread_time()
        for _ in range(calls):
            timed()
        best = min(best, (time.thread_time() - started - clock.seconds) * 1e6 / calls)
    return max(best, 0.0)


# ------------------------------------------------------------------------------------------- engine


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def engine_figures(sizes: list[int], data_dir: str, transfers: int) -> dict[str, Any]:
    """ms per transfer (in all, and inside the engine) at each history size, RSS per stored transfer at the
    largest, and the time to open (recover) the folder at that size."""
    import gc

    from bson import ObjectId

    from ledger import db, embedded
    from tests.history import seed_history

    app = build_app(data_dir)
    api = InProcessApi(app)
    token = api.user()
    busy, other = api.account(token, 1_000_000), api.account(token)
    recipient = api.account(api.user())
    for _ in range(20):  # warm up
        api.transfer(token, busy, recipient)
    result: dict[str, Any] = {"data_dir": data_dir, "transfers_timed": transfers, "sizes": {}}
    gc.collect()
    rss_start = _rss_bytes()
    seeded = 0
    for size in sizes:
        with app.app_context():
            entries = db.get_db(app).accounts.find_one({"_id": ObjectId(busy)}, {"seq": 1})["seq"]
        started = time.perf_counter()
        seed_history(app, busy, other, size - entries)
        seeded += max(0, size - entries)
        seed_seconds = time.perf_counter() - started
        figures = _split(app, lambda: [api.transfer(token, busy, recipient) for _ in range(transfers)], transfers)
        figures["seed_seconds"] = round(seed_seconds, 1)
        result["sizes"][size] = figures
    gc.collect()
    result["rss_mb"] = round(_rss_bytes() / 2**20, 1)
    result["rss_bytes_per_stored_transfer"] = round((_rss_bytes() - rss_start) / max(seeded, 1))
    result["stored_transfers_seeded"] = seeded
    if data_dir != embedded.MEMORY:
        client = db.get_client(app)
        engine = embedded.engine_of(client)
        result["fsyncs"] = engine.journal.fsyncs if engine and engine.journal else None
        if engine is not None and engine.journal is not None:
            # Compaction (a snapshot of everything) runs under the engine's lock: writes pause this long.
            with embedded.ENGINE_LOCK:
                started = time.perf_counter()
                engine.compact()
                result["compact_seconds"] = round(time.perf_counter() - started, 2)
            result["snapshot_mb"] = round(engine.snapshot_size / 2**20, 1)
        # Start-up at this size: close the engine and open the folder again, as a restart does.
        db.reset_client()
        embedded.close_engine(data_dir)
        size_on_disk = sum(os.path.getsize(os.path.join(data_dir, name)) for name in os.listdir(data_dir))
        started = time.perf_counter()
        reopened = embedded.open_engine(data_dir)
        result["startup_seconds"] = round(time.perf_counter() - started, 2)
        result["startup_replayed_journal_records"] = reopened.replayed_records
        result["disk_mb"] = round(size_on_disk / 2**20, 1)
        embedded.close_engine(data_dir)
    return result


def seed_folder(data_dir: str, transfers: int) -> dict[str, Any]:
    """Leave ``transfers`` completed transfers in the embedded engine's folder ``data_dir`` (for the server)."""
    from ledger import db, embedded
    from tests.history import seed_history

    app = build_app(data_dir)
    api = InProcessApi(app)
    token = api.user()
    first, second = api.account(token, 1_000_000), api.account(token)
    started = time.perf_counter()
    seed_history(app, first, second, transfers)
    seconds = time.perf_counter() - started
    db.reset_client()
    embedded.close_engine(data_dir)
    return {"data_dir": data_dir, "transfers": transfers, "seconds": round(seconds, 1)}


# ------------------------------------------------------------------------------------------- profile

CATEGORIES = (
    ("ledger/embedded.py", "engine"),
    ("mongomock_ng", "engine"),
    (str(ROOT / "ledger"), "ours"),
    ("/pymongo/", "driver (pymongo, bson)"),
    ("/bson/", "driver (pymongo, bson)"),
    ("/mongoengine/", "schema (mongoengine)"),
    ("/werkzeug/", "framework (flask, werkzeug, extensions)"),
    ("/flask/", "framework (flask, werkzeug, extensions)"),
    ("/flask_", "framework (flask, werkzeug, extensions)"),
    ("/jwt/", "framework (flask, werkzeug, extensions)"),
    ("/limits/", "framework (flask, werkzeug, extensions)"),
    ("/prometheus_client/", "framework (flask, werkzeug, extensions)"),
    ("/simplejson/", "json and logging"),
    ("/json/", "json and logging"),
    ("/logging/", "json and logging"),
)


OTHER = "other (stdlib, test client, profiler)"


def _category(path: str | None) -> str | None:
    if not path:
        return None
    for fragment, name in CATEGORIES:
        if fragment in path:
            return name
    return OTHER


def _walk(frame: Any, category: str, owner: str | None, totals: dict[str, float],
          owned: dict[str, float]) -> None:
    """Add ``frame``'s self time to its category, and non-engine time to the nearest function of ours above it.

    The engine owns everything beneath it; standard-library frames belong to whoever called them.
    """
    own_category = _category(frame.file_path)
    if category == "engine" or own_category in (None, OTHER):
        own_category = category  # the engine owns all beneath it; stdlib work belongs to whoever called it
    if own_category == "ours" and frame.file_path and _category(frame.file_path) == "ours":
        owner = f"{frame.function} ({Path(frame.file_path).relative_to(ROOT)}:{frame.line_no})"
    self_time = frame.time - sum(child.time for child in frame.children)
    totals[own_category] += self_time
    if owner is not None and own_category != "engine":
        owned[owner] += self_time
    for child in frame.children:
        _walk(child, own_category, owner, totals, owned)


def categorize(profiler: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds sampled per category, and per function of ours (with what it calls, engine excluded)."""
    totals: dict[str, float] = defaultdict(float)
    owned: dict[str, float] = defaultdict(float)
    root = profiler.last_session.root_frame()
    if root is not None:
        _walk(root, OTHER, None, totals, owned)
    return totals, owned


def profile_transfers(transfers: int, out_dir: Path, label: str) -> dict[str, Any]:
    from pyinstrument import Profiler

    app = build_app()
    try:
        api = InProcessApi(app)
        owners = [api.user() for _ in range(4)]
        accounts = [(token, api.account(token, 1_000_000)) for token in owners for _ in range(2)]
        for i in range(20):  # warm up: first-request costs (imports, caches) are not per-transfer costs
            token, source = accounts[i % len(accounts)]
            api.transfer(token, source, accounts[(i + 1) % len(accounts)][1])
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        profiler.start()
        for i in range(transfers):
            token, source = accounts[i % len(accounts)]
            api.transfer(token, source, accounts[(i + 3) % len(accounts)][1])
        profiler.stop()
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
    finally:
        drop(app)
    totals, owned = categorize(profiler)
    sampled = sum(totals.values()) or 1.0
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / f"{label}-profile.html"
    html.write_text(profiler.output_html(), encoding="utf-8")
    # On the embedded engine everything is CPU, so samples are scaled to CPU time (the machine may be busy).
    # On MongoDB most of a transfer is waiting on the network, which only wall time shows.
    basis, basis_seconds = ("wall", wall) if os.environ.get("MONGO_URI") else ("CPU", cpu)
    per_transfer_ms = basis_seconds * 1000 / transfers / sampled
    top = sorted(owned.items(), key=lambda item: -item[1])[:10]
    return {
        "transfers": transfers,
        "basis": basis,
        "cpu_ms_per_transfer": round(cpu * 1000 / transfers, 3),
        "wall_ms_per_transfer": round(wall * 1000 / transfers, 3),
        "ms_per_transfer_by_category": {name: round(seconds * per_transfer_ms, 3)
                                        for name, seconds in sorted(totals.items(), key=lambda item: -item[1])},
        "outside_engine_ms_per_transfer": round(
            sum(v for k, v in totals.items() if k != "engine") * per_transfer_ms, 3),
        "top_costs_of_ours_ms_per_transfer": [
            {"function": name, "ms": round(seconds * per_transfer_ms, 3)} for name, seconds in top
        ],
        "html": str(html),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    commands = sub.add_parser("commands")
    commands.add_argument("--sizes", default="10,1000,10000")
    over = sub.add_parser("overhead")
    over.add_argument("--rounds", type=int, default=10)
    over.add_argument("--scale", type=int, default=1000)
    engine = sub.add_parser("engine")
    engine.add_argument("--sizes", default="10,1000,10000,100000")
    engine.add_argument("--transfers", type=int, default=50)
    engine.add_argument("--data-dir", default=None, help="a folder (default: a fresh temporary one) or :memory:")
    seed = sub.add_parser("seed")
    seed.add_argument("--data-dir", required=True)
    seed.add_argument("--transfers", type=int, default=100_000)
    profile = sub.add_parser("profile")
    profile.add_argument("--transfers", type=int, default=300)
    profile.add_argument("--out", type=Path, default=ROOT / "bench-results")
    profile.add_argument("--label", default=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    args = parser.parse_args()
    if args.what == "commands":
        result = count_commands([int(size) for size in args.sizes.split(",")])
    elif args.what == "overhead":
        result = overhead(max(1, min(args.rounds, 50)), max(10, min(args.scale, 100_000)))
    elif args.what == "seed":
        result = seed_folder(args.data_dir, max(1, min(args.transfers, 1_000_000)))
    elif args.what == "engine":

        data_dir = args.data_dir or _temporary_folder()
        result = engine_figures([int(size) for size in args.sizes.split(",")], data_dir,
                                max(1, min(args.transfers, 10_000)))
    else:
        result = profile_transfers(max(1, min(args.transfers, 100_000)), args.out, args.label)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
