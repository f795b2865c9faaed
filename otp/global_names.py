"""Cluster-wide names, like Erlang's ``global``: register once, find from anywhere.

Every process of the cluster holds a full replica of the name table, so
:func:`whereis` is a local dict read. Writes go through one authority, the *leader*:
the root process (worker 0) of the node whose name sorts first in the view. Every
process computes the same leader from its view, without an election.

Register
    :func:`register` sends the name and pid to the leader, which accepts it if the name
    is free (or already the same pid's), records it, monitors the owner, and tells every
    process (itself included) to store it; the caller's future says True or False.
    :func:`unregister` goes the same way.

Release on death
    The leader monitors each owner. When an owner dies, the leader removes its names
    everywhere. When a whole process or node is lost, every process removes the names
    owned by pids there by itself (the same rule applied to the same view), so no name
    outlives its owner's node even while the leader is the one that went away.

Leader changes and newcomers
    When the view changes, the leader sends its whole table to processes that are new
    in the view, and a process that has just become leader monitors every owner in its
    replica. A name registered with the old leader whose ``set`` had not reached the new
    leader when the old one died is lost (its registration reply never came either);
    the caller's future fails with ``noconnection``.

Hidden nodes
    A hidden node (an operator's shell; see :mod:`otp.dist`) is never the leader and,
    as in Erlang, holds no replica: the leader sends names only to members. It can
    still register and unregister names through the leader, and a name owned by one of
    its pids is released when it goes away.

After a netsplit
    Each side keeps registering with its own leader. When the sides meet again, the
    leader of the merged cluster sends its table to the processes of the other side,
    and its entries win for names registered on both sides: the other owner keeps
    running but no longer holds the name. Erlang's ``global`` would kill one of the
    two; we leave that decision to the application.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

from otp import scheduler as scheduler_mod
from otp.actor import Down, LoopActor
from otp.future import LoopFuture
from otp.pid import Pid

if TYPE_CHECKING:
    from otp.dist import Dist, Key

__all__ = ["GlobalNames", "register", "registered", "send", "unregister", "whereis"]

logger = logging.getLogger("otp.global_names")


class _OwnerWatcher(LoopActor):
    """Holds the leader's monitors on name owners and reports their deaths."""

    pykka_registry = False

    def __init__(self, names: GlobalNames) -> None:
        super().__init__()
        self.names = names

    def on_receive(self, message: Any) -> None:
        if message.__class__ is Down:
            self.names._owner_died(message.pid)


class GlobalNames:
    """This process's replica of the cluster's name table, and the leader's logic."""

    def __init__(self, dist: Dist) -> None:
        self.dist = dist
        self.table: dict[str, Pid] = {}
        self._tags = itertools.count(1)
        self._pending: dict[int, LoopFuture[Any]] = {}
        self._watcher: Any = None
        self._watched: set[Pid] = set()
        self._known: set[Key] = set(dist.processes())
        self._was_leader = False
        dist.add_handlers(
            {
                "g:reg": self._on_register,
                "g:unreg": self._on_unregister,
                "g:set": self._on_set,
                "g:del": self._on_del,
                "g:all": self._on_all,
                "g:reply": self._on_reply,
            }
        )
        dist.scheduler.on_processes_lost.append(self._processes_lost)
        dist.on_view_changed.append(self._view_changed)
        dist.scheduler.global_names = self

    # -- leader ----------------------------------------------------------------------------

    def leader(self) -> Key:
        nodes = self.dist.nodes()  # members only (see otp.dist, Hidden nodes)
        if self.dist.hidden:  # never the leader itself, unless it has no one to ask
            nodes = [n for n in nodes if n != self.dist.node] or nodes
        return (min(nodes), 0)

    def is_leader(self) -> bool:
        return self.leader() == self.dist.key

    def _everyone(self) -> list[Key]:
        return self.dist.processes()

    def _broadcast(self, item: list[Any]) -> None:
        for key in self._everyone():
            if key == self.dist.key:
                self.dist.on_items([item])
            else:
                self.dist._put(key, item)

    def _watch(self, pid: Pid) -> None:
        if pid in self._watched:
            return
        if self._watcher is None:
            self._watcher = _OwnerWatcher.start(self)
        watcher = self.dist.scheduler.lookup(self._watcher.pid)
        if watcher is None:
            return
        self._watched.add(pid)
        watcher.monitor(pid)

    def _owner_died(self, pid: Pid) -> None:
        self._watched.discard(pid)
        if not self.is_leader():
            return
        for name in [n for n, p in self.table.items() if p == pid]:
            self._broadcast(["g:del", name, pid])

    # -- requests (on the loop) ------------------------------------------------------------

    def request(self, kind: str, name: str, pid: Pid | None) -> LoopFuture[Any]:
        future: LoopFuture[Any] = LoopFuture(self.dist.scheduler)
        tag = next(self._tags)
        self._pending[tag] = future
        item = [kind, name, pid, list(self.dist.key), tag]
        leader = self.leader()
        if leader == self.dist.key:
            self.dist.on_items([item])
        else:
            self.dist._put(leader, item)
        return future

    def _reply(self, to: list[Any], tag: int, value: Any) -> None:
        key = (to[0], to[1])
        item = ["g:reply", tag, value]
        if key == self.dist.key:
            self.dist.on_items([item])
        else:
            self.dist._put(key, item)

    def _on_register(self, item: list[Any]) -> None:
        _, name, pid, reply_to, tag = item
        if not self.is_leader():
            self._reply(reply_to, tag, ("retry", None))
            return
        owner = self.table.get(name)
        if owner is not None and owner != pid:
            self._reply(reply_to, tag, ("ok", False))
            return
        self._watch(pid)
        self._broadcast(["g:set", name, pid])
        self._reply(reply_to, tag, ("ok", True))

    def _on_unregister(self, item: list[Any]) -> None:
        _, name, _pid, reply_to, tag = item
        if not self.is_leader():
            self._reply(reply_to, tag, ("retry", None))
            return
        owner = self.table.get(name)
        if owner is not None:
            self._broadcast(["g:del", name, owner])
        self._reply(reply_to, tag, ("ok", None))

    def _on_reply(self, item: list[Any]) -> None:
        _, tag, (status, value) = item
        future = self._pending.pop(tag, None)
        if future is None:
            return
        if status == "ok":
            future.set(value)
        else:
            future.set_exception(
                (RuntimeError, RuntimeError("the name leader changed; try again"), None)
            )

    # -- replica ---------------------------------------------------------------------------

    def _on_set(self, item: list[Any]) -> None:
        self.table[item[1]] = item[2]

    def _on_del(self, item: list[Any]) -> None:
        _, name, pid = item
        if self.table.get(name) == pid:
            del self.table[name]

    def _on_all(self, item: list[Any]) -> None:
        # The leader's table wins: it is the authority (see "After a netsplit").
        self.table.update(item[1])

    def _processes_lost(self, lost: set[Key]) -> None:
        for name in [n for n, p in self.table.items() if (p[0], p[1]) in lost]:
            del self.table[name]
        for pid in [p for p in self._watched if (p[0], p[1]) in lost]:
            self._watched.discard(pid)

    def _view_changed(self) -> None:
        current = set(self.dist.processes())
        new = current - self._known
        self._known = current
        leader = self.is_leader()
        if leader and not self._was_leader:
            for pid in set(self.table.values()):
                self._watch(pid)
        self._was_leader = leader
        if leader and new and self.table:
            snapshot = dict(self.table)
            for key in new:
                if key != self.dist.key:
                    self.dist._put(key, ["g:all", snapshot])


def _names() -> tuple[scheduler_mod.Scheduler, GlobalNames]:
    scheduler = scheduler_mod.current()
    names = getattr(scheduler, "global_names", None)
    if names is None:
        raise RuntimeError("this process is not part of a cluster (no otp.dist)")
    return scheduler, names


def register(name: str, pid: Pid) -> LoopFuture[bool]:
    """Register ``name`` for ``pid`` cluster-wide; the future says whether it was free."""
    scheduler, names = _names()
    if scheduler.on_loop_thread():
        return names.request("g:reg", name, pid)
    return scheduler.run_sync(names.request, "g:reg", name, pid)


def unregister(name: str) -> LoopFuture[None]:
    """Remove ``name`` cluster-wide (no error if it is not registered)."""
    scheduler, names = _names()
    if scheduler.on_loop_thread():
        return names.request("g:unreg", name, None)
    return scheduler.run_sync(names.request, "g:unreg", name, None)


def whereis(name: str) -> Pid | None:
    """The pid registered as ``name`` in the cluster, from this process's replica."""
    return _names()[1].table.get(name)


def registered() -> list[str]:
    """Every cluster-wide name this process knows."""
    return sorted(_names()[1].table)


def send(name: str, message: Any) -> bool:
    """Send to the actor registered as ``name``; False if no such name."""
    from otp.process import send as send_to_pid

    pid = whereis(name)
    if pid is None:
        return False
    send_to_pid(pid, message)
    return True
