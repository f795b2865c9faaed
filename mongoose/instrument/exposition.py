"""Merging processes' snapshots, and rendering them for Prometheus and Graphite.

A node runs several worker processes; each has its own
:class:`~mongoose.instrument.store.MetricStore`. The node's metrics actor collects their
snapshots and its own, then :func:`merge` makes one set of metric families:

- spirals, counters and histograms are **summed** over the processes: sessions, stanzas
  and latencies of the node, whichever worker handled them;
- gauges get a ``worker`` label (``"0"`` is the node's root process) and are kept per
  process: a memory size, a mailbox length or an uptime summed over processes means
  nothing useful, and ``max``/``sum`` in a query are one word away.

A worker that restarts starts its sums from zero, so a merged sum may go down once;
Prometheus treats that as a counter reset, as it does for a restarted server.

:func:`prometheus_text` renders families through prometheus-client's metric families and
text exposition format, with MongooseIM's names: ``<event>_<metric>``, spirals as
counters (``_total``), counters and gauges as gauges, histograms with ``le`` buckets.
:class:`GraphiteReporter` renders the plaintext protocol lines MongooseIM's Exometer
reporter pushed: ``<prefix>.<event>.<label values>.<metric> <value> <timestamp>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mongoose.instrument.store import HISTOGRAM_BUCKETS, Snapshot

__all__ = ["Family", "GraphiteReporter", "flat_samples", "merge", "prometheus_text"]

log = logging.getLogger("mongoose.instrument")

WORKER_LABEL = "worker"


@dataclass
class Family:
    """One metric of one event, merged over processes: ``samples`` maps label values
    (strings, in ``labels`` order) to a number, or for a histogram to
    ``[bucket counts..., +Inf count, sum]``."""

    name: str
    event: str
    metric: str
    kind: str
    labels: tuple[str, ...]
    samples: dict[tuple[str, ...], Any] = field(default_factory=dict)


def merge(parts: Iterable[tuple[str, Snapshot]]) -> dict[str, Family]:
    """Merge ``(worker, snapshot)`` pairs into families by name (see the module
    docstring). A series whose labels disagree with the first process's registration of
    its event is skipped and logged: only processes running different code disagree."""
    families: dict[str, Family] = {}
    for worker, snapshot in parts:
        for event, data in snapshot.get("events", {}).items():
            keys = tuple(data["labels"])
            for metric, kind in data["metrics"].items():
                name = f"{event}_{metric}"
                per_worker = kind == "gauge"
                family = families.get(name)
                if family is None:
                    family = families[name] = Family(
                        name, event, metric, kind,
                        (*keys, WORKER_LABEL) if per_worker else keys)
                elif family.kind != kind or family.labels[:len(keys)] != keys:
                    log.warning("metric registered differently in two processes", extra={
                        "what": "instrument_merge_conflict", "metric": name,
                        "worker": worker})
                    continue
                for values, measured in data["series"]:
                    value = measured.get(metric)
                    if value is None:
                        continue
                    key = tuple(map(str, values))
                    if per_worker:
                        family.samples[(*key, str(worker))] = value
                    elif kind == "histogram":
                        old = family.samples.get(key)
                        family.samples[key] = (
                            list(value) if old is None
                            else [a + b for a, b in zip(old, value, strict=True)])
                    else:
                        family.samples[key] = family.samples.get(key, 0) + value
    return families


def flat_samples(families: dict[str, Family], prefix: str = "") -> list[dict[str, Any]]:
    """The families whose name starts with ``prefix`` as ``{"name", "labels", "value"}``
    rows sorted by name, a histogram as two rows, ``<name>_count`` and ``<name>_sum``."""
    rows: list[dict[str, Any]] = []
    for name in sorted(families):
        if not name.startswith(prefix):
            continue
        family = families[name]
        for values, value in sorted(family.samples.items()):
            labels = dict(zip(family.labels, values, strict=True))
            if family.kind == "histogram":
                rows.append({"name": f"{name}_count", "labels": labels,
                             "value": sum(value[:-1])})
                rows.append({"name": f"{name}_sum", "labels": labels, "value": value[-1]})
            else:
                rows.append({"name": name, "labels": labels, "value": value})
    return rows


# -- Prometheus -----------------------------------------------------------------------------


class _Collected:
    """What prometheus-client's ``generate_latest`` expects of a registry: ``collect()``."""

    def __init__(self, families: Iterable[Any]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


def _bounds() -> tuple[str, ...]:
    from prometheus_client.utils import floatToGoString

    return (*(floatToGoString(b) for b in HISTOGRAM_BUCKETS), "+Inf")


def prometheus_families(families: dict[str, Family]) -> list[Any]:
    """prometheus-client metric families for ``families``, sorted by name."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    out: list[Any] = []
    bounds = _bounds()
    for name in sorted(families):
        family = families[name]
        doc = f"Event: {family.event}, Metric: {family.metric}"
        labels = list(family.labels)
        metric: Any
        if family.kind == "spiral":
            metric = CounterMetricFamily(name, doc, labels=labels)
            for values, value in family.samples.items():
                metric.add_metric(list(values), value)
        elif family.kind == "histogram":
            metric = HistogramMetricFamily(name, doc, labels=labels)
            for values, cells in family.samples.items():
                running, buckets = 0, []
                for bound, count in zip(bounds, cells[:-1], strict=True):
                    running += count
                    buckets.append((bound, running))
                metric.add_metric(list(values), buckets, sum_value=cells[-1])
        else:  # counter (may go down) and gauge
            metric = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in family.samples.items():
                metric.add_metric(list(values), value)
        out.append(metric)
    return out


def prometheus_text(families: dict[str, Family]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``families``."""
    from prometheus_client import generate_latest

    return generate_latest(_Collected(prometheus_families(families)))  # type: ignore[arg-type]


# -- Graphite -------------------------------------------------------------------------------

_GRAPHITE_SPECIAL = str.maketrans(dict.fromkeys(". \t\n/", "_"))
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def _part(value: str) -> str:
    return (value or "_").translate(_GRAPHITE_SPECIAL)


class GraphiteReporter:
    """Turns merged families into Graphite plaintext lines, push after push.

    Sums and gauges go out as they are. A histogram goes out as ``<metric>.count`` (the
    running count) and, over the samples since the previous push, ``.mean`` and
    ``.p50``/``.p95``/``.p99`` (upper bounds of the buckets the quantiles fall in: the
    resolution of the buckets, powers of 4). An interval without samples sends only the
    count. The worker label of a gauge becomes a ``worker<N>`` path part.
    """

    def __init__(self, prefix: str = "mongooseim") -> None:
        self.prefix = prefix
        self._previous: dict[tuple[str, tuple[str, ...]], list[Any]] = {}

    def lines(self, families: dict[str, Family], timestamp: int) -> list[str]:
        out: list[str] = []
        for name in sorted(families):
            family = families[name]
            worker_at = (len(family.labels) - 1
                         if family.labels[-1:] == (WORKER_LABEL,) else None)
            for values, value in sorted(family.samples.items()):
                parts = [_part(v) for v in values]
                if worker_at is not None:
                    parts[worker_at] = f"worker{parts[worker_at]}"
                path = ".".join((self.prefix, family.event, *parts, family.metric))
                if family.kind != "histogram":
                    out.append(f"{path} {value} {timestamp}")
                    continue
                out.extend(self._histogram(path, (name, values), value, timestamp))
        return out

    def _histogram(self, path: str, key: tuple[str, tuple[str, ...]], cells: list[Any],
                   timestamp: int) -> list[str]:
        previous = self._previous.get(key)
        self._previous[key] = list(cells)
        count = sum(cells[:-1])
        lines = [f"{path}.count {count} {timestamp}"]
        if previous is None or sum(previous[:-1]) > count:  # first push, or a reset
            previous = [0] * len(cells)
        delta = [a - b for a, b in zip(cells, previous, strict=True)]
        samples = sum(delta[:-1])
        if samples <= 0:
            return lines
        lines.append(f"{path}.mean {delta[-1] / samples:g} {timestamp}")
        for label, q in QUANTILES:
            rank, running = q * samples, 0
            for i, n in enumerate(delta[:-1]):
                running += n
                if running >= rank:
                    bound = HISTOGRAM_BUCKETS[min(i, len(HISTOGRAM_BUCKETS) - 1)]
                    lines.append(f"{path}.{label} {bound:g} {timestamp}")
                    break
        return lines
