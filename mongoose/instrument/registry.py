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
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

__all__ = ["BATCH_INTERVAL", "HISTOGRAM_BUCKETS", "METRIC_TYPES", "Batch", "EventSpec",
           "Handler", "InstrumentError", "Registry", "Samples", "Sink"]

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
# Seconds between two emissions of each Batch's sums.
BATCH_INTERVAL = 1.0


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
    no handler it returns at once, and ``calls`` is empty, so per-stanza code can skip
    building the measurements. A handler that raises is logged and the others still run.

    ``emit`` is not a method but a function stored on the sink, rebuilt whenever the
    handlers change: with the metric store alone it is the store's update itself.
    """

    __slots__ = ("calls", "emit", "labels", "metric_keys", "name")

    def __init__(self, name: str, labels: dict[str, Any], metric_keys: Any) -> None:
        self.name = name
        self.labels = labels
        self.metric_keys = metric_keys
        self.calls: tuple[tuple[Callable[[Mapping[str, Any]], None], Any], ...] = ()
        self.emit: Callable[[Mapping[str, Any]], None] = _ignore

    def connect(self, calls: list[tuple[Callable[[Mapping[str, Any]], None], Any]]) -> None:
        """Use these (update function, handler) pairs from now on."""
        self.calls = tuple(calls)
        keys = self.metric_keys
        check = self._check
        if not calls:
            self.emit = _ignore
        elif len(calls) == 1 and getattr(calls[0][1], "trusted_updates", False):
            # The store's updates cannot fail for registered metrics, and for others
            # they raise KeyError in the caller: the update is the emit.
            self.emit = calls[0][0]
        else:
            pairs = self.calls

            def emit_all(measurements: Mapping[str, Any]) -> None:
                if not measurements.keys() <= keys:
                    check(measurements)
                for call, handler in pairs:
                    try:
                        call(measurements)
                    except Exception:
                        self._crashed(handler)

            self.emit = emit_all

    def _check(self, measurements: Mapping[str, Any]) -> None:
        raise InstrumentError(
            f"{self.name}: measurements {sorted(measurements.keys() - self.metric_keys)} "
            f"are not registered metrics ({sorted(self.metric_keys)})")

    def _crashed(self, handler: Any) -> None:
        log.exception(
            "instrument handler crashed",
            extra={"what": "instrument_handler_crashed", "event": self.name,
                   "handler": type(handler).__name__},
        )


def _ignore(measurements: Mapping[str, Any]) -> None:
    """A sink's ``emit`` while no handler wants its events."""


# Histogram bucket upper bounds: powers of 4 from 1 to 2**30, for times in microseconds
# (1 µs to about 18 minutes) and sizes in bytes alike. MongooseIM uses powers of 2 over
# the same range; every second bound is enough for a latency graph and keeps pages small.
HISTOGRAM_BUCKETS: tuple[float, ...] = tuple(float(4 ** i) for i in range(16))


class Samples:
    """Histogram samples already sorted into :data:`HISTOGRAM_BUCKETS`: what a
    :class:`Batch` emits for a histogram metric instead of one value. ``buckets`` holds
    one count per bound and a last one for larger values (not cumulative)."""

    __slots__ = ("buckets", "sum")

    def __init__(self, buckets: list[int], total: float) -> None:
        self.buckets = buckets
        self.sum = total

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def __repr__(self) -> str:
        return f"Samples(count={self.count}, sum={self.sum})"


def add_sample(cells: list[Any], value: Any) -> None:
    """Add one histogram sample, or a :class:`Samples` of many, to ``cells``: a count per
    bucket of :data:`HISTOGRAM_BUCKETS`, one for larger values, and the sum last."""
    if value.__class__ is Samples:
        for i, n in enumerate(value.buckets):
            cells[i] += n
        cells[-1] += value.sum
    else:
        cells[bisect_left(HISTOGRAM_BUCKETS, value)] += 1
        cells[-1] += value


class Batch:
    """An event with fixed labels whose measurements are summed in place and emitted
    together every :data:`BATCH_INTERVAL` seconds (see :meth:`Registry.batch`).

    For per-stanza and per-read events on the hot path, where emitting each one would
    cost more than the work it measures: the caller adds to ``sums`` (``batch.sums[
    "byte_size"] += n``, a tenth of an ``emit``) and calls :meth:`observe` for a
    histogram sample; the registry's timer emits the sums that are not zero and, for each
    histogram with samples, a :class:`Samples`. Handlers see one event per interval
    with what happened in it, which is what a metric makes of the events anyway; a log
    handler at debug logs that sum. Loop thread only.
    """

    __slots__ = ("histograms", "sink", "sums")

    def __init__(self, sink: Sink, spec: EventSpec) -> None:
        self.sink = sink
        self.sums: dict[str, Any] = {m: 0 for m, kind in spec.metrics.items()
                                     if kind in ("spiral", "counter")}
        self.histograms: dict[str, list[Any]] = {
            m: [0] * (len(HISTOGRAM_BUCKETS) + 2) for m, kind in spec.metrics.items()
            if kind == "histogram"}

    def observe(self, metric: str, value: float) -> None:
        """Add one sample of histogram ``metric`` (add_sample's single-value case,
        inlined: this runs per stanza)."""
        cells = self.histograms[metric]
        cells[bisect_left(HISTOGRAM_BUCKETS, value)] += 1
        cells[-1] += value

    def flush(self) -> None:
        measurements: dict[str, Any] = {}
        sums = self.sums
        for metric, value in sums.items():
            if value:
                measurements[metric] = value
                sums[metric] = 0
        for metric, cells in self.histograms.items():
            if cells[-1] or any(cells[:-1]):
                measurements[metric] = Samples(cells[:-1], cells[-1])
                cells[:] = [0] * len(cells)
        if measurements:
            self.sink.emit(measurements)


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
        self._batches: dict[tuple[Any, ...], Batch] = {}
        # Emits the batches' sums; a probe so that it runs on the probes' loop and timers.
        self._batch_probe = _Probe("", {}, self.flush_batches, BATCH_INTERVAL)
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
        self.prepared(name, labels).emit(measurements)

    def prepared(self, name: str, labels: Mapping[str, Any]) -> Sink:
        """The :class:`Sink` of event ``name`` with these labels: ``sink.emit(m)`` is
        ``execute(name, labels, m)`` without the label checks and lookups, for code that
        emits the same event with the same labels often (a session's per-stanza events).
        Sinks are shared (one per event and label values) and follow handler changes."""
        key = self._key(name, labels)
        sink = self._sinks.get(key)
        if sink is None:
            label_keys, metric_keys = self._checks[name]
            sink = self._sinks[key] = Sink(name, {k: labels[k] for k in label_keys},
                                           metric_keys)
            self._connect(sink)
        return sink

    def _key(self, name: str, labels: Mapping[str, Any]) -> tuple[Any, ...]:
        """(event, *label values in registration order), after checking both."""
        label_keys = self._checks.get(name, (None,))[0]
        if label_keys is None:
            raise InstrumentError(f"event {name!r} is not registered")
        if labels.keys() != label_keys:
            raise InstrumentError(
                f"{name}: labels {sorted(labels)}, registered {sorted(label_keys)}")
        return (name, *map(labels.__getitem__, label_keys))

    def batch(self, name: str, labels: Mapping[str, Any]) -> Batch:
        """The :class:`Batch` of event ``name`` with these labels (its metrics: spirals,
        counters and histograms, no gauge). Batches are shared like sinks; the first one
        starts the registry's flush timer (with the probes)."""
        sink = self.prepared(name, labels)
        key = self._key(name, labels)
        found = self._batches.get(key)
        if found is not None:
            return found
        spec = self._specs[name]
        if "gauge" in spec.metrics.values():
            raise InstrumentError(f"{name}: a gauge cannot be batched")
        found = self._batches[key] = Batch(sink, spec)
        if self._batch_probe not in self._probes:
            self._probes.append(self._batch_probe)
            if self._loop is not None:
                self._schedule(self._batch_probe)
        return found

    def flush_batches(self) -> None:
        """Emit every batch's pending sums now (the timer does it every second)."""
        for batch in list(self._batches.values()):
            batch.flush()

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
        sink.connect(calls)

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
        if self._loop is not None:
            self._schedule(probe)
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for waiting in self._probes:  # the batches' timer too, if it was waiting
            if waiting.timer is None:
                self._schedule(waiting)

    def probe_callback(self, fn: Callable[[], None], interval: float | None = None) -> None:
        """Run ``fn()`` every ``interval`` seconds (None: ``probe_interval``); it emits its
        own events, for a probe whose label sets vary (one gauge per actor kind)."""
        probe = _Probe("", {}, fn, interval)
        self._probes.append(probe)
        if self._loop is not None:
            self._schedule(probe)

    def remove_probes(self) -> None:
        """Stop and forget every probe (their owner stops). The batches' sums are emitted
        first, and their timer comes back with the next start."""
        self.flush_batches()
        self.stop_probes()
        self._probes.clear()
        if self._batches:
            self._probes.append(self._batch_probe)

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
        self._batches.clear()
        self._probes.clear()
        self.probe_interval = DEFAULT_PROBE_INTERVAL
