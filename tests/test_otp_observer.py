"""The actor lifecycle observer, mailbox_stats, and name-addressed send/ask.

Local tests run on this process's scheduler; the observer is process-wide, so each test
installs its own recording observer (removed after it) and looks only at the events of
the actors it made. The cross-process tests start a real worker process, as
test_dist.py does; the actor classes they spawn there are defined here (workers have
tests/ on their PYTHONPATH, so ``test_otp_observer:Named`` is importable there).
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import NODE, PYTHONPATH, ROOT_DIR, TestNode
from helpers import ProbeHandle, wait_until
from pykka import ActorDeadError

import otp
from otp import supervisor as sup_mod
from otp.actor import is_crash
from otp.dist import spawn_on
from otp.scheduler import Scheduler
from otp.supervisor import ChildSpec, Supervisor

pytestmark = pytest.mark.timeout(15)

T = 5.0  # seconds: deadline for any single wait


class Boom(Exception):
    pass


# -- actors ---------------------------------------------------------------------------------


class Worker(otp.LoopActor):
    """Crashes on 'crash', stops on 'stop', answers anything else with itself."""

    pykka_registry = False

    def __init__(self, *_args: Any) -> None:
        super().__init__()
        self.started = False

    def on_start(self) -> None:
        self.started = True

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom("worker crashed")
        if message == "stop":
            self.stop()
        return message


class Plain(otp.LoopActor):
    """No on_start at all."""

    pykka_registry = False

    def on_receive(self, message: Any) -> Any:
        return message


class SlowStart(otp.LoopActor):
    """An async on_start that waits for ``gate``."""

    pykka_registry = False

    def __init__(self, gate: otp.LoopFuture[Any]) -> None:
        super().__init__()
        self.gate = gate

    async def on_start(self) -> None:
        await self.gate


class FailsToStart(otp.LoopActor):
    pykka_registry = False

    def on_start(self) -> None:
        raise Boom("no start")


class Gated(otp.LoopActor):
    """On 'hold', suspends until ``gate`` is set, so later messages queue up."""

    pykka_registry = False

    def __init__(self, gate: otp.LoopFuture[Any], holding: threading.Event) -> None:
        super().__init__()
        self.gate = gate
        self.holding = holding

    async def on_receive(self, message: Any) -> Any:
        if message == "hold":
            self.holding.set()
            await self.gate
        return message


class Named(otp.LoopActor):
    """Registers itself as ``name``; echoes asks and reports tells as (pid, message) to
    ``report_to``. On ('send_named', node, worker, name, msg) it calls otp.send_named,
    on ('ask_named', node, worker, name, msg) it returns what otp.ask_named answers (or
    the error's text) -- so the calls can be made from its process, on its loop."""

    pykka_registry = False

    def __init__(self, name: str, report_to: otp.Pid | None = None) -> None:
        super().__init__()
        self.name = name
        self.report_to = report_to

    def on_start(self) -> None:
        otp.register(self.name, self.pid)

    async def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and message[0] == "send_named":
            otp.send_named(*message[1:])
            return "sent"
        if isinstance(message, tuple) and message[0] == "ask_named":
            try:
                return ("ok", await otp.ask_named(*message[1:]))
            except ActorDeadError as error:
                return ("dead", str(error))
        if self.report_to is not None:
            otp.send(self.report_to, (self.pid, message))
        return message


# -- the observer -----------------------------------------------------------------------------


class RecordingObserver:
    """Records every call, with the thread it came on; the test reads ``events``."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.threads: set[int] = set()

    def actor_started(self, actor: otp.LoopActor) -> None:
        self.threads.add(threading.get_ident())
        state = actor.info()["state"]
        self.events.append(("started", actor.pid, type(actor).__name__, state))

    def actor_stopped(self, actor: otp.LoopActor, reason: Any) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(("stopped", actor.pid, reason))

    def child_restarted(self, supervisor: otp.LoopActor, child_id: Any, kind: str) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(("restarted", supervisor.pid, child_id, kind))

    def of(self, pid: otp.Pid) -> list[tuple[Any, ...]]:
        """The started/stopped events of ``pid``, in order."""
        return [e for e in list(self.events) if e[0] != "restarted" and e[1] == pid]

    def stop_reason(self, pid: otp.Pid) -> Any:
        """Wait for the stopped event of ``pid`` and return its reason."""
        found = wait_until(
            lambda: [e for e in self.of(pid) if e[0] == "stopped"], T,
            what=lambda: f"stopped event of {pid}; events: {self.of(pid)}",
        )
        assert len(found) == 1, found
        return found[0][2]

    def restarts(self, sup_pid: otp.Pid) -> list[tuple[Any, ...]]:
        return [e[2:] for e in list(self.events) if e[0] == "restarted" and e[1] == sup_pid]


class RaisingObserver:
    def __init__(self) -> None:
        self.calls = 0

    def actor_started(self, actor: otp.LoopActor) -> None:
        self.calls += 1
        raise RuntimeError("observer broke on start")

    def actor_stopped(self, actor: otp.LoopActor, reason: Any) -> None:
        self.calls += 1
        raise RuntimeError("observer broke on stop")

    def child_restarted(self, supervisor: otp.LoopActor, child_id: Any, kind: str) -> None:
        self.calls += 1
        raise RuntimeError("observer broke on restart")


def _set_observer(observer: Any) -> None:
    scheduler = otp.current()
    scheduler.run_sync(setattr, scheduler, "observer", observer)


@pytest.fixture
def observer() -> Iterator[RecordingObserver]:
    recorder = RecordingObserver()
    _set_observer(recorder)
    yield recorder
    _set_observer(None)


def _started(observer: RecordingObserver, pid: otp.Pid) -> tuple[Any, ...]:
    found = wait_until(
        lambda: [e for e in observer.of(pid) if e[0] == "started"], T,
        what=lambda: f"started event of {pid}; events: {observer.of(pid)}",
    )
    assert len(found) == 1, found
    return found[0]


# -- is_crash ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "crash"),
    [
        ("normal", False),
        ("shutdown", False),
        (("shutdown", "whatever"), False),
        (("shutdown", ("failed_to_start_child", "x", "y")), False),
        ("killed", True),
        ("noproc", True),
        ("noconnection", True),
        (Boom("x"), True),
        (("shutdown", 1, 2), True),
        (("other", "normal"), True),
        (None, True),
    ],
)
def test_is_crash_tells_orderly_ends_from_crashes(reason: Any, crash: bool) -> None:
    """normal, shutdown and (shutdown, _) are orderly; every other reason is a crash."""
    assert is_crash(reason) is crash
    assert otp.is_crash is is_crash


# -- started / stopped --------------------------------------------------------------------------


def test_started_then_stopped_normal(observer: RecordingObserver) -> None:
    """actor_started comes once on_start returned (actor running); stop() gives 'normal'."""
    ref = Worker.start()
    assert ref.ask("hi", timeout=T) == "hi"
    event = _started(observer, ref.pid)
    assert event == ("started", ref.pid, "Worker", "running")
    assert observer.of(ref.pid) == [event]  # nothing else yet
    ref.stop()
    reason = observer.stop_reason(ref.pid)
    assert reason == "normal" and not is_crash(reason)
    assert observer.of(ref.pid)[0][0] == "started"
    assert observer.threads == {otp.current()._thread_id}


def test_started_for_actors_without_on_start_and_after_an_async_on_start(
    observer: RecordingObserver,
) -> None:
    """An actor without on_start is reported; an async on_start is reported only when
    its coroutine has finished."""
    plain = Plain.start()
    assert _started(observer, plain.pid)[2:] == ("Plain", "running")

    gate: otp.LoopFuture[Any] = otp.LoopFuture()
    slow = SlowStart.start(gate)
    # Its on_start is suspended: a round trip through the loop, and still no event.
    wait_until(lambda: otp.current().run_sync(lambda: otp.current().lookup(slow.pid).info())
               ["state"] == "starting", T, what="SlowStart suspended in on_start")
    assert observer.of(slow.pid) == []
    otp.current().run_sync(gate.set, None)
    assert _started(observer, slow.pid)[2:] == ("SlowStart", "running")
    plain.stop()
    slow.stop()
    assert observer.stop_reason(plain.pid) == "normal"
    assert observer.stop_reason(slow.pid) == "normal"


def test_stopped_with_the_exception_of_a_crash(observer: RecordingObserver) -> None:
    """A tell handler's exception: actor_stopped once, with that exception."""
    ref = Worker.start()
    _started(observer, ref.pid)
    ref.tell("crash")
    reason = observer.stop_reason(ref.pid)
    assert isinstance(reason, Boom) and str(reason) == "worker crashed"
    assert is_crash(reason)


def test_a_failed_start_is_stopped_but_never_started(observer: RecordingObserver) -> None:
    """on_start raising: actor_stopped with the exception, no actor_started."""
    ref = FailsToStart.start()
    with pytest.raises(otp.StartError):
        otp.started(ref).get(timeout=T)
    reason = observer.stop_reason(ref.pid)
    assert isinstance(reason, Boom)
    assert [e[0] for e in observer.of(ref.pid)] == ["stopped"]


def test_stopped_by_kill_and_by_shutdown(observer: RecordingObserver) -> None:
    """exit 'kill' reports 'killed' (a crash); exit 'shutdown' reports 'shutdown' (not)."""
    killed, shut = Worker.start(), Worker.start()
    _started(observer, killed.pid)
    _started(observer, shut.pid)
    otp.exit(killed.pid, "kill")
    otp.exit(shut.pid, "shutdown")
    assert observer.stop_reason(killed.pid) == "killed"
    assert is_crash("killed")
    assert observer.stop_reason(shut.pid) == "shutdown"
    other = Worker.start()
    _started(observer, other.pid)
    otp.exit(other.pid, ("shutdown", "bye"))
    assert observer.stop_reason(other.pid) == ("shutdown", "bye")


# -- supervisors ------------------------------------------------------------------------------


def _children(sup: otp.ActorRef) -> list[Any]:
    return sup_mod.which_children(sup).get(timeout=T)


def test_one_for_one_restart_is_reported_with_the_kind(observer: RecordingObserver) -> None:
    """A crashed child is restarted: child_restarted(sup, id, 'Worker'); not on the
    first start, and the child's own death and new start are reported too."""
    sup = Supervisor.start(
        "one_for_one", 3, 5,
        [ChildSpec("w", Worker.start), ChildSpec("other", Plain.start)],
    )
    otp.started(sup).get(timeout=T)
    [(_, first, _), _] = _children(sup)
    _started(observer, first)
    assert observer.restarts(sup.pid) == []  # the first start is not a restart
    otp.send(first, "crash")
    wait_until(lambda: observer.restarts(sup.pid), T, what="child_restarted")
    assert observer.restarts(sup.pid) == [("w", "Worker")]
    assert isinstance(observer.stop_reason(first), Boom)
    [(_, second, _), _] = _children(sup)
    assert second != first
    _started(observer, second)
    # A kill is a crash too; the second restart is reported the same way.
    otp.exit(second, "kill")
    wait_until(lambda: len(observer.restarts(sup.pid)) == 2, T, what="second restart")
    assert observer.restarts(sup.pid) == [("w", "Worker"), ("w", "Worker")]
    sup.stop()
    assert observer.stop_reason(sup.pid) == "normal"


def test_simple_one_for_one_transient_restart_is_reported(observer: RecordingObserver) -> None:
    """A dynamic transient child that crashes is restarted and reported under the
    template's id; one that stops normally is not restarted, so not reported."""
    template = ChildSpec("session", functools.partial(Worker.start), restart="transient")
    sup = Supervisor.start("simple_one_for_one", 5, 5, [template])
    otp.started(sup).get(timeout=T)
    crasher = sup_mod.start_child(sup, ["a"]).get(timeout=T)
    quitter = sup_mod.start_child(sup, ["b"]).get(timeout=T)
    otp.send(crasher, "crash")
    wait_until(lambda: observer.restarts(sup.pid), T, what="child_restarted")
    assert observer.restarts(sup.pid) == [("session", "Worker")]
    otp.send(quitter, "stop")
    assert observer.stop_reason(quitter) == "normal"
    wait_until(lambda: len(_children(sup)) == 1, T, what="the normal exit forgotten")
    assert observer.restarts(sup.pid) == [("session", "Worker")]
    sup.stop()


# -- an observer that raises ------------------------------------------------------------------


def test_a_raising_observer_is_logged_and_breaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every failing call logs one actor_observer_crashed record; actors start, answer,
    crash, die and are restarted as without an observer."""
    caplog.set_level(logging.ERROR, logger="otp")
    raising = RaisingObserver()
    _set_observer(raising)
    try:
        ref = Worker.start()
        assert otp.started(ref).get(timeout=T) == ref.pid
        assert ref.ask("still fine", timeout=T) == "still fine"
        sup = Supervisor.start("one_for_one", 3, 5, [ChildSpec("w", Worker.start)])
        otp.started(sup).get(timeout=T)
        [(_, child, _)] = _children(sup)
        otp.send(child, "crash")
        wait_until(lambda: _children(sup)[0][1] not in (child, "restarting", None), T,
                   what="child restarted despite the observer")
        [(_, new_child, _)] = _children(sup)
        assert otp.ask(new_child, "hello").get(timeout=T) == "hello"
        ref.stop()
        assert not ref.is_alive()
        sup.stop()
        assert not sup.is_alive()
    finally:
        _set_observer(None)
    records = [r for r in caplog.records if getattr(r, "what", None) == "actor_observer_crashed"]
    assert len(records) == raising.calls  # once per failed call, nothing swallowed silently
    events = {r.event for r in records}  # type: ignore[attr-defined]
    assert events == {"actor_started", "actor_stopped", "child_restarted"}
    assert all(r.name == "otp" and r.exc_info for r in records)


# -- mailbox_stats ----------------------------------------------------------------------------


def test_mailbox_stats_sees_a_backlog() -> None:
    """Messages queued behind a suspended handler show in total, max and max_kind."""
    scheduler = otp.current()
    gate: otp.LoopFuture[Any] = otp.LoopFuture()
    holding = threading.Event()
    ref = Gated.start(gate, holding)
    ref.tell("hold")
    assert holding.wait(T)
    for i in range(250):
        ref.tell(i)
    stats = scheduler.run_sync(scheduler.mailbox_stats)
    assert stats["max"] == 250 and stats["max_kind"] == "Gated"
    assert stats["total"] >= 250
    scheduler.run_sync(gate.set, None)
    wait_until(lambda: scheduler.run_sync(lambda: len(scheduler.lookup(ref.pid).actor_inbox))
               == 0, T, what="backlog handled")
    after = scheduler.run_sync(scheduler.mailbox_stats)
    assert after["max_kind"] != "Gated" and after["max"] < 250
    ref.stop()


def test_mailbox_stats_of_a_process_without_messages() -> None:
    """No actors (or none with messages): zeros and no kind."""
    scheduler = Scheduler()
    try:
        assert scheduler.mailbox_stats() == {"total": 0, "max": 0, "max_kind": None}
    finally:
        scheduler.loop.close()


# -- send_named / ask_named in this process ---------------------------------------------------


def _here() -> tuple[str, int]:
    scheduler = otp.current()
    return scheduler.node, scheduler.worker


def test_send_and_ask_named_in_this_process(probe: ProbeHandle) -> None:
    """A local name is resolved here: ask_named answers, send_named delivers."""
    node, worker = _here()
    named = Named.start("obs-local-echo", probe.pid)
    otp.started(named).get(timeout=T)
    assert otp.ask_named(node, worker, "obs-local-echo", "hi").get(timeout=T) == "hi"
    assert probe.next() == (named.pid, "hi")
    otp.send_named(node, worker, "obs-local-echo", "told")
    assert probe.next() == (named.pid, "told")
    # From an actor's handler, on the loop's thread.
    helper = Named.start("obs-local-helper")
    msg = ("ask_named", node, worker, "obs-local-echo", "from the loop")
    assert helper.ask(msg, timeout=T) == ("ok", "from the loop")
    assert probe.next() == (named.pid, "from the loop")
    named.stop()
    helper.stop()


def test_unknown_local_name_fails_ask_and_drops_send() -> None:
    """ask_named to a name nobody holds fails at once with ActorDeadError naming it (also
    after its holder died); send_named to it is dropped without error."""
    node, worker = _here()
    with pytest.raises(ActorDeadError, match="obs-nobody"):
        otp.ask_named(node, worker, "obs-nobody", "anyone?").get(timeout=T)
    otp.send_named(node, worker, "obs-nobody", "dropped")
    named = Named.start("obs-short-lived")
    otp.started(named).get(timeout=T)
    named.stop()
    with pytest.raises(ActorDeadError, match="obs-short-lived"):
        otp.ask_named(node, worker, "obs-short-lived", "gone?").get(timeout=T)
    helper = Named.start("obs-local-asker")
    answer = helper.ask(("ask_named", node, worker, "obs-nobody", "x"), timeout=T)
    assert answer[0] == "dead" and "obs-nobody" in answer[1]
    helper.stop()


# -- send_named / ask_named across processes --------------------------------------------------


@pytest.fixture
def worker1(test_node: TestNode) -> Iterator[TestNode]:
    """Worker process 1 of node test@localhost, stopped after the test."""
    test_node.start_worker(1)
    yield test_node
    test_node.stop_workers()
    wait_until(lambda: (NODE, 1) not in test_node.processes(), what="worker 1 gone")


def _spawn_named(name: str, report_to: otp.Pid | None = None) -> otp.Pid:
    pid = spawn_on((NODE, 1), "test_otp_observer:Named", name, report_to).get(timeout=10)
    # Its on_start (which registers the name) runs before any message it gets.
    assert otp.ask(pid, "ping").get(timeout=T) == "ping"
    return pid


def _ask_error(node: str, worker: int, name: str) -> BaseException | None:
    """The error of an ask_named to ``name`` (None if it was answered)."""
    try:
        otp.ask_named(node, worker, name, "still there?").get(timeout=T)
    except ActorDeadError as error:
        return error
    return None


@pytest.mark.timeout(60)
def test_send_and_ask_named_reach_another_process(
    worker1: TestNode, probe: ProbeHandle
) -> None:
    """Names are resolved in the worker: ask_named answers, send_named arrives in order
    with sends by pid."""
    remote = _spawn_named("obs-remote-echo", probe.pid)
    assert remote.worker == 1
    assert probe.next() == (remote, "ping")
    answer = otp.ask_named(NODE, 1, "obs-remote-echo", ("hello", [1, 2])).get(timeout=T)
    assert answer == ("hello", [1, 2])
    assert probe.next() == (remote, ("hello", [1, 2]))
    for i in range(5):
        otp.send_named(NODE, 1, "obs-remote-echo", ("named", i))
        otp.send(remote, ("pid", i))
    got = [probe.next() for _ in range(10)]
    expected = [(remote, (kind, i)) for i in range(5) for kind in ("named", "pid")]
    assert got == expected


@pytest.mark.timeout(60)
def test_named_calls_from_another_process_reach_names_here(
    worker1: TestNode, probe: ProbeHandle
) -> None:
    """An actor in the worker reaches a name registered in this process (worker 0)."""
    otp.register("obs-test-probe", probe.pid)
    local = Named.start("obs-test-echo")
    otp.started(local).get(timeout=T)
    remote = _spawn_named("obs-remote-caller")
    try:
        sent = otp.ask(remote, ("send_named", NODE, 0, "obs-test-probe", "from worker 1"))
        assert sent.get(timeout=T) == "sent"
        assert probe.next() == "from worker 1"
        asked = otp.ask(remote, ("ask_named", NODE, 0, "obs-test-echo", "round trip"))
        assert asked.get(timeout=T) == ("ok", "round trip")
        asked = otp.ask(remote, ("ask_named", NODE, 0, "obs-not-here", "x"))
        kind, text = asked.get(timeout=T)
        assert kind == "dead" and "obs-not-here" in text
    finally:
        otp.unregister("obs-test-probe")
        local.stop()


@pytest.mark.timeout(60)
def test_unknown_remote_name_fails_the_ask_with_its_name(worker1: TestNode) -> None:
    """An ask to a name not registered in the worker fails (does not hang) with an
    ActorDeadError naming it; a send to it is dropped; so is an ask whose holder died."""
    with pytest.raises(ActorDeadError, match="obs-no-such-name"):
        otp.ask_named(NODE, 1, "obs-no-such-name", "anyone?").get(timeout=T)
    otp.send_named(NODE, 1, "obs-no-such-name", "dropped")
    remote = _spawn_named("obs-remote-short")
    otp.exit(remote, "kill")
    wait_until(
        lambda: _ask_error(NODE, 1, "obs-remote-short") is not None, T,
        what="the name freed in the worker",
    )
    assert "obs-remote-short" in str(_ask_error(NODE, 1, "obs-remote-short"))


@pytest.mark.timeout(60)
def test_ask_named_to_a_process_not_in_the_cluster_fails(test_node: TestNode) -> None:
    """A process that never joins: the ask fails after the node timeout, naming the name."""
    with pytest.raises(ActorDeadError, match="obs-ghost"):
        otp.ask_named(NODE, 77, "obs-ghost", "hello?").get(timeout=test_node.dist.node_timeout + T)


def test_named_calls_without_distribution_fail_like_dead_pids() -> None:
    """In a process that is not distributed, another process's name cannot be reached:
    ask fails naming it, send is dropped. (A fresh interpreter: this test process may
    already be distributed by the session's test_node.)"""
    code = (
        "import otp, pykka\n"
        "try:\n"
        "    otp.ask_named('other@host', 3, 'obs-elsewhere', 'x').get(timeout=5)\n"
        "except pykka.ActorDeadError as error:\n"
        "    print('dead:', error)\n"
        "otp.send_named('other@host', 3, 'obs-elsewhere', 'dropped')\n"
        "print('sent')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT_DIR, capture_output=True, text=True,
        timeout=30, env=dict(os.environ, PYTHONPATH=PYTHONPATH),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("dead:") and "obs-elsewhere" in lines[0], lines
    assert lines[1:] == ["sent"]
