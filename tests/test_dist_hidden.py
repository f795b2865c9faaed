"""Hidden nodes (otp.dist): in the view, reachable, never a member.

The test process is the root of node ``test@localhost`` (a member); each test adds a
hidden root in this same process, on a scheduler and loop thread of its own. That
scheduler is not installed (a process has one), so the hidden node runs no actors
here: the tests drive its Dist directly. Actors on a hidden node, links and monitors
across, are in test_attach.py, where the hidden node is a process of its own.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dist_actors import Echo
from dist_harness import NODE, TestNode
from helpers import ProbeHandle, wait_until

import otp
from otp import cets
from otp.dist import Dist, _normalise, new_creation, spawn_on
from otp.node import Runtime
from otp.scheduler import Scheduler

pytestmark = pytest.mark.timeout(60)

T = 5.0  # seconds: deadline for any single wait
HIDDEN = "aaa-shell@localhost"  # sorts before test@localhost: it would win any min()


class HiddenRoot:
    """A hidden root in this process: its own scheduler, loop thread, sockets."""

    def __init__(self, keys: Any, name: str = HIDDEN) -> None:
        self.scheduler = Scheduler(node=name, creation=new_creation())
        self.scheduler.start_thread()
        self.dir = tempfile.mkdtemp(prefix="otp-hidden-")
        self.runtime = Runtime(
            self.scheduler, ipc_dir=Path(self.dir) / "ipc", keys=keys, hidden=True,
            heartbeat_interval=0.3, node_timeout=3.0,
        )
        asyncio.run_coroutine_threadsafe(self.runtime.start(), self.scheduler.loop).result(T)
        self.dist = self.runtime.dist
        self.closed = False

    def call(self, fn: Any, *args: Any) -> Any:
        return self.scheduler.run_sync(fn, *args)

    def close(self) -> None:
        """Leave the cluster, as a shell does when it quits."""
        if not self.closed:
            self.closed = True
            self.call(self.runtime.close)

    def freeze(self) -> None:
        """Stop its loop without leaving: to the others it goes silent."""
        self.scheduler.stop_thread()

    def dispose(self) -> None:
        if not self.scheduler.loop.is_running():
            self.scheduler.start_thread()  # frozen: thaw it, to close on its thread
        self.close()
        asyncio.run_coroutine_threadsafe(_end_tasks(), self.scheduler.loop).result(T)
        self.scheduler.stop_thread()
        self.scheduler.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _end_tasks() -> None:
    """Let the tasks of a closed runtime (its key checker) finish before the loop stops."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=T)


@pytest.fixture
def hidden(test_node: TestNode) -> Iterator[HiddenRoot]:
    """A hidden root that joined the test node; gone from its view after the test."""
    node = HiddenRoot(test_node.keys)
    try:
        node.call(node.dist.join, [test_node.tcp_address])
        wait_until(lambda: NODE in node.call(lambda: list(node.dist.view)), T,
                   what="the test node in the hidden node's view")
        wait_until(lambda: HIDDEN in member_call(test_node, lambda: list(test_node.dist.view)),
                   T, what="the hidden node in the test node's view")
        yield node
    finally:
        node.dispose()
        wait_until(lambda: HIDDEN not in member_call(test_node, lambda: list(test_node.dist.view)),
                   10, what="the hidden node gone")


@pytest.fixture
def worker(test_node: TestNode) -> Iterator[TestNode]:
    """Worker process 1 of the test node."""
    test_node.start_worker(1)
    yield test_node
    test_node.stop_workers()
    wait_until(lambda: (NODE, 1) not in test_node.processes(), what="worker 1 gone")


def member_call(test_node: TestNode, fn: Any, *args: Any) -> Any:
    return test_node.scheduler.run_sync(fn, *args)


# -- the view, without a network ----------------------------------------------------------------


def test_an_entry_keeps_its_hidden_flag_through_normalise() -> None:
    """A view's copy of a hidden entry stays hidden; a member's gets no flag."""
    entry = {"creation": 1, "version": 2, "procs": {"0": {"tcp": "tcp://h:1"}}, "hidden": True}
    assert _normalise(entry) == {"creation": 1, "version": 2,
                                 "procs": {0: {"tcp": "tcp://h:1"}}, "hidden": True}
    del entry["hidden"]
    assert "hidden" not in _normalise(entry)


def test_only_a_root_can_be_hidden() -> None:
    """A worker process cannot be a hidden node: hidden is a node's property."""
    scheduler = Scheduler(node="x@localhost", worker=1)
    try:
        with pytest.raises(ValueError, match="root"):
            Dist(scheduler, creation=1, root_address="ipc:///nowhere", hidden=True)
    finally:
        scheduler.loop.close()


def test_nodes_and_processes_leave_out_other_hidden_nodes() -> None:
    """nodes()/processes() list members and this node; hidden_nodes() the others."""
    scheduler = Scheduler(node="b@localhost")
    try:
        dist = Dist(scheduler, creation=1)
        dist.view = {
            "b@localhost": {"creation": 1, "version": 1, "procs": {0: {}, 1: {}}},
            "a-shell@localhost": {"creation": 1, "version": 1, "procs": {0: {}},
                                  "hidden": True},
            "c@localhost": {"creation": 1, "version": 1, "procs": {0: {}}},
        }
        assert dist.nodes() == ["b@localhost", "c@localhost"]
        assert dist.hidden_nodes() == ["a-shell@localhost"]
        assert dist.processes() == [("b@localhost", 0), ("b@localhost", 1), ("c@localhost", 0)]
        assert dist.is_hidden("a-shell@localhost") and not dist.is_hidden("c@localhost")
        # Seen from the hidden node itself, it is one of its own nodes.
        shell = Dist(Scheduler(node="a-shell@localhost"), creation=1, hidden=True)
        try:
            shell.view = dist.view
            assert shell.nodes() == ["a-shell@localhost", "b@localhost", "c@localhost"]
            assert shell.hidden_nodes() == []
            assert ("a-shell@localhost", 0) in shell.processes()
        finally:
            shell.scheduler.loop.close()
    finally:
        scheduler.loop.close()


# -- a hidden node and the test node --------------------------------------------------------------


def test_a_hidden_node_is_in_the_view_but_not_a_member(
    test_node: TestNode, hidden: HiddenRoot
) -> None:
    """The member lists the hidden node as hidden only; the hidden node sees everyone."""
    dist = test_node.dist
    assert HIDDEN not in test_node.nodes()
    assert member_call(test_node, dist.hidden_nodes) == [HIDDEN]
    assert all(key[0] != HIDDEN for key in test_node.processes())
    assert member_call(test_node, lambda: dist.view[HIDDEN].get("hidden")) is True
    assert HIDDEN in member_call(test_node, dist.statistics)["hidden_nodes"]
    assert hidden.call(hidden.dist.nodes) == [HIDDEN, NODE]
    assert hidden.call(hidden.dist.processes) == [(HIDDEN, 0), (NODE, 0)]


def test_a_hidden_node_asks_and_is_answered(
    test_node: TestNode, hidden: HiddenRoot, probe: ProbeHandle
) -> None:
    """Items route both ways: an ask from the hidden node, a monitor onto it."""
    echo = Echo.start()
    try:
        future = hidden.call(hidden.dist.ask, echo.pid, ("hello", 1))
        assert future.get(timeout=T) == ("hello", 1)
    finally:
        echo.stop()
    mref = probe.monitor(otp.Pid(HIDDEN, 0, 12345))  # no such actor there: noproc
    assert probe.down(mref) == "noproc"


def test_a_worker_answers_a_hidden_node_and_does_not_count_it(
    worker: TestNode, hidden: HiddenRoot
) -> None:
    """A member's worker routes replies to the hidden node, yet keeps it off its tables."""
    echo = spawn_on((NODE, 1), "dist_actors:Echo").get(timeout=10)
    future = hidden.call(hidden.dist.ask, echo, "via worker 1")
    assert future.get(timeout=T) == "via worker 1"
    user = spawn_on((NODE, 1), "dist_actors:TableUser", "hidden-test-table").get(timeout=10)
    status = otp.ask(user, ("status",)).get(timeout=T)
    assert status["nodes"] == [NODE]
    assert all(not member.startswith(HIDDEN) for member in status["members"])


def test_a_hidden_node_is_never_a_leader_or_a_replica(
    test_node: TestNode, hidden: HiddenRoot
) -> None:
    """CETS and global names pick their leader among members; a hidden node holds no table."""
    table = member_call(test_node, lambda: cets.get("hidden-leader")
                        if "hidden-leader" in test_node.runtime.cets.tables
                        else test_node.runtime.cets.create("hidden-leader"))
    assert member_call(test_node, test_node.runtime.cets.leader, table) == (NODE, 0)
    assert f"{HIDDEN}.0" not in member_call(test_node, table.status)["members"]
    assert member_call(test_node, test_node.runtime.global_names.leader) == (NODE, 0)
    assert hidden.call(hidden.runtime.global_names.leader) == (NODE, 0)
    with pytest.raises(RuntimeError, match="hidden"):
        hidden.call(hidden.runtime.cets.create, "hidden-leader")


def test_a_hidden_node_that_closes_leaves_at_once(
    test_node: TestNode, hidden: HiddenRoot
) -> None:
    """close() sends leave: the member drops it before its heartbeat timeout (3 s)."""
    hidden.close()
    wait_until(lambda: HIDDEN not in member_call(test_node, lambda: list(test_node.dist.view)),
               2.0, what="the hidden node dropped on its leave")
    assert HIDDEN not in member_call(test_node, test_node.dist.unavailable_nodes)


def test_a_silent_hidden_node_is_dropped_and_not_called_again(
    test_node: TestNode, hidden: HiddenRoot
) -> None:
    """Missed heartbeats drop a hidden node, and it is not listed as unavailable."""
    hidden.freeze()
    wait_until(lambda: HIDDEN not in member_call(test_node, lambda: list(test_node.dist.view)),
               10, what="the silent hidden node dropped")
    assert HIDDEN not in member_call(test_node, test_node.dist.unavailable_nodes)
    assert HIDDEN not in member_call(test_node, lambda: dict(test_node.dist._unavailable))
