"""Distribution: pids of other processes and nodes behave like local ones.

Each OS process of a cluster -- a node's root process (worker 0) and its worker
processes -- has one :class:`Dist`, installed on its scheduler. When a runtime operation
(send, ask, exit, link, monitor) names a pid of another process, the actor layer hands
it here, and it travels through the process's :class:`otp.transport.Transport` as an
item of a batched frame. The receiving process's ``Dist`` applies it to the local actor
exactly as a local operation would, so Erlang's semantics hold across processes:

* Order is kept per sender-receiver pair: one transport path per process pair, and items
  are applied in arrival order.
* A send to a dead pid is dropped; an ask to one fails with ``ActorDeadError``.
* A link or monitor to a pid that is not alive answers ``noproc``, as locally.
* When a process is lost (its worker died, its node left, or missed heartbeats), every
  link to one of its pids delivers an exit signal ``noconnection``, every monitor fires
  ``Down(..., "noconnection")``, and asks waiting for it fail. A pid on a lost process
  never comes back: a restarted worker numbers its pids from a new random base
  (``creation``), so a stale pid cannot reach a newer actor.

Wire items (lists, packed by :mod:`otp.codec`; ``id`` is a pid's number in its process)::

    ["m", id | name, msg]                send
    ["a", id | name, msg, reply_to, tag] ask; reply_to is the asker's process key
    ["r", tag, ok, value]                reply to an ask (value is the error if not ok)
    ["x", id, sender, reason, linked]    exit signal
    ["l", id, sender] / ["u", id, sender] link / unlink
    ["M", id, watcher, mref]             monitor; ["D", id, mref] demonitor
    ["spawn", path, args, kwargs, reply_to, tag]   start an actor there (spawn_on)
    ["hb", node, creation, tcp, version] heartbeat, root to root
    ["hello", worker, entry]             a worker tells its root its addresses
    ["join", node, entry]                a node's root announces itself to a seed/root
    ["nodes", {node: entry}, sender]     a root's whole view: the answer to a join, and
                                         its gossip to every root after a change
    ["node", node, entry]                a root announces a change of its node
    ["leave", node]                      a node leaves the cluster
    ["view", {node: entry}, unavailable] a root tells its workers the whole cluster

    In sends and asks the target is either an int id or a str: a name registered in
    the receiving process (:func:`otp.send_named`, :func:`otp.ask_named`, Erlang's
    ``{Name, Node} ! Msg``), looked up there when the item arrives. A send to a name
    that is not registered is dropped; an ask fails with ``ActorDeadError`` naming it.

Cluster view
    A node is described by its root in an *entry*: ``{"creation": int, "version": int,
    "procs": {worker: {"ipc": address, "tcp": address}}}``, plus ``"hidden": True`` for a
    hidden node (see Hidden nodes). The root is the only author of its node's entry and
    bumps ``version`` on every change (a worker started or died); a copy with a higher
    version replaces a lower one, a higher ``creation`` (the root's start time, so a
    restarted node) replaces any older one. Roots exchange entries
    (``join``/``nodes``/``node``); a root whose view changed sends it to every other root
    (gossip that stops where nothing changes), and pushes it to its workers (``view``).
    Every process diffs each new view against the old one: processes that disappeared
    or changed incarnation are lost (``noconnection``). Peers on the same node are
    reached over ipc, others over tcp.

Failure detection
    A root sees its workers die at once (it supervises them as OS processes) and
    publishes a new version of its entry. Between nodes, each root sends a heartbeat to
    every other root each ``heartbeat_interval`` seconds and declares a node down after
    ``node_timeout`` seconds without one (default 1 s and 4 s: down within 5 s). A
    heartbeat from a node not in the view (it restarted, or a netsplit healed), or one
    that carries a newer version of the sender's entry than ours, makes the two roots
    exchange entries again: so the cluster re-forms by itself, and an update that
    reached only some roots reaches the others within a heartbeat. A root keeps sending
    heartbeats to a node it declared down for silence (not to one that left, nor to a
    hidden node) for an hour, so both sides of a healed netsplit find each other again.

    A worker that hangs with its process alive is not detected (the root watches worker
    processes exit, and heartbeats run between roots only). Handling a loss walks every
    actor of the process once, O(actors): losses are rare, and it keeps the per-message
    path free of any index upkeep.

Joining and leaving
    A root joins by sending ``join`` to seed addresses (other roots' tcp addresses); a
    seed answers with every node it knows and tells the other roots about the newcomer.
    A root that is still alone sends its join again every heartbeat, so nodes may start
    in any order.
    A root that stops sends ``leave`` to every other root, so they see its pids go down at
    once rather than after the heartbeat timeout.
    A running root can also leave (:meth:`Dist.leave`, ``mongoose cluster leave``): it
    tells the other members, drops them from its view, forgets its seeds, and from then
    on ignores what they send about the cluster (heartbeats, gossip, joins, a join still
    in flight) until it is told to :meth:`Dist.join` again. Hidden nodes attached to it
    (the shell that asked) stay.

Hidden nodes
    A root started with ``hidden=True`` (an operator's shell, a tool) joins like any
    root, with ``join`` to a seed, and its entry carries ``"hidden": True``. As in
    Erlang, a hidden node can talk to every process of the cluster but is not one of
    its members: :meth:`Dist.nodes` and :meth:`Dist.processes` leave out hidden nodes
    other than this process's own node (:meth:`Dist.hidden_nodes` lists them), and
    everything built on those -- CETS replication and leaders, global names, status and
    metrics -- therefore never counts one, never sends it a table dump and never makes
    it a leader. Unlike Erlang's, our hidden nodes are in the view all the same, so the
    protocol needs no second kind of connection: items route to and from them, asks
    are answered, and links, monitors and exit signals work across, with
    ``noconnection`` when one goes away. Gossip may make a hidden node known to every
    root, which lets a shell reach every node. A hidden node that goes silent is
    dropped at once and not called again (it is not listed as unavailable: a shell that
    went away is not a netsplit to heal); one that stops sends ``leave`` as any root.

Security
    Every tcp connection is CURVE-authenticated with the cluster's keys (see
    :mod:`otp.transport` and :mod:`otp.curve`); a process without them cannot deliver a
    single item, so every item that arrives comes from a member. That is why remote
    spawn (:func:`spawn_on`) and the other control items need no further check, as in
    Erlang's distribution.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError
from pykka._envelope import Envelope

from otp.future import LoopFuture
from otp.pid import Pid, Ref

if TYPE_CHECKING:
    from otp.actor import LoopActor
    from otp.scheduler import Scheduler
    from otp.transport import Transport

__all__ = ["Dist", "new_creation", "seed_key", "spawn_on"]

logger = logging.getLogger("otp.dist")

Key = tuple[str, int]

_ROOT = 0

UNAVAILABLE_RETRY_S = 3600.0
"""How long a root keeps calling a node that went silent (CETS expires its
discovery rows after the same hour)."""


def seed_key(address: str) -> Key:
    """The peer key of the connection to a root known only by its tcp ``address`` (a
    seed, or a node gone silent): its own key is not known yet."""
    return (f"seed:{address}", _ROOT)


def new_creation() -> int:
    """A random incarnation number for a process (24 bits: a restart almost surely
    gets another one, and pid numbers start at ``creation << 32``)."""
    return random.randrange(1, 1 << 24)


class Dist:
    """This process's part of the cluster; see the module docstring.

    Args:
        scheduler: the process's scheduler (loop thread owns everything here).
        transport: an unstarted transport whose ``on_items`` / ``on_peer_event`` are
            this object's :meth:`on_items` / :meth:`on_peer_event`.
        creation: this process's incarnation (see :func:`new_creation`).
        root_address: for a worker, the ipc address of its node's root.
        heartbeat_interval, node_timeout: failure detection between nodes (roots only).
        hidden: a root only; this node is a hidden node (see the module docstring).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        creation: int,
        root_address: str | None = None,
        heartbeat_interval: float = 1.0,
        node_timeout: float = 4.0,
        hidden: bool = False,
    ) -> None:
        if hidden and scheduler.worker != _ROOT:
            raise ValueError("only a root process (worker 0) can be a hidden node")
        self.scheduler = scheduler
        self.node = scheduler.node
        self.worker = scheduler.worker
        self.key: Key = (self.node, self.worker)
        self.is_root = self.worker == _ROOT
        self.hidden = hidden
        self.creation = creation
        self.transport: Transport | None = None
        self.root_address = root_address
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout
        self.view: dict[str, dict[str, Any]] = {}
        self._connected: dict[Key, str] = {}
        self._pending: dict[int, tuple[LoopFuture[Any], Key]] = {}
        self._tags = itertools.count(1)
        self._last_heard: dict[str, float] = {}
        self._seeds: list[str] = []
        self._timer: Any = None
        self._closed = False
        self.down_events = 0
        self._extra_handlers: dict[str, Any] = {}
        self._waiting: dict[Key, list[list[Any]]] = {}
        self._listed: LoopFuture[bool] | None = None
        self._blocked: set[str] = set()  # nodes we pretend not to reach (fault injection)
        self._unavailable: dict[str, tuple[str, float]] = {}  # silent node -> (tcp, since)
        self._gone: dict[str, int] = {}  # dropped node -> its creation then
        self._unavailable_seen: list[str] = []  # worker: the root's list, last pushed
        self._seeds_seen: list[str] = []  # worker: the root's seed addresses, last pushed
        self._left: set[str] = set()  # root: members we left, ignored until join()
        self.on_view_changed: list[Any] = []
        self.on_auth_failed: list[Any] = []  # hooks: fn(key), a peer refused our keys

    # -- lifecycle ------------------------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        """Use ``transport`` (started) and become the scheduler's remote path."""
        self.transport = transport
        self.scheduler.dist = self
        self.scheduler.remote_send = self.send
        own = self._own_addresses()
        entry = self.view.setdefault(
            self.node, {"creation": self.creation, "version": 0, "procs": {}}
        )
        if self.is_root:
            # The entry's creation orders a node's incarnations: a restarted node must
            # win over what others remember of its previous life, so it is a clock
            # reading (microseconds), not the random pid base.
            entry["creation"] = time.time_ns() // 1000
            entry["procs"][_ROOT] = own
            if self.hidden:
                entry["hidden"] = True
            entry["version"] += 1
            self._timer = self.scheduler.loop.call_later(self.heartbeat_interval, self._tick)
        else:
            assert self.root_address is not None, "a worker needs its root's address"
            self._connect((self.node, _ROOT), self.root_address)
            self._put((self.node, _ROOT), ["hello", self.worker, own | {"creation": self.creation}])

    def _own_addresses(self) -> dict[str, str]:
        assert self.transport is not None
        own: dict[str, str] = {}
        for address in self.transport.addresses:
            scheme = address.split("://", 1)[0]
            own.setdefault(scheme, address)
        return own

    def close(self) -> None:
        """Leave the cluster (roots tell the others) and fail what still waits."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.is_root:
            for node in self._other_nodes():
                self._put((node, _ROOT), ["leave", self.node])
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception((ActorDeadError, ActorDeadError("node stopping"), None))
        self._pending.clear()
        if self.scheduler.dist is self:
            self.scheduler.remote_send = None

    def join(self, seeds: Iterable[str]) -> None:
        """Root only: announce this node to the roots at the seed tcp addresses."""
        assert self.is_root, "only a root process joins a cluster"
        self._left.clear()
        added = False
        for address in seeds:
            if address not in self._seeds:
                self._seeds.append(address)
                added = True
            self._send_join(address)
        if added:
            self._publish()  # workers show the discovered addresses in table status

    def leave(self) -> list[str]:
        """Root only: leave the cluster and stay alone (see the module docstring);
        returns the member nodes left."""
        assert self.is_root, "only a root process leaves a cluster"
        members = [n for n in self._other_nodes() if not self.view[n].get("hidden")]
        for node in members:
            self._put((node, _ROOT), ["leave", self.node])
        self._left.update(members)
        self._left.update(self._unavailable)
        self._unavailable.clear()
        self._seeds.clear()
        self._drop_nodes(members)
        self._publish()
        logger.info("left the cluster", extra={"what": "dist_left", "nodes": members})
        return members

    def _send_join(self, address: str) -> None:
        seed = seed_key(address)
        self._connect(seed, address)
        self._put(seed, ["join", self.node, self.view[self.node]])

    # -- the view --------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        """The cluster's member nodes in this process's view, and this node (hidden
        or not); other hidden nodes are left out (see :meth:`hidden_nodes`)."""
        own = self.node
        return sorted(n for n, e in self.view.items() if n == own or not e.get("hidden"))

    def hidden_nodes(self) -> list[str]:
        """Hidden nodes in this process's view (shells attached), this one excepted."""
        own = self.node
        return sorted(n for n, e in self.view.items() if n != own and e.get("hidden"))

    def is_hidden(self, node: str) -> bool:
        """True if ``node`` is a hidden node of this process's view."""
        entry = self.view.get(node)
        return entry is not None and bool(entry.get("hidden"))

    def unavailable_nodes(self) -> list[str]:
        """Nodes that went silent and are still being called (see ``_tick``); a worker
        knows them from its root's last published view."""
        if self.is_root:
            return sorted(self._unavailable)
        return list(self._unavailable_seen)

    def discovered_nodes(self) -> list[str]:
        """Addresses (``tcp://host:port``) this node was told to join, from its seeds or
        its discovery backend; a worker knows them from its root's last published view."""
        return sorted(self._seeds if self.is_root else self._seeds_seen)

    def processes(self) -> list[Key]:
        """Every process of the nodes of :meth:`nodes`, as (node, worker): the cluster's
        members, and this process's own node even if hidden."""
        own = self.node
        return sorted(
            (n, w)
            for n, e in self.view.items()
            if n == own or not e.get("hidden")
            for w in e["procs"]
        )

    def _other_nodes(self) -> list[str]:
        return [n for n in self.view if n != self.node]

    def _address_of(self, key: Key) -> str | None:
        entry = self.view.get(key[0])
        if entry is None:
            return None
        proc = entry["procs"].get(key[1])
        if proc is None:
            return None
        if key[0] == self.node and "ipc" in proc:
            return proc["ipc"]
        return proc.get("tcp")

    def _merge_entry(self, node: str, entry: dict[str, Any], *, direct: bool) -> bool:
        """Take ``entry`` for ``node`` if it is newer; returns True if the view changed.

        ``direct``: the entry comes from that node's root itself. Second-hand news of a
        node we dropped (it left, or went silent) in the same incarnation is ignored, so
        a gossip from a root that has not noticed yet cannot bring a dead node back; the
        node itself can, by talking to us.
        """
        if node == self.node and self.is_root:
            return False  # we are the author of our own entry
        gone = self._gone.get(node)
        if gone is not None:
            if not direct and entry["creation"] <= gone:
                return False
            del self._gone[node]
        self._unavailable.pop(node, None)
        old = self.view.get(node)
        if old is not None:
            if entry["creation"] < old["creation"]:
                return False
            if entry["creation"] == old["creation"] and entry["version"] <= old["version"]:
                return False
        new_view = dict(self.view)
        new_view[node] = _normalise(entry)
        self._install_view(new_view)
        return True

    def _install_view(self, new_view: dict[str, dict[str, Any]]) -> None:
        lost = _lost_processes(self.view, new_view)
        self.view = new_view
        if lost:
            self._processes_lost(lost)
        if self._waiting:
            self._flush_waiting()
        for hook in list(self.on_view_changed):
            try:
                hook()
            except Exception:
                logger.exception("view hook failed", extra={"what": "dist_hook_error"})

    def _publish(self) -> None:
        """Root: push the view to our workers."""
        unavailable = sorted(self._unavailable)
        for worker in self.view[self.node]["procs"]:
            if worker != _ROOT:
                self._put((self.node, worker), ["view", self.view, unavailable, self._seeds])

    def _announce(self) -> None:
        """Root: tell other roots our entry."""
        entry = self.view[self.node]
        for node in self._other_nodes():
            self._put((node, _ROOT), ["node", self.node, entry])

    def worker_started(self, worker: int, proc: dict[str, Any]) -> None:
        """Root: a worker process said hello with its addresses."""
        self._set_own_proc(
            worker, {k: v for k, v in proc.items() if k in ("ipc", "tcp", "creation")}
        )
        logger.info(
            "worker up",
            extra={"what": "dist_worker_up", "node": self.node, "worker": worker},
        )

    def worker_lost(self, worker: int) -> None:
        """Root: a worker process died (its supervisor will start a new one)."""
        entry = self.view.get(self.node)
        if entry is not None and worker in entry["procs"]:
            self._set_own_proc(worker, None)

    def _set_own_proc(self, worker: int, proc: dict[str, Any] | None) -> None:
        """Root: publish a new version of our entry with ``worker`` set (or removed)."""
        entry = dict(self.view[self.node])
        procs = dict(entry["procs"])
        if proc is None:
            del procs[worker]
        else:
            procs[worker] = proc
        entry["procs"] = procs
        entry["version"] += 1
        self._install_view({**self.view, self.node: entry})
        self._publish()
        self._announce()

    def _drop_nodes(self, nodes: Iterable[str]) -> None:
        nodes = [n for n in nodes if n in self.view and n != self.node]
        if not nodes:
            return
        new_view = {n: e for n, e in self.view.items() if n not in nodes}
        for node in nodes:
            self._last_heard.pop(node, None)
            self._gone[node] = self.view[node]["creation"]
        self._install_view(new_view)
        if self.is_root:
            self._publish()

    # -- sending -----------------------------------------------------------------------------

    def _connect(self, key: Key, address: str) -> None:
        assert self.transport is not None
        if self._connected.get(key) != address:
            self.transport.connect(key, address)
            self._connected[key] = address

    def _put(self, key: Key, item: list[Any]) -> bool:
        """Queue ``item`` for process ``key``.

        A process missing from our view may only be missing *yet*: a pid can reach us
        (in a message from a process with a newer view) before the view update that
        names its process does. So items for an unknown process wait, up to
        ``node_timeout`` seconds, for a view that names it; then they fail as sends to
        a dead process do (:meth:`_expire_waiting`). Returns False only after
        :meth:`close`.
        """
        if self._blocked and key[0] in self._blocked:
            return True  # fault injection: a netsplit drops everything, silently
        if key not in self._connected:
            address = self._address_of(key)
            if address is None:
                if self._closed:
                    return False
                waiting = self._waiting.get(key)
                if waiting is None:
                    waiting = self._waiting[key] = []
                    self.scheduler.loop.call_later(
                        self.node_timeout, self._expire_waiting, key, waiting
                    )
                waiting.append(item)
                return True
            self._connect(key, address)
        assert self.transport is not None
        self.transport.send(key, item)
        return True

    def _flush_waiting(self) -> None:
        for key in [k for k in self._waiting if self._address_of(k) is not None]:
            for item in self._waiting.pop(key):
                self._put(key, item)

    def _expire_waiting(self, key: Key, waiting: list[list[Any]]) -> None:
        """The process ``key`` never showed up: fail what waited for it."""
        if self._waiting.get(key) is not waiting:
            return  # delivered meanwhile (or a newer batch is waiting)
        del self._waiting[key]
        for item in waiting:
            self._undeliverable(key, item)

    def _undeliverable(self, key: Key, item: list[Any]) -> None:
        """Answer an item that cannot reach ``key`` the way a dead target would."""
        from otp.actor import Down

        kind = item[0]
        if kind == "l":  # ["l", id, linker]: the local linker gets noproc
            linker = self.scheduler.lookup(item[2])
            target = Pid(key[0], key[1], item[1])
            if linker is not None and linker._links and target in linker._links:
                linker._links.discard(target)
                linker._exit_signal(target, "noproc", linked=True)
        elif kind == "M":  # ["M", id, watcher, mref]: the local watcher gets Down noproc
            watcher = self.scheduler.lookup(item[2])
            if watcher is not None:
                if watcher._monitors:
                    watcher._monitors.pop(item[3], None)
                watcher.actor_inbox.put(
                    Envelope(Down(item[3], Pid(key[0], key[1], item[1]), "noproc"))
                )
        elif kind in ("a", "spawn"):  # the asker's future fails
            pending = self._pending.pop(item[-1], None)
            if pending is not None:
                text = f"no process {key[0]}.{key[1]}"
                if kind == "a" and isinstance(item[1], str):
                    text += f" (asked for the name {item[1]!r})"
                pending[0].set_exception((ActorDeadError, ActorDeadError(text), None))
        # Anything else is a send or a signal to a process that never was: dropped.

    def send(self, pid: Pid, message: Any) -> None:
        """Send to a pid of another process (dropped if that process is unknown)."""
        self._put((pid[0], pid[1]), ["m", pid[2], message])

    def send_named(self, key: Key, name: str, message: Any) -> None:
        """Send to the actor registered as ``name`` in process ``key`` (dropped if there
        is none, or no such process)."""
        self._put(key, ["m", name, message])

    def ask(self, pid: Pid, message: Any) -> LoopFuture[Any]:
        """Ask a pid of another process; the future fails if it or its process dies."""
        return self._ask((pid[0], pid[1]), pid[2], message, str(pid))

    def ask_named(self, key: Key, name: str, message: Any) -> LoopFuture[Any]:
        """Ask the actor registered as ``name`` in process ``key``; the future fails
        with ``ActorDeadError`` naming ``name`` if there is none there."""
        return self._ask(key, name, message, f"{name!r} at {key[0]}.{key[1]}")

    def _ask(self, key: Key, target: int | str, message: Any, what: str) -> LoopFuture[Any]:
        future: LoopFuture[Any] = LoopFuture(self.scheduler)
        tag = next(self._tags)
        if not self._put(key, ["a", target, message, list(self.key), tag]):
            future.set_exception((ActorDeadError, ActorDeadError(f"{what} not found"), None))
            return future
        self._pending[tag] = (future, key)
        return future

    def spawn(
        self, key: Key, path: str, args: list[Any], kwargs: dict[str, Any]
    ) -> LoopFuture[Pid]:
        """Start ``module:Class`` in process ``key`` (see :func:`spawn_on`)."""
        future: LoopFuture[Pid] = LoopFuture(self.scheduler)
        tag = next(self._tags)
        if not self._put(key, ["spawn", path, args, kwargs, list(self.key), tag]):
            future.set_exception((ActorDeadError, ActorDeadError(f"no process {key}"), None))
            return future
        self._pending[tag] = (future, key)
        return future

    def exit(self, sender: Pid | None, pid: Pid, reason: Any, linked: bool) -> None:
        self._put((pid[0], pid[1]), ["x", pid[2], sender, reason, linked])

    def link(self, sender: Pid, pid: Pid) -> bool:
        """Ask ``pid``'s process to link it to ``sender``; False if that process is
        unknown (the caller treats it as noproc)."""
        return self._put((pid[0], pid[1]), ["l", pid[2], sender])

    def unlink(self, sender: Pid, pid: Pid) -> None:
        self._put((pid[0], pid[1]), ["u", pid[2], sender])

    def monitor(self, watcher: Pid, pid: Pid, mref: Ref) -> bool:
        return self._put((pid[0], pid[1]), ["M", pid[2], watcher, mref])

    def demonitor(self, pid: Pid, mref: Ref) -> None:
        self._put((pid[0], pid[1]), ["D", pid[2], mref])

    # -- receiving -------------------------------------------------------------------------

    def on_items(self, items: list[Any]) -> None:
        """The transport's callback: apply each item, in order."""
        handlers = _HANDLERS
        for item in items:
            handler = handlers.get(item[0])
            if handler is None:
                extra = self._extra_handlers.get(item[0])
                if extra is not None:
                    try:
                        extra(item)
                    except Exception:
                        logger.exception(
                            "bad item", extra={"what": "dist_bad_item", "kind": repr(item[0])}
                        )
                    continue
                logger.warning(
                    "unknown item", extra={"what": "dist_unknown_item", "kind": repr(item[0])}
                )
                continue
            try:
                handler(self, item)
            except Exception:
                logger.exception(
                    "bad item", extra={"what": "dist_bad_item", "kind": repr(item[0])}
                )

    def add_handlers(self, handlers: dict[str, Any]) -> None:
        """Let a service on top of dist (e.g. global names) handle its own item kinds;
        each handler is called on the loop with the item."""
        clash = set(handlers) & (set(_HANDLERS) | set(self._extra_handlers))
        if clash:
            raise ValueError(f"item kinds already handled: {sorted(clash)}")
        self._extra_handlers.update(handlers)

    # -- fault injection (tests) ----------------------------------------------------------

    def inject_fault(self, to: Key, action: str, node: str) -> None:
        """Ask process ``to`` to ``"block"`` or ``"heal"`` its traffic to ``node``.

        Honoured only by processes started with ``OTP_FAULT_INJECTION=1`` in their
        environment (tests do that); a root passes it on to its workers. Blocking both
        directions between two nodes makes a netsplit without touching the network.
        """
        self._put(to, ["fault", action, node])

    def _on_fault(self, item: list[Any]) -> None:
        _, action, node = item
        if os.environ.get("OTP_FAULT_INJECTION") != "1":
            logger.warning("fault injection refused", extra={"what": "dist_fault_refused"})
            return
        if action == "block":
            self._blocked.add(node)
            if self._connected.pop((node, _ROOT), None) is not None:
                assert self.transport is not None
                self.transport.disconnect((node, _ROOT))
        elif action == "heal":
            self._blocked.discard(node)
        logger.warning(
            "fault injected", extra={"what": "dist_fault", "action": action, "node": node}
        )
        if self.is_root:
            for worker in self.view[self.node]["procs"]:
                if worker != _ROOT:
                    self._put((self.node, worker), item)

    def on_peer_event(self, key: Key, event: str) -> None:
        if event == "auth_failed":
            logger.error(
                "peer refused our cluster keys",
                extra={"what": "dist_auth_failed", "peer": f"{key[0]}.{key[1]}"},
            )
            for hook in list(self.on_auth_failed):
                try:
                    hook(key)
                except Exception:
                    logger.exception("auth hook failed", extra={"what": "dist_hook_error"})

    def _on_send(self, item: list[Any]) -> None:
        actor = self.scheduler.processes.get(item[1])
        if actor is None:
            # The table is keyed by int ids, so a name misses it and is looked up here:
            # sends by pid pay nothing for names.
            actor = self._named(item[1])
        if actor is not None:
            actor.actor_inbox.put(Envelope(item[2]))

    def _on_ask(self, item: list[Any]) -> None:
        _, actor_id, message, reply_to, tag = item
        reply_key = (reply_to[0], reply_to[1])
        actor = self.scheduler.processes.get(actor_id)
        if actor is None:
            actor = self._named(actor_id)  # as in _on_send
        if actor is None:
            if isinstance(actor_id, str):
                error = ActorDeadError(
                    f"no process registered as {actor_id!r} at {self.node}.{self.worker}"
                )
            else:
                error = ActorDeadError(f"<{self.node}.{self.worker}.{actor_id}> not found")
            self._put(reply_key, ["r", tag, False, error])
            return
        future = actor.actor_ref.ask(message, block=False)

        def reply(done: LoopFuture[Any]) -> None:
            try:
                value = done.get(timeout=0)
            except Exception as error:
                self._put(reply_key, ["r", tag, False, error])
            else:
                self._put(reply_key, ["r", tag, True, value])

        future.add_done_callback(reply)

    def _named(self, target: Any) -> LoopActor | None:
        """The live actor registered here as ``target``, if it is a name (else None)."""
        if not isinstance(target, str):
            return None
        pid = self.scheduler.names.get(target)
        return self.scheduler.lookup(pid) if pid is not None else None

    def _on_spawn(self, item: list[Any]) -> None:
        _, path, args, kwargs, reply_to, tag = item
        reply_key = (reply_to[0], reply_to[1])
        try:
            pid = spawn_local(path, args, kwargs)
        except Exception as error:
            self._put(reply_key, ["r", tag, False, error])
        else:
            self._put(reply_key, ["r", tag, True, pid])

    def _on_reply(self, item: list[Any]) -> None:
        _, tag, ok, value = item
        pending = self._pending.pop(tag, None)
        if pending is None:
            return
        future = pending[0]
        if ok:
            future.set(value)
        else:
            error = value if isinstance(value, BaseException) else RuntimeError(repr(value))
            future.set_exception((type(error), error, None))

    def _on_exit(self, item: list[Any]) -> None:
        _, actor_id, sender, reason, linked = item
        actor = self.scheduler.processes.get(actor_id)
        if actor is None:
            return
        if linked:
            if not actor._links or sender not in actor._links:
                return  # unlinked meanwhile: the signal is void, as in Erlang
            actor._links.discard(sender)
        actor._exit_signal(sender, reason, linked=linked)

    def _on_link(self, item: list[Any]) -> None:
        _, actor_id, sender = item
        actor = self.scheduler.processes.get(actor_id)
        if actor is None or actor.actor_stopped.is_set():
            pid = Pid(self.node, self.worker, actor_id)
            self.exit(pid, sender, "noproc", True)
            return
        if actor._links is None:
            actor._links = set()
        actor._links.add(sender)

    def _on_unlink(self, item: list[Any]) -> None:
        actor = self.scheduler.processes.get(item[1])
        if actor is not None and actor._links:
            actor._links.discard(item[2])

    def _on_monitor(self, item: list[Any]) -> None:
        from otp.actor import Down

        _, actor_id, watcher, mref = item
        actor = self.scheduler.processes.get(actor_id)
        if actor is None or actor.actor_stopped.is_set():
            self.send(watcher, Down(mref, Pid(self.node, self.worker, actor_id), "noproc"))
            return
        if actor._monitored_by is None:
            actor._monitored_by = {}
        actor._monitored_by[mref] = watcher

    def _on_demonitor(self, item: list[Any]) -> None:
        actor = self.scheduler.processes.get(item[1])
        if actor is not None and actor._monitored_by:
            actor._monitored_by.pop(item[2], None)

    # -- membership items ------------------------------------------------------------------

    def _on_hello(self, item: list[Any]) -> None:
        if self.is_root:
            self.worker_started(item[1], item[2])

    def _on_view(self, item: list[Any]) -> None:
        if not self.is_root:
            view = {node: _normalise(entry) for node, entry in item[1].items()}
            self._unavailable_seen = list(item[2])
            self._seeds_seen = list(item[3]) if len(item) > 3 else []
            self._install_view(view)
            if self._listed is not None and self._is_listed():
                self._listed.set(True)
                self._listed = None

    def _is_listed(self) -> bool:
        entry = self.view.get(self.node)
        proc = entry["procs"].get(self.worker) if entry else None
        return proc is not None and proc.get("creation") == self.creation

    def listed(self) -> LoopFuture[bool]:
        """Worker: a future set once our root's published view names this process."""
        future: LoopFuture[bool] = LoopFuture(self.scheduler)
        if self.is_root or self._is_listed():
            future.set(True)
        else:
            self._listed = future
        return future

    def _on_join(self, item: list[Any]) -> None:
        if not self.is_root:
            return
        _, node, entry = item
        if node in self._left:
            return
        self._last_heard[node] = time.monotonic()
        changed = self._merge_entry(node, entry, direct=True)
        # Answer with everything we know, and tell the others what changed.
        self._put((node, _ROOT), ["nodes", self.view, self.node])
        if changed:
            logger.info("node joined", extra={"what": "dist_node_joined", "node": node})
            self._publish()
            self._gossip(skip=node)

    def _on_nodes(self, item: list[Any]) -> None:
        if not self.is_root:
            return
        _, view, sender = item
        if sender in self._left:
            return
        changed = False
        now = time.monotonic()
        for node, entry in view.items():
            if node != self.node and node not in self._left:
                self._last_heard.setdefault(node, now)
                changed = self._merge_entry(node, entry, direct=node == sender) or changed
        if changed:
            self._publish()
            self._gossip(skip=sender)

    def _on_node(self, item: list[Any]) -> None:
        if not self.is_root:
            return
        _, node, entry = item  # sent by that node's root itself
        if node in self._left:
            return
        self._last_heard.setdefault(node, time.monotonic())
        if self._merge_entry(node, entry, direct=True):
            self._publish()
            self._gossip(skip=node)

    def _gossip(self, skip: str | None = None) -> None:
        """Root: send our whole view to every other root (after it changed), so news
        reaches every node; a receiver whose view does not change stays quiet."""
        for node in self._other_nodes():
            if node != skip:
                self._put((node, _ROOT), ["nodes", self.view, self.node])

    def _on_leave(self, item: list[Any]) -> None:
        if self.is_root:
            logger.info("node left", extra={"what": "dist_node_left", "node": item[1]})
            self._drop_nodes([item[1]])

    def _on_heartbeat(self, item: list[Any]) -> None:
        if not self.is_root:
            return
        _, node, creation, tcp, version = item
        if node in self._left:
            return
        self._last_heard[node] = time.monotonic()
        known = self.view.get(node)
        if (
            known is None
            or known["creation"] < creation
            or (known["creation"] == creation and known["version"] < version)
        ):
            # A node we do not know (restarted, back from a netsplit), or whose entry we
            # hold an old version of (an update that went to others only): introduce
            # ourselves again, and its answer brings what we miss.
            self._send_join(tcp)

    # -- failure detection -----------------------------------------------------------------

    def _tick(self) -> None:
        if self._closed:
            return
        now = time.monotonic()
        own = self.view[self.node]
        tcp = own["procs"][_ROOT].get("tcp")
        for node in self._other_nodes():
            self._put((node, _ROOT), ["hb", self.node, own["creation"], tcp, own["version"]])
            heard = self._last_heard.setdefault(node, now)
            if now - heard > self.node_timeout:
                logger.warning(
                    "node not responding",
                    extra={"what": "dist_node_down", "node": node, "silent_s": now - heard},
                )
                root = self.view[node]["procs"].get(_ROOT, {}).get("tcp")
                if root is not None and not self.view[node].get("hidden"):
                    # A hidden node (a shell) that went silent is not called again.
                    self._unavailable[node] = (root, now)
                self._drop_nodes([node])
        # Keep calling nodes that went silent (a netsplit, a freeze): when one answers,
        # its heartbeat makes the two sides introduce themselves again.
        for node, (address, since) in list(self._unavailable.items()):
            if node in self.view or now - since > UNAVAILABLE_RETRY_S:
                del self._unavailable[node]
                continue
            if node in self._blocked:
                continue
            key = seed_key(address)
            self._connect(key, address)
            self._put(key, ["hb", self.node, own["creation"], tcp, own["version"]])
        if self._seeds and len(self.view) == 1:
            # Still alone: the seeds may have started after us, or lost our join while
            # restarting. Ask again; a join to a member is harmless.
            for address in self._seeds:
                self._send_join(address)
        self._timer = self.scheduler.loop.call_later(self.heartbeat_interval, self._tick)

    def _processes_lost(self, lost: set[Key]) -> None:
        """Fire noconnection for everything that involves a lost process."""
        from otp.actor import Down

        self.down_events += 1
        assert self.transport is not None
        for key in lost:
            if self._connected.pop(key, None) is not None:
                self.transport.disconnect(key)
        for tag, (future, key) in list(self._pending.items()):
            if key in lost:
                del self._pending[tag]
                future.set_exception(
                    (ActorDeadError, ActorDeadError(f"noconnection to {key[0]}.{key[1]}"), None)
                )
        for actor in list(self.scheduler.processes.values()):
            if actor._links:
                gone = [p for p in actor._links if (p[0], p[1]) in lost]
                for pid in gone:
                    actor._links.discard(pid)
                    actor._exit_signal(pid, "noconnection", linked=True)
            if actor._monitors:
                gone_monitors = [
                    (m, p) for m, p in actor._monitors.items() if (p[0], p[1]) in lost
                ]
                for mref, pid in gone_monitors:
                    del actor._monitors[mref]
                    actor.actor_inbox.put(Envelope(Down(mref, pid, "noconnection")))
            if actor._monitored_by:
                for mref in [m for m, w in actor._monitored_by.items() if (w[0], w[1]) in lost]:
                    del actor._monitored_by[mref]
        for hook in list(self.scheduler.on_processes_lost):
            try:
                hook(lost)
            except Exception:
                logger.exception("lost-process hook failed", extra={"what": "dist_hook_error"})
        logger.info(
            "processes lost",
            extra={"what": "dist_processes_lost", "processes": sorted(f"{n}.{w}" for n, w in lost)},
        )

    def statistics(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes(),
            "hidden_nodes": self.hidden_nodes(),
            "processes": len(self.processes()),
            "pending_asks": len(self._pending),
            "down_events": self.down_events,
        }


def _normalise(entry: dict[str, Any]) -> dict[str, Any]:
    """msgpack turns int keys into ints already; make sure of it and copy."""
    normal = {
        "creation": entry["creation"],
        "version": entry["version"],
        "procs": {int(w): dict(p) for w, p in entry["procs"].items()},
    }
    if entry.get("hidden"):
        normal["hidden"] = True
    return normal


def _lost_processes(old: dict[str, Any], new: dict[str, Any]) -> set[Key]:
    lost: set[Key] = set()
    for node, entry in old.items():
        new_entry = new.get(node)
        for worker, proc in entry["procs"].items():
            if new_entry is None or new_entry["creation"] != entry["creation"]:
                lost.add((node, worker))
                continue
            new_proc = new_entry["procs"].get(worker)
            if new_proc is None or new_proc.get("creation") != proc.get("creation"):
                lost.add((node, worker))
    return lost


_HANDLERS = {
    "m": Dist._on_send,
    "a": Dist._on_ask,
    "r": Dist._on_reply,
    "x": Dist._on_exit,
    "l": Dist._on_link,
    "u": Dist._on_unlink,
    "M": Dist._on_monitor,
    "D": Dist._on_demonitor,
    "spawn": Dist._on_spawn,
    "hello": Dist._on_hello,
    "view": Dist._on_view,
    "join": Dist._on_join,
    "nodes": Dist._on_nodes,
    "node": Dist._on_node,
    "leave": Dist._on_leave,
    "hb": Dist._on_heartbeat,
    "fault": Dist._on_fault,
}


# -- remote spawn -----------------------------------------------------------------------------


def _resolve_class(path: str) -> type:
    from otp.actor import LoopActor

    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, LoopActor)):
        raise TypeError(f"{path} is not a LoopActor class")
    return obj


def spawn_local(path: str, args: list[Any], kwargs: dict[str, Any]) -> Pid:
    """Start the LoopActor class at ``module:Class`` here; returns its pid."""
    cls = _resolve_class(path)
    return cls.start(*args, **kwargs).pid


def spawn_on(key: Key, path: str, *args: Any, **kwargs: Any) -> LoopFuture[Pid]:
    """Start ``module:Class(*args, **kwargs)`` in process ``key``; a future of its pid.

    Erlang's ``spawn(Node, M, F, A)``: the class is named, not sent, so it must be
    importable there. Works for this process too. Safe from any thread.
    """
    from otp import scheduler as scheduler_mod

    scheduler = scheduler_mod.current()

    def run() -> LoopFuture[Pid]:
        if key == (scheduler.node, scheduler.worker):
            future: LoopFuture[Pid] = LoopFuture(scheduler)
            try:
                future.set(spawn_local(path, list(args), kwargs))
            except Exception:
                future.set_exception()
            return future
        dist = scheduler.dist
        if dist is None:
            raise RuntimeError("this process is not distributed")
        return dist.spawn(key, path, list(args), kwargs)

    if scheduler.on_loop_thread():
        return run()
    return scheduler.run_sync(run)
