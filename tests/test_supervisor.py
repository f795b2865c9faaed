"""otp.supervisor, one behaviour per test after OTP's supervisor_SUITE."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import ProbeHandle, wait_until

import otp
from otp import supervisor as sup_mod
from otp.supervisor import ChildSpec, Supervisor, SupervisorError

pytestmark = pytest.mark.timeout(15)

T = 5.0  # seconds: deadline for any single wait


class Boom(Exception):
    pass


class Recorder:
    """What the test's actors did: ("start"|"stop", name) events and each name's last pid."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.pids: dict[str, otp.Pid] = {}

    def stops(self) -> list[str]:
        return [name for event, name in self.events if event == "stop"]

    def starts(self) -> list[str]:
        return [name for event, name in self.events if event == "start"]


class Worker(otp.LoopActor):
    """Records start and stop; crashes on 'crash', stops on 'stop', hangs on 'hang'."""

    pykka_registry = False

    def __init__(
        self, name: str, rec: Recorder, *, trap: bool = False, fail_start: bool = False
    ) -> None:
        super().__init__()
        self.name, self.rec, self.fail_start = name, rec, fail_start
        self.trap_exit = trap

    def on_start(self) -> None:
        self.rec.events.append(("start", self.name))
        self.rec.pids[self.name] = self.pid
        if self.fail_start:
            raise Boom(f"{self.name} failed to start")

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom(f"{self.name} crashed")
        if message == "stop":
            self.stop()
        elif message == "hang":
            return self._hang()
        return None

    async def _hang(self) -> None:
        await asyncio.sleep(3600)

    def on_stop(self) -> None:
        self.rec.events.append(("stop", self.name))


class RecordingSupervisor(Supervisor):
    """A supervisor that records its own start and stop among its children's events."""

    def __init__(self, name: str, rec: Recorder, *args: Any) -> None:
        super().__init__(*args)
        self.name, self.rec = name, rec

    async def on_start(self) -> None:
        self.rec.events.append(("start", self.name))
        self.rec.pids[self.name] = self.pid
        await super().on_start()

    def on_stop(self) -> None:
        super().on_stop()
        self.rec.events.append(("stop", self.name))


def worker(name: str, rec: Recorder, **kwargs: Any) -> ChildSpec:
    """A child spec for a Worker called ``name``; kwargs go to the spec except trap."""
    trap = kwargs.pop("trap", False)
    return ChildSpec(name, functools.partial(Worker.start, name, rec, trap=trap), **kwargs)


def get(future: Any) -> Any:
    return future.get(timeout=T)


def pids(sup: otp.ActorRef) -> dict[Any, Any]:
    return {info.id: info.pid for info in get(sup_mod.which_children(sup))}


def restarted(sup: otp.ActorRef, child_id: Any, old: otp.Pid) -> otp.Pid:
    """Wait until ``child_id`` runs under a pid other than ``old``; return it."""

    def new_pid() -> Any:
        pid = pids(sup).get(child_id)
        return pid if isinstance(pid, otp.Pid) and pid != old else None

    return wait_until(new_pid, T, f"{child_id} restarted")


def error_reason(future: Any) -> Any:
    with pytest.raises(SupervisorError) as raised:
        get(future)
    return raised.value.reason


@pytest.fixture
def start_sup() -> Iterator[Callable[..., otp.ActorRef]]:
    """Start a supervisor and wait for its start; stopped at teardown if still alive."""
    refs: list[otp.ActorRef] = []

    def start(*args: Any, cls: type[Supervisor] = Supervisor, **kwargs: Any) -> otp.ActorRef:
        ref = cls.start(*args, **kwargs)
        refs.append(ref)
        get(otp.started(ref))
        return ref

    yield start
    for ref in reversed(refs):
        ref.stop(timeout=T)


# -- child specs and flags -------------------------------------------------------------------


def test_child_spec_defaults_follow_otp() -> None:
    """A spec defaults to permanent, worker, shutdown 5000; a supervisor to infinity."""
    w = ChildSpec("w", Worker.start)
    s = ChildSpec("s", Supervisor.start, type="supervisor")
    assert (w.restart, w.type, w.shutdown) == ("permanent", "worker", 5000)
    assert s.shutdown == "infinity"


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"restart": "sometimes"}, ValueError, "restart type 'sometimes'"),
        ({"shutdown": -1}, ValueError, "shutdown -1"),
        ({"shutdown": "later"}, ValueError, "shutdown 'later'"),
        ({"shutdown": True}, ValueError, "shutdown True"),
        ({"type": "manager"}, ValueError, "type 'manager'"),
        ({"start": "not callable"}, TypeError, "start must be callable"),
        ({"id": ["unhashable"]}, TypeError, "hashable"),
    ],
)
def test_invalid_child_specs_are_refused(kwargs: dict[str, Any], error: type, words: str) -> None:
    """An invalid child spec field raises at construction, naming the field and value."""
    fields: dict[str, Any] = {"id": "c", "start": Worker.start, **kwargs}
    with pytest.raises(error, match=words):
        ChildSpec(**fields)


def test_invalid_supervisor_flags_are_refused() -> None:
    """Bad strategy, intensity, period, duplicate ids or a bad dynamic template raise."""
    rec = Recorder()
    with pytest.raises(ValueError, match="strategy 'one_for_some'"):
        Supervisor.start("one_for_some")
    with pytest.raises(ValueError, match="intensity -1"):
        Supervisor.start("one_for_one", -1)
    with pytest.raises(ValueError, match="period 0"):
        Supervisor.start("one_for_one", 1, 0)
    with pytest.raises(ValueError, match="duplicate child spec id 'a'"):
        Supervisor.start("one_for_one", 1, 5, [worker("a", rec), worker("a", rec)])
    with pytest.raises(ValueError, match="exactly one child spec"):
        Supervisor.start("simple_one_for_one", 1, 5, [worker("a", rec), worker("b", rec)])
    with pytest.raises(TypeError, match="expected a ChildSpec"):
        Supervisor.start("one_for_one", 1, 5, ["a"])
    assert rec.events == []


# -- starting and stopping -------------------------------------------------------------------


def test_children_start_left_to_right_and_stop_right_to_left(start_sup: Any) -> None:
    """Children start in spec order and stop in reverse, all dead when stop() returns."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker(n, rec) for n in "abc"])
    assert rec.starts() == ["a", "b", "c"]
    children = pids(sup)
    assert list(children) == ["a", "b", "c"]
    assert all(otp.current().lookup(p) is not None for p in children.values())
    for pid in children.values():
        assert otp.current().lookup(pid).parent == sup.pid  # type: ignore[union-attr]
    sup.stop(timeout=T)
    assert rec.stops() == ["c", "b", "a"]
    assert not any(otp.is_alive(p) for p in children.values())


def test_child_failing_at_start_fails_the_supervisor_start(start_sup: Any) -> None:
    """A child failing in on_start stops the started ones and fails the supervisor's start."""
    rec = Recorder()
    specs = [worker("a", rec), worker("b", rec), worker("c", rec)]
    specs[1] = ChildSpec("b", functools.partial(Worker.start, "b", rec, fail_start=True))
    with pytest.raises(otp.StartError) as raised:
        start_sup("one_for_one", 1, 5, specs)
    reason = raised.value.reason
    assert reason[0] == "shutdown" and reason[1][:2] == ("failed_to_start_child", "b")
    assert isinstance(reason[1][2], Boom)
    assert rec.events == [("start", "a"), ("start", "b"), ("stop", "a")]
    assert not otp.is_alive(rec.pids["a"])


def test_start_function_raising_fails_the_supervisor_start(start_sup: Any) -> None:
    """A start callable that raises is a failed start; the exception is the reason."""

    def bad_start() -> otp.ActorRef:
        raise Boom("no such thing")

    with pytest.raises(otp.StartError) as raised:
        start_sup("one_for_one", 1, 5, [ChildSpec("bad", bad_start)])
    assert raised.value.reason[1][:2] == ("failed_to_start_child", "bad")
    assert isinstance(raised.value.reason[1][2], Boom)


def test_child_whose_start_returns_none_is_ignored(start_sup: Any) -> None:
    """A start returning None is OTP's ignore: no process, the spec is kept."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [ChildSpec("nothing", lambda: None), worker("a", rec)])
    assert pids(sup)["nothing"] is None
    assert get(sup_mod.count_children(sup))["active"] == 1


def test_supervisor_defined_by_init() -> None:
    """A subclass may return its flags and specs from init(), run as it starts."""
    rec = Recorder()

    class AppSup(Supervisor):
        def init(self) -> Any:
            return {"strategy": "one_for_all", "intensity": 2}, [worker("a", rec), worker("b", rec)]

    sup = AppSup.start()
    get(otp.started(sup))
    a, b = rec.pids["a"], rec.pids["b"]
    otp.send(a, "crash")
    restarted(sup, "a", a)
    restarted(sup, "b", b)
    sup.stop(timeout=T)


def test_nested_supervisors_stop_depth_first(start_sup: Any) -> None:
    """Stopping a tree stops each subtree completely before its left sibling."""
    rec = Recorder()
    sub = ChildSpec(
        "sub",
        functools.partial(
            RecordingSupervisor.start,
            "sub",
            rec,
            "one_for_one",
            1,
            5,
            [worker("w2", rec), worker("w3", rec)],
        ),
        type="supervisor",
    )
    top = start_sup(
        "top",
        rec,
        "one_for_one",
        1,
        5,
        [worker("w1", rec), sub, worker("w4", rec)],
        cls=RecordingSupervisor,
    )
    assert rec.starts() == ["top", "w1", "sub", "w2", "w3", "w4"]
    top.stop(timeout=T)
    assert rec.stops() == ["w4", "w3", "w2", "sub", "w1", "top"]


def test_killing_the_supervisor_kills_its_children(start_sup: Any, probe: ProbeHandle) -> None:
    """A killed supervisor runs nothing; its children die through their links."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec), worker("b", rec, trap=True)])
    downs = [probe.monitor(rec.pids[n]) for n in "ab"]
    otp.exit(sup.pid, "kill")
    assert [probe.down(m) for m in downs] == ["killed", "killed"]


def test_exit_signals_from_strangers_are_ignored(start_sup: Any) -> None:
    """An exit signal from a process that is neither child nor parent changes nothing."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec)])
    before = pids(sup)
    otp.exit(sup.pid, Boom("not yours"))
    otp.send(sup.pid, "an unexpected message")
    assert pids(sup) == before and sup.is_alive()


# -- restart types ----------------------------------------------------------------------------


def test_permanent_child_is_restarted_after_a_crash(start_sup: Any) -> None:
    """A crashed permanent child runs again under a new pid."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec)])
    old = rec.pids["a"]
    otp.send(old, "crash")
    new = restarted(sup, "a", old)
    assert otp.is_alive(new) and not otp.is_alive(old)
    assert otp.current().lookup(new).parent == sup.pid  # type: ignore[union-attr]


def test_permanent_child_is_restarted_after_a_normal_exit(start_sup: Any) -> None:
    """A permanent child is restarted even when it stops normally."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec)])
    old = rec.pids["a"]
    otp.send(old, "stop")
    restarted(sup, "a", old)


def test_transient_child_is_not_restarted_after_a_normal_exit(start_sup: Any) -> None:
    """A transient child that exits normally, or with shutdown, stays down with its spec."""
    rec = Recorder()
    sup = start_sup(
        "one_for_one",
        1,
        5,
        [worker("a", rec, restart="transient"), worker("b", rec, restart="transient")],
    )
    otp.send(rec.pids["a"], "stop")
    otp.exit(rec.pids["b"], ("shutdown", "asked to"))
    wait_until(lambda: pids(sup) == {"a": None, "b": None}, T, "both down")
    assert rec.starts() == ["a", "b"]
    assert get(sup_mod.count_children(sup)) == {
        "specs": 2,
        "active": 0,
        "supervisors": 0,
        "workers": 2,
    }


def test_transient_child_is_restarted_after_a_crash(start_sup: Any) -> None:
    """A transient child that crashes is restarted."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec, restart="transient")])
    old = rec.pids["a"]
    otp.exit(old, Boom("boom"))
    restarted(sup, "a", old)


def test_temporary_child_is_never_restarted(start_sup: Any) -> None:
    """A temporary child that crashes is not restarted and its spec is dropped."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec, restart="temporary"), worker("b", rec)])
    otp.send(rec.pids["a"], "crash")
    wait_until(lambda: list(pids(sup)) == ["b"], T, "temporary child dropped")
    assert rec.starts() == ["a", "b"]


# -- strategies -------------------------------------------------------------------------------


def test_one_for_one_restarts_only_the_failed_child(start_sup: Any) -> None:
    """one_for_one: siblings of the crashed child keep their pids."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker(n, rec) for n in "abc"])
    before = pids(sup)
    otp.send(before["b"], "crash")
    restarted(sup, "b", before["b"])
    after = pids(sup)
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert rec.starts() == ["a", "b", "c", "b"]


def test_one_for_all_restarts_all_children_in_order(start_sup: Any) -> None:
    """one_for_all: the others stop right to left, then all start left to right."""
    rec = Recorder()
    sup = start_sup("one_for_all", 1, 5, [worker(n, rec) for n in "abc"])
    before = pids(sup)
    otp.send(before["b"], "crash")
    restarted(sup, "c", before["c"])
    after = pids(sup)
    assert all(after[n] != before[n] for n in "abc")
    # b crashed (no on_stop: a crash in a handler skips it), c then a were stopped.
    assert rec.events[3:] == [
        ("stop", "c"),
        ("stop", "a"),
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
    ]


def test_rest_for_one_restarts_the_failed_child_and_later_siblings(start_sup: Any) -> None:
    """rest_for_one: earlier siblings keep their pids; the failed one and later restart."""
    rec = Recorder()
    sup = start_sup("rest_for_one", 1, 5, [worker(n, rec) for n in "abcd"])
    before = pids(sup)
    otp.send(before["b"], "crash")
    restarted(sup, "d", before["d"])
    after = pids(sup)
    assert after["a"] == before["a"]
    assert all(after[n] != before[n] for n in "bcd")
    assert rec.events[4:] == [
        ("stop", "d"),
        ("stop", "c"),
        ("start", "b"),
        ("start", "c"),
        ("start", "d"),
    ]


def test_temporary_sibling_stopped_by_one_for_all_is_not_restarted(start_sup: Any) -> None:
    """A temporary child stopped because a sibling died is dropped, not restarted."""
    rec = Recorder()
    sup = start_sup("one_for_all", 1, 5, [worker("a", rec), worker("t", rec, restart="temporary")])
    old = rec.pids["a"]
    otp.send(old, "crash")
    restarted(sup, "a", old)
    assert list(pids(sup)) == ["a"]
    assert rec.starts() == ["a", "t", "a"]


# -- restart intensity ------------------------------------------------------------------------


def test_exceeding_intensity_stops_the_supervisor(
    start_sup: Any, probe: ProbeHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """More than intensity restarts in period: children stop, the supervisor exits shutdown."""
    caplog.set_level(logging.WARNING, logger="otp.supervisor")
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec), worker("b", rec)])
    mref = probe.monitor(sup.pid)
    first = rec.pids["a"]
    otp.send(first, "crash")
    otp.send(restarted(sup, "a", first), "crash")
    assert probe.down(mref) == "shutdown"
    assert rec.stops() == ["b"]  # a crashed; b was stopped by the supervisor
    assert not otp.is_alive(rec.pids["b"])
    exceeded = [
        r for r in caplog.records if getattr(r, "what", None) == "supervisor_intensity_exceeded"
    ]
    assert len(exceeded) == 1
    assert exceeded[0].supervisor == str(sup.pid) and exceeded[0].child_id == "a"  # type: ignore[attr-defined]


def test_restarts_older_than_the_period_are_forgotten(start_sup: Any, probe: ProbeHandle) -> None:
    """Only restarts within period count toward intensity (with a fake clock)."""
    clock = FakeClock()
    clocked = type("ClockedSupervisor", (Supervisor,), {"clock": clock})
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec)], cls=clocked)
    mref = probe.monitor(sup.pid)
    pid = rec.pids["a"]
    otp.send(pid, "crash")
    pid = restarted(sup, "a", pid)
    clock.now += 5.5  # the first restart is now out of the period
    otp.send(pid, "crash")
    pid = restarted(sup, "a", pid)
    otp.send(pid, "crash")  # second within the period: one too many
    assert probe.down(mref) == "shutdown"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_escalation_makes_the_parent_restart_the_child_supervisor(start_sup: Any) -> None:
    """A child supervisor that gives up exits shutdown, and its parent starts it afresh."""
    rec = Recorder()
    sub = ChildSpec(
        "sub",
        functools.partial(Supervisor.start, "one_for_one", 0, 5, [worker("w", rec)]),
        type="supervisor",
    )
    top = start_sup("one_for_one", 1, 5, [sub])
    old_sub, old_w = pids(top)["sub"], rec.pids["w"]
    otp.send(old_w, "crash")
    new_sub = restarted(top, "sub", old_sub)
    assert not otp.is_alive(old_sub)
    new_w = pids(otp.lookup(new_sub))["w"]  # type: ignore[arg-type]
    assert isinstance(new_w, otp.Pid) and new_w != old_w


def test_escalation_past_the_parents_intensity_kills_the_parent(
    start_sup: Any, probe: ProbeHandle
) -> None:
    """If the parent also has no restarts to spare, it shuts down in turn."""
    rec = Recorder()
    sub = ChildSpec(
        "sub",
        functools.partial(Supervisor.start, "one_for_one", 0, 5, [worker("w", rec)]),
        type="supervisor",
    )
    top = start_sup("one_for_one", 0, 5, [worker("sibling", rec), sub])
    sub_pid = pids(top)["sub"]
    top_down, sub_down = probe.monitor(top.pid), probe.monitor(sub_pid)
    otp.send(rec.pids["w"], "crash")
    assert probe.down(sub_down) == "shutdown"
    assert probe.down(top_down) == "shutdown"
    assert rec.stops() == ["sibling"]


def test_child_failing_to_restart_is_tried_again(start_sup: Any) -> None:
    """A restart whose start fails is retried (each try a restart) until it succeeds."""
    rec = Recorder()
    attempts = []

    def flaky_start() -> otp.ActorRef:
        attempts.append(1)
        return Worker.start("f", rec, fail_start=len(attempts) in (2, 3))

    sup = start_sup("one_for_one", 5, 5, [ChildSpec("f", flaky_start)])
    old = rec.pids["f"]
    otp.send(old, "crash")
    restarted(sup, "f", old)
    assert len(attempts) == 4


def test_child_failing_to_restart_counts_against_intensity(
    start_sup: Any, probe: ProbeHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """A child that can never restart ends in escalation, not an endless loop."""
    caplog.set_level(logging.WARNING, logger="otp.supervisor")
    rec = Recorder()
    attempts = []

    def failing_start() -> otp.ActorRef:
        attempts.append(1)
        return Worker.start("f", rec, fail_start=len(attempts) > 1)

    sup = start_sup("one_for_one", 3, 5, [ChildSpec("f", failing_start)])
    mref = probe.monitor(sup.pid)
    otp.send(rec.pids["f"], "crash")
    assert probe.down(mref) == "shutdown"
    assert len(attempts) == 4  # the first start, then 3 restarts within intensity 3
    whats = [getattr(r, "what", None) for r in caplog.records]
    assert whats.count("supervisor_child_start_failed") == 3


def test_restart_is_logged_as_a_structured_event(
    start_sup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Each restart logs what=supervisor_child_restarted with supervisor, child and reason."""
    caplog.set_level(logging.WARNING, logger="otp.supervisor")
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec)])
    old = rec.pids["a"]
    otp.send(old, "crash")
    new = restarted(sup, "a", old)
    record = wait_until(
        lambda: next(
            (r for r in caplog.records if getattr(r, "what", None) == "supervisor_child_restarted"),
            None,
        ),
        T,
    )
    assert record.supervisor == str(sup.pid) and record.child_id == "a"
    assert record.child == str(new) and "Boom" in record.reason


# -- shutdown ---------------------------------------------------------------------------------


def test_child_ignoring_shutdown_is_killed_after_its_shutdown_time(
    start_sup: Any, probe: ProbeHandle
) -> None:
    """A child that does not stop on shutdown is killed once its shutdown time is up."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("h", rec, trap=True, shutdown=200)])
    pid = rec.pids["h"]
    mref = probe.monitor(pid)
    otp.send(pid, "hang")  # trapped Exit from the supervisor waits behind this handler
    started_at = time.monotonic()
    get(sup_mod.terminate_child(sup, "h"))
    elapsed = time.monotonic() - started_at
    assert probe.down(mref) == "killed"
    assert 0.2 <= elapsed < 2.0
    assert rec.stops() == []


def test_trapping_child_stops_cleanly_on_shutdown(start_sup: Any, probe: ProbeHandle) -> None:
    """A child trapping exits takes the supervisor's shutdown as a stop, running on_stop."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("t", rec, trap=True)])
    mref = probe.monitor(rec.pids["t"])
    get(sup_mod.terminate_child(sup, "t"))
    assert probe.down(mref) == "shutdown"
    assert rec.stops() == ["t"]


def test_brutal_kill_kills_at_once(start_sup: Any, probe: ProbeHandle) -> None:
    """brutal_kill: the child is killed without a shutdown signal or on_stop."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("b", rec, trap=True, shutdown="brutal_kill")])
    mref = probe.monitor(rec.pids["b"])
    otp.send(rec.pids["b"], "hang")
    started_at = time.monotonic()
    get(sup_mod.terminate_child(sup, "b"))
    assert time.monotonic() - started_at < 1.0
    assert probe.down(mref) == "killed"
    assert rec.stops() == []


# -- the API ----------------------------------------------------------------------------------


def test_which_children_and_count_children(start_sup: Any) -> None:
    """which_children lists (id, pid, type) in start order; count_children counts them."""
    rec = Recorder()
    sub = ChildSpec("sub", functools.partial(Supervisor.start), type="supervisor")
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec), sub])
    rows = get(sup_mod.which_children(sup))
    assert [(r.id, r.type) for r in rows] == [("a", "worker"), ("sub", "supervisor")]
    assert all(isinstance(r.pid, otp.Pid) for r in rows)
    assert rows[0] == ("a", rec.pids["a"], "worker")
    assert get(sup_mod.count_children(sup)) == {
        "specs": 2,
        "active": 2,
        "supervisors": 1,
        "workers": 1,
    }
    assert get(sup_mod.get_childspec(sup.pid, "sub")) is sub


def test_terminate_restart_and_delete_child(start_sup: Any) -> None:
    """terminate_child keeps the spec, restart_child starts it again, delete_child drops it."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec), worker("b", rec)])
    old = rec.pids["a"]
    assert error_reason(sup_mod.delete_child(sup, "a")) == "running"
    get(sup_mod.terminate_child(sup, "a"))
    assert not otp.is_alive(old) and pids(sup)["a"] is None
    assert get(sup_mod.count_children(sup))["active"] == 1
    new = get(sup_mod.restart_child(sup, "a"))
    assert new != old and pids(sup)["a"] == new
    assert error_reason(sup_mod.restart_child(sup, "a")) == "running"
    get(sup_mod.terminate_child(sup, "a"))
    get(sup_mod.delete_child(sup, "a"))
    assert list(pids(sup)) == ["b"]


def test_child_api_errors_on_unknown_ids(start_sup: Any) -> None:
    """terminate/restart/delete of an unknown id raise SupervisorError not_found."""
    sup = start_sup("one_for_one", 1, 5, [])
    for call in (sup_mod.terminate_child, sup_mod.restart_child, sup_mod.delete_child):
        assert error_reason(call(sup, "nobody")) == "not_found"


def test_terminating_a_temporary_child_drops_its_spec(start_sup: Any) -> None:
    """terminate_child on a temporary child forgets it."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("t", rec, restart="temporary")])
    get(sup_mod.terminate_child(sup, "t"))
    assert pids(sup) == {}


def test_start_child_adds_a_child_and_refuses_duplicates(start_sup: Any) -> None:
    """start_child appends a child; a taken id is already_started or already_present."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [worker("a", rec)])
    pid = get(sup_mod.start_child(sup, worker("b", rec)))
    assert pids(sup) == {"a": rec.pids["a"], "b": pid}
    assert error_reason(sup_mod.start_child(sup, worker("b", rec))) == ("already_started", pid)
    get(sup_mod.terminate_child(sup, "b"))
    assert error_reason(sup_mod.start_child(sup, worker("b", rec))) == "already_present"
    with pytest.raises(TypeError, match="ChildSpec"):
        get(sup_mod.start_child(sup, ("args",)))


def test_start_child_that_fails_is_not_kept(start_sup: Any) -> None:
    """A child failing to start via start_child raises and leaves no spec behind."""
    rec = Recorder()
    sup = start_sup("one_for_one", 1, 5, [])
    bad = ChildSpec("bad", functools.partial(Worker.start, "bad", rec, fail_start=True))
    reason = error_reason(sup_mod.start_child(sup, bad))
    assert reason[:2] == ("failed_to_start_child", "bad") and isinstance(reason[2], Boom)
    assert pids(sup) == {} and sup.is_alive()


# -- simple_one_for_one -----------------------------------------------------------------------


def test_simple_one_for_one_appends_start_child_arguments(start_sup: Any) -> None:
    """Dynamic children get the template's start with start_child's arguments appended."""
    rec = Recorder()
    template = ChildSpec("conn", functools.partial(Worker.start, rec=rec))
    sup = start_sup("simple_one_for_one", 1, 5, [template])
    pid = get(sup_mod.start_child(sup, ["first"]))
    assert rec.pids["first"] == pid
    assert get(sup_mod.which_children(sup)) == [(None, pid, "worker")]
    assert get(sup_mod.get_childspec(sup, pid)) is template


def test_simple_one_for_one_children_are_addressed_by_pid(start_sup: Any) -> None:
    """terminate_child takes a pid and removes the child; id-based calls are refused."""
    rec = Recorder()
    sup = start_sup(
        "simple_one_for_one", 1, 5, [ChildSpec("c", functools.partial(Worker.start, rec=rec))]
    )
    pid = get(sup_mod.start_child(sup, ("x",)))
    assert error_reason(sup_mod.restart_child(sup, "c")) == "simple_one_for_one"
    assert error_reason(sup_mod.delete_child(sup, "c")) == "simple_one_for_one"
    assert error_reason(sup_mod.terminate_child(sup, "c")) == "not_found"
    get(sup_mod.terminate_child(sup, pid))
    assert not otp.is_alive(pid) and rec.stops() == ["x"]
    assert get(sup_mod.count_children(sup)) == {
        "specs": 1,
        "active": 0,
        "supervisors": 0,
        "workers": 0,
    }


class Conn(otp.LoopActor):
    """A minimal dynamic child, started by the thousand."""

    pykka_registry = False

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def on_receive(self, message: Any) -> None:
        if message == "crash":
            raise Boom(f"conn {self.n} crashed")


def test_simple_one_for_one_under_load(start_sup: Any) -> None:
    """2,000 dynamic children start, crashed ones are restarted, and all stop fast."""
    sup = start_sup("simple_one_for_one", 10, 5, [ChildSpec("conn", Conn.start)])
    futures = [sup_mod.start_child(sup, (n,)) for n in range(2000)]
    started = [get(f) for f in futures]
    assert len(set(started)) == 2000
    crashed = started[::500]
    for pid in crashed:
        otp.send(pid, "crash")

    def all_restarted() -> bool:
        running = {row.pid for row in get(sup_mod.which_children(sup))}
        return len(running) == 2000 and not running & set(crashed)

    wait_until(all_restarted, T, "crashed children restarted")
    assert get(sup_mod.count_children(sup)) == {
        "specs": 1,
        "active": 2000,
        "supervisors": 0,
        "workers": 2000,
    }
    running = [row.pid for row in get(sup_mod.which_children(sup))]
    started_at = time.monotonic()
    sup.stop(timeout=T)
    assert time.monotonic() - started_at < 2.0
    assert not any(otp.is_alive(pid) for pid in running)


class FragileSupervisor(Supervisor):
    """A supervisor with a bug: it crashes on 'explode'."""

    def on_receive(self, message: Any) -> Any:
        if message == "explode":
            raise Boom("supervisor bug")
        return super().on_receive(message)


def test_crashing_supervisor_still_shuts_its_children_down(
    start_sup: Any, probe: ProbeHandle
) -> None:
    """A supervisor dying of its own bug sends each child its shutdown signal."""
    rec = Recorder()
    sup = start_sup(
        "one_for_one", 1, 5, [worker("a", rec), worker("t", rec, trap=True)], cls=FragileSupervisor
    )
    downs = [probe.monitor(rec.pids[n]) for n in "at"]
    otp.send(sup.pid, "explode")
    assert [probe.down(m) for m in downs] == ["shutdown", "shutdown"]
    assert sorted(rec.stops()) == ["a", "t"]
