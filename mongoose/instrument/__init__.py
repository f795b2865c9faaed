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

**Handlers** consume events (:mod:`mongoose.instrument.handlers`): ``prometheus``,
``log`` and ``graphite``, each enabled by its ``[instrumentation.*]`` table, and
:class:`MemoryHandler` for tests. With none, ``execute`` checks its arguments and returns:
about as cheap as a function call gets in Python. A handler that raises is logged
(``what=instrument_handler_crashed``) and the caller goes on.

State is per process: each worker registers the same events from the same code and
feeds its own handlers. Merging the workers into one /metrics page is the node's job.
"""

from __future__ import annotations

from typing import Any

from mongoose.instrument.handlers import (
    GraphiteHandler,
    LogHandler,
    MemoryHandler,
    PrometheusHandler,
)
from mongoose.instrument.registry import (
    METRIC_TYPES,
    EventSpec,
    Handler,
    InstrumentError,
    Registry,
)

__all__ = [
    "METRIC_TYPES", "EventSpec", "GraphiteHandler", "Handler", "InstrumentError",
    "LogHandler", "MemoryHandler", "PrometheusHandler", "Registry", "execute", "handlers",
    "probe", "process_registry", "register", "reset", "run_probes", "set_handlers", "setup", "span",
    "spec", "start_probes", "stop_probes",
]

# This process's registry; the functions below are its bound methods, so a call costs no
# extra indirection.
process_registry = Registry()

register = process_registry.register
spec = process_registry.spec
execute = process_registry.execute
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


def setup(config: Any, *, serve: bool = True) -> list[Any]:
    """Build the handlers ``config.instrumentation`` enables, install them and return
    them. With ``serve`` the Prometheus handler listens on its port and the Graphite
    handler starts pushing; without, they only collect (tests, or a worker whose node
    serves the merged page)."""
    section = config.instrumentation
    process_registry.probe_interval = section.probe_interval
    built: list[Any] = []
    if section.prometheus is not None:
        prometheus = PrometheusHandler()
        if serve:
            prometheus.serve(section.prometheus.port, section.prometheus.ip_address)
        built.append(prometheus)
    if section.log is not None:
        built.append(LogHandler(section.log.level))
    if section.graphite is not None:
        g = section.graphite
        graphite = GraphiteHandler(g.host, g.port, g.interval, g.prefix)
        if serve:
            graphite.start()
        built.append(graphite)
    process_registry.set_handlers(built)
    return built
