"""The runtime's instrumentation: actor lifecycles, mailboxes, the process, CETS.

Registered in every process whose instrument actor starts (workers and the node's root).

Lifecycle (spirals, label ``kind``: the actor's class, ``C2S``, ``RouterShard``, ...),
emitted by :class:`LifecycleObserver`, which the instrument actor installs as the
scheduler's observer (:attr:`otp.scheduler.Scheduler.observer`):

``actor_started``    ``count``: one per actor whose ``on_start`` returned
``actor_stopped``    ``count``: one per actor that ended in order (normal, shutdown)
``actor_crashed``    ``count``: one per actor that died of anything else (an exception,
                     killed, a linked crash)
``actor_restarted``  ``count``: one per child a supervisor restarted after it died

Probes (gauges; the node's page adds a ``worker`` label):

``actor_mailbox``    per ``kind``: ``actors`` alive, ``messages`` queued in their
                     mailboxes, ``max`` the longest mailbox
``system_memory``    ``total``: the process's resident memory in bytes
``system_info``      ``process_count`` (actors), ``mailbox_total``, ``run_queue``
``system_up_time``   ``seconds`` since the process's instrument actor started
``cets_info``        ``available_nodes``, ``unavailable_nodes``, ``joined_nodes``,
                     ``discovered_nodes``, ``tables``, ``conflicts`` (resolved so far,
                     all tables), ``conflict_tables`` (tables with any)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from mongoose import instrument
from otp.actor import is_crash

__all__ = ["LifecycleObserver", "MailboxProbe", "cets_info", "register", "system_info",
           "system_memory", "uptime"]

log = logging.getLogger("mongoose.instrument")

KIND = ("kind",)


def register() -> None:
    """Register the runtime's events in this process (idempotent)."""
    instrument.register("actor_started", KIND, {"count": "spiral"})
    instrument.register("actor_stopped", KIND, {"count": "spiral"})
    instrument.register("actor_crashed", KIND, {"count": "spiral"}, log_level="warning")
    instrument.register("actor_restarted", KIND, {"count": "spiral"}, log_level="warning")
    instrument.register("actor_mailbox", KIND,
                        {"actors": "gauge", "messages": "gauge", "max": "gauge"})
    instrument.register("system_memory", (), {"total": "gauge"})
    instrument.register("system_info", (), {"process_count": "gauge", "mailbox_total": "gauge",
                                            "run_queue": "gauge"})
    instrument.register("system_up_time", (), {"seconds": "gauge"})
    instrument.register("cets_info", (), {
        "available_nodes": "gauge", "unavailable_nodes": "gauge", "joined_nodes": "gauge",
        "discovered_nodes": "gauge", "tables": "gauge", "conflicts": "gauge",
        "conflict_tables": "gauge"})


_ONE = {"count": 1}


class LifecycleObserver:
    """The scheduler's observer: turns actor starts, ends and restarts into events.

    Sinks are kept per kind, so an actor start costs a dict lookup and the handlers'
    updates (a session's login pays it once)."""

    def __init__(self) -> None:
        self._sinks: dict[tuple[str, str], instrument.Sink] = {}

    def _emit(self, event: str, kind: str) -> None:
        sink = self._sinks.get((event, kind))
        if sink is None:
            sink = self._sinks[(event, kind)] = instrument.prepared(event, {"kind": kind})
        sink.emit(_ONE)

    def actor_started(self, actor: Any) -> None:
        self._emit("actor_started", actor.__class__.__name__)

    def actor_stopped(self, actor: Any, reason: Any) -> None:
        self._emit("actor_crashed" if is_crash(reason) else "actor_stopped",
                   actor.__class__.__name__)

    def child_restarted(self, supervisor: Any, child_id: Any, kind: str) -> None:
        self._emit("actor_restarted", kind)


class MailboxProbe:
    """``actor_mailbox`` per kind. A kind seen before and now gone reports zeros, so its
    gauges do not keep their last values forever."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._kinds: set[str] = set()

    def run(self) -> None:
        per_kind: dict[str, list[int]] = {}
        for actor in list(self.scheduler.processes.values()):
            kind = actor.__class__.__name__
            n = len(actor.actor_inbox)
            cell = per_kind.get(kind)
            if cell is None:
                per_kind[kind] = [1, n, n]
            else:
                cell[0] += 1
                cell[1] += n
                if n > cell[2]:
                    cell[2] = n
        for kind in self._kinds - per_kind.keys():
            per_kind[kind] = [0, 0, 0]
        self._kinds = set(per_kind)
        for kind, (actors, messages, top) in per_kind.items():
            instrument.execute("actor_mailbox", {"kind": kind},
                               {"actors": actors, "messages": messages, "max": top})


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def system_memory() -> Mapping[str, Any]:
    """Resident set size from /proc (Linux), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return {"total": int(f.read().split()[1]) * _PAGE}
    except OSError:
        import resource

        return {"total": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def system_info(scheduler: Any) -> Mapping[str, Any]:
    total = sum(len(a.actor_inbox) for a in list(scheduler.processes.values()))
    stats = scheduler.statistics()
    return {"process_count": stats["actors"], "mailbox_total": total,
            "run_queue": stats["run_queue"]}


def uptime(started: float) -> Mapping[str, Any]:
    return {"seconds": round(time.monotonic() - started, 3)}


def cets_info(scheduler: Any) -> Mapping[str, Any]:
    dist = getattr(scheduler, "dist", None)
    cets = getattr(scheduler, "cets", None)
    if dist is None:
        return {"available_nodes": 0, "unavailable_nodes": 0, "joined_nodes": 0,
                "discovered_nodes": 0, "tables": 0, "conflicts": 0, "conflict_tables": 0}
    nodes = dist.nodes()
    unavailable = set(dist.unavailable_nodes())
    tables = list(cets.tables.values()) if cets is not None else []
    return {
        "available_nodes": sum(1 for n in nodes if n not in unavailable),
        "unavailable_nodes": len(unavailable),
        "joined_nodes": len(nodes),
        "discovered_nodes": len(dist.discovered_nodes()),
        "tables": len(tables),
        "conflicts": sum(t.conflicts for t in tables),
        "conflict_tables": sum(1 for t in tables if t.conflicts),
    }
