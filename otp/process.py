"""Erlang's process functions, for code inside and outside actors.

Every function here is safe from any thread: on the scheduler's thread it acts at once;
from another thread it runs the operation on the loop and waits for it (up to
``timeout``), because the loop's thread owns the process table, names, links and
monitors. Functions whose name says ``send``/``tell`` never wait.

Sending never fails: a message to a pid with no live actor is dropped, as in Erlang.

A process of the cluster is addressed as ``(node, worker)``: the node's name and the
worker's number on it (0 for the node's root process), the first two fields of its pids.
"""

from __future__ import annotations

from typing import Any

from pykka import ActorDeadError

from otp import actor as _actor
from otp import scheduler as _scheduler_mod
from otp.actor import ActorRef, LoopActor
from otp.future import LoopFuture
from otp.pid import Pid, Ref

__all__ = [
    "AlreadyRegisteredError",
    "ask",
    "ask_named",
    "exit",
    "is_alive",
    "lookup",
    "monitor",
    "register",
    "registered",
    "send",
    "send_named",
    "started",
    "unregister",
    "whereis",
]


class AlreadyRegisteredError(ValueError):
    """The name is taken, or the pid already has that name (Erlang's badarg)."""


def _on_loop(fn: Any, *args: Any, timeout: float | None = 10.0) -> Any:
    scheduler = _scheduler_mod.current()
    if scheduler.on_loop_thread():
        return fn(scheduler, *args)
    return scheduler.run_sync(fn, scheduler, *args, timeout=timeout)


def send(pid: Pid, message: Any) -> None:
    """Put ``message`` in the mailbox of ``pid``; dropped if no such actor lives."""
    _actor._send(_scheduler_mod.current(), pid, message)


def ask(pid: Pid, message: Any) -> LoopFuture[Any]:
    """Ask the actor ``pid``; returns a future (``ActorDeadError`` if it is not alive)."""
    return _actor._ask(_scheduler_mod.current(), pid, message)


def send_named(node: str, worker: int, name: str, message: Any) -> None:
    """Send ``message`` to the actor registered as ``name`` in process ``(node, worker)``.

    Erlang's ``{Name, Node} ! Message``: the name is looked up where it is registered,
    when the message gets there, so the sender needs no pid. In this process that is at
    once; for another process the name travels with the message and that process looks
    it up (order with other sends to that process is kept). As with :func:`send`,
    nothing fails: a name not registered there, or an unknown process, drops the
    message.
    """
    scheduler = _scheduler_mod.current()
    if _is_here(scheduler, node, worker):
        pid = scheduler.names.get(name)
        if pid is not None:
            _actor._send(scheduler, pid, message)
        return
    dist = scheduler.dist
    if dist is None:
        return  # not in a cluster: no other process can be reached, as for a dead pid
    if scheduler.on_loop_thread():
        dist.send_named((node, worker), name, message)
    else:  # the transport belongs to the loop's thread
        scheduler.call_soon(dist.send_named, (node, worker), name, message)


def ask_named(node: str, worker: int, name: str, message: Any) -> LoopFuture[Any]:
    """Ask the actor registered as ``name`` in process ``(node, worker)``; a future of
    the answer.

    The name is looked up as for :func:`send_named`. As with :func:`ask` to a pid with
    no live actor, the future fails with ``pykka.ActorDeadError`` if no actor is
    registered as ``name`` there (the error names it), if that process is not in the
    cluster or is lost, or if this process is not in a cluster. Never blocks.
    """
    scheduler = _scheduler_mod.current()
    if _is_here(scheduler, node, worker):
        pid = scheduler.names.get(name)
        if pid is not None:
            return _actor._ask(scheduler, pid, message)
        return _dead(scheduler, f"no process registered as {name!r} at {node}.{worker}")
    dist = scheduler.dist
    if dist is None:
        return _dead(
            scheduler, f"{name!r} at {node}.{worker} not found: this process is not distributed"
        )
    if scheduler.on_loop_thread():
        return dist.ask_named((node, worker), name, message)
    answer: LoopFuture[Any] = LoopFuture(scheduler)

    def ask_on_loop() -> None:
        dist.ask_named((node, worker), name, message).add_done_callback(
            lambda done: _actor._copy_result(done, answer)
        )

    scheduler.call_soon(ask_on_loop)
    return answer


def _is_here(scheduler: Any, node: str, worker: int) -> bool:
    """True if ``(node, worker)`` is this process (under its current or an old name)."""
    return scheduler.is_local(Pid(node, worker, 0))


def _dead(scheduler: Any, text: str) -> LoopFuture[Any]:
    future: LoopFuture[Any] = LoopFuture(scheduler)
    future.set_exception((ActorDeadError, ActorDeadError(text), None))
    return future


def lookup(pid: Pid) -> ActorRef | None:
    """The ref of the live actor ``pid`` in this process, or None."""
    found = _scheduler_mod.current().lookup(pid)
    return found.actor_ref if found is not None else None


def is_alive(pid: Pid) -> bool:
    """True if ``pid`` names a live actor of this process."""
    found = _scheduler_mod.current().lookup(pid)
    return found is not None and not found.actor_stopped.is_set()


def exit(pid: Pid, reason: Any, *, sender: Pid | None = None) -> None:
    """Send an exit signal (Erlang's ``exit/2``); ``"kill"`` cannot be trapped."""
    _on_loop(_actor._exit, sender, pid, reason)


def monitor(watcher: Pid, pid: Pid) -> Ref:
    """Make ``watcher`` monitor ``pid``; ``Down`` arrives in the watcher's mailbox."""

    def run(scheduler: Any, watcher: Pid, pid: Pid) -> Ref:
        return _actor._monitor(scheduler, watcher, pid, scheduler.lookup(watcher))

    return _on_loop(run, watcher, pid)


def started(ref: ActorRef | Pid) -> LoopFuture[Pid]:
    """A future that is set to the pid once ``on_start`` has returned, or raises
    :class:`otp.actor.StartError` if the actor died before that."""
    pid = ref if isinstance(ref, Pid) else ref.pid
    dead_ref = None if isinstance(ref, Pid) else ref

    def run(scheduler: Any, pid: Pid) -> LoopFuture[Pid]:
        found: LoopActor | None = scheduler.lookup(pid)
        if found is not None:
            return found._wait_started()
        # Already dead: the ref, if we have one, knows whether on_start returned.
        future: LoopFuture[Pid] = LoopFuture(scheduler)
        if dead_ref is not None and dead_ref.exit_reason is not None:
            if not dead_ref.start_failed:
                future.set(pid)
                return future
            reason = dead_ref.exit_reason
        else:
            reason = "noproc"
        future.set_exception((_actor.StartError, _actor.StartError(pid, reason), None))
        return future

    return _on_loop(run, pid)


# -- local names ------------------------------------------------------------------------------


def register(name: str, pid: Pid) -> None:
    """Give the live actor ``pid`` the name ``name`` in this process.

    Raises :class:`AlreadyRegisteredError` if the name is taken, and
    :class:`otp.actor.NoProcError` if ``pid`` is not alive. The name is released
    when the actor dies.
    """

    def run(scheduler: Any, name: str, pid: Pid) -> None:
        if name in scheduler.names:
            raise AlreadyRegisteredError(f"name {name!r} is already registered")
        found: LoopActor | None = scheduler.lookup(pid)
        if found is None or found.actor_stopped.is_set():
            raise _actor.NoProcError(f"register: no process {pid}")
        scheduler.names[name] = pid
        if found._names is None:
            found._names = []
        found._names.append(name)

    _on_loop(run, name, pid)


def unregister(name: str) -> None:
    """Remove ``name``; raises ``KeyError`` if it is not registered."""

    def run(scheduler: Any, name: str) -> None:
        pid = scheduler.names.pop(name)
        found: LoopActor | None = scheduler.lookup(pid)
        if found is not None and found._names:
            found._names.remove(name)

    _on_loop(run, name)


def whereis(name: str) -> Pid | None:
    """The pid registered as ``name`` in this process, or None."""
    return _scheduler_mod.current().names.get(name)


def registered() -> list[str]:
    """All names registered in this process."""
    return sorted(_scheduler_mod.current().names)
