"""Instrumentation events emitted by real sessions, seen through the log handler, and the
node's /metrics page (every series at zero from the start, then counting).

The log handler writes an event's labels and measurements as fields of a log line; a
measurement named ``time`` is written as ``extra_time`` (``time`` is the line's own
timestamp). ``node.wait_for`` matches fields exactly, so tests that check a measurement
by a predicate (a size above zero) take the first event with the exact fields and check
the rest on it. Events unit-tested in one process: test_c2s_events_unit.py.
"""
# The log handler's own filtering by level is tested in test_instrument.py.

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode, free_port
from helpers import wait_until
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, raw_login, xmpp_node_with

pytestmark = pytest.mark.timeout(60)

C2S = {"connection_type": "c2s", "host_type": DOMAIN}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    # Per-stanza events are logged at debug: the node logs at debug here. A plain-TCP
    # listener ("none") next to the STARTTLS and direct TLS ones, for tcp_data_*.
    n = xmpp_node_with(
        tmp_path_factory.mktemp("instrument"), "instr@localhost", test_node.keys_file,
        users=("alice", "bob", "carol", "dave"), general_toml='loglevel = "debug"\n',
        modes=("starttls_required", "tls", "none"),
        modules_toml='[modules.mod_ping]\n[instrumentation.log]\nlevel = "debug"\n')
    yield n
    n.kill()


def test_a_session_emits_login_stanza_and_logout_events(node, clients, loop):
    """A STARTTLS login emits auth_authorize and the account lookup (storage_query), then
    sm_session with logins=1 and count=+1; a message to oneself is counted in
    (xmpp_element_in), timed (c2s_message_processed) and counted out (xmpp_element_out)
    when delivered; closing emits logouts=1 and count=-1."""
    alice = Client(loop, f"alice@{DOMAIN}/i", PASSWORD, port=node.c2s_port)
    clients.append(alice)
    alice.connect()
    authorize = node.wait_for("auth_authorize", host_type=DOMAIN, count=1)
    assert isinstance(authorize["extra_time"], int) and authorize["extra_time"] >= 0
    query = node.wait_for("storage_query", backend="sqlite", function="get_secrets", count=1)
    assert query["extra_time"] >= 0
    node.wait_for("sm_session", host_type=DOMAIN, logins=1, count=1)
    # The initial presence (no 'to') is not routed: its size is measured on its own.
    presence = node.wait_for("xmpp_element_in", **C2S, presence_count=1)
    assert presence["stanza_count"] == 1 and presence["byte_size"] > 0

    body = "to myself, counted"
    alice.send_message(f"alice@{DOMAIN}/i", body)
    wait_until(lambda: body in alice.bodies(), what="the message back")
    came = node.wait_for("xmpp_element_in", **C2S, message_count=1)
    assert came["count"] == 1 and came["stanza_count"] == 1
    assert came["byte_size"] > len(body)
    assert "error_count" not in came
    went = node.wait_for("xmpp_element_out", **C2S, message_count=1)
    assert went["count"] == 1 and went["byte_size"] > len(body)
    processed = node.wait_for("c2s_message_processed", host_type=DOMAIN)
    assert isinstance(processed["extra_time"], int)
    assert 0 <= processed["extra_time"] < 10_000_000  # µs

    alice.disconnect()
    node.wait_for("sm_session", host_type=DOMAIN, logouts=1, count=-1)


def test_starttls_counts_plain_bytes_then_tls_bytes(node, clients, loop):
    """Before STARTTLS the socket's reads and writes are tcp_data_*; after it tls_data_*,
    counted as plaintext: the write of a delivered stanza is exactly its size."""
    bob = Client(loop, f"bob@{DOMAIN}/t", PASSWORD, port=node.c2s_port)
    clients.append(bob)
    bob.connect()
    for event in ("tcp_data_in", "tcp_data_out", "tls_data_in", "tls_data_out"):
        assert node.wait_for(event, connection_type="c2s")["byte_size"] > 0
    body = "t" * 1000  # sizes of their own: 1000 to 1999 bytes here, 2000+ for plain TCP
    bob.send_message(f"bob@{DOMAIN}/t", body)
    wait_until(lambda: body in bob.bodies(), what="the message back")
    went = node.wait_for("xmpp_element_out", **C2S, message_count=1)
    while not 1000 < went["byte_size"] < 2000:  # another test's message: skip it
        went = node.wait_for("xmpp_element_out", **C2S, message_count=1)
    node.wait_for("tls_data_out", connection_type="c2s", byte_size=went["byte_size"])


def test_a_plain_tcp_session_counts_tcp_bytes_per_read_and_write(node):
    """On a plain listener, one stanza sent in one piece is one read: tcp_data_in has its
    exact size; the delivered copy is one write: tcp_data_out has the element's size."""
    raw, jid = raw_login(node.plain_port, "carol", "p", starttls=False)
    try:
        node.wait_for("auth_authorize", host_type=DOMAIN, count=1)  # PLAIN, this time
        stanza = (f"<message to='{jid}' type='chat' id='plain-1'>"
                  f"<body>{'p' * 2000}</body></message>").encode()
        raw.send(stanza)
        raw.read_until(rb"plain-1.*?</message>")
        node.wait_for("tcp_data_in", connection_type="c2s", byte_size=len(stanza))
        went = node.wait_for("xmpp_element_out", **C2S, message_count=1)
        while went["byte_size"] < 2000:  # another test's message: skip it
            went = node.wait_for("xmpp_element_out", **C2S, message_count=1)
        node.wait_for("tcp_data_out", connection_type="c2s", byte_size=went["byte_size"])
    finally:
        raw.close()


def test_error_stanzas_count_as_errors(node):
    """A stanza of type='error' counts error_count and <kind>_error_count, not
    <kind>_count, both ways."""
    raw, jid = raw_login(node.plain_port, "dave", "e", starttls=False)
    try:
        raw.send(f"<message to='{jid}' type='error' id='err-1'><error type='cancel'>"
                 "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                 "</error></message>")
        raw.read_until(rb"err-1")
        came = node.wait_for("xmpp_element_in", **C2S, message_error_count=1)
        assert came["error_count"] == 1 and came["stanza_count"] == 1
        assert "message_count" not in came
        went = node.wait_for("xmpp_element_out", **C2S, message_error_count=1)
        assert went["error_count"] == 1 and went["byte_size"] > 0
    finally:
        raw.close()


def test_a_failed_login_and_a_bounce_are_counted(node, clients, loop):
    """A wrong password emits c2s_auth_failed; a chat message to a user with no session
    emits sm_message_bounced."""
    wrong = Client(loop, f"bob@{DOMAIN}/x", "wrong", port=node.c2s_port)
    clients.append(wrong)
    assert wrong.try_connect() in ("failed_auth", "disconnected")
    node.wait_for("c2s_auth_failed", host_type=DOMAIN, count=1)
    alice = Client(loop, f"alice@{DOMAIN}/b", PASSWORD, port=node.c2s_port)
    clients.append(alice)
    alice.connect()
    alice.send_message(f"bob@{DOMAIN}", "are you there?")
    node.wait_for("sm_message_bounced", host_type=DOMAIN, count=1)


def test_no_route_and_dropped_stanzas_are_counted(node, clients, loop):
    """A message for a domain this server does not serve: router_no_route_found,
    labelled with the sender's host (and bounced); a headline for an offline user is
    neither delivered nor bounced: router_stanza_dropped."""
    alice = Client(loop, f"alice@{DOMAIN}/r", PASSWORD, port=node.c2s_port)
    clients.append(alice)
    alice.connect()
    alice.send_message("someone@elsewhere.example", "hello?")
    node.wait_for("router_no_route_found", host_type=DOMAIN, count=1)
    alice.send_message(f"carol@{DOMAIN}", "news", mtype="headline")
    node.wait_for("router_stanza_dropped", host_type=DOMAIN, count=1)


# -- the /metrics page ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_node(tmp_path_factory: pytest.TempPathFactory,
                 test_node: TestNode) -> Iterator[MongooseNode]:
    port = free_port()
    n = xmpp_node_with(
        tmp_path_factory.mktemp("instrument-metrics"), "instrm@localhost", test_node.keys_file,
        users=("alice",), general_toml='hosts = ["localhost", "idle.example"]\n',
        modules_toml=f"[instrumentation.prometheus]\nport = {port}\n")
    n.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    yield n
    n.kill()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(node: MongooseNode) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The page's samples: (name, labels) -> value."""
    with urllib.request.urlopen(node.metrics_url, timeout=10) as response:  # type: ignore[attr-defined]
        text = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        samples[match.group(1), labels] = float(match.group(3))
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_every_series_exists_at_zero_from_the_start_then_counts(metrics_node, clients, loop):
    """Before any client: each host's series (idle.example's too) and the c2s data series
    are on the page at zero, as Prometheus' rate() needs. After a login and a message over
    STARTTLS the localhost series count them; idle.example's stay at zero."""
    node = metrics_node
    wait_until(lambda: value(scrape(node), "sm_session_count", host_type="idle.example")
               is not None, timeout=30, what="the workers' series on /metrics")
    before = scrape(node)
    for host in (DOMAIN, "idle.example"):
        c2s = {"connection_type": "c2s", "host_type": host}
        for name in ("xmpp_element_in_message_count_total", "xmpp_element_out_count_total",
                     "xmpp_element_in_byte_size_count", "c2s_message_processed_time_count"):
            assert value(before, name, **(c2s if name.startswith("xmpp") else
                                          {"host_type": host})) == 0, (name, host)
        for name in ("sm_session_count", "sm_session_logins_total",
                     "router_stanza_dropped_count_total", "router_no_route_found_count_total",
                     "sm_message_bounced_count_total", "auth_authorize_count_total",
                     "c2s_auth_failed_count_total"):
            assert value(before, name, host_type=host) == 0, (name, host)
    for event in ("tcp_data_in", "tcp_data_out", "tls_data_in", "tls_data_out"):
        assert value(before, f"{event}_byte_size_total", connection_type="c2s") == 0
    assert value(before, "storage_query_count_total", backend="sqlite",
                 function="get_secrets") == 0

    alice = Client(loop, f"alice@{DOMAIN}/m", PASSWORD, port=node.c2s_port)
    clients.append(alice)
    alice.connect()
    alice.send_message(f"alice@{DOMAIN}/m", "counted")
    wait_until(lambda: "counted" in alice.bodies(), what="the message back")

    def counted() -> bool:
        now = scrape(node)
        return (value(now, "xmpp_element_out_message_count_total", **C2S) or 0) >= 1 and (
            value(now, "c2s_message_processed_time_count", host_type=DOMAIN) or 0) >= 1

    wait_until(counted, timeout=30, what="the message on /metrics")
    after = scrape(node)
    assert value(after, "sm_session_count", host_type=DOMAIN) == 1
    assert value(after, "auth_authorize_count_total", host_type=DOMAIN) == 1
    assert value(after, "storage_query_count_total", backend="sqlite",
                 function="get_secrets") == 1
    assert value(after, "tls_data_in_byte_size_total", connection_type="c2s") > 0
    assert value(after, "tcp_data_out_byte_size_total", connection_type="c2s") > 0
    assert value(after, "xmpp_element_in_message_count_total", **C2S) == 1
    assert value(after, "xmpp_element_out_message_count_total",
                 connection_type="c2s", host_type="idle.example") == 0
