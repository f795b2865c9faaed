"""Replicated tables (otp.cets) across real worker processes and nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import NODE, TestNode
from helpers import wait_until

import otp
from otp import cets
from otp.dist import spawn_on

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def workers(test_node: TestNode) -> Iterator[TestNode]:
    """Two worker processes, 1 and 2, of the test node."""
    test_node.start_worker(1)
    test_node.start_worker(2)
    yield test_node
    test_node.stop_workers()
    wait_until(lambda: set(test_node.processes()).isdisjoint({(NODE, 1), (NODE, 2)}),
               what="workers gone")


_tables = iter(range(1_000_000))


@pytest.fixture
def name() -> str:
    """A table name no other test uses (tables live as long as their process)."""
    return f"t{next(_tables)}"


def user(worker: int, name: str, type: str = "set") -> otp.Pid:
    return spawn_on((NODE, worker), "dist_actors:TableUser", name, type).get(timeout=10)


def ask(pid: otp.Pid, *message: Any) -> Any:
    return otp.ask(pid, tuple(message)).get(timeout=10)


def local_table(name: str, **options: Any) -> cets.Table:
    try:
        return cets.get(name)
    except KeyError:
        return cets.create(name, **options)


def test_a_write_in_one_worker_is_read_locally_everywhere(workers: TestNode, name: str) -> None:
    """An acked insert in worker 1 is in worker 2's and this process's replicas at once."""
    table = local_table(name)
    w1, w2 = user(1, name), user(2, name)
    assert ask(w1, "insert", ("alice", "w1")) == "ok"
    assert ask(w2, "lookup", "alice") == [("alice", "w1")]
    assert table.lookup("alice") == [("alice", "w1")]
    assert table.owner_of(("alice", "w1")) == (NODE, 1)


def test_writes_from_one_process_apply_in_order(workers: TestNode, name: str) -> None:
    """Many unacked writes from one worker end in the same final state everywhere."""
    table = local_table(name)
    w1 = user(1, name)
    for i in range(500):
        ask(w1, "insert_nowait", ("counter", i))
    assert ask(w1, "insert", ("done", True)) == "ok"  # acked: everything before is applied
    assert table.lookup("counter") == [("counter", 499)]


def test_a_late_replica_gets_the_existing_records(workers: TestNode, name: str) -> None:
    """A process that creates the table after writes fetches every owner's records."""
    w1 = user(1, name)
    ask(w1, "insert", ("early", 1))
    table = local_table(name)
    wait_until(lambda: table.lookup("early") == [("early", 1)], what="dump arrived")
    w2 = user(2, name)
    wait_until(lambda: ask(w2, "lookup", "early") == [("early", 1)], what="worker 2 has it")


def test_a_dead_workers_records_are_removed_everywhere(workers: TestNode, name: str) -> None:
    """kill -9 of a worker removes the records it owned from every replica; handle_down runs."""
    removed: list[Any] = []
    table = cets.create(name, handle_down=lambda t, records: removed.extend(records))
    w1, w2 = user(1, name), user(2, name)
    ask(w1, "insert", ("w1-record", 1))
    ask(w2, "insert", ("w2-record", 2))
    workers.workers[1].kill()
    wait_until(lambda: table.lookup("w1-record") == [], what="w1's record removed here")
    assert table.lookup("w2-record") == [("w2-record", 2)]
    assert removed == [("w1-record", 1)]
    assert ask(w2, "lookup", "w1-record") == []


def test_a_new_worker_receives_the_table(workers: TestNode, name: str) -> None:
    """A worker that joins the view later gets the records of every owner."""
    local_table(name)
    table_owner = user(1, name)
    ask(table_owner, "insert", ("before-join", "x"))
    workers.start_worker(3)
    w3 = user(3, name)
    wait_until(lambda: ask(w3, "lookup", "before-join") == [("before-join", "x")],
               what="worker 3 has the record")


def test_insert_new_admits_one_owner_per_key(workers: TestNode, name: str) -> None:
    """Two workers racing insert_new on one key: exactly one wins, everyone sees it."""
    table = local_table(name)
    w1, w2 = user(1, name), user(2, name)
    first = otp.ask(w1, ("insert_new", ("room", "w1")))
    second = otp.ask(w2, ("insert_new", ("room", "w2")))
    results = [first.get(timeout=10), second.get(timeout=10)]
    assert sorted(results) == [False, True]
    winner = ("room", "w1") if results[0] else ("room", "w2")
    wait_until(lambda: table.lookup("room") == [winner], what="the winner everywhere")
    assert ask(w1, "lookup", "room") == ask(w2, "lookup", "room") == [winner]


def test_conflicting_writes_converge_on_every_replica(workers: TestNode, name: str) -> None:
    """Two owners writing one key leave the same record in every replica."""
    table = local_table(name)
    w1, w2 = user(1, name), user(2, name)
    ask(w1, "insert", ("shared", "from-w1"))
    ask(w2, "insert", ("shared", "from-w2"))
    expected = [("shared", "from-w2")]  # the owner that sorts last: worker 2
    assert table.lookup("shared") == expected
    assert ask(w1, "lookup", "shared") == expected
    assert ask(w2, "lookup", "shared") == expected
    assert table.conflicts >= 1


def test_bag_tables_keep_several_records_per_key(workers: TestNode, name: str) -> None:
    """A bag holds each owner's records under one key; a delete removes the owner's only."""
    table = local_table(name, type="bag")
    w1, w2 = user(1, name, "bag"), user(2, name, "bag")
    ask(w1, "insert", ("alice@localhost", "phone"))
    ask(w2, "insert", ("alice@localhost", "laptop"))
    assert sorted(table.lookup("alice@localhost")) == [
        ("alice@localhost", "laptop"), ("alice@localhost", "phone")]
    ask(w1, "delete", "alice@localhost")
    assert table.lookup("alice@localhost") == [("alice@localhost", "laptop")]


def test_records_must_be_keyed_tuples(test_node: TestNode, name: str) -> None:
    """A write that is not a non-empty tuple is refused with TypeError."""
    table = local_table(name)
    with pytest.raises(TypeError, match="non-empty tuple"):
        test_node.scheduler.run_sync(table.insert, ["not", "a", "tuple"])


def test_a_lost_nodes_records_are_removed(tmp_path: Any, test_node: TestNode, name: str) -> None:
    """Records written on another node disappear here when that node is killed."""
    from dist_harness import MongooseNode, free_port

    table = local_table(name)
    node = MongooseNode(tmp_path, "cets-a@localhost", port=free_port(),
                        keys_file=test_node.keys_file, workers=1)
    try:
        node.start()
        test_node.join(node.address)
        wait_until(lambda: ("cets-a@localhost", 1) in test_node.processes(), what="joined")
        remote = spawn_on(("cets-a@localhost", 1), "dist_actors:TableUser", name).get(timeout=10)
        assert ask(remote, "insert", ("remote", "a")) == "ok"
        assert table.lookup("remote") == [("remote", "a")]
        node.kill()
        wait_until(lambda: table.lookup("remote") == [], timeout=10, what="record removed")
    finally:
        node.kill()
    wait_until(lambda: "cets-a@localhost" not in test_node.nodes(), timeout=10, what="gone")


def test_a_netsplit_heals_into_the_documented_state(
    tmp_path: Any, test_node: TestNode, name: str
) -> None:
    """Split a|b, write one key on both sides, heal: every replica holds b's record (the
    owner sorting last), and each side's own keys survive."""
    from dist_harness import MongooseNode, free_port

    table = local_table(name)
    a = MongooseNode(tmp_path, "split-a@localhost", port=free_port(),
                     keys_file=test_node.keys_file, workers=1)
    b = MongooseNode(tmp_path, "split-b@localhost", port=free_port(),
                     keys_file=test_node.keys_file, workers=1,
                     seeds=[a.address.removeprefix("tcp://")])
    try:
        a.start()
        b.start()
        test_node.join(a.address)
        everyone = {("split-a@localhost", 1), ("split-b@localhost", 1)}
        wait_until(lambda: everyone <= set(test_node.processes()), timeout=20, what="joined")
        on_a = spawn_on(("split-a@localhost", 1), "dist_actors:TableUser", name).get(timeout=10)
        on_b = spawn_on(("split-b@localhost", 1), "dist_actors:TableUser", name).get(timeout=10)
        split = [("split-a@localhost", "split-b@localhost"),
                 ("split-b@localhost", "split-a@localhost")]
        for here, there in split:
            test_node.scheduler.run_sync(test_node.dist.inject_fault, (here, 0), "block", there)
        a.wait_for("dist_node_down", node="split-b@localhost")
        b.wait_for("dist_node_down", node="split-a@localhost")
        # The worker learns the unavailable list from its root's next published view,
        # a moment after the root logged dist_node_down.
        wait_until(lambda: otp.ask(on_a, ("status",)).get(timeout=10)["unavailable_nodes"]
                   == ["split-b@localhost"], what="split-b unavailable in a's worker")
        status = otp.ask(on_a, ("status",)).get(timeout=10)
        assert status["unavailable_nodes"] == ["split-b@localhost"]
        assert status["discovered_nodes"] == []  # a was started without seeds
        b_status = otp.ask(on_b, ("status",)).get(timeout=10)
        assert b_status["discovered_nodes"] == [a.address]
        assert "split-b@localhost" not in status["nodes"]
        assert ask(on_a, "insert", ("shared", "a-side")) == "ok"
        assert ask(on_b, "insert", ("shared", "b-side")) == "ok"
        assert ask(on_a, "insert", ("only-a", 1)) == "ok"
        assert ask(on_b, "insert", ("only-b", 2)) == "ok"
        assert ask(on_a, "lookup", "shared") == [("shared", "a-side")]  # the sides differ
        for here, there in split:
            test_node.scheduler.run_sync(test_node.dist.inject_fault, (here, 0), "heal", there)
        merged = [("only-a", 1), ("only-b", 2), ("shared", "b-side")]
        wait_until(lambda: ask(on_a, "all") == merged, timeout=15, what="a merged")
        wait_until(lambda: ask(on_b, "all") == merged, timeout=15, what="b merged")
        assert sorted(table.all()) == merged
    finally:
        a.kill()
        b.kill()
    wait_until(lambda: not {"split-a@localhost", "split-b@localhost"} & set(test_node.nodes()),
               timeout=10, what="both gone")


def test_get_reads_a_set_table_like_a_dict(test_node: TestNode, name: str) -> None:
    """get() returns the record or None on set tables and is refused on bags."""
    table = local_table(name)
    test_node.scheduler.run_sync(table.insert, ("k", 1))
    assert table.get("k") == ("k", 1) and table.get("missing") is None
    bag = local_table(name + "-bag", type="bag")
    with pytest.raises(TypeError, match="set tables"):
        bag.get("k")


def test_an_acked_write_returns_when_a_silent_member_dies(workers: TestNode, name: str) -> None:
    """A write waiting for a frozen worker's ack completes once that worker is lost."""
    import os
    import signal

    table = local_table(name)
    user(1, name), user(2, name)
    frozen = workers.workers[2]
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        pending = workers.scheduler.run_sync(lambda: table.insert(("x", 1), wait=True))
        assert not pending.done()  # worker 2 cannot ack
        frozen.kill()
        pending.get(timeout=10)
    finally:
        if frozen.poll() is None:
            os.kill(frozen.pid, signal.SIGCONT)
    assert table.get("x") == ("x", 1)


def test_a_merge_cut_halfway_leaves_each_side_consistent(
    tmp_path: Any, test_node: TestNode, name: str
) -> None:
    """Split a|b, heal, and split again while the dumps of the merge are on the way: each
    side's replicas agree (the other side's records, whole or partly received, are
    removed when it is declared down again); a final heal merges everything.

    Where exactly the second split cuts the merge is up to the scheduler: each process
    receives each owner's dump as one message, so the cut falls between dumps. The
    invariant checked holds wherever it falls, which is the point.
    """
    from dist_harness import MongooseNode, free_port

    a = MongooseNode(tmp_path, "cut-a@localhost", port=free_port(),
                     keys_file=test_node.keys_file, workers=2)
    b = MongooseNode(tmp_path, "cut-b@localhost", port=free_port(),
                     keys_file=test_node.keys_file, workers=2,
                     seeds=[a.address.removeprefix("tcp://")])
    split = [("cut-a@localhost", "cut-b@localhost"), ("cut-b@localhost", "cut-a@localhost")]

    def fault(action: str) -> None:
        for here, there in split:
            test_node.scheduler.run_sync(test_node.dist.inject_fault, (here, 0), action, there)

    try:
        a.start()
        b.start()
        test_node.join(a.address)
        procs = [("cut-a@localhost", 1), ("cut-a@localhost", 2),
                 ("cut-b@localhost", 1), ("cut-b@localhost", 2)]
        wait_until(lambda: set(procs) <= set(test_node.processes()), timeout=20, what="joined")
        a1, a2, b1, b2 = (spawn_on(p, "dist_actors:TableUser", name).get(timeout=10)
                          for p in procs)
        fault("block")
        a.wait_for("dist_node_down", node="cut-b@localhost")
        b.wait_for("dist_node_down", node="cut-a@localhost")
        for user_pid, prefix in ((a1, "a1-"), (a2, "a2-"), (b1, "b1-"), (b2, "b2-")):
            assert ask(user_pid, "fill", prefix, 3_000) == "ok"
        side_a, side_b = ask(a1, "all"), ask(b1, "all")
        assert ask(a2, "all") == side_a and ask(b2, "all") == side_b
        assert len(side_a) == len(side_b) == 6_000

        fault("heal")
        wait_until(lambda: ask(a1, "size") > 6_000, timeout=15, what="a merge under way")
        fault("block")  # the merge is cut here
        a.wait_for("dist_node_down", node="cut-b@localhost")
        b.wait_for("dist_node_down", node="cut-a@localhost")
        for side, users in ((side_a, (a1, a2)), (side_b, (b1, b2))):
            for user_pid in users:
                wait_until(lambda user_pid=user_pid, side=side: ask(user_pid, "all") == side,
                           timeout=10, what="the side holds its own records only")

        fault("heal")
        merged = sorted(side_a + side_b)
        for user_pid in (a1, a2, b1, b2):
            wait_until(lambda user_pid=user_pid: ask(user_pid, "all") == merged,
                       timeout=15, what="merged")
    finally:
        a.kill()
        b.kill()
    wait_until(lambda: not {"cut-a@localhost", "cut-b@localhost"} & set(test_node.nodes()),
               timeout=10, what="both gone")
