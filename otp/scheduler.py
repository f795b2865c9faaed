"""The scheduler: one asyncio event loop per OS process runs every loop actor.

This is how Erlang runs many processes on few schedulers, with the GIL making one loop
per process the right unit (several worker processes use several cores; see issue 3).

Run queue
    An actor that gets a message while idle is appended to the run queue; one drain
    callback per loop turn takes the actors queued at its start, lets each handle up to
    :attr:`Scheduler.throughput` messages, and puts back at the end those with more to
    do. So many messages cost one loop callback, not one each, and a busy actor cannot
    starve the others or the loop's sockets: I/O callbacks run between drains.

Threads
    The loop's thread owns all runtime state (process table, names, links, monitors,
    timers). Other threads may ``tell``/``ask`` any actor (a mailbox put is thread-safe
    and wakes the loop with ``call_soon_threadsafe`` only when it is asleep), and reach
    everything else through :meth:`Scheduler.call` / :meth:`Scheduler.run_sync`, which run
    a function on the loop.

Which loop
    A worker process runs its scheduler in the main thread (:meth:`Scheduler.run`). Code
    that uses actors without having started a loop (tests, scripts, the Pykka suite) gets
    a process-wide scheduler on a daemon thread, started on first use by :func:`current`.
    uvloop is used when installed: it is faster and avoids the stock loop's 256 KiB
    allocation per socket read.

Observing actors
    :attr:`Scheduler.observer` (an :class:`ActorObserver`, default None) is told when
    actors of this process start and die and when supervisors restart children: the
    hook for instrumentation. Unset, it costs one attribute test per start and per
    death, nothing per message. :meth:`Scheduler.mailbox_stats` sums up the mailboxes,
    for sampling now and then.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from otp.future import LoopFuture
from otp.pid import Pid, Ref

if TYPE_CHECKING:
    from otp.actor import LoopActor

__all__ = ["ActorObserver", "Scheduler", "current", "new_event_loop"]

T = TypeVar("T")

logger = logging.getLogger("otp")

DEFAULT_NODE = "nonode@nohost"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional in spirit
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ActorObserver(Protocol):
    """What :attr:`Scheduler.observer` is told; every method runs on the loop's thread.

    The calls are synchronous and sit on the runtime's start, death and restart paths,
    so an observer must be quick and must not block (count, sample, queue for later).
    An exception from one is logged (logger ``otp``, ``what=actor_observer_crashed``)
    and otherwise ignored: an observer cannot break an actor or a supervisor.
    """

    def actor_started(self, actor: LoopActor) -> None:
        """``actor``'s ``on_start`` returned (awaited, if async) and it now takes
        messages; also for actors without ``on_start``. Not called for an actor whose
        start failed: that one is only reported by :meth:`actor_stopped`."""

    def actor_stopped(self, actor: LoopActor, reason: Any) -> None:
        """``actor`` died with exit ``reason`` (``"normal"``, ``"shutdown"``,
        ``("shutdown", term)``, ``"killed"``, the exception that crashed it, ...).
        Called exactly once per actor, after it left the process table and its links
        and monitors were told. :func:`otp.actor.is_crash` tells crashes apart."""

    def child_restarted(self, supervisor: LoopActor, child_id: Any, child_actor_kind: str) -> None:
        """``supervisor`` started a new process for the child ``child_id`` because the
        previous one died (not on the first start, nor on ``restart_child``);
        ``child_actor_kind`` is the new actor's class name, or ``str(child_id)`` when
        the actor cannot be found any more. Under ``one_for_all``/``rest_for_one`` only
        the child that died is reported, not the siblings restarted with it."""


class Scheduler:
    """Runs loop actors on one asyncio event loop and owns this process's actor table.

    Attributes:
        node: node name used in pids made here.
        worker: worker number used in pids made here.
        throughput: messages one actor may handle before the next actor gets a turn.
        processes: the process table, actor id -> actor, for live actors of this process.
        names: locally registered names, name -> pid.
        observer: an :class:`ActorObserver` told of actor starts, deaths and supervisor
            restarts, or None (the default). It may be set or cleared from any thread;
            its methods are always called on the loop's thread.
    """

    throughput = 64

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        node: str = DEFAULT_NODE,
        worker: int = 0,
        creation: int = 0,
    ) -> None:
        self.loop = loop if loop is not None else new_event_loop()
        self.node = node
        self.worker = worker
        self.processes: dict[int, LoopActor] = {}
        self._old_names: frozenset[str] = frozenset()
        self.names: dict[str, Pid] = {}
        # Pid numbers start at creation << 32: a restarted worker (new creation) never
        # hands out a pid that an actor of its previous incarnation had.
        self.creation = creation
        self._ids = itertools.count((creation << 32) + 1)
        self._refs = itertools.count(1)
        self._runq: deque[LoopActor] = deque()
        self._drain_pending = False
        self._thread_id: int | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.timers: dict[Ref, asyncio.TimerHandle] = {}
        # Distribution (otp.dist), when this process is part of a cluster.
        self.dist: Any = None
        self.remote_send: Callable[[Pid, Any], None] | None = None
        self.on_processes_lost: list[Callable[[set[tuple[str, int]]], None]] = []
        self.global_names: Any = None  # otp.global_names.GlobalNames, with dist
        self.cets: Any = None  # otp.cets.Cets, with dist
        self.observer: ActorObserver | None = None

    # -- identity --------------------------------------------------------------------------

    def new_pid(self) -> Pid:
        return Pid(self.node, self.worker, next(self._ids))

    def make_ref(self) -> Ref:
        """A reference unique in the cluster (node, worker and a counter)."""
        return Ref(self.node, self.worker, next(self._refs))

    def is_local(self, pid: Pid) -> bool:
        """True if ``pid`` belongs to this process."""
        return pid[1] == self.worker and (pid[0] == self.node or pid[0] in self._old_names)

    def lookup(self, pid: Pid) -> LoopActor | None:
        """The live actor with this pid in this process, or None."""
        if pid[1] != self.worker or (pid[0] != self.node and pid[0] not in self._old_names):
            return None
        return self.processes.get(pid[2])

    def rename(self, node: str) -> None:
        """Give this process a node name (as Erlang's ``net_kernel:start`` does).

        Only from the default name, before distribution starts. Actors made before keep
        pids with the old name; those still work locally but cannot be reached from other
        processes, so a process that joins a cluster late makes new actors for that.
        """
        if self.node == node:
            return
        if self.node != DEFAULT_NODE or self.dist is not None:
            raise RuntimeError(f"this process is already node {self.node}")
        self._old_names = self._old_names | {self.node}
        self.node = node

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    # -- running the loop --------------------------------------------------------------------

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run the loop in this thread until ``main`` returns (a worker's entry point)."""
        self._thread_id = threading.get_ident()
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(main)
        finally:
            self._thread_id = None

    def start_thread(self) -> None:
        """Run the loop forever on a daemon thread (for code that is not a worker)."""
        ready = threading.Event()

        def target() -> None:
            self._thread_id = threading.get_ident()
            asyncio.set_event_loop(self.loop)
            ready.set()
            try:
                self.loop.run_forever()
            finally:
                self._stopped.set()

        self._thread = threading.Thread(target=target, name="otp-scheduler", daemon=True)
        self._thread.start()
        ready.wait()

    def stop_thread(self, timeout: float = 5.0) -> None:
        """Stop a loop started with :meth:`start_thread` and wait for its thread."""
        if self._thread is None:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    # -- calling into the loop ---------------------------------------------------------------

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon; safe from any thread."""
        if threading.get_ident() == self._thread_id:
            self.loop.call_soon(fn, *args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def call(self, fn: Callable[..., T], *args: Any) -> LoopFuture[T]:
        """Run ``fn(*args)`` on the loop and return a future of its result.

        On the loop's own thread ``fn`` runs at once and the future is already done.
        """
        future: LoopFuture[T] = LoopFuture(self)
        if threading.get_ident() == self._thread_id:
            _run_into(future, fn, args)
        else:
            self.loop.call_soon_threadsafe(_run_into, future, fn, args)
        return future

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float | None = 10.0) -> T:
        """Run ``fn(*args)`` on the loop and return its result; for foreign threads.

        On the loop's own thread it simply calls ``fn``.
        """
        return self.call(fn, *args).get(timeout=timeout)

    # -- the run queue -----------------------------------------------------------------------

    def schedule(self, actor: LoopActor) -> None:
        """Queue ``actor`` to run; called by mailbox puts and signals, from any thread."""
        self._runq.append(actor)
        if not self._drain_pending:
            self._drain_pending = True
            if threading.get_ident() == self._thread_id:
                self.loop.call_soon(self._drain)
            else:
                self.loop.call_soon_threadsafe(self._drain)

    def schedule_first(self, actor: LoopActor) -> None:
        """Queue ``actor`` ahead of the others (exit signals); loop thread only."""
        self._runq.appendleft(actor)
        if not self._drain_pending:
            self._drain_pending = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        runq = self._runq
        # Only the actors queued now: those re-queued or woken meanwhile wait for the next
        # loop turn, so sockets and timers get their share.
        for _ in range(len(runq)):
            runq.popleft()._run()
        if runq:
            self.loop.call_soon(self._drain)
            return
        self._drain_pending = False
        # A foreign thread may have queued an actor after our last look but before the
        # flag was cleared, and seen the flag still set: look once more.
        if runq and not self._drain_pending:
            self._drain_pending = True
            self.loop.call_soon(self._drain)

    # -- observing -------------------------------------------------------------------------

    def notify_observer(self, event: str, *args: Any) -> None:
        """Call ``observer.<event>(*args)``; an exception from it is logged, never raised.

        Loop thread only. Callers test ``self.observer is not None`` first, so that an
        unset observer costs them one attribute test and no call.
        """
        observer = self.observer
        if observer is None:
            return
        try:
            getattr(observer, event)(*args)
        except Exception:
            logger.exception(
                "actor observer %r failed in %s",
                observer,
                event,
                extra={
                    "what": "actor_observer_crashed",
                    "event": event,
                    "observer": repr(observer),
                },
            )

    def mailbox_stats(self) -> dict[str, Any]:
        """Queued messages over the live actors of this process.

        Returns ``{"total": n, "max": m, "max_kind": kind}``: the sum of all mailbox
        lengths, the longest one, and the class name of the actor that has it (None
        when no actor has a message waiting). Loop thread only: it walks the process
        table, which only that thread may read while it changes. O(actors), so for
        periodic sampling (a gauge every few seconds), not for every message.
        """
        total = 0
        longest = 0
        holder: LoopActor | None = None
        for actor in self.processes.values():
            queued = len(actor.actor_inbox._q)
            if queued:
                total += queued
                if queued > longest:
                    longest = queued
                    holder = actor
        return {
            "total": total,
            "max": longest,
            "max_kind": holder.__class__.__name__ if holder is not None else None,
        }

    def statistics(self) -> dict[str, int]:
        """Counts for observability: live actors, run-queue length, registered names."""
        return {
            "actors": len(self.processes),
            "run_queue": len(self._runq),
            "names": len(self.names),
            "timers": len(self.timers),
        }


def _run_into(future: LoopFuture[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result = fn(*args)
    except BaseException:
        future.set_exception()
    else:
        future.set(result)


_current: Scheduler | None = None
_current_lock = threading.Lock()


def current() -> Scheduler:
    """This process's scheduler; starts one on a daemon thread if none is installed."""
    global _current
    scheduler = _current
    if scheduler is not None:
        return scheduler
    with _current_lock:
        if _current is None:
            scheduler = Scheduler()
            scheduler.start_thread()
            _current = scheduler
        return _current


def install(scheduler: Scheduler) -> None:
    """Make ``scheduler`` this process's scheduler (a worker does this at start)."""
    global _current
    with _current_lock:
        if _current is not None and _current is not scheduler:
            raise RuntimeError("a scheduler is already installed in this process")
        _current = scheduler


def uninstall(scheduler: Scheduler) -> None:
    """Remove ``scheduler`` as the process's scheduler (after it has stopped)."""
    global _current
    with _current_lock:
        if _current is scheduler:
            _current = None
