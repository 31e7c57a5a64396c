"""Count the database commands a piece of code issues, on either engine.

On the embedded engine :mod:`ledger.embedded` reports every outermost command (``commitTransaction``
included) to its command listeners; on MongoDB pymongo's command monitoring does the same for every command
sent to the server. :class:`CommandCounter` listens to both and keeps the commands the *current thread*
issues while it is open, so a background thread (the outbox sender) never inflates a request's count.

pymongo attaches global listeners only to clients created after registration, so this module registers its
listener when it is imported: import it before the application creates its client (the command-count tests
and ``scripts/bench`` do). :meth:`CommandCounter.__enter__` refuses to count on a client that cannot report.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient, monitoring

from ledger import embedded


@dataclass(frozen=True)
class Command:
    """One database command: its name as the engine reports it, and the collection it addressed."""

    name: str
    collection: str


class _Dispatcher(monitoring.CommandListener):
    """One process-wide pymongo listener that forwards each started command to the counters of its thread."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        collection = target if isinstance(target, str) else event.database_name
        _record(event.command_name, collection)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


_DISPATCHER = _Dispatcher()
_active: dict[int, list[CommandCounter]] = {}
_active_guard = threading.Lock()


def _record(name: str, collection: str) -> None:
    counters = _active.get(threading.get_ident())
    if counters:
        command = Command(name, collection)
        for counter in counters:
            counter.commands.append(command)


monitoring.register(_DISPATCHER)
embedded.add_command_listener(_record)


def can_count(client: Any) -> bool:
    """True when ``client`` reports its commands to this module (always true for the embedded engine)."""
    if not isinstance(client, MongoClient):  # a mongomock-ng client: ledger.embedded reports for it
        return True
    return _DISPATCHER in client.options.event_listeners


@dataclass(eq=False)
class CommandCounter:
    """A context manager collecting the commands this thread issues while it is open.

    >>> with CommandCounter() as counter:
    ...     db.get_db().accounts.find_one({"_id": account_id})
    >>> counter.count
    1
    """

    client: Any = None
    commands: list[Command] = field(default_factory=list)

    def __enter__(self) -> CommandCounter:
        if self.client is not None and not can_count(self.client):
            raise RuntimeError("this MongoClient was created before ledger.command_count was imported, so "
                               "pymongo does not report its commands; import the module earlier")
        with _active_guard:
            _active.setdefault(threading.get_ident(), []).append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        ident = threading.get_ident()
        with _active_guard:
            counters = _active.get(ident, [])
            if self in counters:
                counters.remove(self)
            if not counters:
                _active.pop(ident, None)

    @property
    def count(self) -> int:
        return len(self.commands)

    def on(self, *collections: str) -> list[Command]:
        """The commands addressed to any of ``collections``."""
        return [command for command in self.commands if command.collection in collections]

    def not_on(self, *collections: str) -> list[Command]:
        """The commands addressed to none of ``collections``."""
        return [command for command in self.commands if command.collection not in collections]

    def reset(self) -> None:
        self.commands.clear()
