"""Per-host counters for modules: spiral events labelled ``host_type``, prepared for every
configured host when the module starts, so that their series exist at zero from then on
and counting one costs a dict lookup and an emit.

    EVENTS = HostCounters("mod_private_get", "mod_private_set")
    EVENTS.start(config.general.hosts)      # in the module's start()
    EVENTS.count("mod_private_get", host)   # per request
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mongoose import instrument

__all__ = ["HostCounters"]

_ONE = {"count": 1}


class HostCounters:
    """Spiral ``count`` events of one module, by host."""

    def __init__(self, *names: str, log_level: str = "debug") -> None:
        self.names = names
        self.log_level = log_level
        self._sinks: dict[tuple[str, str], Any] = {}

    def start(self, hosts: Iterable[str]) -> None:
        """Register the events and prepare their series for ``hosts``."""
        self._sinks.clear()
        for name in self.names:
            instrument.register(name, ("host_type",), {"count": "spiral"},
                                log_level=self.log_level)
            for host in hosts:
                self._sinks[name, host] = instrument.prepared(name, {"host_type": host})

    def count(self, name: str, host: str) -> None:
        """One occurrence of ``name`` on ``host`` (a host not configured: not counted)."""
        sink = self._sinks.get((name, host))
        if sink is not None:
            sink.emit(_ONE)
