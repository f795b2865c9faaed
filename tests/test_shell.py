"""``mongoose shell`` driven through a pseudo-terminal (pexpect), attached to a real node
with two workers: listing actors, killing a router shard and seeing its supervisor start
a new one, killing a session actor and seeing its client disconnected, tracing a JID
while a slixmpp client sends, the live top view, and a refused attach without the keys.
"""

from __future__ import annotations

import os
import re
import sys

import pexpect
import pytest
from dist_harness import PYTHONPATH, MongooseNode
from helpers import wait_until
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, metrics_toml, xmpp_node

pytestmark = pytest.mark.timeout(180)

PROMPT = ">>> "


class Shell:
    """A ``mongoose shell`` on a pty; ``run(code)`` types a line and returns its output."""

    def __init__(self, node: MongooseNode, home, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=PYTHONPATH, TERM="dumb", HOME=str(home))
        self.child = pexpect.spawn(
            sys.executable, ["-m", "mongoose", "shell", "-c", str(node.config), *args],
            cwd=str(node.dir), env=env, encoding="utf-8", timeout=30, dimensions=(50, 250))

    def prompt(self) -> str:
        self.child.expect_exact(PROMPT)
        return self.child.before

    def run(self, line: str) -> str:
        self.child.sendline(line)
        self.prompt()
        output = self.child.before
        # The dumb terminal echoes the typed line first.
        return output.split(line, 1)[-1].replace("\r", "")

    def close(self) -> None:
        if self.child.isalive():
            self.child.send("\x04")  # Ctrl-D on an empty line leaves the shell
            self.child.expect(pexpect.EOF, timeout=15)
        self.child.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory, test_node):
    made = xmpp_node(tmp_path_factory.mktemp("shell"), "sh@localhost", test_node.keys_file,
                     users=("alice", "bob"),
                     extra_toml=metrics_toml())
    yield made
    made.kill()


@pytest.fixture
def shell(node, tmp_path):
    made = Shell(node, tmp_path)
    banner = made.prompt()
    assert "Attached to sh@localhost" in banner
    yield made
    made.close()


def test_lists_workers_and_actors(shell):
    workers = shell.run("workers()")
    lines = workers.strip().splitlines()
    assert lines[0].split()[:3] == ["NODE", "WORKER", "OS_PID"]
    assert [line.split()[1] for line in lines[1:]] == ["0", "1", "2"]
    routers = shell.run("actors('RouterShard')")
    rows = routers.strip().splitlines()[1:]
    assert len(rows) == 8  # four shards in each of two workers
    assert all("RouterShard" in row for row in rows)
    # Plain data for scripts: the helpers return lists of dicts.
    assert shell.run("sorted({a['kind'] for a in actors('router_0')})").strip() == \
        "['RouterShard']"
    assert "HANDLED" in routers.splitlines()[1] or "HANDLED" in routers
    assert "supervisor" in shell.run("help(kill)")


def test_kill_a_router_shard_and_see_its_restart_in_tree(shell):
    old = shell.run("str(actors('router_0', node='sh@localhost')[0]['pid'])").strip()
    old = old.strip("'")
    assert re.fullmatch(r"<sh@localhost\.[12]\.\d+>", old)
    tree = shell.run("tree()")
    assert old in tree and "router_sup" in tree
    shell.run(f"kill('{old}')")

    def restarted() -> str | None:
        pids = shell.run(f"[str(a['pid']) for a in actors('router_0') "
                         f"if str(a['pid']).startswith('{old.rsplit('.', 1)[0]}')]")
        found = re.findall(r"<sh@localhost\.[12]\.\d+>", pids)
        return found[0] if found and found[0] != old else None

    new = wait_until(restarted, timeout=15, what="a new router_0 in that worker")
    tree = shell.run("tree()")
    assert new in tree and old not in tree


def test_kill_a_session_actor_disconnects_its_client(shell, node, loop):
    alice = Client(loop, f"alice@{DOMAIN}/killme", PASSWORD, port=node.c2s_port).connect()
    wait_until(lambda: alice.jid in shell.run("sessions('alice@localhost')"), timeout=10,
               what="alice's session listed")
    shell.run("s = sessions('alice@localhost/killme')[0]")
    state = shell.run("state(s['pid'])")
    assert "C2S" in state and "session_established" in state
    shell.run("kill(s['pid'])")
    wait_until(alice.disconnected.is_set, timeout=10, what="alice disconnected")
    wait_until(lambda: shell.run("len(sessions('alice@localhost'))").strip() == "0",
               timeout=10, what="alice's session gone from the table")


def test_trace_a_jid_while_a_client_sends(shell, node, loop):
    alice = Client(loop, f"alice@{DOMAIN}/tr", PASSWORD, port=node.c2s_port).connect()
    bob = Client(loop, f"bob@{DOMAIN}/tr", PASSWORD, port=node.c2s_port).connect()
    try:
        wait_until(lambda: bob.jid in shell.run("sessions('bob@localhost')"), timeout=10)
        shell.child.sendline("t = trace('alice@localhost', 20)")
        shell.child.expect_exact("tracing alice@localhost for 20 s")
        # The watch reaches every worker before the trace prints its first line; send
        # until a copy shows (the first may have raced the watch).
        bodies = iter(range(1000))

        def traced() -> bool:
            alice.send_message(bob.jid, f"traced-{next(bodies)}")
            try:
                shell.child.expect(r"alice@localhost/tr <- <message[^\n]*traced-\d+", timeout=1)
            except pexpect.TIMEOUT:
                return False
            return True

        wait_until(traced, timeout=20, what="a traced message")
        wait_until(lambda: any(b.startswith("traced-") for b in bob.bodies()), timeout=10)
        shell.child.send("q")  # a key ends the trace early
        shell.prompt()
        events = shell.run("[e['dir'] for e in t if 'traced-' in e['xml']][:1]")
        assert "['sent']" in events
    finally:
        alice.disconnect()
        bob.disconnect()


def test_top_refreshes_until_a_key(shell):
    shell.child.sendline("v = top(interval=0.3)")
    shell.child.expect("top: \\d+ actors")
    shell.child.expect("top: \\d+ actors")  # refreshed
    shell.child.send("x")
    shell.prompt()
    assert shell.run("len(v) > 0 and 'mailbox' in v[0]").strip() == "True"


def test_tables_lookup_metrics_nodes(shell):
    tables = shell.run("tables()")
    assert "session" in tables
    assert shell.run("lookup('session', 'nobody@localhost')").strip() == "[]"
    assert "sm_session_logins" in shell.run("metrics('sm_session')")
    nodes = shell.run("nodes()")
    assert "sh@localhost" in nodes and "running" in nodes


def test_script_mode_and_refused_attach(node, tmp_path):
    import subprocess

    from otp import curve

    env = dict(os.environ, PYTHONPATH=PYTHONPATH)
    run = subprocess.run(
        [sys.executable, "-m", "mongoose", "shell", "-c", str(node.config), "-e",
         "[w['worker'] for w in workers()]"],
        cwd=node.dir, capture_output=True, text=True, timeout=60, env=env)
    assert (run.returncode, run.stdout) == (0, "[0, 1, 2]\n"), run.stderr
    # Without a terminal top() shows one view and returns (no key can stop it).
    run = subprocess.run(
        [sys.executable, "-m", "mongoose", "shell", "-c", str(node.config)],
        input="v = top(interval=0.2)\nprint('rows:', len(v) > 0)\n",
        cwd=node.dir, capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0 and "rows: True" in run.stdout, run.stderr
    other = tmp_path / "other.keys"
    curve.save(curve.generate(), other)
    child = pexpect.spawn(
        sys.executable, ["-m", "mongoose", "shell", "-c", str(node.config), "--keys",
                         str(other), "--timeout", "2"],
        cwd=str(node.dir), env=dict(env, TERM="dumb"), encoding="utf-8", timeout=30)
    child.expect("refused the handshake: these are not its cluster keys")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1


def test_completion_of_helpers_and_attributes():
    """Tab completes the namespace's names and attributes (the prompt's completer)."""
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from mongoose.shell_completion import NamespaceCompleter

    class Thing:
        counter = 1

    completer = NamespaceCompleter({"workers": lambda: None, "thing": Thing()})

    def complete(text: str) -> list[str]:
        return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]

    assert [c for c in complete("x = wor") if c.startswith("workers(")]
    assert complete("thing.cou") == ["thing.counter"]
    assert complete("") == []


def test_a_frozen_worker_is_reported_not_waited_for(node, tmp_path):
    """A worker that does not answer (stopped with SIGSTOP) holds nothing up: workers()
    lists the others and says which one did not answer within the timeout."""
    import signal

    import psutil

    root = psutil.Process(node.proc.pid)
    worker = next(p for p in root.children(recursive=True)
                  if "otp.worker" in " ".join(p.cmdline())
                  and p.cmdline()[p.cmdline().index("--worker") + 1] == "2")
    shell = Shell(node, tmp_path, "--timeout", "1.5")
    try:
        shell.prompt()
        worker.send_signal(signal.SIGSTOP)
        try:
            rows = shell.run("workers()")
        finally:
            worker.send_signal(signal.SIGCONT)
        assert re.search(r"sh@localhost\s+1\s+\d+", rows)
        assert "introspect at sh@localhost.2 did not answer within 1.5 s" in rows
    finally:
        shell.close()
