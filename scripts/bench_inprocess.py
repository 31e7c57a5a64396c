"""The in-process half of ``scripts/bench``: database commands per request, and a profile of the transfer path.

Run by ``scripts/bench.py`` in a process of its own (the load generator's gevent patching must not reach the
application), it prints one JSON object on stdout:

``commands``  Counts the commands of one transfer and one balance read at 10, 1,000 and 10,000 prior ledger
              entries on the account (history written directly, see ``tests/history.py``), through the Flask
              test client, with :class:`ledger.command_count.CommandCounter`.
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
    import tempfile

    from ledger import create_app

    if data_dir is None:
        data_dir = os.environ.get("LEDGER_DATA_DIR") or tempfile.mkdtemp(prefix="ledger-bench-")
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
    """Time spent inside the database's commands by this thread: the embedded engine's outermost collection
    calls and commits (timed around mongomock-ng's methods), or MongoDB's reported command durations."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._depth = threading.local()
        self._patched: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> EngineClock:
        from mongomock_ng import collection, session

        from ledger import embedded

        targets = [(collection.Collection, name) for name in embedded._COLLECTION_COMMANDS]
        targets.append((session.ClientSession, "commit_transaction"))
        for owner, name in targets:
            original = getattr(owner, name)
            self._patched.append((owner, name, original))
            setattr(owner, name, self._timed(original))
        return self

    def _timed(self, method: Any) -> Any:
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(clock._depth, "value", 0)
            clock._depth.value = depth + 1
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                clock._depth.value = depth
                if depth == 0:
                    clock.seconds += time.perf_counter() - started
                    clock.cpu_seconds += time.thread_time() - cpu_started

        return timed

    def __exit__(self, *exc_info: object) -> None:
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)


def _split(action: Any, transfers: int) -> dict[str, float]:
    """Milliseconds per transfer in all, and inside the storage engine's commands (embedded engine only)."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    with EngineClock() as clock:
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
        result: dict[str, Any] = {"transfer": {}, "balance": {}}
        for _ in range(3):  # warm up (first-request work is not per-request work)
            api.transfer(token, busy, recipient)
        for size in sizes:
            with app.app_context():
                entries = db.get_db(app).accounts.find_one({"_id": ObjectId(busy)}, {"seq": 1})["seq"]
            seed_history(app, busy, other, size - entries)
            result["balance"][size] = _counted(app, lambda: api.call("GET", f"/api/accounts/balance/{busy}",
                                                                      token, expected=200))
            result["transfer"][size] = _counted(app, lambda: api.transfer(token, busy, recipient))
            result["transfer"][size]["ms_per_transfer"] = _split(
                lambda: [api.transfer(token, busy, recipient) for _ in range(TIMED_TRANSFERS)], TIMED_TRANSFERS)
        return result
    finally:
        drop(app)


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
        figures = _split(lambda: [api.transfer(token, busy, recipient) for _ in range(transfers)], transfers)
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
    elif args.what == "seed":
        result = seed_folder(args.data_dir, max(1, min(args.transfers, 1_000_000)))
    elif args.what == "engine":
        import tempfile

        data_dir = args.data_dir or tempfile.mkdtemp(prefix="ledger-bench-")
        result = engine_figures([int(size) for size in args.sizes.split(",")], data_dir,
                                max(1, min(args.transfers, 10_000)))
    else:
        result = profile_transfers(max(1, min(args.transfers, 100_000)), args.out, args.label)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
