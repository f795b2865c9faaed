"""Instrumentation events emitted by real sessions, seen through the log handler, and the
node's /metrics page (every series at zero from the start, then counting).

The log handler writes an event's labels and measurements as fields of a log line; a
measurement named ``time`` is written as ``extra_time`` (``time`` is the line's own
timestamp). The per-stanza and per-read events (xmpp_element_in/out,
c2s_message_processed, tcp_data_*, tls_data_*) are batched: each worker emits them once
per second with the sums of that second, a histogram as ``"Samples(count=N, sum=S)"``.
The node is shared by the tests of this module, and an event does not say which session
it counts: a test that checks exact counts or sizes first pings the server and waits for
the events of the ping (:func:`ping_and_wait_for_its_flush`), after which its session's
worker emits only what the test does, and it tells its own events by sizes no other test
produces. Events unit-tested in one process:
test_c2s_events_unit.py.
"""
# The log handler's own filtering by level is tested in test_instrument.py.

from __future__ import annotations

import queue
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
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


_SAMPLES = re.compile(r"Samples\(count=(\d+), sum=(\d+)\)")


def samples(value: Any) -> tuple[int, int]:
    """(count, sum) of a histogram measurement as the log line has it: the repr of the
    ``Samples`` of one second."""
    match = _SAMPLES.fullmatch(value) if isinstance(value, str) else None
    assert match is not None, f"not a Samples repr: {value!r}"
    return int(match[1]), int(match[2])


def one_element(kind: str, low: int, high: int) -> Callable[[dict[str, Any]], bool]:
    """Matches an xmpp_element_* event that counts ``kind`` and one element (one
    byte_size sample) of ``low`` to ``high`` bytes: a stanza of a size only its test
    sends, alone in its second, not merged with other tests' last stanzas."""

    def match(event: dict[str, Any]) -> bool:
        if kind not in event:
            return False
        count, size = samples(event["byte_size"])
        return count == 1 and low < size < high

    return match


def wait_event(node: MongooseNode, what: str,
               predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
               timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
    """Like ``node.wait_for`` (the first event not returned before with ``what`` and
    these fields), for which ``predicate(event)`` also holds, and with a deadline:
    fails after ``timeout`` seconds in all, however many other events the node logs
    meanwhile (``wait_for`` waits ``timeout`` for each next event)."""

    def matches(event: dict[str, Any]) -> bool:
        return (event.get("what") == what
                and all(event.get(k) == v for k, v in fields.items()) and predicate(event))

    for event in node.seen:
        if matches(event):
            node.seen.remove(event)
            return event
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = node.events.get(timeout=remaining)
        except queue.Empty:
            break
        if matches(event):
            return event
        node.seen.append(event)
    seen = [e for e in node.seen if e.get("what") == what]
    raise AssertionError(f"{node.name}: no {what} {fields} event matching the predicate "
                         f"within {timeout} s; seen: {seen[-10:]}")


def ping_and_wait_for_its_flush(node: MongooseNode, send: Callable[[str], None]) -> None:
    """Ping the server with ``send`` and wait for the events that count the ping and its
    answer: whatever came before on this session's worker (its login, another test's
    last stanzas) went out with them or earlier, so from then on each second's events of
    that worker count only what the test does then. No other test sends an iq after
    login, so the first events with an iq_count are these. The events logged before and
    not waited for are dropped: they count earlier traffic."""
    send(f"<iq type='get' id='flush' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    wait_event(node, "xmpp_element_in", lambda e: "iq_count" in e, **C2S)
    wait_event(node, "xmpp_element_out", lambda e: "iq_count" in e, **C2S)
    node.seen.clear()


def test_a_session_emits_login_stanza_and_logout_events(node, clients, loop):
    """A STARTTLS login emits auth_authorize and the account lookup (storage_query), then
    sm_session with logins=1 and count=+1; the initial presence and a message to oneself
    are counted in (xmpp_element_in, with their sizes), the message timed
    (c2s_message_processed) and counted out (xmpp_element_out) when delivered: the same
    bytes, routed as they were counted in; closing emits logouts=1 and count=-1."""
    alice = Client(loop, f"alice@{DOMAIN}/i", PASSWORD, port=node.c2s_port)
    clients.append(alice)
    alice.connect(presence=False)
    authorize = wait_event(node, "auth_authorize", host_type=DOMAIN, count=1)
    assert isinstance(authorize["extra_time"], int) and authorize["extra_time"] >= 0
    query = wait_event(node, "storage_query", backend="accounts", function="get_secrets",
                       count=1)
    assert query["extra_time"] >= 0
    wait_event(node, "sm_session", host_type=DOMAIN, logins=1, count=1)
    ping_and_wait_for_its_flush(node, alice.send_raw)

    # The initial presence (no 'to') is not routed: its size is measured on its own. A
    # status of 300 bytes tells it (and its copy back) from other tests' presences.
    status = "s" * 300
    this_presence = one_element("presence_count", len(status), 600)
    alice.send_raw(f"<presence><status>{status}</status></presence>")
    presence = wait_event(node, "xmpp_element_in", this_presence, **C2S)
    assert (presence["count"], presence["stanza_count"], presence["presence_count"]) == (
        1, 1, 1)
    assert "message_count" not in presence
    wait_event(node, "xmpp_element_out", this_presence, **C2S)

    # The message's second has nothing else of this session's.
    body = "to myself, counted " + "m" * 600  # elements of 600 to 999 bytes: this test's
    alice.send_message(f"alice@{DOMAIN}/i", body)
    wait_until(lambda: body in alice.bodies(), what="the message back")
    this_message = one_element("message_count", len(body), 1000)
    came = wait_event(node, "xmpp_element_in", this_message, **C2S)
    assert (came["count"], came["stanza_count"], came["message_count"]) == (1, 1, 1)
    assert "error_count" not in came and "presence_count" not in came
    size = samples(came["byte_size"])[1]
    went = wait_event(node, "xmpp_element_out", this_message, **C2S)
    assert (went["count"], went["stanza_count"], went["message_count"]) == (1, 1, 1)
    assert samples(went["byte_size"]) == (1, size)
    processed = wait_event(node, "c2s_message_processed",
                           lambda e: samples(e["extra_time"])[0] == 1, host_type=DOMAIN)
    assert 0 <= samples(processed["extra_time"])[1] < 10_000_000  # µs

    alice.disconnect()
    wait_event(node, "sm_session", host_type=DOMAIN, logouts=1, count=-1)


def test_starttls_counts_plain_bytes_then_tls_bytes(node, clients, loop):
    """Before STARTTLS the socket's reads and writes are tcp_data_*; after it tls_data_*,
    counted as plaintext: in a second when the client sends one stanza, tls_data_in is
    exactly its size, and when the session writes one delivered stanza, tls_data_out is
    exactly that element's size."""
    bob = Client(loop, f"bob@{DOMAIN}/t", PASSWORD, port=node.c2s_port)
    clients.append(bob)
    bob.connect()
    for event in ("tcp_data_in", "tcp_data_out", "tls_data_in", "tls_data_out"):
        assert wait_event(node, event, connection_type="c2s")["byte_size"] > 0
    ping_and_wait_for_its_flush(node, bob.send_raw)
    body = "t" * 1600  # elements of 1600 to 1999 bytes: this test's
    stanza = f"<message to='bob@{DOMAIN}/t' type='chat' id='tls-1'><body>{body}</body></message>"
    bob.send_raw(stanza)
    wait_until(lambda: body in bob.bodies(), what="the message back")
    wait_event(node, "tls_data_in", connection_type="c2s", byte_size=len(stanza.encode()))
    went = wait_event(node, "xmpp_element_out", one_element("message_count", 1600, 2000),
                      **C2S)
    assert went["count"] == went["message_count"] == 1
    size = samples(went["byte_size"])[1]
    wait_event(node, "tls_data_out", connection_type="c2s", byte_size=size)


def test_a_plain_tcp_session_counts_tcp_bytes_per_read_and_write(node):
    """On a plain listener, a second in which the client sends one stanza (and nothing
    else happens on the session) has tcp_data_in of exactly its size; the delivered copy
    is one write: tcp_data_out of that second is the element's size."""
    raw, jid = raw_login(node.plain_port, "carol", "p", starttls=False)
    try:
        wait_event(node, "auth_authorize", host_type=DOMAIN, count=1)  # PLAIN, this time
        ping_and_wait_for_its_flush(node, raw.send)
        # A stanza of 2500 to 2999 bytes: this test's.
        stanza = (f"<message to='{jid}' type='chat' id='plain-1'>"
                  f"<body>{'p' * 2500}</body></message>").encode()
        raw.send(stanza)
        raw.read_until(rb"plain-1.*?</message>")
        wait_event(node, "tcp_data_in", connection_type="c2s", byte_size=len(stanza))
        this_message = one_element("message_count", 2500, 3000)
        came = wait_event(node, "xmpp_element_in", this_message, **C2S)
        assert came["count"] == came["message_count"] == 1
        size = samples(came["byte_size"])[1]
        assert size >= len(stanza)  # as routed: with its 'from'
        went = wait_event(node, "xmpp_element_out", this_message, **C2S)
        assert went["count"] == went["message_count"] == 1
        assert samples(went["byte_size"]) == (1, size)
        wait_event(node, "tcp_data_out", connection_type="c2s", byte_size=size)
    finally:
        raw.close()


def test_error_stanzas_count_as_errors(node):
    """A stanza of type='error' counts error_count and <kind>_error_count, not
    <kind>_count, both ways."""
    raw, jid = raw_login(node.plain_port, "dave", "e", starttls=False)
    try:
        ping_and_wait_for_its_flush(node, raw.send)
        # An error text of 3000 bytes tells this error from others (a bounce's).
        raw.send(f"<message to='{jid}' type='error' id='err-1'><error type='cancel'>"
                 "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                 "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>" + "e" * 3000
                 + "</text></error></message>")
        raw.read_until(rb"err-1.*?</message>")
        this_error = one_element("message_error_count", 3000, 4000)
        came = wait_event(node, "xmpp_element_in", this_error, **C2S)
        assert (came["count"], came["stanza_count"], came["error_count"],
                came["message_error_count"]) == (1, 1, 1, 1)
        assert "message_count" not in came
        size = samples(came["byte_size"])[1]
        went = wait_event(node, "xmpp_element_out", this_error, **C2S)
        assert (went["count"], went["stanza_count"], went["error_count"],
                went["message_error_count"]) == (1, 1, 1, 1)
        assert "message_count" not in went
        assert samples(went["byte_size"]) == (1, size)
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
    assert value(before, "storage_query_count_total", backend="accounts",
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
    assert value(after, "storage_query_count_total", backend="accounts",
                 function="get_secrets") == 1
    assert value(after, "tls_data_in_byte_size_total", connection_type="c2s") > 0
    assert value(after, "tcp_data_out_byte_size_total", connection_type="c2s") > 0
    assert value(after, "xmpp_element_in_message_count_total", **C2S) == 1
    assert value(after, "xmpp_element_out_message_count_total",
                 connection_type="c2s", host_type="idle.example") == 0
