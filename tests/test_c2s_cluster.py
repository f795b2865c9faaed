"""Client sessions across a 2-node cluster, and a node stop seen by its clients."""

from __future__ import annotations

import signal

import pytest
from dist_harness import TestNode
from helpers import wait_until
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, register, xmpp_node

pytestmark = pytest.mark.timeout(120)


def test_users_on_two_nodes_exchange_messages_in_order(tmp_path, test_node: TestNode, loop):
    """alice on node A and bob on node B exchange 1,000 messages each way, in order;
    when node B is killed, bob's session disappears from A's view (a message to him
    bounces)."""
    a = xmpp_node(tmp_path, "xa@localhost", test_node.keys_file, users=("alice", "bob"))
    b = None
    try:
        b = xmpp_node(tmp_path, "xb@localhost", test_node.keys_file, users=(),
                      seeds=[a.address.removeprefix("tcp://")])
        register(b, ("alice", "bob"))  # each node has its own embedded store
        alice = Client(loop, f"alice@{DOMAIN}/a", PASSWORD, port=a.c2s_port).connect()
        bob = Client(loop, f"bob@{DOMAIN}/b", PASSWORD, port=b.c2s_port).connect()
        # The session table is replicated: wait until each side can reach the other.
        probe = 0

        def reachable() -> bool:
            nonlocal probe
            probe += 1
            alice.send_message(bob.jid, f"probe{probe}", mtype="headline")
            return any(m["body"].startswith("probe") for m in bob.messages)

        wait_until(reachable, timeout=20, what="bob reachable from alice")
        bob.messages.clear()
        n = 1000
        for i in range(n):
            alice.send_message(bob.jid, f"a{i}")
            bob.send_message(alice.jid, f"b{i}")
        wait_until(lambda: len(bob.bodies()) >= n and len(alice.bodies()) >= n, timeout=60,
                   what=lambda: f"{len(bob.bodies())} and {len(alice.bodies())} of {n}")
        assert [x for x in bob.bodies() if not x.startswith("probe")] == [
            f"a{i}" for i in range(n)]
        assert alice.bodies() == [f"b{i}" for i in range(n)]
        b.kill()
        wait_until(bob.disconnected.is_set, what="bob's connection closed with his node")

        def bounced() -> bool:
            alice.send_message(f"bob@{DOMAIN}", "gone?")
            return any(m["type"] == "error" for m in alice.messages)

        wait_until(bounced, timeout=20, what="a message to bob bounces once B is gone")
    finally:
        a.kill()
        if b is not None:
            b.kill()


def test_stopping_a_node_ends_every_stream_with_system_shutdown(tmp_path, test_node, loop):
    """SIGTERM (mongoose stop): each client gets system-shutdown before the close."""
    node = xmpp_node(tmp_path, "xs@localhost", test_node.keys_file, users=("alice", "bob"))
    try:
        clients = [Client(loop, f"{u}@{DOMAIN}/r", PASSWORD, port=node.c2s_port).connect()
                   for u in ("alice", "bob")]
        node.signal(signal.SIGTERM)
        for client in clients:
            wait_until(client.disconnected.is_set, timeout=20, what="stream closed")
            assert "system-shutdown" in client.stream_errors
        assert node.wait(timeout=30) == 0
    finally:
        node.kill()


def test_a_dead_workers_sessions_leave_the_session_table(tmp_path, test_node, loop):
    """kill -9 of the worker holding bob's session: his connection drops, a message to
    him bounces (his session is gone from every replica), and alice, on the other
    worker, is still served; the supervisor starts a new worker that takes logins."""
    import os

    node = xmpp_node(tmp_path, "xw@localhost", test_node.keys_file, users=("alice", "bob"))
    try:
        workers = {node.wait_for("worker_up", worker=n)["worker"]: None for n in (1, 2)}
        assert set(workers) == {1, 2}
        alice = Client(loop, f"alice@{DOMAIN}/a", PASSWORD, port=node.c2s_port).connect()
        alice_worker = node.wait_for("c2s_session_open", jid=alice.jid)["worker"]
        for attempt in range(20):
            bob = Client(loop, f"bob@{DOMAIN}/b{attempt}", PASSWORD, port=node.c2s_port)
            bob.connect()
            bob_worker = node.wait_for("c2s_session_open", jid=bob.jid)["worker"]
            if bob_worker != alice_worker:
                break
            bob.disconnect()
        else:
            pytest.fail("the kernel put every connection on one worker")
        # Bob's session reaches alice's worker's replica of the session table a moment
        # after his login: probe until a message gets through.
        probes = iter(range(1_000_000))

        def reachable() -> bool:
            alice.send_message(bob.jid, f"hello{next(probes)}", mtype="headline")
            return bool(bob.bodies())

        wait_until(reachable, timeout=20, what="bob reachable")
        os.kill(_worker_os_pid(node, bob_worker), 9)
        wait_until(bob.disconnected.is_set, what="bob's connection dropped with his worker")

        def bounced() -> bool:
            alice.send_message(f"bob@{DOMAIN}", "still there?")
            return any(m["type"] == "error" for m in alice.messages)

        wait_until(bounced, timeout=20, what="a message to bob bounces")
        node.wait_for("worker_up", worker=bob_worker, timeout=30)
        again = Client(loop, f"bob@{DOMAIN}/again", PASSWORD, port=node.c2s_port).connect()
        alice.send_message(again.jid, "welcome back")
        wait_until(lambda: "welcome back" in again.bodies(), what="bob served again")
    finally:
        node.kill()


def _worker_os_pid(node, worker: int) -> int:
    import psutil

    root = psutil.Process(node.proc.pid)
    for child in root.children(recursive=True):
        cmdline = child.cmdline()
        if "otp.worker" in " ".join(cmdline) and cmdline[cmdline.index("--worker") + 1] == str(
                worker):
            return child.pid
    raise AssertionError(f"no process for worker {worker}")
