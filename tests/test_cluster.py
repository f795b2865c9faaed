"""Clusters of real nodes on loopback: join, cross-node actors, failures, keys, stop.

Each test starts real ``mongoose foreground`` node processes (each with worker
processes), and this test process joins their cluster as node test@localhost with the
same CURVE keys, so it can spawn actors anywhere and watch them with monitors.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from dist_harness import MongooseNode, TestNode, free_port
from helpers import ProbeHandle, wait_until

import otp
from otp import curve, global_names
from otp.dist import spawn_on

pytestmark = pytest.mark.timeout(120)


class Cluster:
    """Real nodes made for one test; all killed at the end."""

    def __init__(self, directory: Path, test_node: TestNode) -> None:
        self.dir = directory
        self.test_node = test_node
        self.nodes: list[MongooseNode] = []

    def node(self, name: str, *, seeds: list[str] = (), keys_file: str | None = None,  # type: ignore[assignment]
             workers: int = 2) -> MongooseNode:
        node = MongooseNode(
            self.dir, name, port=free_port(), keys_file=keys_file or self.test_node.keys_file,
            seeds=[s.removeprefix("tcp://") for s in seeds], workers=workers,
        )
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def cluster(tmp_path: Path, test_node: TestNode) -> Iterator[Cluster]:
    c = Cluster(tmp_path, test_node)
    yield c
    c.close()
    wait_until(lambda: test_node.nodes() == ["test@localhost"], timeout=10,
               what="the test node alone again")


def spawn(node: str, worker: int, cls: str, *args: Any) -> otp.Pid:
    return spawn_on((node, worker), f"dist_actors:{cls}", *args).get(timeout=10)


def two_nodes(cluster: Cluster, test_node: TestNode) -> tuple[MongooseNode, MongooseNode]:
    a = cluster.node("a@localhost")
    a.start()
    b = cluster.node("b@localhost", seeds=[a.address])
    b.start()
    test_node.join(a.address)
    everyone = {("a@localhost", w) for w in (0, 1, 2)} | {("b@localhost", w) for w in (0, 1, 2)}
    wait_until(lambda: everyone <= set(test_node.processes()), timeout=20,
               what=lambda: f"both nodes and their workers in the view {test_node.processes()}; "
               f"{test_node.scheduler.run_sync(test_node.dist.statistics)}; "
               f"{test_node.scheduler.run_sync(test_node.runtime.transport.statistics)}")
    return a, b


def test_nodes_join_by_seed_and_actors_talk_across_them(
    cluster: Cluster, test_node: TestNode, probe: ProbeHandle
) -> None:
    """b joins a by seed; an actor on b answers asks and forwards to a pid on a third node."""
    _a, _b = two_nodes(cluster, test_node)
    echo = spawn("b@localhost", 2, "Echo")
    assert otp.ask(echo, ("over", "tcp")).get(timeout=5) == ("over", "tcp")
    forwarder = spawn("a@localhost", 1, "Forwarder", probe.pid)
    otp.send(forwarder, "via a")
    assert probe.next() == (forwarder, "via a")


def test_cross_node_link_and_monitor(
    cluster: Cluster, test_node: TestNode, probe: ProbeHandle
) -> None:
    """A linker on a sees the crash of its partner on b; a monitor on b's pid fires."""
    two_nodes(cluster, test_node)
    linker = spawn("a@localhost", 2, "Linker", probe.pid)
    victim = spawn("b@localhost", 1, "Echo")
    assert otp.ask(linker, ("link", victim)).get(timeout=5) == "linked"
    mref = probe.monitor(victim)
    otp.send(victim, ("crash", "boom on b"))
    assert "boom on b" in str(probe.down(mref))
    pid, message = probe.next()
    assert pid == linker and message.pid == victim and "boom on b" in str(message.reason)


def test_a_killed_node_fires_noconnection(
    cluster: Cluster, test_node: TestNode, probe: ProbeHandle
) -> None:
    """kill -9 of b's whole process group: monitors on b's pids fire noconnection."""
    _a, b = two_nodes(cluster, test_node)
    victim = spawn("b@localhost", 1, "Echo")
    watcher = spawn("a@localhost", 1, "Linker", probe.pid)
    assert otp.ask(watcher, ("link", victim)).get(timeout=5) == "linked"
    mref = probe.monitor(victim)
    assert b.proc is not None
    b.kill()  # SIGKILL: no leave notice; the workers die by their parent-death signal
    assert probe.down(mref, timeout=10) == "noconnection"
    assert probe.next(timeout=10) == (watcher, otp.Exit(victim, "noconnection"))
    wait_until(lambda: "b@localhost" not in test_node.nodes(), what="b gone from the view")


def test_a_silent_node_is_declared_down_by_heartbeat_and_comes_back(
    cluster: Cluster, test_node: TestNode, probe: ProbeHandle
) -> None:
    """A frozen node (SIGSTOP) is declared down within node_timeout; after SIGCONT it rejoins."""
    _a, b = two_nodes(cluster, test_node)
    victim = spawn("b@localhost", 1, "Echo")
    mref = probe.monitor(victim)
    b.signal(signal.SIGSTOP)
    try:
        assert probe.down(mref, timeout=8) == "noconnection"
    finally:
        b.signal(signal.SIGCONT)
    wait_until(lambda: "b@localhost" in test_node.nodes(), timeout=20, what="b back")
    echo = spawn("b@localhost", 1, "Echo")
    assert otp.ask(echo, "again").get(timeout=5) == "again"


def test_a_worker_killed_on_a_node_is_replaced(
    cluster: Cluster, test_node: TestNode, probe: ProbeHandle
) -> None:
    """kill -9 of a worker: its pids go noconnection, the node starts a new worker process."""
    a = cluster.node("a@localhost")
    a.start()
    test_node.join(a.address)
    wait_until(lambda: ("a@localhost", 2) in test_node.processes(), what="a's workers")
    old = spawn("a@localhost", 2, "Echo")
    os_pid = otp.ask(old, "os_pid").get(timeout=5)
    mref = probe.monitor(old)
    os.kill(os_pid, signal.SIGKILL)
    assert probe.down(mref) == "noconnection"
    a.wait_for("worker_up", worker=2)  # the replacement
    wait_until(lambda: ("a@localhost", 2) in test_node.processes(), what="worker 2 back")
    new = spawn("a@localhost", 2, "Echo")
    assert otp.ask(new, "os_pid").get(timeout=5) != os_pid
    with pytest.raises(pykka.ActorDeadError):
        otp.ask(old, "ghost").get(timeout=5)


def test_a_node_with_other_keys_cannot_join(cluster: Cluster, test_node: TestNode,
                                            tmp_path: Path) -> None:
    """A node holding another keypair never enters the cluster's view."""
    a = cluster.node("a@localhost")
    a.start()
    test_node.join(a.address)
    wait_until(lambda: "a@localhost" in test_node.nodes(), what="a joined")
    other_keys = str(tmp_path / "other.keys")
    curve.save(curve.generate(), other_keys)
    intruder = cluster.node("intruder@localhost", seeds=[a.address], keys_file=other_keys)
    intruder.start()
    # Sync point: a legitimate node joining after the intruder is seen by everyone...
    c = cluster.node("c@localhost", seeds=[a.address])
    c.start()
    wait_until(lambda: "c@localhost" in test_node.nodes(), what="c joined")
    # ...while the intruder is in nobody's view.
    assert "intruder@localhost" not in test_node.nodes()
    intruder.wait_for("dist_auth_failed")


def test_a_stopped_node_leaves_and_can_rejoin(
    cluster: Cluster, test_node: TestNode, probe: ProbeHandle
) -> None:
    """SIGTERM: b stops in order, leaves (its pids go down at once), leaves no process or
    socket file behind; started again, it rejoins."""
    _a, b = two_nodes(cluster, test_node)
    victim = spawn("b@localhost", 1, "Echo")
    worker_os_pid = otp.ask(victim, "os_pid").get(timeout=5)
    started = [e for e in b.seen if e.get("what") == "os_process_started"]
    ipc_dir = started[0]["argv"][started[0]["argv"].index("--ipc-dir") + 1]
    assert stat.S_IMODE(os.stat(ipc_dir).st_mode) == 0o700  # the node's user only
    mref = probe.monitor(victim)
    b.signal(signal.SIGTERM)
    assert probe.down(mref, timeout=10) == "noconnection"
    stopped = [b.wait_for("os_process_stopped")["os_process"] for _ in range(2)]
    assert stopped == ["worker2", "worker1"]  # right to left
    b.wait_for("node_stopped")
    assert b.wait() == 0
    assert not os.path.exists(f"/proc/{worker_os_pid}")
    assert not os.path.exists(ipc_dir)
    wait_until(lambda: "b@localhost" not in test_node.nodes(), what="b left")
    b.start()
    wait_until(lambda: ("b@localhost", 2) in test_node.processes(), timeout=20,
               what="b rejoined with its workers")


def test_global_names_across_nodes(
    cluster: Cluster, test_node: TestNode, probe: ProbeHandle
) -> None:
    """A name registered for a pid on b is found on a; killing b frees it."""
    _a, b = two_nodes(cluster, test_node)
    owner = spawn("b@localhost", 1, "Echo")
    finder = spawn("a@localhost", 2, "GlobalFinder")
    assert global_names.register("cluster-wide", owner).get(timeout=5) is True
    wait_until(lambda: otp.ask(finder, "cluster-wide").get(timeout=5) == owner,
               what="a sees the name")
    b.kill()
    wait_until(lambda: otp.ask(finder, "cluster-wide").get(timeout=5) is None, timeout=10,
               what="a sees it freed")
    wait_until(lambda: global_names.whereis("cluster-wide") is None, what="freed here too")


def test_nodes_found_through_a_node_list_file(
    cluster: Cluster, test_node: TestNode, tmp_path: Path
) -> None:
    """A node with a node_list_file joins the nodes listed there, and follows edits."""
    a = cluster.node("a@localhost", workers=1)
    a.start()
    test_node.join(a.address)
    node_list = tmp_path / "nodes.txt"
    node_list.write_text(f"# the cluster\n{a.address.removeprefix('tcp://')}\n")
    b = MongooseNode(
        cluster.dir, "b@localhost", port=free_port(), keys_file=test_node.keys_file,
        workers=1,
        extra_toml=f'[internal_databases.cets]\nnode_list_file = "{node_list}"\n'
                   "discovery_interval = 0.2\n",
    )
    cluster.nodes.append(b)
    b.start()
    wait_until(lambda: ("b@localhost", 1) in test_node.processes(), timeout=20,
               what="b joined through the file")
    c = cluster.node("c@localhost", workers=1)  # no seeds: alone until someone calls
    c.start()
    with node_list.open("a") as f:
        f.write(c.address.removeprefix("tcp://") + "\n")
    wait_until(lambda: ("c@localhost", 1) in test_node.processes(), timeout=20,
               what="c joined after the file changed")


def test_nodes_joining_each_other_at_once_form_one_cluster(
    cluster: Cluster, test_node: TestNode
) -> None:
    """Three nodes started together, each seeded with the next (a ring), all meet."""
    ports = [free_port() for _ in range(3)]
    names = ["r0@localhost", "r1@localhost", "r2@localhost"]
    nodes = []
    for i, name in enumerate(names):
        node = MongooseNode(cluster.dir, name, port=ports[i], keys_file=test_node.keys_file,
                            workers=1, seeds=[f"127.0.0.1:{ports[(i + 1) % 3]}"])
        cluster.nodes.append(node)
        nodes.append(node)
    import threading

    starters = [threading.Thread(target=node.start) for node in nodes]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join(60)
    test_node.join(nodes[0].address)
    everyone = {(name, w) for name in names for w in (0, 1)}
    wait_until(lambda: everyone <= set(test_node.processes()), timeout=30,
               what=lambda: f"all three in the view: {test_node.processes()}")
