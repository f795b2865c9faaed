"""Instrumentation handlers: memory (tests), log, prometheus, graphite.

A handler has ``handle(name, labels, measurements)``, called on the emitting thread for
every event; optionally ``set_up(spec)``, called once per registered event (before any
``handle`` of it), and ``stop()``, called when the handler is removed. Handlers keep the
per-event work small: they run on the per-message path.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from mongoose.instrument.registry import EventSpec
from mongoose.logs import LEVELS

__all__ = ["HISTOGRAM_BUCKETS", "GraphiteHandler", "LogHandler", "MemoryHandler",
           "PrometheusHandler"]

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

    def set_up(self, spec: Any) -> None:
        self._levels[spec.name] = LEVELS[spec.log_level]

    def handle(self, name: str, labels: Mapping[str, Any],
               measurements: Mapping[str, Any]) -> None:
        level = self._levels.get(name, LEVELS["debug"])
        if level < self.level or not log.isEnabledFor(level):
            return
        extra: dict[str, Any] = {"what": name}
        for key, value in (*labels.items(), *measurements.items()):
            extra[key + "_" if key in _RESERVED or key == "what" else key] = value
        log.log(level, "instrumentation event", extra=extra)


# Histogram buckets: powers of 4 from 1 to 2**30, for times in microseconds (1 µs to
# about 18 minutes) and sizes in bytes alike. MongooseIM uses powers of 2 over the same
# range; every second bound is enough resolution for a latency graph and halves the cost
# of an observation.
HISTOGRAM_BUCKETS = tuple(float(4 ** i) for i in range(16))


class PrometheusHandler:
    """prometheus-client metrics in a per-process registry, named as MongooseIM names them:
    ``<event>_<metric>``, label names the event's label keys (sorted), help
    ``Event: <event>, Metric: <metric>``.

    spiral -> Counter (exposed with prometheus-client's ``_total`` suffix; Prometheus
    computes rates); counter -> Gauge incremented by the value, since it may go down;
    gauge -> Gauge set to the value; histogram -> Histogram (:data:`HISTOGRAM_BUCKETS`).
    """

    def __init__(self) -> None:
        import prometheus_client

        self._prom = prometheus_client
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        # event -> (sorted label keys, {metric: (update function name, metric object)})
        self._events: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, Any]]]] = {}
        # (event, label values) -> {metric: bound update method}
        self._children: dict[tuple[str, tuple[Any, ...]], dict[str, Callable[[Any], None]]] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None  # where serve() listens

    def set_up(self, spec: EventSpec) -> None:
        if spec.name in self._events:
            return
        keys = tuple(sorted(spec.labels))
        metrics: dict[str, tuple[str, Any]] = {}
        for metric, kind in spec.metrics.items():
            full = f"{spec.name}_{metric}"
            doc = f"Event: {spec.name}, Metric: {metric}"
            common: dict[str, Any] = {"labelnames": keys, "registry": self.registry}
            if kind == "spiral":
                metrics[metric] = ("inc", self._prom.Counter(full, doc, **common))
            elif kind == "counter":
                metrics[metric] = ("inc", self._prom.Gauge(full, doc, **common))
            elif kind == "gauge":
                metrics[metric] = ("set", self._prom.Gauge(full, doc, **common))
            else:
                metrics[metric] = ("observe", self._prom.Histogram(
                    full, doc, buckets=HISTOGRAM_BUCKETS, **common))
        self._events[spec.name] = (keys, metrics)

    def handle(self, name: str, labels: Mapping[str, Any],
               measurements: Mapping[str, Any]) -> None:
        keys, metrics = self._events[name]
        values = tuple(labels[k] for k in keys)
        children = self._children.get((name, values))
        if children is None:
            children = {}
            for metric, (update, obj) in metrics.items():
                child = obj.labels(*map(str, values)) if keys else obj
                children[metric] = getattr(child, update)
            self._children[(name, values)] = children
        for metric, value in measurements.items():
            children[metric](value)

    def text(self) -> str:
        """The exposition text a scrape of /metrics returns."""
        return self._prom.generate_latest(self.registry).decode()

    def serve(self, port: int = 9091, ip_address: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP on a thread; return the port (``port=0``: a free one)."""
        self._server, self._thread = self._prom.start_http_server(
            port, ip_address, registry=self.registry)
        self.port = int(self._server.server_address[1])
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class GraphiteHandler:
    """Keeps each metric's current value and pushes them every ``interval`` seconds to a
    Graphite (carbon) server in the plaintext protocol, one line per value::

        <prefix>.<event>[.<label values>].<metric> <value> <timestamp>

    Label values come in sorted label-key order, with characters Graphite treats
    specially replaced by ``_``. spiral and counter: the running sum; gauge: the last
    value; histogram: ``<metric>.count``, ``.mean`` and ``.max`` of the samples since the
    previous push (count 0 and no mean/max when there were none).

    ``handle`` runs on the emitting thread and pushes happen on a timer thread: a lock
    guards the values. A failed push is logged (``what=graphite_push_failed``); sums and
    gauges go out with the next push, the histogram samples of that interval are lost.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 2003, interval: float = 60,
                 prefix: str = "mongooseim", clock: Callable[[], float] = time.time) -> None:
        self.host, self.port, self.interval, self.prefix = host, port, interval, prefix
        self._clock = clock
        self._lock = threading.Lock()
        self._types: dict[str, tuple[tuple[str, ...], Mapping[str, str]]] = {}
        # (event, label values, metric) -> value, or [count, sum, max] for histograms
        self._values: dict[tuple[str, tuple[str, ...], str], Any] = {}
        # label values -> their path parts
        self._parts: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def set_up(self, spec: EventSpec) -> None:
        self._types[spec.name] = (tuple(sorted(spec.labels)), spec.metrics)

    def handle(self, name: str, labels: Mapping[str, Any],
               measurements: Mapping[str, Any]) -> None:
        keys, types = self._types[name]
        raw = tuple(labels[k] for k in keys)
        values = self._parts.get(raw)
        if values is None:
            values = self._parts[raw] = tuple(map(_graphite_part, raw))
        with self._lock:
            for metric, value in measurements.items():
                key = (name, values, metric)
                kind = types[metric]
                if kind == "gauge":
                    self._values[key] = value
                elif kind == "histogram":
                    sample = self._values.get(key)
                    if sample is None:
                        self._values[key] = [1, value, value]
                    else:
                        sample[0] += 1
                        sample[1] += value
                        if value > sample[2]:
                            sample[2] = value
                else:
                    self._values[key] = self._values.get(key, 0) + value

    def lines(self) -> list[str]:
        """The lines a push sends now; histogram samples start afresh after it."""
        timestamp = int(self._clock())
        out = []
        with self._lock:
            for (name, values, metric), value in sorted(self._values.items()):
                path = ".".join((self.prefix, name, *values, metric))
                if isinstance(value, list):
                    count, total, top = value
                    out.append(f"{path}.count {count} {timestamp}")
                    if count:
                        out.append(f"{path}.mean {total / count:g} {timestamp}")
                        out.append(f"{path}.max {top} {timestamp}")
                    value[:] = [0, 0, 0]
                else:
                    out.append(f"{path} {value} {timestamp}")
        return out

    def push_now(self) -> int:
        """Send the current values in one connection; return the number of lines.
        Raises ``OSError`` when the server cannot be reached."""
        lines = self.lines()
        if lines:
            with socket.create_connection((self.host, self.port), timeout=5) as sock:
                sock.sendall(("\n".join(lines) + "\n").encode())
        return len(lines)

    def start(self) -> None:
        """Push every ``interval`` seconds on a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="graphite-push",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.push_now()
            except OSError as e:
                log.warning("graphite push failed", extra={
                    "what": "graphite_push_failed", "host": self.host, "port": self.port,
                    "reason": str(e)})


def _graphite_part(value: Any) -> str:
    text = str(value) or "_"
    return text.translate(_GRAPHITE_SPECIAL)


_GRAPHITE_SPECIAL = str.maketrans(dict.fromkeys(". \t\n/", "_"))
