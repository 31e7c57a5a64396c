"""The ledger's log handler: one JSON line per record on a stream, INFO lines written in batches by a thread.

Why batches. In a gunicorn worker serving with threads, a system call that releases the GIL costs the request
far more than the call itself: the thread gives the GIL up, another takes it, and getting it back is a round of
waking and scheduling. Measured on the 2-core build machine (gunicorn, 1 worker x 8 threads, wrk with 16
connections on ``GET /health``): writing the access line to stderr cost ~90 us of the request thread's CPU
time where the ``write`` itself takes under 1 us (to ``/dev/null``: ~70 us). Every request logs one line, so
the request threads hand their INFO lines to a queue and one writer thread writes them, a batch per
``interval`` seconds: one system call per batch instead of one per request, and none on the request path.

What it keeps:

* Order: lines come out in the order they were logged (one queue, drained from its head under one lock).
* Urgency: a record at WARNING or above is written before ``emit`` returns, after everything queued before it,
  so an error is never held back (nor lost if the process then dies).
* Line integrity: a batch is written in pieces of at most ``PIPE_BUF`` bytes, each ending at a line's end. A
  pipe (``docker logs``, a log collector) takes a write that size whole, so another process writing to the
  same pipe (gunicorn's own logs) can never land inside one of our lines. A single line longer than that is
  written alone, as an unbatched handler writes it.
* Exit: ``flush()`` writes everything queued; ``logging.shutdown`` calls it at interpreter exit (so a worker
  stopped by SIGTERM writes its last lines), and so does ``setStream``.
* Fork: the child starts with an empty queue and starts its own writer on its first line; what was queued
  before the fork is the parent's to write.
* Bounds: at most :data:`MAX_PENDING_LINES` wait. When the stream stops taking lines (a blocked pipe), the
  logging thread writes its own line and so waits for the stream, as it would without batching.

What it gives up: lines still queued when the process is killed outright (SIGKILL, ``os._exit``) are lost:
normally at most ``interval`` seconds of INFO lines. The ledger's records are in its database; the log is
observability.

``interval`` 0 writes every line at once on the calling thread, as ``logging.StreamHandler`` does. The writer
thread parks after a few empty rounds and is woken by the next line, so an idle process does not wake up.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
import weakref
from typing import TextIO

# The largest write a Linux pipe takes whole (POSIX guarantees at least 512; Linux's PIPE_BUF is 4096).
PIPE_BUF = 4096
# Empty rounds of ``interval`` before the writer parks until the next line.
IDLE_ROUNDS_BEFORE_PARKING = 3
# How often a parked writer looks whether its handler still exists (one dropped without close() ends it).
PARKED_CHECK_SECONDS = 60.0
# Lines queued at most; past this the logging thread writes its line itself (the stream is not keeping up).
MAX_PENDING_LINES = 10_000

_HANDLERS: weakref.WeakSet[BatchingStreamHandler] = weakref.WeakSet()


class BatchingStreamHandler(logging.StreamHandler):
    """A ``StreamHandler`` whose INFO (and lower) lines are written by a writer thread every ``interval`` s."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.0) -> None:
        super().__init__(stream)
        self._interval = max(0.0, float(interval))
        self._reset_writer_state()
        _HANDLERS.add(self)

    def _reset_writer_state(self) -> None:
        self._pending: collections.deque[str] = collections.deque()
        self._write_lock = threading.Lock()  # held while lines are taken from the queue and written
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._parked = True  # the next queued line starts (or wakes) the writer
        self._writer: threading.Thread | None = None
        self._closed = False

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._interval = max(0.0, float(seconds))
        if self._interval == 0.0:
            self.flush()  # from now on lines are written at once: what is queued goes first

    # ------------------------------------------------------------------------------------------ logging API

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - as StreamHandler.emit: report through logging's own error hook
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.write_now(line)
        else:
            self.write_line(line)

    def flush(self) -> None:
        """Write every queued line, then flush the stream (whose errors propagate, as StreamHandler's do)."""
        with self._write_lock:
            self._write(self._take_pending())
            stream = self.stream
            if stream is not None and hasattr(stream, "flush"):
                stream.flush()

    def setStream(self, stream: TextIO) -> TextIO | None:  # noqa: N802 - logging's name
        """Queued lines are written to the old stream before the new one takes over."""
        with self.lock, self._write_lock:  # the order emit() takes them in (logging holds self.lock there)
            if stream is self.stream:
                return None
            self._write(self._take_pending())
            previous = self.stream
            if previous is not None and hasattr(previous, "flush"):
                previous.flush()
            self.stream = stream
            return previous

    def close(self) -> None:
        self._closed = True  # from now on lines are written at once (after what is queued): none is left behind
        try:
            with self._write_lock:
                self._write(self._take_pending())
        finally:
            self._wake.set()  # a parked writer ends
            super().close()

    # ------------------------------------------------------------------------------------------ lines

    def write_line(self, line: str) -> None:
        """Queue one finished line (its terminator included) for the writer, or write it now if ``interval`` is 0."""
        if self._interval <= 0.0 or self._closed or len(self._pending) >= MAX_PENDING_LINES:
            # At once; also when the queue is full, i.e. the stream does not keep up (a blocked pipe): the
            # logging thread then waits for the stream as an unbatched handler's would, and memory stays bounded.
            self.write_now(line)
            return
        self._pending.append(line)
        if self._parked:
            self._start_or_wake_writer()

    def write_now(self, line: str) -> None:
        """Write everything queued and then ``line``, before returning."""
        with self._write_lock:
            lines = self._take_pending()
            lines.append(line)
            self._write(lines)

    def _take_pending(self) -> list[str]:
        taken = []
        pending = self._pending
        try:
            while True:
                taken.append(pending.popleft())
        except IndexError:
            return taken

    def _write(self, lines: list[str]) -> None:
        """Write ``lines`` in pieces of at most PIPE_BUF characters, each ending at a line's end (caller holds the
        write lock). The lines are the JSON formatter's, ASCII only, so characters are bytes."""
        if not lines:
            return
        stream = self.stream
        piece: list[str] = []
        size = 0
        written = 0
        try:
            for line in lines:
                if piece and size + len(line) > PIPE_BUF:
                    stream.write("".join(piece))
                    stream.flush()
                    written += len(piece)
                    piece.clear()
                    size = 0
                piece.append(line)
                size += len(line)
            stream.write("".join(piece))
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream: say so through logging's hook, carry on
            self._report_failure(len(lines) - written)

    def _report_failure(self, count: int) -> None:
        record = logging.makeLogRecord({
            "name": "ledger.logwriter", "levelno": logging.ERROR, "levelname": "ERROR",
            "msg": "%d log line(s) could not be written", "args": (count,),
        })
        with contextlib.suppress(Exception):  # stderr itself is gone too: nothing left to tell
            self.handleError(record)

    # ------------------------------------------------------------------------------------------ the writer

    def _start_or_wake_writer(self) -> None:
        if self._writer is None:
            with self._start_lock:
                if self._writer is None:
                    writer = threading.Thread(target=_write_batches, args=(weakref.ref(self),),
                                              name="ledger-log-writer", daemon=True)
                    # Before start(): the writer may run, idle and park (setting it True) before start() returns.
                    self._parked = False
                    self._writer = writer
                    try:
                        writer.start()
                    except RuntimeError:  # no new threads (the interpreter is shutting down): write it now
                        self._writer = None
                        self._parked = True
                        self.flush()
            return
        self._wake.set()


def _write_batches(handler_ref: weakref.ReferenceType[BatchingStreamHandler]) -> None:
    """The writer thread. Should it ever end on an error, the next line starts another one."""
    try:
        _write_batches_until_closed(handler_ref)
    finally:
        handler = handler_ref()
        if handler is not None and handler._writer is threading.current_thread():
            handler._writer = None
            handler._parked = True


def _write_batches_until_closed(handler_ref: weakref.ReferenceType[BatchingStreamHandler]) -> None:
    """Every ``interval`` seconds, write what was queued; park when nothing comes."""
    idle_rounds = 0
    while True:
        handler = handler_ref()
        if handler is None or handler._closed:
            return
        interval = handler._interval or 0.05
        del handler
        time.sleep(interval)
        handler = handler_ref()
        if handler is None:
            return
        if handler._pending:
            idle_rounds = 0
            with handler._write_lock:
                handler._write(handler._take_pending())
            continue
        idle_rounds += 1
        if idle_rounds < IDLE_ROUNDS_BEFORE_PARKING or handler._closed:
            continue
        # Park. A line queued after the check below sees _parked and sets the event; one queued before it is
        # seen by the check. Either way no line waits for a writer that is asleep.
        wake = handler._wake
        wake.clear()
        handler._parked = True
        if handler._pending or handler._closed:
            handler._parked = False
            continue
        del handler
        while not wake.wait(PARKED_CHECK_SECONDS):
            handler = handler_ref()
            if handler is None:  # dropped without close(): nothing left to write for
                return
            if handler._pending:  # a safety net: the protocol above leaves no line waiting, but look anyway
                break
            del handler
        handler = handler_ref()
        if handler is None:
            return
        handler._parked = False
        idle_rounds = 0


def _after_fork_in_child() -> None:
    # The writer thread did not survive the fork, the locks may have been held by threads that did not either,
    # and the queued lines are the parent's to write: start afresh.
    for handler in list(_HANDLERS):
        closed = handler._closed
        handler._reset_writer_state()
        handler._closed = closed


os.register_at_fork(after_in_child=_after_fork_in_child)
