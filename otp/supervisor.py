"""Supervisors after OTP's ``supervisor``: start children, watch them, restart them.

Principles
    A supervisor is a :class:`~otp.actor.LoopActor` that traps exits and does nothing but
    supervise. It starts its children, links to each, and when a child dies it decides,
    from the child's restart type and the reason, whether to start it again; when
    restarts come too fast it gives up, stops every child and dies, so that its own
    supervisor can try a bigger restart. Words and defaults are OTP's, so OTP's manual
    is this module's manual too, and deviations are listed here.

Flags
    ``strategy``
        ``one_for_one``: restart only the child that died. ``one_for_all``: stop the
        others right to left, then start all left to right. ``rest_for_one``: stop the
        children started after the dead one, right to left, then start the dead one and
        those after it, left to right. ``simple_one_for_one``: one child spec is a
        template; children are added at run time with :func:`start_child`, its
        arguments appended to the template's ``start``; they are all alike and are
        stopped concurrently.
    ``intensity`` (default 1) and ``period`` (default 5 seconds)
        More than ``intensity`` restarts within ``period`` seconds and the supervisor
        stops all children and exits with reason ``"shutdown"``.

Child specs (:class:`ChildSpec`)
    ``id``
        Unique among the supervisor's children (hashable; unused for dynamic children).
    ``start``
        A callable returning the :class:`~otp.actor.ActorRef` of a freshly started loop
        actor, e.g. ``MyActor.start`` or ``functools.partial(MyActor.start, conf)``; or
        None to mean OTP's ``ignore`` (no process, spec kept). It must return at once,
        without yielding to the event loop: the child's ``on_start`` must not have run
        yet when it returns (see Races).
    ``restart``
        ``permanent`` (default) is always restarted; ``transient`` is restarted unless
        it exits with ``"normal"``, ``"shutdown"`` or ``("shutdown", term)``;
        ``temporary`` is never restarted, and its spec is dropped when it dies, even
        when a sibling's death under ``one_for_all``/``rest_for_one`` stopped it.
    ``shutdown``
        ``"brutal_kill"``: exit signal ``kill`` at once. Milliseconds (default 5000 for
        workers): exit signal ``"shutdown"``, then ``kill`` if the child has not died
        within that time. ``"infinity"`` (default for supervisors): ``"shutdown"`` and
        wait for as long as it takes.
    ``type``
        ``worker`` (default) or ``supervisor``; only counted and reported.

Contracts
    Starting
        ``on_start`` starts the children left to right and waits for each child's own
        ``on_start`` to return (:func:`otp.started`) before starting the next. If one
        fails, the children already started are stopped right to left and the
        supervisor dies with ``("shutdown", ("failed_to_start_child", id, reason))``;
        :func:`otp.started` on the supervisor raises :class:`~otp.actor.StartError`
        with that reason.
    Parentage
        Each child gets the supervisor as ``parent`` and is linked to it. A child that
        traps exits therefore stops, running ``on_stop``, on the supervisor's
        ``"shutdown"`` signal, as a ``gen_server`` does (see :mod:`otp.actor`).
    Stopping
        On an exit signal from its parent, or on ``ref.stop()``, the supervisor stops
        its children right to left, each by its ``shutdown`` rule and waiting for its
        death (dynamic children: all at once, then waits for all), and only then dies,
        with the parent's reason (``"normal"`` for ``stop()``). So a tree stops depth
        first and a parent never outlives a child. A root supervisor (no parent) is
        stopped with ``ref.stop()``: exit signals from others are ignored, as in OTP. A
        ``kill`` runs nothing: the children die through their links, in no particular
        order.
    Restarting
        A restart runs on the supervisor's own turn; until it is done the supervisor
        handles no other message (OTP's supervisor is just as busy). A child that fails
        to start during a restart is tried again through a message to self, and each
        attempt counts as a restart, so a child that can never start ends in
        escalation rather than a busy loop; meanwhile :func:`which_children` shows it as
        ``"restarting"``.
    API
        :func:`which_children`, :func:`count_children`, :func:`start_child`,
        :func:`terminate_child`, :func:`restart_child`, :func:`delete_child`,
        :func:`get_childspec` each send a request to the supervisor and return a
        :class:`~otp.future.LoopFuture`: ``await`` it in an async handler, or
        ``.get(timeout=...)`` from another thread. Refusals raise
        :class:`SupervisorError`, whose ``reason`` is OTP's error term (``"not_found"``,
        ``"running"``, ``"restarting"``, ``"already_present"``,
        ``("already_started", pid)``, ``"simple_one_for_one"``,
        ``("failed_to_start_child", id, reason)``).
    Logs
        Structured events with a stable ``what``: ``supervisor_child_restarted``,
        ``supervisor_child_start_failed``, ``supervisor_intensity_exceeded``,
        ``supervisor_shutdown_error`` (a child died of something else than its shutdown
        signal, e.g. it had to be killed after its shutdown time).
    Observer
        Each restart of a child that died, once its new process is started, is told to
        the scheduler's observer as ``child_restarted(supervisor, child_id, kind)``
        (see :class:`otp.scheduler.ActorObserver`): ``child_id`` is the spec's id (the
        template's for ``simple_one_for_one``), ``kind`` the new actor's class name.
        The first start, ``restart_child``, siblings restarted along with the dead child
        (``one_for_all``, ``rest_for_one``) and a restart that returned ``ignore`` are
        not reported.

Defining a supervisor
    Either give flags and specs to the constructor::

        Supervisor.start("one_for_all", 3, 10, [ChildSpec("db", DbPool.start), ...])

    or subclass and override :meth:`Supervisor.init`, which runs in the supervisor's own
    context when it starts (OTP's ``Module:init/1``) and returns ``(flags, specs)``.

Races to watch for
    * A child could die before it is linked. It cannot here: ``start`` only queues the
      child's ``on_start`` for a later loop callback, and the supervisor sets
      ``parent`` and links within the same callback (the pattern of
      :meth:`LoopActor.spawn_link`).
    * Stale exits. A child that failed to start, or died just before the supervisor
      unlinked it to shut it down, leaves an ``Exit`` in the supervisor's mailbox. Only
      pids of live children are in the table the exits are looked up in, and pids are
      never reused, so a stale exit finds nothing and is ignored. Exits from strangers
      are ignored too, as in OTP.
    * Awaiting a death. The ``Down`` of a monitor held by the supervisor would land in
      its own mailbox, which is not read while its coroutine is suspended waiting for
      that very ``Down``. So monitors for shutdowns are held by a reaper: one small
      internal actor per scheduler that turns each ``Down`` into a resolved
      :class:`~otp.future.LoopFuture` the supervisor can ``await``. The kill after the
      shutdown time is a loop timer, so it fires even if the supervisor died meanwhile.
    * ``on_stop`` cannot wait: :class:`LoopActor` calls it synchronously. Orderly
      shutdown therefore happens in an async handler *before* the actor stops (for the
      parent's exit signal and ``stop()``, which the supervisor intercepts). If the
      supervisor dies some other way with children left (a bug in it, a
      ``BaseException``), ``on_stop``/``on_failure`` still send each child its
      shutdown signal, right to left, and arm the kill timers, without waiting.
    * Restart intensity uses :attr:`Supervisor.clock` (``time.monotonic``); tests may
      substitute a fake clock to test the period deterministically.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from pykka.messages import _ActorStop

from otp import process as _process
from otp.actor import ActorRef, Down, Exit, LoopActor, StartError, is_crash
from otp.future import LoopFuture
from otp.pid import Pid, Ref

if TYPE_CHECKING:
    from otp.scheduler import Scheduler

__all__ = [
    "ChildInfo",
    "ChildSpec",
    "Supervisor",
    "SupervisorError",
    "check_childspecs",
    "count_children",
    "delete_child",
    "get_childspec",
    "restart_child",
    "start_child",
    "terminate_child",
    "which_children",
]

logger = logging.getLogger("otp.supervisor")

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one")
RESTART_TYPES = ("permanent", "transient", "temporary")
CHILD_TYPES = ("worker", "supervisor")
DEFAULT_INTENSITY = 1
DEFAULT_PERIOD = 5
DEFAULT_WORKER_SHUTDOWN = 5000


# -- child specs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start, restart and stop one child (see the module docstring).

    ``shutdown`` left as None becomes 5000 (ms) for a worker and ``"infinity"`` for a
    supervisor. Invalid values raise ``ValueError``/``TypeError`` naming the field.
    """

    id: Hashable
    start: Callable[..., ActorRef | None]
    restart: str = "permanent"
    shutdown: int | str | None = None
    type: str = "worker"

    def __post_init__(self) -> None:
        try:
            hash(self.id)
        except TypeError:
            raise TypeError(f"child spec id must be hashable, got {self.id!r}") from None
        where = f"child spec {self.id!r}"
        if not callable(self.start):
            raise TypeError(f"{where}: start must be callable, got {self.start!r}")
        if self.restart not in RESTART_TYPES:
            raise ValueError(
                f"{where}: invalid restart type {self.restart!r}, "
                f"expected one of {', '.join(RESTART_TYPES)}"
            )
        if self.type not in CHILD_TYPES:
            raise ValueError(
                f"{where}: invalid type {self.type!r}, expected one of {', '.join(CHILD_TYPES)}"
            )
        shutdown = self.shutdown
        if shutdown is None:
            default = "infinity" if self.type == "supervisor" else DEFAULT_WORKER_SHUTDOWN
            object.__setattr__(self, "shutdown", default)
        elif not (
            shutdown in ("brutal_kill", "infinity")
            or (isinstance(shutdown, int) and not isinstance(shutdown, bool) and shutdown >= 0)
        ):
            raise ValueError(
                f"{where}: invalid shutdown {shutdown!r}, expected milliseconds (an int "
                "0 or more), 'brutal_kill' or 'infinity'"
            )


class ChildInfo(NamedTuple):
    """One row of :func:`which_children`.

    ``pid`` is the child's pid, None if it is not running (OTP's ``undefined``), or
    ``"restarting"``. ``id`` is None for dynamic children.
    """

    id: Hashable
    pid: Pid | str | None
    type: str


class SupervisorError(RuntimeError):
    """A supervisor refused a request; ``reason`` is OTP's error term."""

    def __init__(self, reason: Any, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_flags(strategy: Any, intensity: Any, period: Any) -> None:
    """Raise ``ValueError`` unless these are valid supervisor flags."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"invalid supervisor strategy {strategy!r}, expected one of {', '.join(STRATEGIES)}"
        )
    if not isinstance(intensity, int) or isinstance(intensity, bool) or intensity < 0:
        raise ValueError(f"invalid supervisor intensity {intensity!r}, expected an int >= 0")
    if not isinstance(period, int | float) or isinstance(period, bool) or not period > 0:
        raise ValueError(f"invalid supervisor period {period!r}, expected seconds > 0")


def check_childspecs(strategy: str, specs: Iterable[Any]) -> list[ChildSpec]:
    """The specs as a list; raise ``TypeError``/``ValueError`` if they do not fit."""
    specs = list(specs)
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"expected a ChildSpec, got {spec!r}")
    if strategy == "simple_one_for_one":
        if len(specs) != 1:
            raise ValueError(
                f"a simple_one_for_one supervisor needs exactly one child spec, got {len(specs)}"
            )
        return specs
    seen: set[Hashable] = set()
    for spec in specs:
        if spec.id in seen:
            raise ValueError(f"duplicate child spec id {spec.id!r}")
        seen.add(spec.id)
    return specs


# -- awaiting deaths ------------------------------------------------------------------------


class _Reaper(LoopActor):
    """Holds monitors for supervisors and resolves a future per ``Down``.

    :meth:`watch` is called directly (not by message) by supervisors, on the loop's
    thread: the reaper never suspends, so its state is never seen half-changed.
    """

    pykka_registry = False

    def __init__(self) -> None:
        super().__init__()
        self._waiting: dict[Ref, LoopFuture[Any]] = {}

    def watch(self, pid: Pid) -> LoopFuture[Any]:
        """A future set to ``pid``'s exit reason when it dies (``"noproc"`` if dead)."""
        future: LoopFuture[Any] = LoopFuture(self._scheduler)
        # A Down for a dead pid is queued, not delivered inline, so storing after is safe.
        self._waiting[self.monitor(pid)] = future
        return future

    def on_receive(self, message: Any) -> None:
        if message.__class__ is Down:
            self.demonitor(message.ref)  # forget the spent monitor
            future = self._waiting.pop(message.ref, None)
            if future is not None:
                future.set(message.reason)


_reapers: dict[Scheduler, _Reaper] = {}


def _reaper(scheduler: Scheduler) -> _Reaper:
    reaper = _reapers.get(scheduler)
    if reaper is None or reaper.actor_stopped.is_set():
        found = scheduler.lookup(_Reaper.start().pid)
        assert isinstance(found, _Reaper)
        reaper = _reapers[scheduler] = found
    return reaper


def _shut_down(sup: LoopActor, pid: Pid, shutdown: int | str) -> LoopFuture[Any]:
    """Stop the child ``pid`` by its shutdown rule; a future of its exit reason.

    Unlink first, so its death comes back as the future and not as an ``Exit``.
    """
    sup.unlink(pid)
    down = _reaper(sup._scheduler).watch(pid)
    if shutdown == "brutal_kill":
        sup.exit(pid, "kill")
        return down
    sup.exit(pid, "shutdown")
    if shutdown != "infinity":
        assert isinstance(shutdown, int)
        timer = sup._scheduler.loop.call_later(shutdown / 1000, sup.exit, pid, "kill")
        down.add_done_callback(lambda _: timer.cancel())
    return down


# -- the supervisor -------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Child:
    spec: ChildSpec
    args: tuple[Any, ...] = ()
    pid: Pid | None = None
    restarting: bool = False


class _StartFailed(Exception):
    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


class _Call(NamedTuple):
    op: str
    args: tuple[Any, ...]


class _TryAgain(NamedTuple):
    child: _Child
    reason: Any


def _is_orderly(reason: Any) -> bool:
    return not is_crash(reason)


class Supervisor(LoopActor):
    """An OTP supervisor; see the module docstring for flags, contracts and races."""

    trap_exit = True

    clock: ClassVar[Callable[[], float]] = time.monotonic
    """Seconds, for restart intensity; a subclass may set a fake clock in tests."""

    def __init__(
        self,
        strategy: str = "one_for_one",
        intensity: int = DEFAULT_INTENSITY,
        period: float = DEFAULT_PERIOD,
        children: Sequence[ChildSpec] = (),
    ) -> None:
        super().__init__()
        _check_flags(strategy, intensity, period)  # fail in the caller, not on the loop
        self._init_flags: dict[str, Any] = {
            "strategy": strategy,
            "intensity": intensity,
            "period": period,
        }
        self._init_specs = check_childspecs(strategy, children)
        self._strategy = strategy
        self._intensity = intensity
        self._period: float = period
        self._restarts: deque[float] = deque()
        self._children: list[_Child] = []  # static children, in start order
        self._template: ChildSpec | None = None  # simple_one_for_one
        self._dynamic: dict[_Child, None] = {}  # simple_one_for_one, in start order
        self._by_pid: dict[Pid, _Child] = {}  # live children only

    def init(self) -> tuple[dict[str, Any], Sequence[ChildSpec]]:
        """Return ``(flags, specs)``; flags may hold strategy, intensity, period.

        Runs in the supervisor's context as it starts. The default returns what was
        given to the constructor; override it to build the tree at start time.
        """
        return self._init_flags, self._init_specs

    # -- starting --------------------------------------------------------------------------

    async def on_start(self) -> None:
        flags, specs = self.init()
        unknown = set(flags) - {"strategy", "intensity", "period"}
        if unknown:
            raise ValueError(f"unknown supervisor flags {sorted(unknown)!r}")
        strategy = flags.get("strategy", "one_for_one")
        intensity = flags.get("intensity", DEFAULT_INTENSITY)
        period = flags.get("period", DEFAULT_PERIOD)
        _check_flags(strategy, intensity, period)
        specs = check_childspecs(strategy, specs)
        self._strategy, self._intensity, self._period = strategy, intensity, period
        if strategy == "simple_one_for_one":
            self._template = specs[0]
            return
        self._children = [_Child(spec) for spec in specs]
        try:
            for child in list(self._children):
                try:
                    await self._start_child(child)
                except _StartFailed as failure:
                    self._log_start_failed(child, failure.reason)
                    self._children.remove(child)
                    await self._terminate_children(self._children)
                    self._exit_with(
                        ("shutdown", ("failed_to_start_child", child.spec.id, failure.reason))
                    )
                    return
        except Exception:
            self._abandon_children()
            raise

    async def _start_child(self, child: _Child) -> Pid | None:
        """Start ``child``, link it, wait for its ``on_start``; None if it said ignore."""
        try:
            ref = child.spec.start(*child.args)
        except Exception as error:
            raise _StartFailed(error) from error
        if ref is None:
            return None
        pid = getattr(ref, "pid", None)
        actor = self._scheduler.lookup(pid) if isinstance(pid, Pid) else None
        if actor is None:
            if isinstance(ref, ActorRef):
                raise _StartFailed("noproc")
            raise _StartFailed(("bad_start_return", ref))
        # Same loop callback as the start: the child's on_start has not run yet.
        actor.parent = self.pid
        self.link(pid)
        try:
            await _process.started(ref)
        except StartError as error:
            raise _StartFailed(error.reason) from None
        child.pid = pid
        child.restarting = False
        self._by_pid[pid] = child
        return pid

    # -- stopping --------------------------------------------------------------------------

    def _handle_receive(self, message: Any) -> Any:
        # The parent's exit and stop() must stop the children before the actor stops,
        # and on_stop cannot wait: take them here, as async handlers.
        if message.__class__ is Exit and message.pid is not None and message.pid == self.parent:
            return self._stop_tree(message.reason)
        if isinstance(message, _ActorStop):
            return self._stop_tree("normal")
        return super()._handle_receive(message)

    async def _stop_tree(self, reason: Any) -> None:
        await self._terminate_all()
        self._exit_with(reason)

    def _exit_with(self, reason: Any) -> None:
        """Stop this actor with ``reason``; called at the end of an async handler."""
        if self._exit_reason is None:
            self._exit_reason = reason
        self._stop()

    def on_stop(self) -> None:
        self._abandon_children()

    def on_failure(self, *_exc_info: Any) -> None:
        self._abandon_children()

    def _abandon_children(self) -> None:
        """Send every running child its shutdown signal, without waiting (last resort)."""
        for child in reversed([*self._children, *self._dynamic]):
            if child.pid is not None:
                self._shut_down_child(child)

    def _shut_down_child(self, child: _Child) -> LoopFuture[Any]:
        pid = child.pid
        assert pid is not None
        child.pid = None
        del self._by_pid[pid]
        shutdown = child.spec.shutdown
        assert shutdown is not None
        down = _shut_down(self, pid, shutdown)

        def check(done: LoopFuture[Any]) -> None:
            reason = done.get()
            expected = "killed" if shutdown == "brutal_kill" else "shutdown"
            if reason in ("noproc", expected):
                return  # noproc: it died just before; its Exit is stale in our mailbox
            if reason == "normal" and child.spec.restart != "permanent":
                return
            logger.warning(
                "supervisor child %r did not stop by its shutdown signal: %r",
                child.spec.id,
                reason,
                extra={
                    "what": "supervisor_shutdown_error",
                    "supervisor": str(self.pid),
                    "child_id": child.spec.id,
                    "child": str(pid),
                    "shutdown": shutdown,
                    "reason": repr(reason),
                },
            )

        down.add_done_callback(check)
        return down

    async def _terminate_children(self, children: list[_Child]) -> None:
        """Stop static ``children`` right to left, waiting for each; drop temporary ones."""
        for child in reversed(list(children)):
            if child.pid is not None:
                await self._shut_down_child(child)
            child.restarting = False
            if child.spec.restart == "temporary" and child in self._children:
                self._children.remove(child)

    async def _terminate_all(self) -> None:
        if self._template is None:
            await self._terminate_children(self._children)
            return
        dying = [self._shut_down_child(c) for c in self._dynamic if c.pid is not None]
        self._dynamic.clear()
        for down in dying:
            await down

    # -- restarting ------------------------------------------------------------------------

    def handle_exit(self, pid: Pid | None, reason: Any) -> Any:
        child = self._by_pid.pop(pid, None) if pid is not None else None
        if child is None:
            return None  # stale, or not from a child: ignored, as in OTP
        child.pid = None
        restart = child.spec.restart
        if restart == "temporary" or (restart == "transient" and _is_orderly(reason)):
            self._forget(child)
            return None
        return self._restart(child, reason)

    def _forget(self, child: _Child) -> None:
        """A child that died for good: dynamic and temporary specs go, others stay."""
        if self._template is not None:
            self._dynamic.pop(child, None)
        elif child.spec.restart == "temporary" and child in self._children:
            self._children.remove(child)

    def _add_restart(self) -> bool:
        """Count a restart; False if that makes more than intensity within period."""
        now = type(self).clock()  # via the class: a plain function is not bound
        restarts = self._restarts
        restarts.append(now)
        while restarts and now - restarts[0] > self._period:
            restarts.popleft()
        return len(restarts) <= self._intensity

    async def _restart(self, child: _Child, reason: Any) -> None:
        if not self._add_restart():
            logger.warning(
                "supervisor %s reached its restart intensity (%d in %s s); shutting down",
                self.pid,
                self._intensity,
                self._period,
                extra={
                    "what": "supervisor_intensity_exceeded",
                    "supervisor": str(self.pid),
                    "child_id": child.spec.id,
                    "reason": repr(reason),
                    "intensity": self._intensity,
                    "period": self._period,
                },
            )
            await self._terminate_all()
            self._exit_with("shutdown")
            return
        if self._strategy in ("one_for_one", "simple_one_for_one"):
            group = [child]
        else:
            if self._strategy == "one_for_all":
                group = list(self._children)
            else:  # rest_for_one
                group = self._children[self._children.index(child) :]
            await self._terminate_children(group)
            group = [c for c in group if c.spec.restart != "temporary"]
        for member in group:
            try:
                pid = await self._start_child(member)
            except _StartFailed as failure:
                self._log_start_failed(member, failure.reason)
                member.restarting = True
                self.actor_ref.tell(_TryAgain(member, failure.reason))
                return
            if pid is None and self._template is not None:  # a dynamic child said ignore
                self._dynamic.pop(member, None)
            if member is child:
                logger.warning(
                    "supervisor %s restarted child %r after %r",
                    self.pid,
                    child.spec.id,
                    reason,
                    extra={
                        "what": "supervisor_child_restarted",
                        "supervisor": str(self.pid),
                        "child_id": child.spec.id,
                        "child": str(pid),
                        "strategy": self._strategy,
                        "reason": repr(reason),
                    },
                )
                if pid is not None and self._scheduler.observer is not None:
                    self._report_restart(child, pid)

    def _report_restart(self, child: _Child, pid: Pid) -> None:
        """Tell the observer; the kind is the new actor's class, if it still lives."""
        actor = self._scheduler.lookup(pid)
        kind = actor.__class__.__name__ if actor is not None else str(child.spec.id)
        self._scheduler.notify_observer("child_restarted", self, child.spec.id, kind)

    def _try_again(self, message: _TryAgain) -> Any:
        child = message.child
        if not child.restarting or child.pid is not None:
            return None  # terminated or started meanwhile
        if child not in self._dynamic and child not in self._children:
            return None
        return self._restart(child, message.reason)

    def _log_start_failed(self, child: _Child, reason: Any) -> None:
        logger.error(
            "supervisor %s failed to start child %r: %r",
            self.pid,
            child.spec.id,
            reason,
            extra={
                "what": "supervisor_child_start_failed",
                "supervisor": str(self.pid),
                "child_id": child.spec.id,
                "reason": repr(reason),
            },
        )

    # -- requests --------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        cls = message.__class__
        if cls is _Call:
            return getattr(self, "_call_" + message.op)(*message.args)
        if cls is _TryAgain:
            return self._try_again(message)
        logger.warning(
            "supervisor %s got an unexpected message: %r",
            self.pid,
            message,
            extra={
                "what": "supervisor_unexpected_message",
                "supervisor": str(self.pid),
                "msg_repr": repr(message),
            },
        )
        return None

    def _static_child(self, child_id: Hashable) -> _Child:
        if self._template is not None:
            raise SupervisorError(
                "simple_one_for_one",
                f"supervisor {self.pid} is simple_one_for_one: address children by pid",
            )
        for child in self._children:
            if child.spec.id == child_id:
                return child
        raise SupervisorError("not_found", f"supervisor {self.pid} has no child {child_id!r}")

    def _call_which_children(self) -> list[ChildInfo]:
        children = self._children if self._template is None else self._dynamic
        return [
            ChildInfo(
                None if self._template is not None else c.spec.id,
                "restarting" if c.restarting else c.pid,
                c.spec.type,
            )
            for c in children
        ]

    def _call_count_children(self) -> dict[str, int]:
        if self._template is not None:
            total = len(self._dynamic)
            is_sup = self._template.type == "supervisor"
            return {
                "specs": 1,
                "active": len(self._by_pid),
                "supervisors": total if is_sup else 0,
                "workers": 0 if is_sup else total,
            }
        sups = sum(1 for c in self._children if c.spec.type == "supervisor")
        return {
            "specs": len(self._children),
            "active": len(self._by_pid),
            "supervisors": sups,
            "workers": len(self._children) - sups,
        }

    def _call_get_childspec(self, key: Any) -> ChildSpec:
        if self._template is not None:
            if key not in self._by_pid:
                raise SupervisorError("not_found", f"supervisor {self.pid} has no child {key}")
            return self._template
        return self._static_child(key).spec

    async def _call_start_child(self, spec_or_args: Any) -> Pid | None:
        if self._template is not None:
            if isinstance(spec_or_args, ChildSpec) or not isinstance(spec_or_args, list | tuple):
                raise TypeError(
                    "start_child on a simple_one_for_one supervisor takes a list or tuple "
                    f"of extra start arguments, got {spec_or_args!r}"
                )
            child = _Child(self._template, tuple(spec_or_args))
            pid = await self._start_or_raise(child)
            if pid is not None:
                self._dynamic[child] = None
            return pid
        if not isinstance(spec_or_args, ChildSpec):
            raise TypeError(f"start_child takes a ChildSpec, got {spec_or_args!r}")
        for existing in self._children:
            if existing.spec.id == spec_or_args.id:
                if existing.pid is not None:
                    raise SupervisorError(
                        ("already_started", existing.pid),
                        f"child {spec_or_args.id!r} is already started as {existing.pid}",
                    )
                raise SupervisorError(
                    "already_present",
                    f"child {spec_or_args.id!r} is already present (not running); "
                    "use restart_child or delete_child",
                )
        child = _Child(spec_or_args)
        pid = await self._start_or_raise(child)
        self._children.append(child)
        return pid

    async def _start_or_raise(self, child: _Child) -> Pid | None:
        try:
            return await self._start_child(child)
        except _StartFailed as failure:
            self._log_start_failed(child, failure.reason)
            raise SupervisorError(
                ("failed_to_start_child", child.spec.id, failure.reason),
                f"child {child.spec.id!r} failed to start: {failure.reason!r}",
            ) from None

    async def _call_terminate_child(self, key: Any) -> None:
        if self._template is not None:
            child = self._by_pid.get(key) if isinstance(key, Pid) else None
            if child is None:
                raise SupervisorError(
                    "not_found", f"supervisor {self.pid} has no running child {key!r}"
                )
            self._dynamic.pop(child, None)
            await self._shut_down_child(child)
            return
        child = self._static_child(key)
        if child.pid is not None:
            await self._shut_down_child(child)
        child.restarting = False
        if child.spec.restart == "temporary":
            self._children.remove(child)

    async def _call_restart_child(self, child_id: Hashable) -> Pid | None:
        child = self._static_child(child_id)
        if child.pid is not None:
            raise SupervisorError("running", f"child {child_id!r} is running")
        if child.restarting:
            raise SupervisorError("restarting", f"child {child_id!r} is being restarted")
        return await self._start_or_raise(child)

    def _call_delete_child(self, child_id: Hashable) -> None:
        child = self._static_child(child_id)
        if child.pid is not None:
            raise SupervisorError(
                "running", f"child {child_id!r} is running; terminate_child it first"
            )
        if child.restarting:
            raise SupervisorError("restarting", f"child {child_id!r} is being restarted")
        self._children.remove(child)


# -- the API --------------------------------------------------------------------------------


def _call(sup: ActorRef | Pid, op: str, *args: Any) -> LoopFuture[Any]:
    pid = sup if isinstance(sup, Pid) else sup.pid
    return _process.ask(pid, _Call(op, args))


def which_children(sup: ActorRef | Pid) -> LoopFuture[list[ChildInfo]]:
    """The children, in start order, as :class:`ChildInfo` rows ``(id, pid, type)``."""
    return _call(sup, "which_children")


def count_children(sup: ActorRef | Pid) -> LoopFuture[dict[str, int]]:
    """Counts as OTP gives them: ``specs``, ``active``, ``supervisors``, ``workers``."""
    return _call(sup, "count_children")


def start_child(sup: ActorRef | Pid, spec_or_args: ChildSpec | Sequence[Any]) -> LoopFuture[Any]:
    """Add and start a child; the future's value is its pid (None if it said ignore).

    Takes a :class:`ChildSpec`, or for simple_one_for_one a list or tuple of extra
    arguments for the template's ``start``. Raises :class:`SupervisorError` with
    ``("already_started", pid)``, ``"already_present"``, or
    ``("failed_to_start_child", id, reason)`` (then the spec is not kept).
    """
    return _call(sup, "start_child", spec_or_args)


def terminate_child(sup: ActorRef | Pid, id_or_pid: Any) -> LoopFuture[None]:
    """Stop a child by its shutdown rule: by id (spec kept unless temporary), or for
    simple_one_for_one by pid (removed). Raises :class:`SupervisorError` ``not_found``."""
    return _call(sup, "terminate_child", id_or_pid)


def restart_child(sup: ActorRef | Pid, child_id: Hashable) -> LoopFuture[Any]:
    """Start again a terminated child whose spec is kept; the future's value is its pid.

    Raises :class:`SupervisorError`: ``running``, ``restarting``, ``not_found``,
    ``simple_one_for_one``, or ``("failed_to_start_child", id, reason)``.
    """
    return _call(sup, "restart_child", child_id)


def delete_child(sup: ActorRef | Pid, child_id: Hashable) -> LoopFuture[None]:
    """Forget the spec of a terminated child. Raises :class:`SupervisorError`:
    ``running``, ``restarting``, ``not_found``, ``simple_one_for_one``."""
    return _call(sup, "delete_child", child_id)


def get_childspec(sup: ActorRef | Pid, id_or_pid: Any) -> LoopFuture[ChildSpec]:
    """The spec of a child, by id (or pid for simple_one_for_one)."""
    return _call(sup, "get_childspec", id_or_pid)
