"""The session manager: who is online where, in a replicated table (after ``ejabberd_sm``).

Every bound session is one record in the CETS bag table ``session``, replicated to every
worker of every node (:mod:`otp.cets`)::

    (bare_jid, resource, pid, priority)

``bare_jid`` (``"alice@localhost"``) is the key, so the sessions of a user are one local
dict lookup wherever the router runs. ``pid`` is the session actor's pid, valid across
the cluster. ``priority`` is None until the session sends available presence (RFC 6121
§4.7.2.3: a session without presence gets no messages addressed to the bare JID), then
the presence priority.

Each record is owned by the worker that wrote it, i.e. the worker of the session (every
write goes through the session's own actor). When a worker dies or a node is lost, the
table layer removes its records everywhere: no stale session can outlive its process.

Sessions of a lost process
    When a worker dies (or a node is lost) its sessions never run their end: the table
    layer drops their records in every replica and calls :func:`_sessions_lost` in each
    process. One process per lost owner -- the lowest-numbered live worker of the lost
    process's own node, or of the whole cluster if none is left there -- runs the hook
    ``sm_sessions_lost`` (per host, with the records) so that modules can do what the
    sessions could not, once: mod_presence tells their contacts and the user's other
    resources they are unavailable. Every process reads the same view of the cluster, so
    they agree on who that is (two may both act during a view change: a duplicate
    unavailable presence is harmless, a missing one is not).

Writes are unacked: a session's own later writes follow its earlier ones in order on every
replica, and a reader elsewhere may see a new session a moment late, which routing
tolerates (a message routed meanwhile goes offline or bounces, as it would have a moment
earlier). Replacement of a session with the same full JID is decided by the new session
(:func:`open_session`) from the local replica, and the old session is told to go.
"""

from __future__ import annotations

import logging
from typing import Any

from mongoose.hooks import hooks
from otp import cets
from otp.pid import Pid

__all__ = [
    "TABLE",
    "SessionRecord",
    "close_session",
    "create_table",
    "open_session",
    "sessions",
    "set_priority",
    "table",
]

TABLE = "session"

SessionRecord = tuple[str, str, Pid, int | None]

log = logging.getLogger(__name__)

_table: cets.Table | None = None


def create_table() -> cets.Table:
    """Create this process's replica (the worker's tables actor does it at start)."""
    global _table
    try:
        _table = cets.get(TABLE)
    except KeyError:
        _table = cets.create(TABLE, type="bag", handle_down=_sessions_lost)
    return _table


def table() -> cets.Table:
    if _table is None:
        return create_table()
    return _table


def sessions(bare: str) -> list[SessionRecord]:
    """The sessions of ``bare`` (a bare JID string), from the local replica."""
    return table().lookup(bare)  # type: ignore[return-value]


def open_session(bare: str, resource: str, pid: Pid, *, max_sessions: int) -> tuple[
        SessionRecord | None, list[Pid]]:
    """Register a bound session. Returns ``(record, replaced)``: the new record (None if
    the user already has ``max_sessions`` other sessions) and the pids of sessions with
    the same full JID, which the caller must tell to go (conflict)."""
    existing = sessions(bare)
    replaced = [r[2] for r in existing if r[1] == resource and r[2] != pid]
    others = [r for r in existing if r[1] != resource]
    if len(others) >= max_sessions:
        return None, []
    record: SessionRecord = (bare, resource, pid, None)
    table().insert(record)
    return record, replaced


def set_priority(record: SessionRecord, priority: int | None) -> SessionRecord:
    """Replace the session's record with one carrying ``priority``; returns it."""
    if record[3] == priority:
        return record
    new: SessionRecord = (record[0], record[1], record[2], priority)
    t = table()
    t.delete_object(record)
    t.insert(new)
    return new


def close_session(record: SessionRecord) -> None:
    table().delete_object(record)


def _sessions_lost(table: cets.Table, removed: list[Any]) -> None:
    """The records of lost processes left this replica (see "Sessions of a lost
    process"): if this process is the one to act for their owner, run the hook."""
    dist = table.cets.dist
    me = dist.key
    live = [key for key in dist.processes() if key[1] >= 1 and key not in table.non_members]
    by_owner: dict[tuple[str, int], list[SessionRecord]] = {}
    for record in removed:
        pid = record[2]
        by_owner.setdefault((pid[0], pid[1]), []).append(record)
    for (node, worker), records in by_owner.items():
        candidates = [key for key in live if key[0] == node] or live
        if not candidates or min(candidates) != me:
            continue
        log.info("sessions of a lost process", extra={
            "what": "sm_sessions_lost", "lost_process": f"{node}.{worker}",
            "sessions": len(records)})
        by_host: dict[str, list[SessionRecord]] = {}
        for record in records:
            by_host.setdefault(record[0].rpartition("@")[2], []).append(record)
        for host, host_records in by_host.items():
            if hooks.has("sm_sessions_lost", host):
                hooks.run("sm_sessions_lost", None, host, records=host_records)
