"""The ``mongoose`` subcommands that talk to a running node (mongoose/cli_node.py,
cli_account.py, control.py), run as real commands against a real two-worker node, with
real XMPP clients where sessions matter.

Each command attaches to the node as a hidden node of its cluster with the cluster's
keys; without them (or with other keys) it is refused, exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dist_harness import PYTHONPATH, MongooseNode, free_port
from helpers import wait_until
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, metrics_toml, xmpp_node

pytestmark = pytest.mark.timeout(180)


def mongoose(node: MongooseNode, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``mongoose ARGS -c <node's config>`` from the node's directory."""
    return subprocess.run(
        [sys.executable, "-m", "mongoose", *args, "-c", str(node.config)],
        cwd=node.dir, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONPATH=PYTHONPATH))


def ok(node: MongooseNode, *args: str) -> str:
    result = mongoose(node, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def as_json(node: MongooseNode, *args: str):
    return json.loads(ok(node, *args, "--json"))


@pytest.fixture(scope="module")
def node(tmp_path_factory, test_node):
    made = xmpp_node(tmp_path_factory.mktemp("ctl"), "ctl@localhost", test_node.keys_file,
                     users=("alice", "bob"),
                     extra_toml=metrics_toml() + "[modules.mod_presence]\n[modules.mod_roster]\n"
                     "[modules.mod_offline]\n")
    yield made
    made.kill()


def test_every_command_has_help(node):
    """--help of every command and subcommand exits 0; a usage error exits 2."""
    for args in (["session", "list"], ["session", "count"], ["session", "kick"],
                 ["stanza", "send"], ["metric", "get"], ["cets", "status"],
                 ["cluster", "join"], ["cluster", "leave"], ["cluster", "members"],
                 ["account", "check"], ["account", "register"], ["shell"], ["status"]):
        result = mongoose(node, *args, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout, args
    assert mongoose(node, "session", "frobnicate").returncode == 2
    assert mongoose(node, "stanza", "send", "--from", "a@localhost").returncode == 2
    assert mongoose(node, "session", "count", "--timeout", "soon").returncode == 2


def test_accounts_through_the_node(node, loop):
    """register, check, passwd, list, count, unregister go through the running node;
    unregistering ends the account's live session."""
    assert ok(node, "account", "register", "carol@localhost", "pw1") == \
        "registered carol@localhost\n"
    assert ok(node, "account", "check", "carol@localhost", "pw1") == "the password is correct\n"
    wrong = mongoose(node, "account", "check", "carol@localhost", "nope")
    assert (wrong.returncode, wrong.stdout) == (1, "the password is wrong\n")
    ok(node, "account", "passwd", "carol@localhost", "pw2")
    assert as_json(node, "account", "check", "carol@localhost", "pw2") == {"ok": True}
    assert as_json(node, "account", "list", "localhost") == ["alice", "bob", "carol"]
    assert ok(node, "account", "count") == "3\n"
    refused = mongoose(node, "account", "register", "carol@elsewhere.org", "x")
    assert refused.returncode == 1
    assert refused.stderr == ("mongoose: elsewhere.org is not a host of this node "
                              "(general.hosts: localhost)\n")
    carol = Client(loop, f"carol@{DOMAIN}/phone", "pw2", port=node.c2s_port).connect()
    assert ok(node, "account", "unregister", "carol@localhost") == \
        "unregistered carol@localhost\n"
    wait_until(carol.disconnected.is_set, timeout=10, what="carol's session ended")
    assert "policy-violation" in carol.stream_errors
    assert ok(node, "account", "count", "localhost") == "2\n"


def test_sessions_list_count_kick(node, loop):
    alice = Client(loop, f"alice@{DOMAIN}/desk", PASSWORD, port=node.c2s_port).connect()
    bob = Client(loop, f"bob@{DOMAIN}/phone", PASSWORD, port=node.c2s_port).connect()
    try:
        wait_until(lambda: ok(node, "session", "count") == "2\n", timeout=10,
                   what="two sessions counted")
        sessions = as_json(node, "session", "list", "localhost")
        assert [s["jid"] for s in sessions] == [alice.jid, bob.jid]
        assert {s["node"] for s in sessions} == {"ctl@localhost"}
        assert all(s["worker"] in (1, 2) and s["tls"] is True for s in sessions)
        assert all(s["peer"].startswith("127.0.0.1:") for s in sessions)
        table = ok(node, "session", "list")
        assert table.splitlines()[0].split()[:3] == ["JID", "NODE", "WORKER"]
        assert alice.jid in table and bob.jid in table
        assert ok(node, "session", "count", "example.org") == "0\n"
        kicked = as_json(node, "session", "kick", "bob@localhost", "--reason", "maintenance")
        assert kicked == {"kicked": 1}
        wait_until(bob.disconnected.is_set, timeout=10, what="bob kicked")
        assert "policy-violation" in bob.stream_errors
        assert not alice.disconnected.is_set()
        wait_until(lambda: ok(node, "session", "count") == "1\n", timeout=10,
                   what="bob's session gone")
    finally:
        alice.disconnect()
        bob.disconnect()


def test_stanza_send(node, loop):
    """A message injected from one JID to another reaches the recipient's client."""
    bob = Client(loop, f"bob@{DOMAIN}/r", PASSWORD, port=node.c2s_port).connect()
    try:
        wait_until(lambda: ok(node, "session", "count") == "1\n", timeout=10)
        assert ok(node, "stanza", "send", "--from", "alice@localhost", "--to",
                  "bob@localhost/r", "--body", "from the admin <3") == \
            "routed a message to bob@localhost/r\n"
        wait_until(lambda: "from the admin <3" in bob.bodies(), timeout=10,
                   what="the injected message")
        message = next(m for m in bob.messages if m["body"] == "from the admin <3")
        assert str(message["from"]) == "alice@localhost"
        ok(node, "stanza", "send", "--from", "alice@localhost", "--to", "bob@localhost/r",
           "--stanza", "<message type='headline'><body>raw</body></message>")
        wait_until(lambda: "raw" in bob.bodies(), timeout=10, what="the raw stanza")
        bad = mongoose(node, "stanza", "send", "--from", "alice@localhost", "--to",
                       "bob@localhost", "--stanza", "<message><body>")
        assert bad.returncode == 1 and "not well-formed" in bad.stderr
        foreign = mongoose(node, "stanza", "send", "--from", "eve@evil.example", "--to",
                           "bob@localhost", "--body", "hi")
        assert foreign.returncode == 1 and "evil.example is not a host" in foreign.stderr
    finally:
        bob.disconnect()


def test_metric_get_and_cets_status(node, loop):
    alice = Client(loop, f"alice@{DOMAIN}/m", PASSWORD, port=node.c2s_port).connect()
    try:
        def logins() -> int:
            rows = as_json(node, "metric", "get", "sm_session_logins")
            return sum(r["value"] for r in rows if r["labels"].get("host_type") == DOMAIN)

        # Events reach the store within a second (batched); wait for the count.
        wait_until(lambda: logins() >= 1, timeout=15, what="a login counted")
        text = ok(node, "metric", "get", "sm_session")
        assert text.splitlines()[0].split() == ["NAME", "LABELS", "VALUE"]
        status = as_json(node, "cets", "status")
        session_rows = [r for r in status if r["name"] == "session"]
        assert {r["process"] for r in session_rows} >= {"ctl@localhost.1", "ctl@localhost.2"}
        assert all(r["size"] >= 1 for r in session_rows)
    finally:
        alice.disconnect()


def test_status_json_and_refusals(node, tmp_path):
    """status --json says what the node says; other keys, or none, are refused."""
    status = as_json(node, "status")
    assert status["running"] is True and status["node"] == "ctl@localhost"
    assert status["workers"] == 2
    from otp import curve

    other = tmp_path / "other.keys"
    curve.save(curve.generate(), other)
    refused = mongoose(node, "session", "count", "--keys", str(other), "--timeout", "2")
    assert refused.returncode == 1
    assert "refused the handshake: these are not its cluster keys" in refused.stderr
    missing = mongoose(node, "cets", "status", "--keys", str(tmp_path / "none.keys"))
    assert missing.returncode == 1 and "no cluster keys at" in missing.stderr


def test_cluster_join_members_leave(node, tmp_path, test_node):
    """cluster join makes the node a member of another node's cluster, members lists
    both from either side, and leave separates them again."""
    other = MongooseNode(tmp_path, "ctl2@localhost", port=free_port(),
                         keys_file=test_node.keys_file, workers=1)
    other.start()
    try:
        joined = as_json(node, "cluster", "join", other.address.removeprefix("tcp://"))
        assert set(joined["nodes"]) >= {"ctl@localhost", "ctl2@localhost"}
        wait_until(lambda: "ctl@localhost" in as_json(other, "cluster", "members")["nodes"],
                   timeout=15, what="the other side sees the join")
        text = ok(node, "cluster", "members")
        assert "ctl2@localhost" in text
        # No hidden node (these commands' own) is ever listed as a member.
        assert not [n for n in joined["nodes"] if n.startswith("shell-")]
        ok(node, "cluster", "leave")
        wait_until(lambda: as_json(node, "cluster", "members")["nodes"] == ["ctl@localhost"],
                   timeout=15, what="the node alone again")
        wait_until(lambda: as_json(other, "cluster", "members")["nodes"] == ["ctl2@localhost"],
                   timeout=15, what="the other node alone again")
    finally:
        other.kill()


def test_commands_fail_cleanly_without_a_node(tmp_path):
    """No node at the configured address: exit 1, one line, within the timeout."""
    from otp import curve

    config = tmp_path / "mongooseim.toml"
    keys = tmp_path / "cluster.keys"
    curve.save(curve.generate(), keys)
    config.write_text(f'[general]\ndata_dir = "data"\n[cluster]\nport = {free_port()}\n'
                      f'keys_file = "{keys}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mongoose", "session", "count", "-c", str(config),
         "--timeout", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=PYTHONPATH))
    assert result.returncode == 1
    assert result.stderr.startswith("mongoose: no answer from tcp://127.0.0.1:")
    assert Path(tmp_path / "data").exists() is False


def test_unregister_removes_the_accounts_data(node, loop):
    """An account removed with `account unregister` loses its data with it (the
    modules' remove_user clean-ups): its offline messages are not there for a new
    account of the same name."""
    ok(node, "account", "register", "dave@localhost", "pw")
    ok(node, "stanza", "send", "--from", "alice@localhost", "--to", "dave@localhost",
       "--body", "kept for dave")
    ok(node, "account", "unregister", "dave@localhost")
    ok(node, "account", "register", "dave@localhost", "pw")
    ok(node, "stanza", "send", "--from", "alice@localhost", "--to", "dave@localhost",
       "--body", "for the new dave")
    dave = Client(loop, f"dave@{DOMAIN}/r", "pw", port=node.c2s_port).connect()
    try:
        wait_until(lambda: "for the new dave" in dave.bodies(), timeout=15,
                   what="the new account's offline message")
        assert "kept for dave" not in dave.bodies()
    finally:
        dave.disconnect()
