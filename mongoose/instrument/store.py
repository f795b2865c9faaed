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

from collections.abc import Callable, Mapping
from typing import Any

from mongoose.instrument.registry import HISTOGRAM_BUCKETS, EventSpec, add_sample

__all__ = ["HISTOGRAM_BUCKETS", "MetricStore", "Snapshot"]

# {"events": {event: {"labels": [keys], "metrics": {metric: type},
#                     "series": [[[label values], {metric: value}], ...]}}}
Snapshot = dict[str, Any]


def _updater(values: dict[str, Any], kinds: Mapping[str, str]
             ) -> Callable[[Mapping[str, Any]], None]:
    """The function that applies measurements to one series' ``values``."""
    gauges = frozenset(m for m, kind in kinds.items() if kind == "gauge")
    histograms = frozenset(m for m, kind in kinds.items() if kind == "histogram")

    def update(measurements: Mapping[str, Any]) -> None:
        for metric, value in measurements.items():
            if metric in gauges:
                values[metric] = value
            elif metric in histograms:
                add_sample(values[metric], value)
            else:
                values[metric] += value

    return update


class MetricStore:
    """Current values of every metric of every registered event, for a snapshot.

    Its update functions only add to numbers and lists: they cannot fail for the
    registered metrics, and raise ``KeyError`` for others. So a sink whose only handler
    is the store calls the update directly (``trusted_updates``), without the key check
    and the error guard of other handlers.
    """

    trusted_updates = True

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
        return _updater(values, spec.metrics)

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
