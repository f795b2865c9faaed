"""otp.introspect: the Introspect actor's queries, and the messages-handled count they show.

Most tests run the actor in this test process; the last ones ask one in a real worker
process, as a shell does.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from dist_harness import NODE, TestNode
from helpers import wait_until

import otp
from otp import cets, codec
from otp import supervisor as sup_mod
from otp.dist import spawn_on
from otp.introspect import MAX_DYNAMIC, MAX_TEXT, NAME, Introspect, memory_estimate
from otp.supervisor import ChildSpec, Supervisor

pytestmark = pytest.mark.timeout(60)

T = 5.0  # seconds: deadline for any single wait


class Echo(otp.LoopActor):
    """Answers asks with the message."""

    pykka_registry = False

    def on_receive(self, message: Any) -> Any:
        return message


class Hoarder(otp.LoopActor):
    """Holds big values, to be measured and shown."""

    pykka_registry = False

    def __init__(self, n: int) -> None:
        super().__init__()
        self.items = list(range(n))
        self.index = {i: str(i) for i in range(n)}
        self.blob = "y" * 5000


class Waiter(otp.LoopActor):
    """An async handler: each message waits for the future it carries."""

    pykka_registry = False

    async def on_receive(self, message: Any) -> Any:
        return await message


@pytest.fixture
def introspect() -> Iterator[otp.Pid]:
    """This process's Introspect actor, stopped after the test."""
    ref = Introspect.start()
    otp.started(ref).get(timeout=T)
    yield ref.pid
    ref.stop()


def ask(pid: otp.Pid, *query: Any) -> Any:
    return otp.ask(pid, tuple(query)).get(timeout=T)


def on_loop(fn: Any, *args: Any) -> Any:
    return otp.current().run_sync(fn, *args)


# -- the messages-handled count ----------------------------------------------------------------


def test_an_actor_counts_every_message_it_handled() -> None:
    """handled counts tells and asks, across several runs of the throughput budget."""
    ref = Echo.start()
    try:
        assert on_loop(lambda: otp.current().lookup(ref.pid).handled) == 0
        for i in range(200):  # more than one run's budget (Scheduler.throughput)
            ref.tell(i)
        assert ref.ask("last", timeout=T) == "last"
        actor = otp.current().lookup(ref.pid)
        assert on_loop(lambda: actor.handled) == 201
        assert on_loop(actor.info)["handled"] == 201
    finally:
        ref.stop()


def test_a_message_to_an_async_handler_is_counted_once() -> None:
    """A suspended handler's message counts once, when taken; the next ones after it."""
    ref = Waiter.start()
    try:
        gate: otp.LoopFuture[str] = otp.LoopFuture(otp.current())
        answer = ref.ask(gate, block=False)
        actor = otp.current().lookup(ref.pid)
        wait_until(lambda: on_loop(lambda: actor.info()["state"]) == "suspended", T,
                   what="the handler suspended")
        assert on_loop(lambda: actor.handled) == 1
        on_loop(gate.set, "open")
        assert answer.get(timeout=T) == "open"
        done: otp.LoopFuture[str] = otp.LoopFuture(otp.current())
        done.set("at once")
        assert ref.ask(done, timeout=T) == "at once"
        assert on_loop(lambda: actor.handled) == 2
    finally:
        ref.stop()


# -- queries in this process -------------------------------------------------------------------


def test_process_query_describes_this_os_process(introspect: otp.Pid) -> None:
    """("process",) gives the process's identity, actor counts, rss and uptime."""
    scheduler = otp.current()
    info = ask(introspect, "process")
    assert set(info) == {"node", "worker", "os_pid", "actors", "run_queue", "mailbox_total",
                         "rss_bytes", "uptime_s"}
    assert (info["node"], info["worker"], info["os_pid"]) == (
        scheduler.node, scheduler.worker, os.getpid())
    assert info["actors"] >= 1 and info["mailbox_total"] >= 0
    assert info["rss_bytes"] > 10_000_000
    assert info["uptime_s"] > 0


def test_the_introspect_actor_registers_its_name(introspect: otp.Pid) -> None:
    """The actor is found by its name, as a shell finds it in any process."""
    scheduler = otp.current()
    assert otp.whereis(NAME) == introspect
    answer = otp.ask_named(scheduler.node, scheduler.worker, NAME, ("process",)).get(timeout=T)
    assert answer["os_pid"] == os.getpid()


def test_actors_query_filters_by_kind_or_name_and_sorts_by_pid(introspect: otp.Pid) -> None:
    """A kind filter matches class names case-insensitively, or a registered name."""
    refs = [Hoarder.start(10) for _ in range(3)]
    try:
        otp.register("the-hoarder", refs[1].pid)
        rows = ask(introspect, "actors", "hoard", None)
        assert [row["pid"] for row in rows] == sorted(ref.pid for ref in refs)
        assert all(row["kind"] == "Hoarder" for row in rows)
        assert set(rows[0]) == {"pid", "kind", "parent", "mailbox", "handled", "memory",
                                "names", "state"}
        assert rows[1]["names"] == ["the-hoarder"] and rows[1]["state"] == "running"
        by_name = ask(introspect, "actors", "the-hoarder", None)
        assert [row["pid"] for row in by_name] == [refs[1].pid]
        assert len(ask(introspect, "actors", "HOARDER", 2)) == 2
        everyone = ask(introspect, "actors", None, None)
        assert introspect in [row["pid"] for row in everyone]
        assert [row["pid"] for row in everyone] == sorted(row["pid"] for row in everyone)
    finally:
        for ref in refs:
            ref.stop()


def test_actors_query_counts_handled_messages(introspect: otp.Pid) -> None:
    """The handled column is the actor's own count."""
    ref = Echo.start()
    try:
        for i in range(5):
            assert ref.ask(i, timeout=T) == i
        [row] = [r for r in ask(introspect, "actors", "Echo", None) if r["pid"] == ref.pid]
        assert row["handled"] == 5 and row["mailbox"] == 0 and row["parent"] is None
    finally:
        ref.stop()


def test_memory_estimate_grows_with_the_state_and_stays_bounded(introspect: otp.Pid) -> None:
    """A bigger state estimates bigger; a huge one is measured shallowly and fast."""
    small, big, huge = Hoarder.start(10), Hoarder.start(10_000), Hoarder.start(1_000_000)
    try:
        rows = {r["pid"]: r["memory"] for r in ask(introspect, "actors", "Hoarder", None)}
        assert 5000 < rows[small.pid] < rows[big.pid] < rows[huge.pid]
        actor = otp.current().lookup(huge.pid)
        started = time.perf_counter()
        on_loop(memory_estimate, actor)
        assert time.perf_counter() - started < 0.5  # two levels, 64 objects: not a million
    finally:
        for ref in (small, big, huge):
            ref.stop()


def test_state_query_shows_bounded_fields_and_info(introspect: otp.Pid) -> None:
    """("state", pid) gives each attribute as a bounded repr, and the actor's info."""
    ref = Hoarder.start(1000)
    try:
        state = ask(introspect, "state", ref.pid)
        assert state["pid"] == ref.pid and state["kind"] == "Hoarder"
        fields = state["fields"]
        assert fields["blob"].startswith("'yyy") and len(fields["blob"]) <= MAX_TEXT + 10
        assert fields["items"].startswith("[0, 1, 2") and fields["items"].endswith("...]")
        assert all(isinstance(text, str) for text in fields.values())
        assert state["info"]["pid"] == ref.pid and state["info"]["handled"] == 0
        codec.dumps(state)  # crosses processes as it is
    finally:
        ref.stop()


def test_state_of_a_dead_or_unknown_pid_fails_with_noproc(introspect: otp.Pid) -> None:
    """An unknown pid fails the ask with NoProcError; the introspect actor lives on."""
    ref = Echo.start()
    pid = ref.pid
    ref.stop()
    with pytest.raises(otp.NoProcError):
        ask(introspect, "state", pid)
    with pytest.raises(otp.NoProcError):
        ask(introspect, "state", "not a pid")
    assert ask(introspect, "process")["os_pid"] == os.getpid()


def test_tree_query_walks_nested_and_dynamic_supervisors(introspect: otp.Pid) -> None:
    """The tree nests child supervisors and caps a simple_one_for_one's children."""
    inner = functools.partial(
        Supervisor.start, "one_for_all", 1, 5, [ChildSpec("leaf", Echo.start, "transient")]
    )
    dynamic = functools.partial(
        Supervisor.start, "simple_one_for_one", 1, 5, [ChildSpec("t", Echo.start, "temporary")]
    )
    root = Supervisor.start(children=[
        ChildSpec("echo", Echo.start),
        ChildSpec("inner", inner, type="supervisor"),
        ChildSpec("dyn", dynamic, type="supervisor"),
    ])
    try:
        otp.started(root).get(timeout=T)
        otp.register("introspect-test-root", root.pid)
        dyn = {c.id: c.pid for c in sup_mod.which_children(root).get(timeout=T)}["dyn"]
        for _ in range(MAX_DYNAMIC + 10):
            sup_mod.start_child(dyn, []).get(timeout=T)
        [tree] = [t for t in ask(introspect, "tree") if t["pid"] == root.pid]
        assert (tree["id"], tree["kind"], tree["type"]) == (
            "introspect-test-root", "Supervisor", "supervisor")
        echo, inner_node, dyn_node = tree["children"]
        assert (echo["id"], echo["kind"], echo["type"], echo["restart"]) == (
            "echo", "Echo", "worker", "permanent")
        assert (inner_node["id"], inner_node["type"], inner_node["kind"]) == (
            "inner", "supervisor", "Supervisor")
        [leaf] = inner_node["children"]
        assert (leaf["id"], leaf["restart"], leaf["children"]) == ("leaf", "transient", [])
        assert dyn_node["pid"] == dyn and len(dyn_node["children"]) == MAX_DYNAMIC
        assert dyn_node["more"] == 10
        assert all(c["id"] is None and c["restart"] == "temporary"
                   for c in dyn_node["children"])
        # The inner supervisor and the dynamic one are not roots of their own.
        assert not [t for t in ask(introspect, "tree") if t["pid"] in (dyn, inner_node["pid"])]
        codec.dumps(tree)
    finally:
        root.stop()


def test_an_unknown_query_is_left_to_on_receive(introspect: otp.Pid) -> None:
    """A message that names no query gets LoopActor's default answer, None."""
    assert otp.ask(introspect, ("no-such-query",)).get(timeout=T) is None
    assert otp.ask(introspect, "plain text").get(timeout=T) is None


def test_tables_and_lookup_read_the_local_replica(test_node: TestNode, introspect: otp.Pid) -> None:
    """("tables",) gives every table's status; ("lookup", ...) accepts a list for a tuple key."""
    name = f"introspect-{os.getpid()}-{time.monotonic_ns()}"
    table = cets.create(name)
    on_loop(lambda: table.insert((("room", 1), "data")))
    statuses = {t["name"]: t for t in ask(introspect, "tables")}
    assert statuses[name]["size"] == 1 and statuses[name]["type"] == "set"
    assert f"{NODE}.0" in statuses[name]["members"]
    expected = [(("room", 1), "data")]
    assert ask(introspect, "lookup", name, ("room", 1)) == expected
    assert ask(introspect, "lookup", name, ["room", 1]) == expected
    assert ask(introspect, "lookup", name, "missing") == []
    with pytest.raises(KeyError):
        ask(introspect, "lookup", "no-such-table", "k")


# -- in a real worker process -------------------------------------------------------------------


@pytest.fixture
def worker(test_node: TestNode) -> Iterator[TestNode]:
    """Worker process 1 of the test node, with an Introspect actor."""
    test_node.start_worker(1)
    spawn_on((NODE, 1), "otp.introspect:Introspect").get(timeout=10)
    yield test_node
    test_node.stop_workers()
    wait_until(lambda: (NODE, 1) not in test_node.processes(), what="worker 1 gone")


def test_a_worker_answers_queries_by_name(worker: TestNode) -> None:
    """A worker's introspect actor answers ask_named from another process."""
    def query(*q: Any) -> Any:
        return otp.ask_named(NODE, 1, NAME, tuple(q)).get(timeout=T)

    info = wait_until(lambda: _try(query, "process"), what="introspect registered in worker 1")
    assert (info["node"], info["worker"], info["os_pid"]) == (NODE, 1, worker.workers[1].pid)
    [me] = query("actors", "introspect", None)
    assert me["names"] == [NAME] and me["kind"] == "Introspect" and me["pid"].worker == 1
    assert [t["id"] for t in query("tree")] == ["worker_sup"]
    with pytest.raises(codec.RemoteError) as failure:
        query("state", otp.Pid(NODE, 1, 1))
    assert failure.value.type_name == "otp.actor.NoProcError"


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except pykka.ActorDeadError:
        return None

