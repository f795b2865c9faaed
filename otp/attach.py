"""Attach this OS process to a live cluster as a hidden node: the runtime of a shell.

An operator's shell (Erlang's ``erl -remsh`` or ``observer`` connecting to a node) is a
process that is not a server node but must reach every actor of the cluster with the
ordinary API: :func:`otp.ask_named`, :func:`otp.send`, :func:`otp.exit`, monitors.
:func:`attach` makes this process a node of its own for that: it creates and installs
a :class:`otp.scheduler.Scheduler`, runs its loop on a daemon thread, starts a hidden
:class:`otp.node.Runtime` (a root with no workers; see :mod:`otp.dist`, Hidden nodes)
with its sockets in a private temporary directory, and joins the cluster at one root's
tcp address with the cluster's CURVE keys. Being hidden, it is never a CETS member or
leader, nor counted among the cluster's nodes, and it leaves no trace when it goes.

Contracts
    * :func:`attach` returns once the view holds the node at ``address`` as that node's
      root published it (so its workers are listed), or raises :class:`AttachError`
      when ``timeout`` passes. Wrong keys: the seed never hears our join, since the
      CURVE handshake fails inside ZeroMQ. When ZeroMQ reports that failure (it does
      for a node with other keys) the error says so at once; otherwise wrong keys look
      like silence, and the error at the timeout names both causes.
    * One attachment per OS process, since a process has one scheduler; it cannot be
      used in a process that already runs one (a node's process, or a test process
      that used actors already).
    * After :func:`attach`, every function of :mod:`otp` works from the calling thread
      (they hand their work to the loop's thread), and :meth:`Attached.run_sync` runs
      anything else on the loop.
    * :meth:`Attached.close` leaves the cluster (``leave`` to every root, so the members
      drop this node at once rather than after their heartbeat timeout), stops the
      loop, removes the temporary directory and uninstalls the scheduler. It is
      idempotent, and ``Attached`` is a context manager that calls it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from otp import curve
from otp import scheduler as scheduler_mod
from otp.dist import Key, new_creation, seed_key
from otp.node import Runtime

__all__ = ["AttachError", "Attached", "attach"]

T = TypeVar("T")


class AttachError(RuntimeError):
    """This process could not attach to the cluster (see the message)."""


def default_name() -> str:
    """A node name no other shell uses: ``shell-<os pid>-<random>@<host>``."""
    return f"shell-{os.getpid()}-{secrets.token_hex(3)}@{socket.gethostname()}"


class Attached:
    """This process, attached to a cluster as a hidden node; made by :func:`attach`.

    Attributes:
        scheduler: this process's scheduler (installed; its loop runs on a thread).
        runtime: the hidden node's :class:`otp.node.Runtime`.
        node: this hidden node's name.
        address: the tcp address attached to.
        target: the member node that owns ``address``, or if none matches it, the
            first member known (the one that answered the join).
    """

    def __init__(self, scheduler: scheduler_mod.Scheduler, runtime: Runtime, directory: str,
                 address: str) -> None:
        self.scheduler = scheduler
        self.runtime = runtime
        self.node = scheduler.node
        self.address = address
        self.target = ""
        self._dir = directory
        self._closed = False
        self._lock = threading.Lock()

    def nodes(self) -> list[str]:
        """The cluster's member nodes, as this node sees them (itself excluded)."""
        return [n for n in self.run_sync(self.runtime.dist.nodes) if n != self.node]

    def processes(self) -> list[Key]:
        """Every process of the member nodes, as (node, worker), sorted."""
        return [k for k in self.run_sync(self.runtime.dist.processes) if k[0] != self.node]

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float | None = 10.0) -> T:
        """Run ``fn(*args)`` on the loop's thread and return its result."""
        return self.scheduler.run_sync(fn, *args, timeout=timeout)

    def close(self) -> None:
        """Leave the cluster and undo everything :func:`attach` did (idempotent).

        Call it from any thread but the loop's. Actors this process started are not
        stopped, only abandoned with the loop: stop first those whose ``on_stop``
        matters. Their links and monitors in the cluster fire ``noconnection``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        scheduler = self.scheduler
        try:
            try:
                scheduler.run_sync(self.runtime.close, timeout=5.0)
                asyncio.run_coroutine_threadsafe(_end_tasks(), scheduler.loop).result(5.0)
            finally:
                scheduler.stop_thread()
                if not scheduler.loop.is_running():
                    scheduler.loop.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            scheduler_mod.uninstall(scheduler)

    def __enter__(self) -> Attached:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"attached to {self.target}"
        return f"<Attached {self.node} {state}>"


def attach(
    address: str,
    keys: curve.CurveKeys,
    *,
    name: str | None = None,
    tcp_host: str = "127.0.0.1",
    timeout: float = 10.0,
    heartbeat_interval: float = 1.0,
    node_timeout: float = 4.0,
) -> Attached:
    """Join the cluster whose root listens at ``address`` (``tcp://host:port``) as a
    hidden node; see the module docstring.

    ``keys`` are the cluster's CURVE keys; ``name`` this node's name (default
    :func:`default_name`); ``tcp_host`` where the cluster's nodes reach this process
    (an address of this host they can connect to). ``heartbeat_interval`` must stay
    below the members' ``node_timeout``, or they drop this node as silent. Raises
    :class:`AttachError` if no member answered within ``timeout`` seconds.
    """
    if not address.startswith("tcp://"):
        raise ValueError(f"a cluster address is tcp://host:port, got {address!r}")
    name = name or default_name()
    if "@" not in name:
        raise ValueError(f"a node name is name@host, got {name!r}")
    scheduler = scheduler_mod.Scheduler(node=name, worker=0, creation=new_creation())
    try:
        scheduler_mod.install(scheduler)
    except RuntimeError:
        scheduler.loop.close()
        raise AttachError(
            "this process already runs a scheduler (it is a node, or has used actors): "
            "a shell attaches from a process of its own"
        ) from None
    directory = tempfile.mkdtemp(prefix="otp-shell-")
    runtime = Runtime(
        scheduler,
        ipc_dir=Path(directory) / "ipc",
        tcp_host=tcp_host,
        keys=keys,
        hidden=True,
        heartbeat_interval=heartbeat_interval,
        node_timeout=node_timeout,
    )
    attached = Attached(scheduler, runtime, directory, address)
    try:
        scheduler.start_thread()
        asyncio.run_coroutine_threadsafe(runtime.start(), scheduler.loop).result(timeout)
        target = _join_and_wait(attached, address, timeout)
    except BaseException:
        attached.close()
        raise
    if target is None:
        attached.close()
        raise AttachError(
            f"no answer from {address} within {timeout:g} s: is the node running, and "
            "are these its cluster keys?"
        )
    if target == _REFUSED:
        attached.close()
        raise AttachError(
            f"{address} refused the handshake: these are not its cluster keys "
            "(or it is not a cluster port)"
        )
    attached.target = target
    return attached


_REFUSED = "refused"


async def _end_tasks() -> None:
    """Cancel the loop's other tasks (async handlers, the transport's key checker) and
    let them finish, as ``asyncio.run`` does before it closes a loop."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=1.0)


def _join_and_wait(attached: Attached, address: str, timeout: float) -> str | None:
    """Join ``address`` and wait for a view from it; the target node, :data:`_REFUSED`
    if the seed refused our keys, or None at the timeout."""
    dist = attached.runtime.dist
    first: list[str] = []
    refused: list[bool] = []
    answered = threading.Event()
    seed = seed_key(address)

    def check() -> None:  # on the loop, after each view change
        if not first:
            members = _member_roots(dist.view, dist.node)
            if members:
                # Entries are merged one by one, the sender's own first: this is the
                # node that answered our join.
                first.append(next(iter(members)))
                answered.set()

    def auth_failed(key: Key) -> None:  # on the loop
        if key == seed and not first:
            refused.append(True)
            answered.set()

    def start() -> None:
        dist.on_view_changed.append(check)
        dist.on_auth_failed.append(auth_failed)
        dist.join([address])

    def stop() -> None:
        dist.on_view_changed.remove(check)
        dist.on_auth_failed.remove(auth_failed)

    attached.run_sync(start)
    answered.wait(timeout)
    attached.run_sync(stop)
    if not first:
        return _REFUSED if refused else None
    roots = attached.run_sync(_member_roots, dist.view, dist.node)
    return _owner_of(address, roots) or first[0]


def _member_roots(view: dict[str, dict[str, Any]], own: str) -> dict[str, str]:
    """Member node -> its root's tcp address, in the view's order."""
    return {
        node: entry["procs"][0].get("tcp", "")
        for node, entry in view.items()
        if node != own and not entry.get("hidden") and 0 in entry["procs"]
    }


def _owner_of(address: str, roots: dict[str, str]) -> str | None:
    """The node whose root listens at ``address``: the same address, else the same
    host (resolved; off the loop, this may ask DNS) and port. None if none does (a
    name the node does not bind, a NAT)."""
    for node, tcp in roots.items():
        if tcp == address:
            return node
    wanted = _host_port(address)
    if wanted is None:
        return None
    for node, tcp in roots.items():
        if _host_port(tcp) == wanted:
            return node
    return None


def _host_port(address: str) -> tuple[str, int] | None:
    try:
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        host = host.strip("[]")
        return socket.gethostbyname(host), int(port)
    except (OSError, ValueError):
        return None
