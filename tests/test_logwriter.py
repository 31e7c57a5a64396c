"""The batching log handler (``ledger.logwriter``): order, urgency, whole lines, exit, fork, failures, idling.

The suite's own apps write each line at once (``LOG_FLUSH_SECONDS`` 0 in the test configuration); these tests
drive the handler itself with the intervals a deployment uses, and through a real gunicorn worker.
"""

from __future__ import annotations

import io
import json
import logging
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from ledger.logwriter import PIPE_BUF, BatchingStreamHandler
from ledger.observability import JsonFormatter
from tests import conftest


class RecordingStream(io.StringIO):
    """A text stream that remembers each ``write`` call separately."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.writes.append(text)
            return super().write(text)

    def text(self) -> str:
        with self.lock:
            return self.getvalue()


@pytest.fixture
def make_handler() -> Iterator:
    made: list[BatchingStreamHandler] = []

    def make(interval: float, stream: io.StringIO | None = None) -> tuple[BatchingStreamHandler, logging.Logger]:
        handler = BatchingStreamHandler(stream if stream is not None else RecordingStream(), interval=interval)
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger(f"test.logwriter.{uuid.uuid4().hex}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        made.append(handler)
        return handler, logger

    yield make
    for handler in made:
        handler.close()


def wait_for(condition, timeout: float = 5.0) -> bool:
    return conftest.wait_for(condition, timeout, interval=0.005)


def messages(text: str) -> list[str]:
    return [json.loads(line)["message"] for line in text.splitlines()]


def test_an_info_line_waits_for_the_writer_and_flush_writes_it(make_handler) -> None:
    handler, logger = make_handler(interval=30.0)  # the writer will not get to it during this test
    logger.info("queued")
    assert handler.stream.text() == ""  # nothing written on the logging thread
    handler.flush()
    assert messages(handler.stream.text()) == ["queued"]


def test_the_writer_writes_queued_lines_within_the_interval(make_handler) -> None:
    handler, logger = make_handler(interval=0.02)
    for index in range(50):
        logger.info("line %d", index)
    assert wait_for(lambda: handler.stream.text().count("\n") == 50)
    assert messages(handler.stream.text()) == [f"line {index}" for index in range(50)]
    assert len(handler.stream.writes) < 50  # batched: fewer writes than lines


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR, logging.CRITICAL])
def test_a_warning_or_worse_is_written_at_once_after_everything_queued_before_it(make_handler, level: int) -> None:
    handler, logger = make_handler(interval=30.0)
    logger.info("first")
    logger.debug("second")
    logger.log(level, "urgent")
    assert messages(handler.stream.text()) == ["first", "second", "urgent"]  # before log() returned
    logger.info("after")
    assert messages(handler.stream.text()) == ["first", "second", "urgent"]
    handler.flush()
    assert messages(handler.stream.text())[-1] == "after"


@pytest.mark.parametrize("threads", [1, 4, 16])
@pytest.mark.parametrize("interval", [0.0, 0.001, 0.02])
def test_lines_from_many_threads_come_out_whole_once_each_and_in_each_threads_order(
        make_handler, threads: int, interval: float) -> None:
    handler, logger = make_handler(interval=interval)
    per_thread = 300
    start = threading.Barrier(threads)

    def log_lines(name: int) -> None:
        start.wait()
        for index in range(per_thread):
            if index % 97 == 0:
                logger.warning("t%d-%d %s", name, index, "w" * (index % 7))
            else:
                logger.info("t%d-%d %s", name, index, "x" * (index % 300))

    workers = [threading.Thread(target=log_lines, args=(name,)) for name in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    handler.flush()

    stream = handler.stream
    seen = [message.split()[0] for message in messages(stream.text())]
    assert len(seen) == threads * per_thread
    for name in range(threads):
        mine = [int(tag.split("-")[1]) for tag in seen if tag.startswith(f"t{name}-")]
        assert mine == list(range(per_thread))
    for written in stream.writes:  # every write ends a line, and fits a pipe's atomic write
        assert written.endswith("\n")
        assert len(written) <= PIPE_BUF or written.count("\n") == 1


def test_a_line_longer_than_a_pipe_write_is_written_alone_and_whole(make_handler) -> None:
    handler, logger = make_handler(interval=30.0)
    logger.info("short")
    logger.info("long %s", "y" * (PIPE_BUF * 2))
    logger.info("short again")
    handler.flush()
    assert messages(handler.stream.text())[0::2] == ["short", "short again"]
    assert [len(json.loads(line)["message"]) for line in handler.stream.text().splitlines()][1] == 5 + PIPE_BUF * 2
    long_writes = [written for written in handler.stream.writes if len(written) > PIPE_BUF]
    assert len(long_writes) == 1
    assert long_writes[0].count("\n") == 1


def test_set_stream_sends_what_was_queued_to_the_old_stream(make_handler) -> None:
    handler, logger = make_handler(interval=30.0)
    old = handler.stream
    logger.info("for the old stream")
    new = RecordingStream()
    assert handler.setStream(new) is old
    logger.info("for the new stream")
    handler.flush()
    assert messages(old.text()) == ["for the old stream"]
    assert messages(new.text()) == ["for the new stream"]
    assert handler.setStream(new) is None  # the same stream: nothing to do


def test_setting_the_interval_to_zero_writes_what_is_queued_and_then_every_line_at_once(make_handler) -> None:
    handler, logger = make_handler(interval=30.0)
    logger.info("queued")
    handler.interval = 0
    assert messages(handler.stream.text()) == ["queued"]
    logger.info("at once")
    assert messages(handler.stream.text()) == ["queued", "at once"]
    handler.interval = -3  # never negative
    assert handler.interval == 0.0


def test_close_writes_what_is_queued_and_later_lines_are_written_at_once(make_handler) -> None:
    handler, logger = make_handler(interval=30.0)
    logger.info("before close")
    handler.close()
    assert messages(handler.stream.text()) == ["before close"]
    handler.write_line('{"message": "after close"}\n')
    assert messages(handler.stream.text()) == ["before close", "after close"]


def test_the_writer_parks_when_idle_and_the_next_line_wakes_it(make_handler) -> None:
    handler, logger = make_handler(interval=0.01)
    logger.info("one")
    assert wait_for(lambda: messages(handler.stream.text()) == ["one"])
    assert wait_for(lambda: handler._parked)  # a few empty rounds, then it sleeps until the next line
    writer = handler._writer
    writes = len(handler.stream.writes)
    time.sleep(0.1)
    assert len(handler.stream.writes) == writes
    assert handler._parked
    logger.info("two")
    assert wait_for(lambda: messages(handler.stream.text()) == ["one", "two"])
    assert handler._writer is writer
    assert writer.is_alive()


def test_lines_logged_while_the_writer_parks_are_never_left_behind(make_handler) -> None:
    # Races the park check: lines arrive just as the writer decides to sleep. Each must still be written.
    handler, logger = make_handler(interval=0.001)
    for round_ in range(200):
        logger.info("round %d", round_)
        if round_ % 3 == 0:
            time.sleep(0.004)  # about as long as the writer's idle rounds: it parks around here
    assert wait_for(lambda: handler.stream.text().count("\n") == 200)
    assert messages(handler.stream.text()) == [f"round {index}" for index in range(200)]


def test_a_line_that_arrives_as_the_writer_decides_to_park_is_still_written(make_handler) -> None:
    """The narrowest interleaving, forced: a line is queued after the writer's last look at the queue and
    before it marks itself parked, so the line's own check sees a writer still awake and wakes nobody."""
    handler, logger = make_handler(interval=0.005)

    class LineAsItParks(threading.Event):
        arrived = False

        def clear(self) -> None:  # the writer clears the event right before it marks itself parked
            super().clear()
            if not LineAsItParks.arrived:
                LineAsItParks.arrived = True
                handler.write_line(json.dumps({"message": "as it parks"}) + "\n")

    handler._wake = LineAsItParks()
    logger.info("first")
    assert wait_for(lambda: LineAsItParks.arrived)
    # No other line comes to wake the writer: it must have seen this one itself.
    assert wait_for(lambda: messages(handler.stream.text()) == ["first", "as it parks"], timeout=2)


def test_where_no_writer_thread_can_start_lines_are_written_at_once(make_handler, monkeypatch) -> None:
    """At interpreter shutdown no thread can start: the line is written by the thread that logged it."""
    handler, logger = make_handler(interval=30.0)

    def refuse(_thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    logger.info("at shutdown")
    assert messages(handler.stream.text()) == ["at shutdown"]
    assert handler._writer is None
    monkeypatch.undo()
    logger.info("later")  # a later line may start the writer after all
    assert wait_for(lambda: handler._writer is not None)
    handler.flush()
    assert messages(handler.stream.text()) == ["at shutdown", "later"]


def test_a_writer_that_idles_and_parks_before_its_start_returns_is_still_woken(make_handler, monkeypatch) -> None:
    """The thread that starts the writer is descheduled right after start(): meanwhile the writer writes, idles
    and parks. Lines logged afterwards must still wake it."""
    handler, logger = make_handler(interval=0.005)
    real_start = threading.Thread.start

    def start_then_stall(thread) -> None:
        real_start(thread)
        wait_for(lambda: handler._parked, timeout=2)  # the writer has written, idled and parked

    monkeypatch.setattr(threading.Thread, "start", start_then_stall)
    logger.info("first")
    monkeypatch.undo()
    assert messages(handler.stream.text()) == ["first"]
    logger.info("second")
    logger.info("third")
    assert wait_for(lambda: messages(handler.stream.text()) == ["first", "second", "third"], timeout=2)


class BlockingStream(RecordingStream):
    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def write(self, text: str) -> int:
        self.released.wait(10)
        return super().write(text)


def test_when_the_stream_blocks_the_queue_stays_bounded_and_loggers_wait_for_it(make_handler, monkeypatch) -> None:
    from ledger import logwriter

    monkeypatch.setattr(logwriter, "MAX_PENDING_LINES", 5)
    stream = BlockingStream()
    handler, logger = make_handler(interval=0.005, stream=stream)
    logger.info("line 0")
    assert wait_for(lambda: handler._write_lock.locked())  # the writer is stuck in the stream's write
    done = threading.Event()

    def log_more() -> None:
        for index in range(1, 20):
            logger.info("line %d", index)
        done.set()

    producer = threading.Thread(target=log_more)
    producer.start()
    time.sleep(0.2)
    assert not done.is_set()  # the logging thread waits for the stream, as with an unbatched handler
    assert len(handler._pending) <= 5  # and memory stays bounded
    stream.released.set()
    producer.join(10)
    handler.flush()
    assert messages(stream.text()) == [f"line {index}" for index in range(20)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is reported
def test_a_writer_that_dies_is_replaced_by_the_next_line(make_handler) -> None:
    handler, logger = make_handler(interval=0.005)
    logger.info("first")
    assert wait_for(lambda: messages(handler.stream.text()) == ["first"])
    first_writer = handler._writer
    real_take = handler._take_pending
    calls = {"n": 0}

    def take_once_failing():
        calls["n"] += 1
        if threading.current_thread() is first_writer and calls["n"] == 1:
            raise RuntimeError("an unexpected error in the writer")
        return real_take()

    handler._take_pending = take_once_failing
    logger.info("second")  # the writer dies taking it
    assert wait_for(lambda: not first_writer.is_alive())
    logger.info("third")  # starts a new writer, which writes both
    assert wait_for(lambda: messages(handler.stream.text()) == ["first", "second", "third"], timeout=2)
    assert handler._writer is not first_writer


class FailingStream(RecordingStream):
    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    def write(self, text: str) -> int:
        if self.failing:
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_a_failing_stream_is_reported_through_logging_and_the_writer_carries_on(
        make_handler, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = FailingStream()
    handler, logger = make_handler(interval=0.01, stream=stream)
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)
    logger.info("lost")
    assert wait_for(lambda: bool(reported))
    assert reported[0].getMessage() == "1 log line(s) could not be written"
    stream.failing = False
    logger.info("kept")
    assert wait_for(lambda: messages(stream.text()) == ["kept"])
    assert handler._writer is not None
    assert handler._writer.is_alive()


def test_a_dropped_handler_lets_its_parked_writer_end(monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger import logwriter

    monkeypatch.setattr(logwriter, "PARKED_CHECK_SECONDS", 0.01)
    import weakref

    handler = BatchingStreamHandler(RecordingStream(), interval=0.005)
    handler.write_line("one\n")
    ref = weakref.ref(handler)
    assert wait_for(lambda: ref()._parked and ref().stream.text() == "one\n")
    writer = handler._writer
    del handler
    import gc

    gc.collect()
    writer.join(timeout=5)
    assert not writer.is_alive()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_with_an_empty_queue_and_its_own_writer(make_handler) -> None:
    handler, logger = make_handler(interval=30.0)
    logger.info("parent's")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it has queued, log one line of its own, exit through os._exit
        try:
            queued = list(handler._pending)
            handler.setStream(io.StringIO())
            handler.interval = 0.01
            logger.info("child's")
            written = wait_for(lambda: "child's" in handler.stream.getvalue(), timeout=5)
            os.write(write_end, json.dumps({"queued": queued, "written": written,
                                            "text": handler.stream.getvalue()}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    child = json.loads(b"".join(chunks))
    assert child["queued"] == []  # the parent's line stayed the parent's
    assert child["written"]
    assert messages(child["text"]) == ["child's"]
    handler.flush()
    assert messages(handler.stream.text()) == ["parent's"]  # written once, by the parent


_CHILD = textwrap.dedent("""
    import logging, os, sys, threading, time
    from ledger.logwriter import BatchingStreamHandler
    from ledger.observability import JsonFormatter
    handler = BatchingStreamHandler(sys.stderr, interval=float(sys.argv[1]))
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    def other_writer():  # another writer of the same pipe, as gunicorn's own logger is
        for index in range(400):
            os.write(2, b"OTHER %d %s\\n" % (index, b"o" * 200))
    other = threading.Thread(target=other_writer)
    other.start()
    def log(name):
        for index in range(500):
            logging.getLogger("child").info("%s-%d %s", name, index, "z" * (index % 250))
    threads = [threading.Thread(target=log, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.join()
    logging.getLogger("child").info("last line")
    """)


def test_a_process_that_exits_normally_writes_every_queued_line_whole_into_a_shared_pipe() -> None:
    """A long interval, a normal exit: ``logging.shutdown`` writes what is queued. The pipe is shared with
    another writer, and no line of either is cut by the other."""
    completed = subprocess.run([sys.executable, "-c", _CHILD, "30"], capture_output=True, text=True, timeout=60,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert completed.returncode == 0, completed.stderr[-2000:]
    ours, others = [], []
    for line in completed.stderr.splitlines():
        if line.startswith("OTHER "):
            others.append(line)
        else:
            ours.append(json.loads(line)["message"])  # a cut line would not parse
    assert len(others) == 400
    assert all(line.endswith("o" * 200) for line in others)
    assert len(ours) == 4 * 500 + 1
    assert ours[-1] == "last line"


def test_lines_reach_a_pipe_while_the_process_runs(tmp_path) -> None:
    """The writer thread, not the exit, delivers lines: a reader sees them while the process still runs."""
    script = textwrap.dedent("""
        import logging, sys, time
        from ledger.logwriter import BatchingStreamHandler
        from ledger.observability import JsonFormatter
        handler = BatchingStreamHandler(sys.stderr, interval=0.02)
        handler.setFormatter(JsonFormatter())
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("child").info("while running")
        time.sleep(30)
        """)
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        ready, _, _ = select.select([process.stderr], [], [], 10)
        assert ready, "no line within 10 s"
        line = process.stderr.readline().decode()
        assert json.loads(line)["message"] == "while running"
        assert process.poll() is None  # still running: written by the writer, not at exit
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stderr.close()


def _get(port: int, request_id: str) -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health", headers={"X-Request-ID": request_id})
        return connection.getresponse().status
    finally:
        connection.close()


def _access_ids(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)  # every line of ours is whole JSON
            if entry.get("logger") == "ledger.access":
                found.append(entry["requestId"])
    return found


@pytest.mark.e2e
def test_a_gunicorn_worker_writes_the_access_lines_of_concurrent_requests_while_it_runs(tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.gunicorn_process import running_gunicorn

    environment = {"JWT_SECRET": f"logwriter-{uuid.uuid4().hex}{uuid.uuid4().hex}", "LOG_FLUSH_SECONDS": "0.05"}
    with running_gunicorn(tmp_path, environment) as server:
        request_ids = [f"running-{index}" for index in range(300)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            assert set(pool.map(lambda request_id: _get(server.port, request_id), request_ids)) == {200}
        assert wait_for(lambda: set(request_ids) <= set(_access_ids(server.log_path.read_text())), timeout=10)
        assert server.process.poll() is None  # written by the writer thread, the server still running
        ids = _access_ids(server.log_path.read_text())
        assert all(ids.count(request_id) == 1 for request_id in request_ids)


@pytest.mark.e2e
def test_a_gunicorn_worker_stopped_by_sigterm_writes_the_access_lines_it_still_held(tmp_path) -> None:
    from tests.gunicorn_process import running_gunicorn

    # An interval longer than the test: only the exit can write these lines.
    environment = {"JWT_SECRET": f"logwriter-{uuid.uuid4().hex}{uuid.uuid4().hex}", "LOG_FLUSH_SECONDS": "600"}
    with running_gunicorn(tmp_path, environment) as server:
        request_ids = [f"held-{index}" for index in range(50)]
        assert {_get(server.port, request_id) for request_id in request_ids} == {200}
        time.sleep(0.3)
        assert not set(request_ids) & set(_access_ids(server.log_path.read_text()))  # still held
        server.process.terminate()
        assert server.process.wait(timeout=30) == 0
    ids = _access_ids(server.log_path.read_text())
    assert all(ids.count(request_id) == 1 for request_id in request_ids)
