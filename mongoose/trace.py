"""Stanza tracing for the shell's ``trace(jid, seconds)``: who watches which JID here.

A *collector* is an actor anywhere in the cluster (the shell's, in its own process) that
wants a copy of every stanza a JID sends and receives. The shell asks every worker's
admin actor (:mod:`mongoose.admin`) to :func:`watch` the JID for it; each worker keeps
the watch in this module's table and hands the list of collectors to each of its
sessions of that JID, present and future. A session with collectors sends each of them
``("trace", event)`` per stanza, where ``event`` is plain data::

    {"t": unix time, "dir": "sent" | "received", "jid": the session's full JID,
     "node": node, "worker": worker, "xml": the stanza as the wire carries it}

Cost when nothing is traced: one ``is not None`` test per stanza in the session (its
``tracers`` attribute), nothing else. A watch ends when its time is up or its collector
dies (the admin actor monitors it), whichever comes first.

``jid`` is a bare JID (every session of the account) or a full JID (that session only).
"""

from __future__ import annotations

import time
from typing import Any

import otp
from mongoose import sm
from mongoose.xmpp.jid import JID

__all__ = ["collectors_for", "emit", "unwatch", "watch", "watched"]

# bare JID -> {collector pid: full JID to match, or None for every resource}
_watches: dict[str, dict[otp.Pid, str | None]] = {}


def watch(jid: JID, collector: otp.Pid) -> int:
    """Start copying ``jid``'s stanzas to ``collector``; returns how many sessions of
    this worker are traced now."""
    full = str(jid) if jid.resource else None
    _watches.setdefault(jid.bare_str, {})[collector] = full
    return _refresh(jid.bare_str)


def unwatch(collector: otp.Pid) -> None:
    """Stop every watch of ``collector`` in this worker."""
    for bare in [b for b, watchers in _watches.items() if collector in watchers]:
        del _watches[bare][collector]
        if not _watches[bare]:
            del _watches[bare]
        _refresh(bare)


def watched() -> dict[str, list[otp.Pid]]:
    """The watches of this worker: bare JID -> collectors (for status and tests)."""
    return {bare: sorted(watchers) for bare, watchers in _watches.items()}


def collectors_for(full_jid: str, bare_jid: str) -> list[otp.Pid] | None:
    """The collectors of the session ``full_jid``, or None when nobody watches it (what a
    session keeps in its ``tracers`` attribute)."""
    watchers = _watches.get(bare_jid)
    if not watchers:
        return None
    pids = [pid for pid, full in watchers.items() if full is None or full == full_jid]
    return pids or None


def _refresh(bare: str) -> int:
    """Tell this worker's sessions of ``bare`` their collectors; returns how many."""
    scheduler = otp.current()
    told = 0
    for record in sm.sessions(bare):
        pid = record[2]
        if scheduler.is_local(pid):
            full = f"{bare}/{record[1]}"
            otp.send(pid, ("tracers", collectors_for(full, bare)))
            told += 1
    return told


def emit(tracers: list[otp.Pid], direction: str, jid: str, data: bytes) -> None:
    """Send one stanza's event to each collector."""
    scheduler = otp.current()
    event: dict[str, Any] = {
        "t": time.time(), "dir": direction, "jid": jid, "node": scheduler.node,
        "worker": scheduler.worker, "xml": data.decode("utf-8", "replace"),
    }
    for pid in tracers:
        otp.send(pid, ("trace", event))
