"""Instrumentation: events with labels and measurements, consumed by handlers.

The model is MongooseIM 6.3's (``mongoose_instrument``):

- Code emits an **event**: a name, a dict of **labels** (``{"host_type": "localhost"}``)
  and a dict of **measurements** (``{"count": 1, "time": 153}``)::

      instrument.execute("sm_session", {"host_type": host}, {"logins": 1, "count": 1})

- Every event is **registered** first, once per process, with its label keys and the type
  of each metric: ``counter`` (a sum that may go down), ``gauge`` (the last value),
  ``spiral`` (a sum of non-negative values) or ``histogram`` (samples)::

      instrument.register("sm_session", ("host_type",),
                          {"logins": "spiral", "logouts": "spiral", "count": "counter"})

  Registering it again with the same spec is a no-op (a module restarted); with another
  spec, or emitting an unregistered event, labels with other keys or a measurement that
  is not a registered metric, raises :class:`InstrumentError`: these are programming
  errors and fail in every test run, whatever handlers are configured.

- ``span(name, labels, fn, *args)`` calls ``fn`` and emits ``{"time": µs}``.
- ``probe(name, labels, fn)`` emits ``fn()`` every ``[instrumentation] probe_interval``
  seconds, for gauges sampled rather than updated (session counts, queue lengths).

- ``prepared(name, labels)`` returns a :class:`Sink` whose ``emit(measurements)`` is the
  same as ``execute`` without the per-call label work: what per-stanza code holds.
- ``batch(name, labels)`` returns a :class:`Batch` whose sums are added to in place
  (``batch.sums["byte_size"] += n``, ``batch.observe("time", µs)``) and emitted as one
  event every second: per-stanza and per-read events on the hot path.

**Handlers** consume events, each enabled by its ``[instrumentation.*]`` table:

- ``log`` (:class:`LogHandler`): one structured log event per instrumentation event at
  or above its level;
- ``prometheus`` and ``graphite`` share one :class:`MetricStore` per process, which keeps
  the current value of every metric. The node's metrics actor
  (:mod:`mongoose.instrument.service`) collects every process's store, merges them
  (:mod:`mongoose.instrument.exposition`), serves the result at /metrics and pushes it to
  Graphite.

:class:`MemoryHandler` records events for tests. With no handler, ``execute`` checks the
event name and returns: about as cheap as a function call gets in Python. A handler that
raises is logged (``what=instrument_handler_crashed``) and the caller goes on.

State is per process: each worker registers the same events from the same code and
feeds its own handlers.
"""

from __future__ import annotations

from typing import Any

from mongoose.instrument.handlers import LogHandler, MemoryHandler
from mongoose.instrument.registry import (
    METRIC_TYPES,
    Batch,
    EventSpec,
    Handler,
    InstrumentError,
    Registry,
    Samples,
    Sink,
)
from mongoose.instrument.store import MetricStore

__all__ = [
    "METRIC_TYPES",
    "Batch",
    "EventSpec",
    "Handler",
    "InstrumentError",
    "LogHandler",
    "MemoryHandler",
    "MetricStore",
    "Registry",
    "Samples",
    "Sink",
    "batch",
    "execute",
    "handlers",
    "prepared",
    "probe",
    "process_registry",
    "register",
    "reset",
    "run_probes",
    "set_handlers",
    "setup",
    "span",
    "spec",
    "start_probes",
    "stop_probes",
]

# This process's registry; the functions below are its bound methods, so a call costs no
# extra indirection.
process_registry = Registry()

register = process_registry.register
spec = process_registry.spec
execute = process_registry.execute
prepared = process_registry.prepared
batch = process_registry.batch
span = process_registry.span
probe = process_registry.probe
run_probes = process_registry.run_probes
start_probes = process_registry.start_probes
stop_probes = process_registry.stop_probes
set_handlers = process_registry.set_handlers
reset = process_registry.reset


def handlers() -> tuple[Any, ...]:
    """The handlers in use."""
    return process_registry.handlers


def setup(config: Any) -> MetricStore | None:
    """Install the handlers ``config.instrumentation`` enables in this process; return
    the process's metric store when the prometheus or graphite output is on (what the
    node's metrics actor collects), else None."""
    section = config.instrumentation
    process_registry.probe_interval = section.probe_interval
    built: list[Any] = []
    store = None
    if section.prometheus is not None or section.graphite is not None:
        store = MetricStore()
        built.append(store)
    if section.log is not None:
        built.append(LogHandler(section.log.level))
    process_registry.set_handlers(built)
    return store
