"""MetricStore: the handler that keeps every metric's value for Prometheus and Graphite.

One store per process. It aggregates in plain Python values, updated by the function it
prepares for each (event, label values), and hands out a :meth:`MetricStore.snapshot` of
plain data (lists, dicts, numbers: msgpack carries it between processes). The node merges
its own snapshot with its workers' (:mod:`mongoose.instrument.exposition`) and renders
the result for Prometheus (through prometheus-client's metric families and exposition
format) or Graphite.

Why not prometheus-client's own metric objects in each process: an update of one of those
takes a lock and costs 1-3 µs (a histogram observation the most), and a stanza crosses
five or so events; the update functions here cost 0.2-0.5 µs. prometheus-client still
writes every byte of the /metrics page.

Values by metric type (see :data:`mongoose.instrument.METRIC_TYPES`):

    spiral, counter  the running sum of the measurements
    gauge            the last measurement
    histogram        [count of each bucket (not cumulative; the last one is +Inf), sum]
                     with upper bounds :data:`HISTOGRAM_BUCKETS`

Updates run on the thread that emits, without a lock: the runtime emits on the loop's
thread, which is also where :meth:`snapshot` runs (the worker's instrument actor).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any

from mongoose.instrument.registry import EventSpec

__all__ = ["HISTOGRAM_BUCKETS", "MetricStore", "Snapshot"]

# Histogram bucket upper bounds: powers of 4 from 1 to 2**30, for times in microseconds
# (1 µs to about 18 minutes) and sizes in bytes alike. MongooseIM uses powers of 2 over
# the same range; every second bound is enough for a latency graph and keeps pages small.
HISTOGRAM_BUCKETS: tuple[float, ...] = tuple(float(4 ** i) for i in range(16))

# {"events": {event: {"labels": [keys], "metrics": {metric: type},
#                     "series": [[[label values], {metric: value}], ...]}}}
Snapshot = dict[str, Any]


class MetricStore:
    """Current values of every metric of every registered event, for a snapshot."""

    def __init__(self) -> None:
        self._specs: dict[str, EventSpec] = {}
        # event -> {label values: {metric: value}}
        self._series: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}

    def set_up(self, spec: EventSpec) -> None:
        self._specs[spec.name] = spec
        self._series.setdefault(spec.name, {})

    def prepare(self, spec: EventSpec, labels: Mapping[str, Any]
                ) -> Callable[[Mapping[str, Any]], None]:
        if spec.name not in self._specs:
            self.set_up(spec)
        values_key = tuple(labels[k] for k in spec.labels)
        series = self._series[spec.name]
        values = series.get(values_key)
        if values is None:
            values = series[values_key] = {
                metric: [0] * (len(HISTOGRAM_BUCKETS) + 2) if kind == "histogram" else 0
                for metric, kind in spec.metrics.items()
            }
        kinds = spec.metrics
        bounds = HISTOGRAM_BUCKETS
        sum_index = len(HISTOGRAM_BUCKETS) + 1

        def update(measurements: Mapping[str, Any]) -> None:
            for metric, value in measurements.items():
                kind = kinds[metric]
                if kind == "spiral" or kind == "counter":
                    values[metric] += value
                elif kind == "gauge":
                    values[metric] = value
                else:
                    cells = values[metric]
                    cells[bisect_left(bounds, value)] += 1
                    cells[sum_index] += value

        return update

    def handle(self, name: str, labels: Mapping[str, Any],
               measurements: Mapping[str, Any]) -> None:
        """Unprepared update (tests, rare events); the registry uses :meth:`prepare`."""
        self.prepare(self._specs[name], labels)(measurements)

    def snapshot(self) -> Snapshot:
        """Every series with its values now, as plain data."""
        events: dict[str, Any] = {}
        for name, spec in self._specs.items():
            series = self._series.get(name) or {}
            events[name] = {
                "labels": list(spec.labels),
                "metrics": dict(spec.metrics),
                "series": [[list(key), {m: (list(v) if isinstance(v, list) else v)
                                        for m, v in values.items()}]
                           for key, values in series.items()],
            }
        return {"events": events}
