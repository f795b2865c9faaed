"""The Introspect actor: what an operator's shell asks a process about itself.

Every process of a node (its root and each worker) runs one :class:`Introspect`,
registered locally as :data:`NAME`, so a shell attached to the cluster
(:mod:`otp.attach`) reaches it in any process with
``otp.ask_named(node, worker, "introspect", query)``. It is this runtime's part of
Erlang's ``observer``: ``erlang:processes/0``, ``process_info/2``, ``sys:get_state/1``,
``supervisor:which_children/1`` walked into a tree, ``ets:info/1`` and ``ets:lookup/2``.

Queries (asks; tuples, the first element names the query)
    ``("process",)``
        ``{"node", "worker", "os_pid", "actors", "run_queue", "mailbox_total",
        "rss_bytes", "uptime_s"}``.
    ``("actors", kind_filter, limit)``
        Live actors of this process, sorted by pid: ``{"pid", "kind", "parent",
        "mailbox", "handled", "memory", "names", "state"}`` each. ``kind_filter``
        (None: all) matches the class name case-insensitively as a substring, or a
        registered name exactly. ``limit`` (None: :data:`DEFAULT_LIMIT`) is capped at
        :data:`MAX_LIMIT`; ask with a filter to see past it. ``memory`` is an estimate in
        bytes: the actor, its ``__dict__``, and a shallow walk of its attributes' values
        (two levels, at most :data:`MEMORY_OBJECTS` objects), so it never takes long and
        undercounts big structures.
    ``("state", pid)``
        ``{"pid", "kind", "fields", "info"}``: every attribute as a bounded ``repr``
        (``sys:get_state``), and the actor's own :meth:`~otp.actor.LoopActor.info`. An
        unknown or dead pid raises :class:`otp.NoProcError`.
    ``("tree",)``
        The supervision trees of this process: each supervisor whose parent is not a
        supervisor here is a root. A node is ``{"pid", "kind", "id", "type",
        "restart", "children"}``; ``id`` is the child id (a root's: its registered
        name), ``pid`` None or ``"restarting"`` for a child not running, as in
        ``which_children``. A ``simple_one_for_one`` supervisor lists its first
        :data:`MAX_DYNAMIC` children and ``"more": n`` for the rest.
    ``("tables",)``
        ``Table.status()`` of every CETS table of this process (none without a cluster).
    ``("lookup", table, key)``
        The records with ``key`` in this process's replica of ``table`` (at most
        :data:`MAX_RECORDS`). Our codec keeps tuples tuples, but a key typed by hand (a
        JSON list from a command line) arrives as a list, which no table can hold: lists
        are turned into tuples, recursively. An unknown table raises ``KeyError``.

    Anything else goes to ``LoopActor.on_receive`` (logged as unexpected). A failed
    query fails the ask only; from another process the error arrives as
    :class:`otp.codec.RemoteError` naming the original type.

Contracts
    Answers are plain data our codec carries (None, bool, numbers, str, bytes, lists,
    dicts, tuples, :class:`otp.Pid`, :class:`otp.Ref`); any other value in them (an
    exit reason, a child id) is sent as its ``str``, cut at :data:`MAX_TEXT`
    characters.

    Handlers run on the loop like every actor's, so they never wait for anyone and
    bound their work: a query walks the process table at most once. The tree is read
    from the supervisors' own child records rather than asked of each supervisor, which
    is safe because every actor of the process runs on this same thread, and a
    supervisor busy restarting cannot hold the answer up.
"""

from __future__ import annotations

import os
import reprlib
import sys
import time
from collections import deque
from typing import Any

from otp import process as _process
from otp.actor import STATE_NAMES, LoopActor, NoProcError
from otp.pid import Pid, Ref

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "NAME", "Introspect"]

NAME = "introspect"
"""The name each process's Introspect actor registers under."""

DEFAULT_LIMIT = 1000
"""Actors listed when the query gives no limit."""

MAX_LIMIT = 10_000
"""Actors listed at most, whatever the query asks."""

MAX_DYNAMIC = 50
"""Children of a simple_one_for_one supervisor shown in the tree."""

MAX_RECORDS = 1000
"""Records returned by one lookup."""

MEMORY_OBJECTS = 64
"""Objects sized at most per actor for its memory estimate."""

MAX_FIELDS = 200
"""Attributes shown by a state query."""

MAX_TEXT = 200
"""Characters of a field's repr, or of a value sent as text."""

MAX_LINKS = 100
"""Links listed in a state query's info (the count is always given)."""


_repr = reprlib.Repr()
_repr.maxstring = MAX_TEXT
_repr.maxother = MAX_TEXT
_repr.maxlong = 60
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = 10
_repr.maxdeque = _repr.maxdict = 10
_repr.maxlevel = 3

_CONTAINERS = (dict, list, tuple, set, frozenset, deque)
_SCALARS = (type(None), bool, int, float, str, bytes, Pid, Ref)


class Introspect(LoopActor):
    """Answers a shell's questions about this process; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.started_at = time.time()
        self._os_process: Any = None

    def on_start(self) -> None:
        _process.register(NAME, self.pid)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and message and isinstance(message[0], str):
            query = _QUERIES.get(message[0])
            if query is not None:
                return query(self, *message[1:])
        return super().on_receive(message)

    # -- queries ---------------------------------------------------------------------------

    def process(self) -> dict[str, Any]:
        scheduler = self._scheduler
        stats = scheduler.statistics()
        rss, started = self._os_stats()
        return {
            "node": scheduler.node,
            "worker": scheduler.worker,
            "os_pid": os.getpid(),
            "actors": stats["actors"],
            "run_queue": stats["run_queue"],
            "mailbox_total": scheduler.mailbox_stats()["total"],
            "rss_bytes": rss,
            "uptime_s": round(time.time() - started, 3),
        }

    def actors(self, kind_filter: str | None = None, limit: int | None = None) -> list[Any]:
        limit = DEFAULT_LIMIT if limit is None else max(0, min(int(limit), MAX_LIMIT))
        wanted = kind_filter.lower() if kind_filter else None
        found: list[LoopActor] = []
        # The table holds pids of one process, added in the order they were made: it is
        # sorted already (a pid's id grows), so the first `limit` matches are the answer.
        for actor in list(self._scheduler.processes.values()):
            if len(found) >= limit:
                break
            if wanted is not None and not (
                wanted in actor.__class__.__name__.lower()
                or (actor._names and kind_filter in actor._names)
            ):
                continue
            found.append(actor)
        found.sort(key=lambda a: a.pid)
        return [
            {
                "pid": actor.pid,
                "kind": actor.__class__.__name__,
                "parent": actor.parent,
                "mailbox": len(actor.actor_inbox),
                "handled": actor.handled,
                "memory": memory_estimate(actor),
                "names": list(actor._names) if actor._names else [],
                "state": STATE_NAMES[actor._state],
            }
            for actor in found
        ]

    def state(self, pid: Any) -> dict[str, Any]:
        if isinstance(pid, (list, tuple)) and not isinstance(pid, Pid) and len(pid) == 3:
            pid = Pid(*pid)  # typed by hand
        actor = self._scheduler.lookup(pid) if isinstance(pid, Pid) else None
        if actor is None or actor.actor_stopped.is_set():
            where = f"{self._scheduler.node}.{self._scheduler.worker}"
            raise NoProcError(f"no process {pid} in {where}")
        fields = {}
        for attr, value in list(vars(actor).items())[:MAX_FIELDS]:
            fields[attr] = _bounded_repr(value)
        info = actor.info()
        links = info.get("links")
        if isinstance(links, list) and len(links) > MAX_LINKS:
            info["links"] = links[:MAX_LINKS]
            info["links_more"] = len(links) - MAX_LINKS
        return {
            "pid": actor.pid,
            "kind": actor.__class__.__name__,
            "fields": fields,
            "info": plain(info),
        }

    def tree(self) -> list[dict[str, Any]]:
        from otp.supervisor import Supervisor

        scheduler = self._scheduler
        roots = []
        for actor in list(scheduler.processes.values()):
            if not isinstance(actor, Supervisor):
                continue
            parent = scheduler.lookup(actor.parent) if actor.parent is not None else None
            if isinstance(parent, Supervisor):
                continue
            name = actor._names[0] if actor._names else None
            roots.append(_supervisor_node(actor, name, None, set()))
        return roots

    def tables(self) -> list[dict[str, Any]]:
        cets = self._scheduler.cets
        if cets is None:
            return []
        return [plain(cets.tables[name].status()) for name in sorted(cets.tables)]

    def lookup(self, table: str, key: Any) -> list[Any]:
        cets = self._scheduler.cets
        found = cets.tables.get(table) if cets is not None else None
        if found is None:
            where = f"{self._scheduler.node}.{self._scheduler.worker}"
            raise KeyError(f"no table {table!r} in {where}")
        return [plain(record) for record in found.lookup(_as_key(key))[:MAX_RECORDS]]

    # -- helpers ---------------------------------------------------------------------------

    def _os_stats(self) -> tuple[int | None, float]:
        """(rss in bytes, process start time); psutil reads /proc, no waiting."""
        try:
            if self._os_process is None:
                import psutil

                self._os_process = psutil.Process()
            return self._os_process.memory_info().rss, self._os_process.create_time()
        except Exception:  # no psutil, or a platform it does not cover
            return _statm_rss(), self.started_at


_QUERIES = {
    "process": Introspect.process,
    "actors": Introspect.actors,
    "state": Introspect.state,
    "tree": Introspect.tree,
    "tables": Introspect.tables,
    "lookup": Introspect.lookup,
}


def _statm_rss() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# -- the supervision tree ---------------------------------------------------------------------


def _supervisor_node(
    sup: Any, child_id: Any, restart: str | None, seen: set[Pid]
) -> dict[str, Any]:
    """A supervisor and its children, read from its child records (same thread)."""
    seen.add(sup.pid)
    node: dict[str, Any] = {
        "pid": sup.pid,
        "kind": sup.__class__.__name__,
        "id": plain(child_id),
        "type": "supervisor",
        "restart": restart,
        "children": [],
    }
    if sup._template is not None:
        dynamic = list(sup._dynamic)
        shown = dynamic[:MAX_DYNAMIC]
        if len(dynamic) > MAX_DYNAMIC:
            node["more"] = len(dynamic) - MAX_DYNAMIC
        children = [(child, None) for child in shown]
    else:
        children = [(child, child.spec.id) for child in list(sup._children)]
    for child, spec_id in children:
        node["children"].append(_child_node(sup, child, spec_id, seen))
    return node


def _child_node(sup: Any, child: Any, spec_id: Any, seen: set[Pid]) -> dict[str, Any]:
    from otp.supervisor import Supervisor

    spec = child.spec
    pid = child.pid
    actor = sup._scheduler.lookup(pid) if isinstance(pid, Pid) else None
    if isinstance(actor, Supervisor) and actor.pid not in seen:
        return _supervisor_node(actor, spec_id, spec.restart, seen)
    return {
        "pid": "restarting" if child.restarting else pid,
        "kind": actor.__class__.__name__ if actor is not None else None,
        "id": plain(spec_id),
        "type": spec.type,
        "restart": spec.restart,
        "children": [],
    }


# -- plain data -------------------------------------------------------------------------------


def plain(value: Any, depth: int = 8) -> Any:
    """``value`` as data our codec carries: anything else becomes its (cut) ``str``."""
    if type(value) in _SCALARS:
        return value
    if depth > 0:
        if type(value) is list:
            return [plain(v, depth - 1) for v in value]
        if type(value) is tuple:
            return tuple(plain(v, depth - 1) for v in value)
        if type(value) is dict:
            return {plain(k, depth - 1): plain(v, depth - 1) for k, v in value.items()}
    return _text(value)


def _text(value: Any) -> str:
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _bounded_repr(value: Any) -> str:
    try:
        return _repr.repr(value)
    except Exception as error:
        return f"<{type(value).__name__}: repr failed: {error!r}>"[:MAX_TEXT]


def _as_key(key: Any) -> Any:
    """A key that crossed as a list (unhashable) as the tuple it stands for."""
    if isinstance(key, list):
        return tuple(_as_key(k) for k in key)
    return key


def memory_estimate(actor: LoopActor) -> int:
    """Bytes: the actor, its ``__dict__``, its attributes' values, and the items of
    container values; at most :data:`MEMORY_OBJECTS` objects, each counted once."""
    seen: set[int] = set()
    budget = MEMORY_OBJECTS
    total = sys.getsizeof(actor)
    attributes = getattr(actor, "__dict__", None)
    if attributes is None:
        return total
    total += sys.getsizeof(attributes)
    level: list[Any] = list(attributes.values())
    for depth in (1, 2):
        following: list[Any] = []
        for obj in level:
            if budget <= 0:
                return total
            if id(obj) in seen or isinstance(obj, type):
                continue
            seen.add(id(obj))
            budget -= 1
            try:
                total += sys.getsizeof(obj)
            except TypeError:
                continue
            if depth == 1 and type(obj) in _CONTAINERS:
                items = obj.items() if type(obj) is dict else obj
                for n, item in enumerate(items):
                    if n >= budget:
                        break
                    if type(obj) is dict:
                        following.extend(item)
                    else:
                        following.append(item)
        level = following
    return total
