"""Links, monitors and exit signals with Erlang's semantics."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import ProbeHandle, wait_until

import otp


class Boom(Exception):
    pass


class Worker(otp.LoopActor):
    """Crashes on 'crash', stops on 'stop', links on ('link', pid); reports on_stop."""

    def __init__(self, probe: ProbeHandle | None = None, trap: bool = False) -> None:
        super().__init__()
        self.probe = probe
        self.trap_exit = trap

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom("crashed on purpose")
        if message == "stop":
            self.stop()
        elif isinstance(message, tuple) and message[0] == "link":
            self.link(message[1])
        elif isinstance(message, tuple) and message[0] == "unlink":
            self.unlink(message[1])
        elif self.probe is not None:
            otp.send(self.probe.pid, (self.pid, message))
        return None

    def on_stop(self) -> None:
        if self.probe is not None:
            otp.send(self.probe.pid, (self.pid, "on_stop"))


def linked_pair(probe: ProbeHandle, trap: bool = False) -> tuple[otp.ActorRef, otp.ActorRef]:
    a, b = Worker.start(), Worker.start(probe, trap)
    b.ask(("link", a.pid), timeout=5)
    return a, b


def test_a_crash_kills_a_linked_actor_with_the_same_reason(probe: ProbeHandle) -> None:
    """An actor linked to one that crashes dies with the crash as reason, running on_stop."""
    a, b = linked_pair(probe)
    mref = probe.monitor(b.pid)
    a.tell("crash")
    assert isinstance(probe.down(mref), Boom)
    assert probe.next() == (b.pid, "on_stop")
    assert isinstance(a.exit_reason, Boom) and b.exit_reason is a.exit_reason


def test_a_trapping_actor_gets_exit_as_a_message(probe: ProbeHandle) -> None:
    """With trap_exit the linked actor lives on and receives Exit(pid, reason)."""
    a, b = linked_pair(probe, trap=True)
    a.tell("crash")
    pid, message = probe.next()
    assert pid == b.pid and isinstance(message, otp.Exit)
    assert message.pid == a.pid and isinstance(message.reason, Boom)
    assert b.is_alive()
    b.stop()


def test_a_normal_exit_does_not_kill_linked_actors(probe: ProbeHandle) -> None:
    """A linked actor that stops normally leaves its partner running."""
    a, b = linked_pair(probe)
    mref = probe.monitor(a.pid)
    a.tell("stop")
    assert probe.down(mref) == "normal"
    b.tell("still here")
    assert probe.next() == (b.pid, "still here")
    b.stop()


def test_exits_propagate_along_a_chain_of_links(probe: ProbeHandle) -> None:
    """A crash at one end of a chain a-b-c kills c, with the same reason."""
    a, b, c = Worker.start(), Worker.start(), Worker.start()
    b.ask(("link", a.pid), timeout=5)
    c.ask(("link", b.pid), timeout=5)
    mref = probe.monitor(c.pid)
    a.tell("crash")
    down = probe.next()
    assert down.ref == mref and isinstance(down.reason, Boom)


def test_unlink_stops_propagation(probe: ProbeHandle) -> None:
    """After unlink, the partner's crash no longer reaches the actor."""
    a, b = linked_pair(probe)
    b.ask(("unlink", a.pid), timeout=5)
    mref = probe.monitor(a.pid)
    a.tell("crash")
    assert isinstance(probe.down(mref), Boom)
    b.tell("alive")
    assert probe.next() == (b.pid, "alive")
    b.stop()


def test_kill_cannot_be_trapped_and_links_see_killed(probe: ProbeHandle) -> None:
    """exit(pid, 'kill') kills even a trapping actor (no on_stop); links get 'killed'."""
    target = Worker.start(probe, True)
    watcher = Worker.start(probe, True)
    watcher.ask(("link", target.pid), timeout=5)
    otp.exit(target.pid, "kill")
    pid, message = probe.next()
    assert (pid, message) == (watcher.pid, otp.Exit(target.pid, "killed"))
    assert target.exit_reason == "killed"
    watcher.stop()


def test_shutdown_signal_stops_a_non_trapping_actor_running_on_stop(
    probe: ProbeHandle,
) -> None:
    """exit(pid, 'shutdown') ends a non-trapping actor; its on_stop cleanup runs."""
    target = Worker.start(probe)
    mref = probe.monitor(target.pid)
    otp.exit(target.pid, "shutdown")
    assert probe.next() == (target.pid, "on_stop")
    assert probe.next() == otp.Down(mref, target.pid, "shutdown")


def test_exit_signal_to_a_trapping_actor_becomes_a_message(probe: ProbeHandle) -> None:
    """exit(pid, reason) to a trapping actor arrives as Exit(sender, reason)."""
    target = Worker.start(probe, True)
    otp.exit(target.pid, "shutdown", sender=probe.pid)
    assert probe.next() == (target.pid, otp.Exit(probe.pid, "shutdown"))
    target.stop()


def test_exit_signals_overtake_queued_messages(probe: ProbeHandle) -> None:
    """A kill reaches an actor busy in a handler before its queued messages run."""
    never: otp.LoopFuture[None] = otp.LoopFuture()

    class Busy(otp.LoopActor):
        async def on_receive(self, message: Any) -> Any:
            if message == "hold":
                await never
            otp.send(probe.pid, message)

    busy = Busy.start()
    busy.tell("hold")
    for i in range(100):
        busy.tell(i)
    mref = probe.monitor(busy.pid)
    otp.exit(busy.pid, "kill")
    assert probe.down(mref) == "killed"
    assert probe.empty()


def test_monitor_delivers_down_with_the_reason(probe: ProbeHandle) -> None:
    """A monitor gets Down(ref, pid, reason) when the target crashes."""
    target = Worker.start()
    mref = probe.monitor(target.pid)
    target.tell("crash")
    down = probe.next()
    assert down.ref == mref and down.pid == target.pid and isinstance(down.reason, Boom)


def test_monitor_of_a_dead_pid_fires_noproc_at_once(probe: ProbeHandle) -> None:
    """Monitoring a pid with no live actor delivers Down(..., 'noproc') immediately."""
    target = Worker.start()
    target.stop()
    mref = probe.monitor(target.pid)
    assert probe.next() == otp.Down(mref, target.pid, "noproc")


def test_demonitor_cancels_the_down(probe: ProbeHandle) -> None:
    """After demonitor no Down arrives for that monitor, while another monitor fires."""

    class Watcher(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            kind, pid = message
            if kind == "watch-and-forget":
                self.demonitor(self.monitor(pid))
            else:
                otp.send(probe.pid, ("done", kind))

    watcher = Watcher.start()
    target = Worker.start()
    watcher.ask(("watch-and-forget", target.pid), timeout=5)
    mref = probe.monitor(target.pid)
    target.tell("crash")
    down = probe.next()
    assert down.ref == mref  # the probe's own monitor fired...
    assert watcher.ask(("ping", target.pid), timeout=5) is None
    assert probe.next() == ("done", "ping")  # ...and the watcher got nothing before it
    assert probe.empty()
    watcher.stop()


def test_link_to_a_dead_pid_fails_with_noproc(probe: ProbeHandle) -> None:
    """Linking to a dead pid raises NoProcError, or sends Exit(pid, 'noproc') if trapping."""
    dead = Worker.start()
    dead.stop()
    plain, trapping = Worker.start(), Worker.start(probe, True)
    with pytest.raises(otp.NoProcError):
        plain.ask(("link", dead.pid), timeout=5)
    trapping.tell(("link", dead.pid))
    assert probe.next() == (trapping.pid, otp.Exit(dead.pid, "noproc"))
    plain.stop()
    trapping.stop()


def test_spawn_link_sets_parent_and_link_before_the_child_starts(probe: ProbeHandle) -> None:
    """A child started with spawn_link that fails in on_start still kills its parent."""

    class FailsAtStart(otp.LoopActor):
        def on_start(self) -> None:
            raise Boom("no start")

    class Parent(otp.LoopActor):
        def on_receive(self, message: Any) -> Any:
            child = self.spawn_link(FailsAtStart)
            return child.pid

    parent = Parent.start()
    mref = probe.monitor(parent.pid)
    child_pid = parent.ask("spawn", timeout=5)
    down = probe.next()
    assert down.ref == mref and isinstance(down.reason, Boom)
    assert child_pid != parent.pid


def test_a_killed_actor_leaves_no_trace_in_the_process_table() -> None:
    """Dead actors leave the process table and the name table."""
    before = otp.current().statistics()["actors"]
    refs = [Worker.start() for _ in range(100)]
    otp.register("w0", refs[0].pid)
    for ref in refs:
        otp.exit(ref.pid, "kill")
    wait_until(lambda: otp.current().statistics()["actors"] <= before, what="table empty")
    assert otp.whereis("w0") is None
