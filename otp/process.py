"""Erlang's process functions, for code inside and outside actors.

Every function here is safe from any thread: on the scheduler's thread it acts at once;
from another thread it runs the operation on the loop and waits for it (up to
``timeout``), because the loop's thread owns the process table, names, links and
monitors. Functions whose name says ``send``/``tell`` never wait.

Sending never fails: a message to a pid with no live actor is dropped, as in Erlang.
"""

from __future__ import annotations

from typing import Any

from otp import actor as _actor
from otp import scheduler as _scheduler_mod
from otp.actor import ActorRef, LoopActor
from otp.future import LoopFuture
from otp.pid import Pid, Ref

__all__ = [
    "AlreadyRegisteredError",
    "ask",
    "exit",
    "is_alive",
    "lookup",
    "monitor",
    "register",
    "registered",
    "send",
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
