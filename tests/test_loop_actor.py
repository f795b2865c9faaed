"""LoopActor: scheduling on one loop, pids, non-blocking requests, timers, names, crashes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pykka
import pytest
from helpers import wait_until

import otp
from otp import blocking


class Echo(otp.LoopActor):
    def on_receive(self, message: Any) -> Any:
        return message


class ThreadRecorder(otp.LoopActor):
    pykka_registry = False

    def __init__(self, seen: set[int]) -> None:
        super().__init__()
        self.seen = seen

    def on_start(self) -> None:
        self.seen.add(threading.get_ident())


def test_many_actors_share_the_scheduler_thread() -> None:
    """10,000 actors start on the scheduler's one thread and add no OS thread."""
    otp.current()
    threads_before = threading.active_count()
    seen: set[int] = set()
    refs = [ThreadRecorder.start(seen) for _ in range(10_000)]
    for ref in refs:
        otp.started(ref).get(timeout=10)
    assert seen == {otp.current()._thread_id}
    assert threading.active_count() == threads_before
    for ref in refs:
        ref.stop(block=False)
    wait_until(lambda: not any(ref.is_alive() for ref in refs), what="all actors stopped")


def test_pid_is_printable_ordered_and_found_by_lookup() -> None:
    """Each actor has a pid <node.worker.id>; lookup finds it while it lives, not after."""
    a, b = Echo.start(), Echo.start()
    assert str(a.pid) == f"<{a.pid.node}.{a.pid.worker}.{a.pid.id}>"
    assert a.pid < b.pid and len({a.pid, b.pid, a.pid}) == 2
    assert otp.lookup(a.pid) is a
    a.stop()
    assert otp.lookup(a.pid) is None
    assert otp.lookup(otp.Pid("other@host", 3, 1)) is None
    b.stop()


def test_blocking_get_on_the_loop_raises_instead_of_deadlocking() -> None:
    """ask().get() inside a handler raises BlockingCallError; the actor survives."""
    echo = Echo.start()

    class Blocker(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            return echo.ask(message)

    blocker = Blocker.start()
    with pytest.raises(otp.BlockingCallError, match="would deadlock"):
        blocker.ask("hello", timeout=5)
    assert blocker.is_alive()
    blocker.stop()
    echo.stop()


def test_async_handler_awaits_another_actor_while_the_loop_runs_on() -> None:
    """An async handler suspends its actor only: others answer while it waits."""
    gate: otp.LoopFuture[str] = otp.LoopFuture()

    class Waiter(otp.LoopActor):
        async def on_receive(self, message: Any) -> Any:
            return await gate

    class Opener(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            gate.set(message)
            return "opened"

    waiter, opener = Waiter.start(), Opener.start()
    pending = waiter.ask("wait", block=False)
    assert not pending.done()
    assert opener.ask("open sesame", timeout=5) == "opened"
    assert pending.get(timeout=5) == "open sesame"
    waiter.stop()
    opener.stop()


def test_async_handler_queues_later_messages_in_order() -> None:
    """While an async handler is suspended, later messages wait and then run in order."""
    log: list[Any] = []

    class Slow(otp.LoopActor):
        async def on_receive(self, message: Any) -> Any:
            if message == "first":
                await asyncio.sleep(0.05)
            log.append(message)
            return message

    slow = Slow.start()
    futures = [slow.ask(m, block=False) for m in ("first", 2, 3, 4)]
    assert [f.get(timeout=5) for f in futures] == ["first", 2, 3, 4]
    assert log == ["first", 2, 3, 4]
    slow.stop()


def test_request_delivers_the_reply_as_a_message(probe: Any) -> None:
    """request() returns at once; a Reply with the tag, value or error arrives later."""
    echo = Echo.start()

    class Failing(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            raise ValueError("no")

    failing = Failing.start()

    class Requester(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            if isinstance(message, otp.Reply):
                otp.send(probe.pid, message)
            else:
                self.request(echo.pid, "ping", tag="t1")
                self.request(failing, "boom", tag="t2")

    requester = Requester.start()
    requester.tell("go")
    replies = {r.tag: r for r in (probe.next(), probe.next())}
    assert replies["t1"] == otp.Reply("t1", "ping", None)
    assert isinstance(replies["t2"].error, ValueError)
    assert failing.is_alive()  # an ask's failure goes to the asker, as in Pykka
    for ref in (echo, failing, requester):
        ref.stop()


def test_blocking_work_runs_off_the_loop_and_answers_by_message(probe: Any) -> None:
    """A blocking job in the pool does not stall the loop; its result comes as a Reply."""
    release = threading.Event()

    def slow_job() -> str:
        release.wait(5)
        return "done"

    class Worker(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            if message == "start":
                blocking.cast(slow_job, reply_to=self.pid, tag="job")
            else:
                otp.send(probe.pid, message)

    worker, echo = Worker.start(), Echo.start()
    worker.tell("start")
    started = time.monotonic()
    assert echo.ask("still responsive", timeout=5) == "still responsive"
    assert time.monotonic() - started < 1.0
    release.set()
    assert probe.next() == otp.Reply("job", "done", None)
    worker.stop()
    echo.stop()


def test_blocking_run_can_be_awaited_in_an_async_handler() -> None:
    """await blocking.run(fn) returns fn's result to the async handler."""

    class Hasher(otp.LoopActor):
        async def on_receive(self, message: Any) -> Any:
            return await blocking.run(sum, message)

    hasher = Hasher.start()
    assert hasher.ask([1, 2, 3], timeout=5) == 6
    hasher.stop()


def test_send_after_delivers_and_cancel_timer_prevents_delivery(probe: Any) -> None:
    """A cancelled timer never fires; one left alone delivers its message."""
    cancelled = otp.send_after(0.02, probe.pid, "cancelled")
    otp.send_after(0.06, probe.pid, "kept")
    assert otp.cancel_timer(cancelled) is True
    assert probe.next() == "kept"
    assert probe.empty()
    assert otp.cancel_timer(cancelled) is False


def test_receive_timeout_fires_when_no_message_arrives(probe: Any) -> None:
    """on_timeout runs after receive_timeout seconds idle, re-armed after each message."""

    class Idle(otp.LoopActor):
        receive_timeout = 0.05

        def on_receive(self, message: Any) -> Any:
            otp.send(probe.pid, ("got", message))

        def on_timeout(self) -> None:
            otp.send(probe.pid, "timeout")
            self.receive_timeout = None

    idle = Idle.start()
    assert probe.next() == "timeout"
    idle.tell("hello")
    assert probe.next() == ("got", "hello")
    idle.stop()


def test_registered_name_is_found_and_released_when_the_actor_dies() -> None:
    """register/whereis/unregister; a taken name is refused; death frees the name."""
    a, b = Echo.start(), Echo.start()
    otp.register("echo", a.pid)
    assert otp.whereis("echo") == a.pid
    with pytest.raises(otp.AlreadyRegisteredError):
        otp.register("echo", b.pid)
    otp.unregister("echo")
    assert otp.whereis("echo") is None
    otp.register("echo", b.pid)
    b.stop()
    assert otp.whereis("echo") is None
    with pytest.raises(otp.NoProcError):
        otp.register("echo", b.pid)
    a.stop()


def test_a_crash_logs_one_structured_crash_report(caplog: pytest.LogCaptureFixture) -> None:
    """A tell handler's exception logs one ERROR record: what, actor, pid, reason, trace."""

    class Crasher(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            raise RuntimeError("kaboom")

    caplog.set_level(logging.INFO)
    crasher = Crasher.start()
    crasher.tell("go")
    wait_until(lambda: not crasher.is_alive(), what="crasher dead")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    record = errors[0]
    assert record.what == "actor_crash"
    assert record.actor == "Crasher"
    assert record.pid == str(crasher.pid)
    assert record.supervisor is None
    assert "kaboom" in record.reason
    assert "RuntimeError: kaboom" in record.stacktrace


def test_base_exception_stops_only_that_actor() -> None:
    """SystemExit in a handler stops that actor; other actors keep running."""

    class Quitter(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            raise SystemExit(3)

    bystander, quitter = Echo.start(), Quitter.start()
    quitter.tell("quit")
    wait_until(lambda: not quitter.is_alive(), what="quitter dead")
    assert bystander.ask("alive?", timeout=5) == "alive?"
    bystander.stop()


def test_messages_from_one_sender_arrive_in_order() -> None:
    """10,000 tells from one thread are handled in the order sent."""
    seen: list[int] = []

    class Collector(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            seen.append(message)
            return len(seen)

    collector = Collector.start()
    for i in range(10_000):
        collector.tell(i)
    assert collector.ask(-1, timeout=10) == 10_001
    assert seen[:-1] == list(range(10_000))
    collector.stop()


def test_send_to_a_dead_pid_is_dropped_and_ask_fails() -> None:
    """send() to a dead pid is silently dropped; ask() fails with ActorDeadError."""
    echo = Echo.start()
    pid = echo.pid
    echo.stop()
    otp.send(pid, "into the void")
    with pytest.raises(pykka.ActorDeadError):
        otp.ask(pid, "anyone?").get(timeout=5)


def test_asks_queued_when_an_actor_dies_are_answered() -> None:
    """Asks still queued when an exit signal kills the actor get ActorDeadError."""
    never: otp.LoopFuture[None] = otp.LoopFuture()

    class Stuck(otp.LoopActor):
        async def on_receive(self, message: Any) -> Any:
            await never
            return message

    stuck = Stuck.start()
    stuck.tell("hold")
    queued = [stuck.ask(i, block=False) for i in range(5)]
    otp.exit(stuck.pid, "shutdown")
    for future in queued:
        with pytest.raises(pykka.ActorDeadError):
            future.get(timeout=5)
    assert stuck.exit_reason == "shutdown"


def test_started_reports_a_failing_on_start() -> None:
    """otp.started() resolves to the pid, or raises StartError with the reason."""

    class Fails(otp.LoopActor):
        def on_start(self) -> None:
            raise ValueError("bad config")

    assert otp.started(Echo.start()).get(timeout=5).node == otp.current().node
    with pytest.raises(otp.StartError) as info:
        otp.started(Fails.start()).get(timeout=5)
    assert isinstance(info.value.reason, ValueError)
    started_then_stopped = Echo.start()
    started_then_stopped.stop()
    assert otp.started(started_then_stopped).get(timeout=5) == started_then_stopped.pid


class _Holder(otp.LoopActor):
    """Holds a 'resource' (a list entry) that release() must free however it dies."""

    def __init__(self, resources: list[str], name: str, trap: bool = False) -> None:
        super().__init__()
        self.resources, self.name = resources, name
        self.trap_exit = trap
        resources.append(name)

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash on purpose")
        return message

    def release(self) -> None:
        self.resources.append(f"released {self.name}")


@pytest.mark.parametrize("how", ["stop", "crash", "exit", "kill"])
def test_release_runs_once_however_the_actor_dies(how: str) -> None:
    """release() frees what the actor holds on an orderly stop, a crash, an exit signal
    and an untrappable kill (where on_stop does not run), exactly once."""
    resources: list[str] = []
    ref = _Holder.start(resources, how, trap=how == "kill")
    assert ref.ask("hello", timeout=5) == "hello"
    assert resources == [how]
    if how == "stop":
        ref.stop()
    elif how == "crash":
        ref.tell("crash")
    else:
        otp.exit(ref.pid, "kill" if how == "kill" else "shutdown")
    wait_until(lambda: not otp.is_alive(ref.pid), what="the actor dead")
    wait_until(lambda: resources == [how, f"released {how}"], what="its resource released")
