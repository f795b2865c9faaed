"""Instrumentation events emitted by real sessions, seen through the log handler."""
# The log handler's own filtering by level is tested in test_instrument.py.

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dist_harness import MongooseNode, TestNode
from helpers import wait_until
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, xmpp_node_with

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    # Per-stanza events are logged at debug: the node logs at debug here.
    n = xmpp_node_with(
        tmp_path_factory.mktemp("instrument"), "instr@localhost", test_node.keys_file,
        users=("alice", "bob"), general_toml='loglevel = "debug"\n',
        modules_toml='[modules.mod_ping]\n[instrumentation.log]\nlevel = "debug"\n')
    yield n
    n.kill()


def test_a_session_emits_login_stanza_and_logout_events(node, clients, loop):
    """A login emits sm_session with logins=1 for host_type localhost; a message from the
    client emits xmpp_element_in with message_count=1; closing emits logouts=1."""
    alice = Client(loop, f"alice@{DOMAIN}/i", PASSWORD, port=node.c2s_port)
    clients.append(alice)
    alice.connect()
    node.wait_for("sm_session", host_type="localhost", logins=1)
    alice.send_message(f"alice@{DOMAIN}/i", "to myself")
    wait_until(lambda: alice.bodies() == ["to myself"], what="the message back")
    node.wait_for("xmpp_element_in", host_type="localhost", connection_type="c2s",
                  message_count=1)
    alice.disconnect()
    node.wait_for("sm_session", host_type="localhost", logouts=1)


def test_a_failed_login_and_a_bounce_are_counted(node, clients, loop):
    """A wrong password emits c2s_auth_failed; a chat message to a user with no session
    emits sm_message_bounced."""
    wrong = Client(loop, f"bob@{DOMAIN}/x", "wrong", port=node.c2s_port)
    clients.append(wrong)
    assert wrong.try_connect() in ("failed_auth", "disconnected")
    node.wait_for("c2s_auth_failed", host_type="localhost", count=1)
    alice = Client(loop, f"alice@{DOMAIN}/b", PASSWORD, port=node.c2s_port)
    clients.append(alice)
    alice.connect()
    alice.send_message(f"bob@{DOMAIN}", "are you there?")
    node.wait_for("sm_message_bounced", host_type="localhost", count=1)
