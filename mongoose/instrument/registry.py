"""The event registry: specs, ``execute``, ``span``, probes and the handler list.

See the package docstring for the model. One :class:`Registry` per process
(:data:`mongoose.instrument` binds its functions to a default one); tests may build their
own.

Cost on the hot path
    With no handler, ``execute`` checks only that the event is registered (one dict
    lookup) and returns. With handlers it also checks the label keys and the measurement
    keys, finds the event's :class:`Sink` for these label values and calls the update
    function each handler prepared for it. Code that emits the same event with the same
    labels for every stanza holds the sink (:meth:`Registry.prepared`) and calls
    ``sink.emit(measurements)``: one key check and the handlers' updates. Tests run with a
    :class:`~mongoose.instrument.MemoryHandler`, so a call with wrong labels fails there.
    The handler list is a tuple replaced as a whole by :meth:`Registry.set_handlers`
    (which reconnects every sink), so the loop never sees it change under it.

Probes
    A probe is a callable returning the measurements of a gauge-only event, run every
    ``interval`` seconds (default: ``probe_interval``). Timers use the asyncio loop given
    to :meth:`Registry.start_probes` (or running when the probe is added), with
    ``loop.call_later``: the worker's scheduler loop once wired. :meth:`Registry.run_probes`
    runs every probe once, now, for tests and for an on-demand scrape.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

__all__ = ["METRIC_TYPES", "EventSpec", "Handler", "InstrumentError", "Registry", "Sink"]

log = logging.getLogger("mongoose.instrument")

# MongooseIM's metric types (mongoose_instrument):
#   counter    a sum of integers that may go negative (sessions: +1 at login, -1 at logout)
#   gauge      the last value
#   spiral     a sum of non-negative integers (a Prometheus counter)
#   histogram  samples (times in microseconds, sizes in bytes)
METRIC_TYPES = frozenset({"counter", "gauge", "spiral", "histogram"})

# Event, metric and label names become Prometheus names and Graphite path parts.
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

DEFAULT_PROBE_INTERVAL = 15


class InstrumentError(Exception):
    """An event used in a way its registration does not allow (a programming error)."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A registered event: its label keys (in registration order) and metric types."""

    name: str
    labels: tuple[str, ...]
    metrics: Mapping[str, str]
    # The level the log handler writes this event at (MongooseIM's per-event log level):
    # per-stanza events stay at "debug", so a log handler at "info" is not flooded.
    log_level: str = "debug"


class Handler(Protocol):
    """What consumes events: ``handle(name, labels, measurements)``, or instead
    ``prepare(spec, labels)`` returning the function that takes the measurements of that
    event with those labels (or None: not interested, for instance an event below a log
    handler's level). ``set_up(spec)`` and ``stop()`` are optional."""

    def handle(self, name: str, labels: Mapping[str, Any],
               measurements: Mapping[str, Any]) -> None: ...


class _Probe:
    __slots__ = ("fn", "interval", "labels", "name", "timer")

    def __init__(self, name: str, labels: dict[str, Any], fn: Callable[[], Mapping[str, Any]],
                 interval: float | None) -> None:
        self.name = name
        self.labels = labels
        self.fn = fn
        self.interval = interval
        self.timer: asyncio.TimerHandle | None = None


class Sink:
    """One event with fixed labels, ready to emit (see :meth:`Registry.prepared`).

    ``emit(measurements)`` checks the measurement keys (a programming error raises
    :class:`InstrumentError`), then calls each interested handler's update function; with
    no handler it returns after one truth test. A handler that raises is logged and the
    others still run.
    """

    __slots__ = ("calls", "labels", "metric_keys", "name")

    def __init__(self, name: str, labels: dict[str, Any], metric_keys: Any) -> None:
        self.name = name
        self.labels = labels
        self.metric_keys = metric_keys
        self.calls: tuple[tuple[Callable[[Mapping[str, Any]], None], Any], ...] = ()

    def emit(self, measurements: Mapping[str, Any]) -> None:
        if not self.calls:
            return
        if not measurements.keys() <= self.metric_keys:
            raise InstrumentError(
                f"{self.name}: measurements {sorted(measurements.keys() - self.metric_keys)} "
                f"are not registered metrics ({sorted(self.metric_keys)})")
        for call, handler in self.calls:
            try:
                call(measurements)
            except Exception:
                log.exception(
                    "instrument handler crashed",
                    extra={"what": "instrument_handler_crashed", "event": self.name,
                           "handler": type(handler).__name__},
                )


class Registry:
    """Events, handlers and probes of one process."""

    def __init__(self) -> None:
        self._specs: dict[str, EventSpec] = {}
        # name -> (label keys, metric names) as dict key views, compared with ``!=`` /
        # ``<=`` as sets without building one per call.
        self._checks: dict[str, tuple[Any, Any]] = {}
        self._handlers: tuple[Any, ...] = ()
        self._probes: list[_Probe] = []
        # (event, *label values) -> Sink; bounded by the label values code uses (host
        # types, connection types, actor kinds), never by users or stanzas.
        self._sinks: dict[tuple[Any, ...], Sink] = {}
        self._loop: Any = None
        self.probe_interval: float = DEFAULT_PROBE_INTERVAL

    # Registration

    def register(self, name: str, labels: Iterable[str], metrics: Mapping[str, str],
                 *, log_level: str = "debug") -> EventSpec:
        """Declare event ``name`` with label keys ``labels`` and ``metrics`` (metric name ->
        type), logged by the log handler at ``log_level``. Registering it again with the
        same labels and metrics is a no-op; with others an :class:`InstrumentError`."""
        labels = tuple(labels)
        metrics = dict(metrics)
        for what, names in (("event", [name]), ("label", labels), ("metric", metrics)):
            for n in names:
                if not isinstance(n, str) or not _NAME.fullmatch(n):
                    raise InstrumentError(f"{name!r}: invalid {what} name {n!r}")
        if len(set(labels)) != len(labels):
            raise InstrumentError(f"{name}: duplicate label keys {labels}")
        if not metrics:
            raise InstrumentError(f"{name}: no metrics")
        for metric, kind in metrics.items():
            if kind not in METRIC_TYPES:
                raise InstrumentError(
                    f"{name}.{metric}: unknown metric type {kind!r}, expected one of "
                    + ", ".join(sorted(METRIC_TYPES)))
        spec = EventSpec(name, labels, metrics, log_level)
        old = self._specs.get(name)
        if old is not None:
            if set(old.labels) != set(labels) or dict(old.metrics) != metrics:
                raise InstrumentError(
                    f"{name}: already registered with labels {old.labels} and metrics "
                    f"{dict(old.metrics)}, now {labels} and {metrics}")
            return old
        self._specs[name] = spec
        self._checks[name] = (dict.fromkeys(labels).keys(), metrics.keys())
        for handler in self._handlers:
            self._set_up(handler, spec)
        return spec

    def spec(self, name: str) -> EventSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise InstrumentError(f"event {name!r} is not registered") from None

    def specs(self) -> list[EventSpec]:
        return list(self._specs.values())

    # Handlers

    def set_handlers(self, handlers: Iterable[Any]) -> None:
        """Replace the handlers; new ones are set up for every registered event. Handlers
        no longer in the list are stopped."""
        handlers = tuple(handlers)
        for handler in handlers:
            if handler not in self._handlers:
                for spec in self._specs.values():
                    self._set_up(handler, spec)
        old, self._handlers = self._handlers, handlers
        for sink in self._sinks.values():
            self._connect(sink)
        for handler in old:
            if handler not in handlers:
                stop = getattr(handler, "stop", None)
                if stop is not None:
                    stop()

    @property
    def handlers(self) -> tuple[Any, ...]:
        return self._handlers

    def _set_up(self, handler: Any, spec: EventSpec) -> None:
        set_up = getattr(handler, "set_up", None)
        if set_up is None:
            return
        try:
            set_up(spec)
        except Exception:
            # The module registering the event goes on; the handler will fail (logged)
            # on each of the event's executions instead.
            log.exception(
                "instrument handler crashed",
                extra={"what": "instrument_handler_crashed", "event": spec.name,
                       "handler": type(handler).__name__, "stage": "set_up"},
            )

    # Emitting

    def execute(self, name: str, labels: Mapping[str, Any],
                measurements: Mapping[str, Any]) -> None:
        """Emit event ``name``: every handler gets it; one that raises is logged and skipped."""
        if not self._handlers:
            if name not in self._checks:
                raise InstrumentError(f"event {name!r} is not registered")
            return
        try:
            label_keys, _ = self._checks[name]
        except KeyError:
            raise InstrumentError(f"event {name!r} is not registered") from None
        if labels.keys() != label_keys:
            raise InstrumentError(
                f"{name}: labels {sorted(labels)}, registered {sorted(label_keys)}")
        key = (name, *map(labels.__getitem__, label_keys))
        sink = self._sinks.get(key)
        if sink is None:
            sink = self.prepared(name, labels)
        sink.emit(measurements)

    def prepared(self, name: str, labels: Mapping[str, Any]) -> Sink:
        """The :class:`Sink` of event ``name`` with these labels: ``sink.emit(m)`` is
        ``execute(name, labels, m)`` without the label checks and lookups, for code that
        emits the same event with the same labels often (a session's per-stanza events).
        Sinks are shared (one per event and label values) and follow handler changes."""
        label_keys, metric_keys = self._checks.get(name, (None, None))
        if label_keys is None:
            raise InstrumentError(f"event {name!r} is not registered")
        if labels.keys() != label_keys:
            raise InstrumentError(
                f"{name}: labels {sorted(labels)}, registered {sorted(label_keys)}")
        key = (name, *map(labels.__getitem__, label_keys))
        sink = self._sinks.get(key)
        if sink is None:
            sink = self._sinks[key] = Sink(name, {k: labels[k] for k in label_keys},
                                           metric_keys)
            self._connect(sink)
        return sink

    def _connect(self, sink: Sink) -> None:
        """Give ``sink`` one update function per handler that wants its events."""
        spec = self._specs[sink.name]
        calls = []
        for handler in self._handlers:
            prepare = getattr(handler, "prepare", None)
            try:
                if prepare is not None:
                    call = prepare(spec, sink.labels)
                else:
                    call = partial(handler.handle, sink.name, sink.labels)
            except Exception:
                log.exception(
                    "instrument handler crashed",
                    extra={"what": "instrument_handler_crashed", "event": sink.name,
                           "handler": type(handler).__name__, "stage": "prepare"},
                )
                continue
            if call is not None:
                calls.append((call, handler))
        sink.calls = tuple(calls)

    def span(self, name: str, labels: Mapping[str, Any], fn: Callable[..., Any], *args: Any,
             measure: Callable[[int, Any], Mapping[str, Any]] | None = None) -> Any:
        """Call ``fn(*args)``, then emit ``name`` with ``{"time": µs}`` (or what
        ``measure(time_us, result)`` returns) and return the result. Nothing is emitted
        when ``fn`` raises."""
        start = time.perf_counter_ns()
        result = fn(*args)
        elapsed = (time.perf_counter_ns() - start) // 1000
        self.execute(name, labels, {"time": elapsed} if measure is None
                     else measure(elapsed, result))
        return result

    # Probes

    def probe(self, name: str, labels: Mapping[str, Any], fn: Callable[[], Mapping[str, Any]],
              interval: float | None = None) -> None:
        """Run ``fn()`` every ``interval`` seconds (None: ``probe_interval``) and emit its
        measurements as event ``name``, which must be registered with gauges only."""
        spec = self.spec(name)
        if set(labels) != set(spec.labels):
            raise InstrumentError(f"{name}: labels {sorted(labels)}, registered "
                                  f"{sorted(spec.labels)}")
        others = sorted(m for m, kind in spec.metrics.items() if kind != "gauge")
        if others:
            raise InstrumentError(f"{name}: a probe event has gauges only, not {others}")
        probe = _Probe(name, dict(labels), fn, interval)
        self._probes.append(probe)
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._loop = loop
        self._schedule(probe)

    def probe_callback(self, fn: Callable[[], None], interval: float | None = None) -> None:
        """Run ``fn()`` every ``interval`` seconds (None: ``probe_interval``); it emits its
        own events, for a probe whose label sets vary (one gauge per actor kind)."""
        probe = _Probe("", {}, fn, interval)
        self._probes.append(probe)
        if self._loop is not None:
            self._schedule(probe)

    def remove_probes(self) -> None:
        """Stop and forget every probe (their owner stops)."""
        self.stop_probes()
        self._probes.clear()

    def run_probes(self) -> None:
        """Run every probe once, now."""
        for probe in list(self._probes):
            self._run_probe(probe)

    def start_probes(self, loop: Any = None) -> None:
        """Run the probes on ``loop`` (default: the running loop) from now on. Call on the
        loop's thread. ``loop`` needs only ``call_later``, so tests pass a fake one."""
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        for probe in self._probes:
            if probe.timer is None:
                self._schedule(probe)

    def stop_probes(self) -> None:
        """Cancel the probe timers; the probes stay, to start again."""
        for probe in self._probes:
            if probe.timer is not None:
                probe.timer.cancel()
                probe.timer = None
        self._loop = None

    def _schedule(self, probe: _Probe) -> None:
        interval = probe.interval if probe.interval is not None else self.probe_interval
        probe.timer = self._loop.call_later(interval, self._tick, probe)

    def _tick(self, probe: _Probe) -> None:
        probe.timer = None
        if self._loop is None or probe not in self._probes:
            return
        try:
            self._run_probe(probe)
        finally:
            self._schedule(probe)

    def _run_probe(self, probe: _Probe) -> None:
        try:
            if not probe.name:
                probe.fn()
                return
            self.execute(probe.name, probe.labels, probe.fn())
        except Exception:
            log.exception("instrument probe crashed",
                          extra={"what": "instrument_probe_crashed", "event": probe.name})

    # Lifecycle

    def reset(self) -> None:
        """Forget every event, probe and handler (handlers are stopped): for tests."""
        self.remove_probes()
        self.set_handlers(())
        self._specs.clear()
        self._checks.clear()
        self._sinks.clear()
        self.probe_interval = DEFAULT_PROBE_INTERVAL
