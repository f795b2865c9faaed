"""Hostile and broken input on port 5222, byte by byte over plain sockets.

Each case must end in the RFC 6120 stream error named, then a closed connection, and the
node must go on serving everyone else (the last test logs in after all of them). The
node's listener has ``max_stanza_size = 65536`` and ``state_timeout = 2000`` ms.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from dist_harness import MongooseNode, TestNode
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, RawClient, xmpp_node

pytestmark = pytest.mark.timeout(60)

HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
          "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    n = xmpp_node(tmp_path_factory.mktemp("hostile"), "hostile@localhost", test_node.keys_file,
                  state_timeout=2000)
    yield n
    n.kill()


def stream_error(node: MongooseNode, payload: bytes | str, *, header: bool = True) -> bytes:
    """Send the header (unless told not to), then ``payload``; return all the server sent
    until it closed the connection."""
    raw = RawClient(node.c2s_port)
    try:
        if header:
            raw.open_stream()
        raw.send(payload)
        return raw.read_to_close()
    finally:
        raw.close()


def condition(data: bytes) -> str:
    marker = b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'"
    assert b"<stream:error>" in data, data
    head = data.split(b"<stream:error>", 1)[1]
    tag = head.split(b"<", 2)[1].split(b" ", 1)[0].split(b"/", 1)[0]
    assert marker in head or b'xmlns="urn:ietf:params:xml:ns:xmpp-streams"' in head, data
    return tag.decode()


def test_not_well_formed_xml(node):
    """Broken XML: not-well-formed."""
    assert condition(stream_error(node, "<message><body>x</message>")) == "not-well-formed"


def test_doctype_is_restricted(node):
    """A DTD in the stream: restricted-xml (RFC 6120 §11.1)."""
    data = stream_error(node, "<!DOCTYPE stream [<!ENTITY x 'y'>]>" + HEADER, header=False)
    assert condition(data) in ("restricted-xml", "not-well-formed")


def test_billion_laughs(node):
    """The entity-expansion bomb never expands: restricted-xml, connection closed."""
    bomb = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>" + "".join(
        f"<!ENTITY lol{i} '{('&lol' + (str(i - 1) if i > 1 else '') + ';') * 10}'>"
        for i in range(1, 10)) + "]>" + HEADER.split("?>", 1)[1] + "<message>&lol9;</message>"
    assert condition(stream_error(node, bomb, header=False)) in (
        "restricted-xml", "not-well-formed")


def test_external_entity(node):
    """An external entity reference is refused, never resolved."""
    payload = "<message><body>&xxe;</body></message>"
    data = stream_error(node, payload)
    assert b"root:" not in data
    assert condition(data) in ("restricted-xml", "not-well-formed")


def test_processing_instruction(node):
    """A processing instruction inside the stream: restricted-xml."""
    assert condition(stream_error(node, "<?evil data?>")) == "restricted-xml"


def test_comment(node):
    """A comment inside the stream: restricted-xml."""
    assert condition(stream_error(node, "<!-- hello -->")) == "restricted-xml"


def test_oversized_stanza_is_cut_off_while_it_arrives(node):
    """A stanza over max_stanza_size: policy-violation before the client finishes it."""
    raw = RawClient(node.c2s_port)
    try:
        raw.open_stream()
        raw.send("<message><body>")
        sent = 0
        chunk = b"a" * 8192
        while not raw.closed and sent < 10 * 65536:
            try:
                raw.send(chunk)
            except OSError:
                break
            sent += len(chunk)
            raw._recv(0.01)
        data = raw.read_to_close()
    finally:
        raw.close()
    assert sent < 10 * 65536, "the server read 640 KiB of one stanza"
    assert condition(raw.buffer + data) == "policy-violation"


def test_too_deep_nesting(node):
    """Elements nested deeper than the limit: policy-violation."""
    payload = "<message>" + "<a>" * 200
    assert condition(stream_error(node, payload)) == "policy-violation"


def test_invalid_utf8(node):
    """Bytes that are not UTF-8: not-well-formed."""
    assert condition(stream_error(node, b"<message><body>\xff\xfe</body></message>")) in (
        "not-well-formed", "unsupported-encoding")


def test_wrong_stream_namespace(node):
    """A root element outside the streams namespace: invalid-namespace."""
    header = ("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
              "xmlns='jabber:client' xmlns:stream='urn:wrong'>")
    assert condition(stream_error(node, header, header=False)) == "invalid-namespace"


def test_unknown_host(node):
    """A stream to a domain we do not serve: host-unknown."""
    header = HEADER.replace("to='localhost'", "to='example.org'")
    assert condition(stream_error(node, header, header=False)) == "host-unknown"


def test_stanza_before_authentication(node):
    """A message before login: not-authorized."""
    assert condition(stream_error(node, "<message to='bob@localhost'><body>x</body></message>")
                     ) == "not-authorized"


def test_a_client_that_never_speaks_times_out(node):
    """Connect and say nothing: connection-timeout after state_timeout (2 s)."""
    began = time.monotonic()
    raw = RawClient(node.c2s_port)
    try:
        data = raw.read_to_close(timeout=10)
    finally:
        raw.close()
    assert condition(data) == "connection-timeout"
    assert time.monotonic() - began < 8


def test_a_client_that_sends_a_byte_a_second_times_out(node):
    """Dribbling the stream header one byte at a time does not keep the step alive."""
    raw = RawClient(node.c2s_port)
    began = time.monotonic()
    try:
        for byte in HEADER.encode():
            raw.send(bytes([byte]))
            if not raw._recv(0.3) or raw.closed:
                break
        data = raw.buffer + (b"" if raw.closed else raw.read_to_close(timeout=10))
    finally:
        raw.close()
    assert condition(data) == "connection-timeout"
    assert time.monotonic() - began < 8


def test_vanishing_clients_do_not_harm_the_node(node):
    """Clients that drop mid-stream, mid-TLS and mid-stanza leave nothing broken."""
    for payload in (HEADER[:40], HEADER + "<message><body>half", HEADER + "<starttls xmlns="):
        raw = RawClient(node.c2s_port)
        raw.send(payload)
        raw.close()
    raw = RawClient(node.c2s_port)
    raw.open_stream()
    raw.starttls()
    raw.close()


def test_the_node_still_serves_clients_after_all_that(node, clients, loop):
    """After every hostile case above, a real client logs in and pings the server."""
    client = Client(loop, f"alice@{DOMAIN}/after", PASSWORD, port=node.c2s_port)
    clients.append(client)
    client.connect()


def test_a_client_that_does_not_read_is_disconnected(node):
    """A client that sends itself messages and never reads what comes back is cut off
    once the server's write buffer for it passes its limit (c2s_slow_consumer), instead
    of the server buffering for it without end."""
    import select

    from xmpp_harness import raw_login

    raw, jid = raw_login(node.c2s_port, "bob", "deaf")
    try:
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.sock.setblocking(False)
        stanza = (f"<message to='{jid}' type='chat'><body>{'x' * 8000}</body></message>"
                  ).encode()
        pending = b""
        sent = 0
        deadline = time.monotonic() + 45
        # Whole stanzas only, however slowly the server reads: a stanza cut in half
        # would end the stream with not-well-formed instead.
        while time.monotonic() < deadline:
            if not pending:
                pending = stanza * 16
            _, writable, _ = select.select([], [raw.sock], [], 0.2)
            if not writable:
                continue
            try:
                n = raw.sock.send(pending)
            except BlockingIOError:
                continue
            except OSError:
                break  # the server closed the connection
            pending = pending[n:]
            sent += n
        node.wait_for("c2s_slow_consumer", timeout=30)
        assert sent > 8 << 20
    finally:
        raw.close()
