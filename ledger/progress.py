"""Progress bars for the commands that walk the data (verification, migration, draining the outbox, ...).

One helper for every command: :func:`bar` is a tqdm bar on stderr, drawn only when stderr is a terminal, so
output piped to a file or a log stays free of control characters and stdout is never touched. Set
``LEDGER_PROGRESS=0`` to turn the bars off on a terminal, ``LEDGER_PROGRESS=1`` to draw them anyway.

    with progress.bar("ledger entries", total=count, unit="entry") as entries:
        for entry in cursor:
            ...
            entries.update()
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from tqdm import tqdm

_ON = {"1", "true", "yes", "on"}
_OFF = {"0", "false", "no", "off"}


def enabled(stream: IO[str] | None = None) -> bool:
    """Whether bars are drawn on ``stream`` (default stderr): ``LEDGER_PROGRESS``, else whether it is a terminal."""
    setting = (os.environ.get("LEDGER_PROGRESS") or "").strip().lower()
    if setting in _ON:
        return True
    if setting in _OFF:
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _columns(stream: IO[str]) -> int | None:
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (AttributeError, OSError, ValueError):
        return None


class Bar:
    """A progress bar, or nothing at all when bars are off (every method is then a no-op)."""

    def __init__(self, description: str, total: int | None = None, unit: str = "doc",
                 stream: IO[str] | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._bar: tqdm | None = None
        if enabled(stream):
            width = _columns(stream)  # follow the terminal's width; 80 when it reports none (a fresh pty)
            self._bar = tqdm(total=total, desc=description, unit=unit, file=stream, dynamic_ncols=width is not None,
                             ncols=None if width is not None else 80, mininterval=0.2, leave=True)

    @property
    def drawn(self) -> bool:
        return self._bar is not None

    def update(self, count: int = 1) -> None:
        """``count`` more items done."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)

    def reach(self, done: int) -> None:
        """``done`` items done in all (for loops that count in batches)."""
        if done > self.done:
            self.update(done - self.done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def bar(description: str, total: int | None = None, *, unit: str = "doc",
        stream: IO[str] | None = None) -> Iterator[Bar]:
    """A bar for ``total`` items (``None``: unknown, a counter) on ``stream`` (default stderr), closed on exit."""
    progress = Bar(description, total, unit, stream)
    try:
        yield progress
    finally:
        progress.close()
