"""Instrumentation handlers: memory (tests) and log. The metrics of the prometheus and
graphite outputs are kept by :class:`mongoose.instrument.store.MetricStore`.

A handler has ``handle(name, labels, measurements)``, called on the emitting thread for
every event, or ``prepare(spec, labels)`` returning the function to call instead for that
event and those labels (None when it does not want them); optionally ``set_up(spec)``,
called once per registered event, and ``stop()``, called when the handler is removed.
Handlers keep the per-event work small: they run on the per-message path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from mongoose.instrument.registry import EventSpec
from mongoose.logs import LEVELS

__all__ = ["LogHandler", "MemoryHandler"]

log = logging.getLogger("mongoose.instrument")


class MemoryHandler:
    """Records every event, for tests (MongooseIM's ``mongoose_instrument_event_table``)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def handle(self, name: str, labels: Mapping[str, Any],
               measurements: Mapping[str, Any]) -> None:
        self.events.append((name, dict(labels), dict(measurements)))

    def clear(self) -> None:
        self.events.clear()

    def find(self, name: str, labels: Mapping[str, Any] | None = None,
             predicate: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """The measurements of the events named ``name`` whose labels include ``labels``
        and for which ``predicate(measurements)`` holds."""
        wanted = (labels or {}).items()
        return [m for n, lab, m in self.events
                if n == name and wanted <= lab.items() and (predicate is None or predicate(m))]

    def assert_event(self, name: str, labels: Mapping[str, Any] | None = None,
                     predicate: Callable[[dict[str, Any]], bool] | None = None
                     ) -> list[dict[str, Any]]:
        """Fail unless some event matches (see :meth:`find`); return the matching ones."""
        found = self.find(name, labels, predicate)
        if not found:
            seen = [(lab, m) for n, lab, m in self.events if n == name]
            raise AssertionError(
                f"no event {name} with labels {dict(labels or {})} matching the predicate; "
                f"events {name} seen: {seen[-10:]}")
        return found


# LogRecord attributes cannot be `extra` keys (logging raises KeyError): a label or
# measurement named like one is logged with a trailing underscore.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class LogHandler:
    """One structured log event per instrumentation event: ``what`` is the event name,
    labels and measurements are fields. Each event is written at its own level (its
    spec's ``log_level``, "debug" unless registered otherwise), and only when that is at
    least this handler's ``level``: ``[instrumentation.log] level = "info"`` logs logins
    and failures, not every stanza."""

    def __init__(self, level: str | int = "info") -> None:
        self.level = LEVELS[level] if isinstance(level, str) else level
        self._levels: dict[str, int] = {}

    def set_up(self, spec: EventSpec) -> None:
        self._levels[spec.name] = LEVELS[spec.log_level]

    def prepare(self, spec: EventSpec, labels: Mapping[str, Any]
                ) -> Callable[[Mapping[str, Any]], None] | None:
        """None for an event below this handler's level: it then costs nothing at all."""
        level = LEVELS[spec.log_level]
        if level < self.level:
            return None
        return partial(self._log, level, spec.name, labels)

    def handle(self, name: str, labels: Mapping[str, Any],
               measurements: Mapping[str, Any]) -> None:
        level = self._levels.get(name, LEVELS["debug"])
        if level >= self.level:
            self._log(level, name, labels, measurements)

    def _log(self, level: int, name: str, labels: Mapping[str, Any],
             measurements: Mapping[str, Any]) -> None:
        if not log.isEnabledFor(level):
            return
        extra: dict[str, Any] = {"what": name}
        for key, value in (*labels.items(), *measurements.items()):
            extra[key + "_" if key in _RESERVED or key == "what" else key] = value
        log.log(level, "instrumentation event", extra=extra)
