"""Distribution within a node: tell, ask, monitor, link and exits across real OS processes.

The test process is the root (worker 0) of node ``test@localhost``; each test's workers
are real ``python -m otp.worker`` processes connected over ipc, exactly as a node's
workers are. Cross-node behaviour is in test_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from dist_harness import NODE, TestNode
from helpers import ProbeHandle, wait_until

import otp
from otp.dist import spawn_on

pytestmark = pytest.mark.timeout(60)

@pytest.fixture
def workers(test_node: TestNode) -> Iterator[TestNode]:
    """Two worker processes, 1 and 2, stopped after the test."""
    node = test_node
    node.start_worker(1)
    node.start_worker(2)
    yield node
    node.stop_workers()
    wait_until(lambda: (NODE, 1) not in node.processes() and (NODE, 2) not in node.processes(),
               what="workers gone from the view")


def spawn(worker: int, cls: str, *args: Any) -> otp.Pid:
    return spawn_on((NODE, worker), f"dist_actors:{cls}", *args).get(timeout=10)


def test_ask_and_tell_reach_an_actor_in_another_worker(
    workers: TestNode, probe: ProbeHandle
) -> None:
    """ask returns the remote actor's answer; tell through a forwarder comes back."""
    echo = spawn(1, "Echo")
    assert echo.node == NODE and echo.worker == 1
    assert otp.ask(echo, ("hello", [1, 2])).get(timeout=5) == ("hello", [1, 2])
    assert otp.ask(echo, "os_pid").get(timeout=5) == workers.workers[1].pid
    forwarder = spawn(2, "Forwarder", probe.pid)
    otp.send(forwarder, "ping")
    assert probe.next() == (forwarder, "ping")


def test_remote_ask_failures_come_back(workers: TestNode) -> None:
    """An exception in the remote handler, or a dead pid, fails the ask."""
    echo = spawn(1, "Echo")
    with pytest.raises(otp.codec.RemoteError, match="RuntimeError: nope"):
        otp.ask(echo, ("crash", "nope")).get(timeout=5)
    dead = otp.Pid(NODE, 1, echo.id + 10_000)
    with pytest.raises(pykka.ActorDeadError):
        otp.ask(dead, "anyone").get(timeout=5)


def test_order_is_kept_per_sender_for_100k_messages(workers: TestNode, probe: ProbeHandle) -> None:
    """100,000 messages from senders in two workers arrive in each sender's order."""
    senders = [spawn(1, "Sender"), spawn(2, "Sender"), spawn(2, "Sender")]
    n = 100_000 // len(senders)
    for i, sender in enumerate(senders):
        otp.send(sender, ("send", probe.pid, n, i))
    next_expected = [0] * len(senders)
    for _ in range(n * len(senders)):
        tag, seq = probe.next(timeout=30)
        assert seq == next_expected[tag], f"sender {tag}: got {seq}, expected {next_expected[tag]}"
        next_expected[tag] += 1
    assert next_expected == [n] * len(senders)


def test_monitor_across_workers_fires_with_the_reason(
    workers: TestNode, probe: ProbeHandle
) -> None:
    """A monitor on a remote pid gets Down with the remote crash's reason."""
    echo = spawn(1, "Echo")
    mref = probe.monitor(echo)
    otp.exit(echo, "shutdown")
    assert probe.down(mref) == "shutdown"
    mref = probe.monitor(echo)
    assert probe.down(mref) == "noproc"


def test_link_across_workers_propagates_exits(workers: TestNode, probe: ProbeHandle) -> None:
    """A trapping actor linked to a remote actor gets Exit when it crashes."""
    linker = spawn(2, "Linker", probe.pid)
    echo = spawn(1, "Echo")
    assert otp.ask(linker, ("link", echo)).get(timeout=5) == "linked"
    otp.send(echo, ("crash", "linked crash"))
    pid, message = probe.next()
    assert pid == linker and isinstance(message, otp.Exit) and message.pid == echo
    assert isinstance(message.reason, otp.codec.RemoteError)
    assert "linked crash" in str(message.reason)


def test_a_killed_worker_fires_noconnection(workers: TestNode, probe: ProbeHandle) -> None:
    """kill -9 of a worker: monitors fire noconnection, links get it, asks fail."""
    victim = spawn(1, "Echo")
    linker = spawn(2, "Linker", probe.pid)
    assert otp.ask(linker, ("link", victim)).get(timeout=5) == "linked"
    mref = probe.monitor(victim)
    workers.workers[1].kill()
    assert probe.down(mref) == "noconnection"
    pid, message = probe.next()
    assert (pid, message) == (linker, otp.Exit(victim, "noconnection"))
    with pytest.raises(pykka.ActorDeadError):
        otp.ask(victim, "still there?").get(timeout=5)


def test_a_restarted_worker_does_not_reuse_pids(workers: TestNode) -> None:
    """After a worker restarts, an old pid of it reaches nothing; new pids work."""
    old = spawn(1, "Echo")
    workers.workers[1].kill()
    wait_until(lambda: (NODE, 1) not in workers.processes(), what="worker 1 gone")
    workers.start_worker(1)
    new = spawn(1, "Echo")
    assert new != old
    with pytest.raises(pykka.ActorDeadError):
        otp.ask(old, "ghost?").get(timeout=5)
    assert otp.ask(new, "fresh").get(timeout=5) == "fresh"


def test_global_name_is_found_everywhere_and_freed_on_death(workers: TestNode) -> None:
    """A global name registered in one worker resolves in others; its owner's death frees it."""
    from otp import global_names

    echo = spawn(1, "Echo")
    finder = spawn(2, "GlobalFinder")
    assert global_names.register("the-echo", echo).get(timeout=5) is True
    assert global_names.register("the-echo", finder).get(timeout=5) is False
    assert global_names.whereis("the-echo") == echo
    wait_until(lambda: otp.ask(finder, "the-echo").get(timeout=5) == echo,
               what="worker 2 sees the name")
    otp.exit(echo, "kill")
    wait_until(lambda: global_names.whereis("the-echo") is None, what="name freed")
    wait_until(lambda: otp.ask(finder, "the-echo").get(timeout=5) is None,
               what="worker 2 sees it freed")


def test_global_names_of_a_killed_worker_are_freed(workers: TestNode) -> None:
    """When a worker process dies, the names of its actors are released everywhere."""
    from otp import global_names

    echo = spawn(1, "Echo")
    finder = spawn(2, "GlobalFinder")
    assert global_names.register("doomed", echo).get(timeout=5) is True
    wait_until(lambda: otp.ask(finder, "doomed").get(timeout=5) == echo, what="name seen")
    workers.workers[1].kill()
    wait_until(lambda: global_names.whereis("doomed") is None, what="name freed here")
    wait_until(lambda: otp.ask(finder, "doomed").get(timeout=5) is None,
               what="name freed in worker 2")
