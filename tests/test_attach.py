"""otp.attach: a process of its own attaches to a live cluster as a hidden node.

The shell is a real OS process (a process has one scheduler, and this test process has
its own already): it runs :func:`serve` below, which takes commands on stdin and
answers on stdout, one pickled and base64-encoded line each. The cluster is the test
node (this process, the root of ``test@localhost``) with a worker process, or a real
``mongoose foreground`` node.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dist_harness import NODE, PYTHONPATH, MongooseNode, TestNode, free_port
from helpers import ProbeHandle, wait_until

import otp
from otp import curve
from otp.attach import AttachError, attach
from otp.dist import spawn_on

pytestmark = pytest.mark.timeout(60)

T = 10.0  # seconds: deadline for any single wait


# -- the shell process ---------------------------------------------------------------------------


class _Collector(otp.LoopActor):
    """In the shell: keeps every message it gets, for the test to read."""

    def __init__(self, inbox: queue.Queue[Any]) -> None:
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: Any) -> None:
        self.inbox.put(message)


def serve() -> None:
    """The shell's main: run commands from stdin until ``quit`` (see the docstring)."""
    attached: Any = None
    inbox: queue.Queue[Any] = queue.Queue()
    collector: Any = None
    for line in sys.stdin:
        command, *args = pickle.loads(base64.b64decode(line))
        try:
            if command == "attach":
                address, keys_file, timeout = args
                started = time.monotonic()
                attached = attach(address, curve.load(keys_file), timeout=timeout)
                result: Any = {"node": attached.node, "target": attached.target,
                               "nodes": attached.nodes(), "processes": attached.processes(),
                               "seconds": time.monotonic() - started}
            elif command == "processes":
                result = attached.processes()
            elif command == "ask_named":
                result = otp.ask_named(*args).get(timeout=T)
            elif command == "spawn_on":
                result = spawn_on(*args).get(timeout=T)
            elif command == "exit":
                result = otp.exit(*args)
            elif command in ("monitor", "collector"):
                if collector is None:
                    collector = _Collector.start(inbox)
                    otp.started(collector).get(timeout=T)
                if command == "collector":
                    result = collector.pid
                else:
                    result = otp.monitor(collector.pid, args[0])
            elif command == "next_message":
                result = inbox.get(timeout=args[0])
            elif command == "close":
                result = attached.close()
            elif command == "quit":
                break
            else:
                raise ValueError(f"unknown command {command!r}")
            answer: Any = ("ok", result)
        except BaseException as error:
            answer = ("error", type(error).__name__, str(error))
        sys.stdout.write(base64.b64encode(pickle.dumps(answer)).decode() + "\n")
        sys.stdout.flush()
    if attached is not None:
        attached.close()


class ShellError(Exception):
    """A command failed in the shell: ``kind`` is the exception's type name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class Shell:
    """The test's side of a shell process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import test_attach; test_attach.serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=PYTHONPATH),
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def _send(self, command: str, *args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(base64.b64encode(pickle.dumps((command, *args))).decode() + "\n")
        self.proc.stdin.flush()

    def call(self, command: str, *args: Any, timeout: float = 2 * T) -> Any:
        """Run ``command`` in the shell and return its result (ShellError if it failed)."""
        self._send(command, *args)
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the shell did not answer {command} in {timeout} s") from None
        answer = pickle.loads(base64.b64decode(line))
        if answer[0] == "error":
            raise ShellError(answer[1], answer[2])
        return answer[1]

    def stop(self) -> None:
        """Quit (the shell closes its attachment first); kill it if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self._send("quit")
            try:
                self.proc.wait(timeout=T)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def shell() -> Iterator[Shell]:
    """A shell process, not attached yet; stopped after the test."""
    process = Shell()
    yield process
    process.stop()


@pytest.fixture
def cluster(test_node: TestNode) -> Iterator[TestNode]:
    """The test node with worker 1, which runs an Introspect actor."""
    test_node.start_worker(1)
    spawn_on((NODE, 1), "otp.introspect:Introspect").get(timeout=T)
    yield test_node
    test_node.stop_workers()
    wait_until(lambda: (NODE, 1) not in test_node.processes(), what="worker 1 gone")
    wait_until(lambda: not test_node.scheduler.run_sync(test_node.dist.hidden_nodes), T,
               what="no shell left in the test node's view")


def hidden_nodes(test_node: TestNode) -> list[str]:
    return test_node.scheduler.run_sync(test_node.dist.hidden_nodes)


# -- attaching to the test node ------------------------------------------------------------------


def test_a_shell_attaches_and_sees_the_clusters_processes(
    cluster: TestNode, shell: Shell
) -> None:
    """attach returns with the target's view: its node, and its workers listed."""
    attached = shell.call("attach", cluster.tcp_address, cluster.keys_file, T)
    assert attached["node"].startswith("shell-") and "@" in attached["node"]
    assert attached["target"] == NODE
    assert attached["nodes"] == [NODE]
    assert attached["processes"] == [(NODE, 0), (NODE, 1)]


def test_a_shell_asks_introspect_in_a_worker(cluster: TestNode, shell: Shell) -> None:
    """ask_named from the shell's own thread reaches the worker's introspect actor."""
    shell.call("attach", cluster.tcp_address, cluster.keys_file, T)
    info = shell.call("ask_named", NODE, 1, "introspect", ("process",))
    assert (info["node"], info["worker"], info["os_pid"]) == (NODE, 1, cluster.workers[1].pid)


def test_a_shell_kills_an_actor_and_sees_it_gone(cluster: TestNode, shell: Shell) -> None:
    """exit(pid, 'kill') from the shell kills a worker's actor; its monitor says killed."""
    victim = spawn_on((NODE, 1), "dist_actors:Echo").get(timeout=T)
    shell.call("attach", cluster.tcp_address, cluster.keys_file, T)
    actors = shell.call("ask_named", NODE, 1, "introspect", ("actors", "Echo", None))
    assert victim in [row["pid"] for row in actors]
    mref = shell.call("monitor", victim)
    shell.call("exit", victim, "kill")
    down = shell.call("next_message", T)
    assert isinstance(down, otp.Down) and (down.ref, down.pid, down.reason) == (
        mref, victim, "killed")
    actors = shell.call("ask_named", NODE, 1, "introspect", ("actors", "Echo", None))
    assert victim not in [row["pid"] for row in actors]


def test_a_shell_is_hidden_and_gone_after_close(cluster: TestNode, shell: Shell) -> None:
    """The shell is in the view as a hidden node only, no CETS member; close() removes it."""
    me = shell.call("attach", cluster.tcp_address, cluster.keys_file, T)["node"]
    assert hidden_nodes(cluster) == [me]
    assert cluster.nodes() == [NODE]
    assert all(key[0] != me for key in cluster.processes())
    user = spawn_on((NODE, 1), "dist_actors:TableUser", "attach-test-table").get(timeout=T)
    # Worker 1 knows the shell (it answered it above) and still does not count it.
    shell.call("ask_named", NODE, 1, "introspect", ("process",))
    status = otp.ask(user, ("status",)).get(timeout=T)
    assert status["nodes"] == [NODE]
    assert not [m for m in status["members"] if m.startswith(me)]
    shell.call("close")
    wait_until(lambda: hidden_nodes(cluster) == [], 2.0, what="the shell left at once")
    assert me not in cluster.scheduler.run_sync(cluster.dist.unavailable_nodes)


def test_a_killed_shell_is_noconnection_and_not_called_again(
    cluster: TestNode, shell: Shell, probe: ProbeHandle
) -> None:
    """A monitor on a shell's actor fires noconnection when the shell is killed; the
    silent shell is dropped by heartbeat and not listed as unavailable."""
    me = shell.call("attach", cluster.tcp_address, cluster.keys_file, T)["node"]
    collector = shell.call("collector")
    assert collector.node == me
    mref = probe.monitor(collector)
    shell.proc.kill()
    shell.proc.wait()
    assert probe.down(mref, timeout=T) == "noconnection"
    assert me not in cluster.scheduler.run_sync(lambda: list(cluster.dist.view))
    assert me not in cluster.scheduler.run_sync(cluster.dist.unavailable_nodes)


def test_attach_with_wrong_keys_fails_within_the_timeout(
    cluster: TestNode, shell: Shell, tmp_path: Path
) -> None:
    """Other keys: AttachError, at once or at the timeout, naming the keys."""
    other = tmp_path / "other.keys"
    curve.save(curve.generate(), str(other))
    started = time.monotonic()
    with pytest.raises(ShellError) as failure:
        shell.call("attach", cluster.tcp_address, str(other), 3.0)
    assert time.monotonic() - started < 3.0 + 5.0  # the timeout, and the shell's start
    assert failure.value.kind == "AttachError"
    assert "cluster keys" in str(failure.value)
    assert hidden_nodes(cluster) == []


def test_attach_to_nothing_fails_at_the_timeout(shell: Shell, tmp_path: Path) -> None:
    """No node at the address: AttachError at the timeout, asking if the node runs."""
    keys = tmp_path / "any.keys"
    curve.save(curve.generate(), str(keys))
    with pytest.raises(ShellError) as failure:
        shell.call("attach", f"tcp://127.0.0.1:{free_port()}", str(keys), 1.0)
    assert failure.value.kind == "AttachError"
    assert "is the node running" in str(failure.value)


def test_attach_refuses_a_process_that_runs_a_scheduler() -> None:
    """This test process has a scheduler: attach says to use a process of its own."""
    otp.current()
    with pytest.raises(AttachError, match="process of its own"):
        attach("tcp://127.0.0.1:1", curve.generate(), timeout=0.1)


# -- attaching to a real node --------------------------------------------------------------------


def test_a_shell_attaches_to_a_mongoose_node(
    tmp_path: Path, test_node: TestNode, shell: Shell
) -> None:
    """A real node: the shell sees its workers, its tree and its CETS tables."""
    node = MongooseNode(tmp_path, "real@localhost", port=free_port(),
                        keys_file=test_node.keys_file, workers=1)
    try:
        node.start()
        attached = shell.call("attach", node.address, test_node.keys_file, T)
        assert attached["target"] == "real@localhost"
        wait_until(lambda: ("real@localhost", 1) in shell.call("processes"), T,
                   what="worker 1 of the real node")
        try:
            shell.call("ask_named", "real@localhost", 1, "introspect", ("process",))
        except ShellError:  # not in the node's supervision tree (yet): start one
            shell.call("spawn_on", ("real@localhost", 1), "otp.introspect:Introspect")
        info = shell.call("ask_named", "real@localhost", 1, "introspect", ("process",))
        assert (info["node"], info["worker"]) == ("real@localhost", 1)
        tree = shell.call("ask_named", "real@localhost", 1, "introspect", ("tree",))
        assert "worker_sup" in [root["id"] for root in tree]
        tables = shell.call("ask_named", "real@localhost", 1, "introspect", ("tables",))
        for table in tables:
            assert all(not m.startswith(attached["node"]) for m in table["members"])
    finally:
        node.kill()
