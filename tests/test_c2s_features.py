"""Client-facing features end to end: real nodes, real sockets, real TLS.

Covered here: SCRAM-*-PLUS with tls-exporter channel binding (RFC 9266) after STARTTLS,
what a ``starttls`` (not required) listener offers before TLS, ``max_user_sessions``,
the failed-login slow-down (``[auth.failure_delay]``), server pings (mod_ping's
``send_pings``), whitespace keepalives, directed presence, the delivery rules for
full JIDs without a session (RFC 6121 §8.5.3.2) and for iq responses to the server,
``from``/``to`` checks on client stanzas, and ``mongoose account register`` against a
running node.

Three nodes serve the module (a node takes a second or two to start):

* ``node``: two workers, the default listeners (STARTTLS required; direct TLS), no
  login delay. Most tests run here, each with its own users or resources.
* ``limits_node``: one worker (so the per-address failure memory and the session table
  are the same for every connection), ``max_user_sessions = 2``, ``[auth.failure_delay]``
  ``base_ms = 300``, ``max_per_connection = 3``, and a second listener in ``starttls``
  mode (TLS offered, not required).
* ``ping_node``: mod_ping with ``send_pings``, a 1 s interval, a 1 s answer timeout and
  ``timeout_action = "kill"``.

Raw sockets (:class:`RawClient`) are used wherever the exact bytes matter; slixmpp where
an ordinary client is the point.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import PYTHONPATH, MongooseNode, TestNode
from helpers import wait_until
from lxml import etree
from xmpp_client import Client, ClientLoop
from xmpp_harness import DOMAIN, PASSWORD, RawClient, raw_authenticate, raw_login, xmpp_node_with

from mongoose import tls

pytestmark = pytest.mark.timeout(60)

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"
CLIENT = "jabber:client"
PING = "urn:xmpp:ping"
PLUS_MECHANISMS = ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-512-PLUS"]


# -- nodes and clients ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    users = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
             "judy", "mallory", "oscar", "peggy", "trent")
    n = xmpp_node_with(tmp_path_factory.mktemp("features"), "features@localhost",
                       test_node.keys_file, users=users)
    yield n
    n.kill()


@pytest.fixture(scope="module")
def limits_node(tmp_path_factory: pytest.TempPathFactory,
                test_node: TestNode) -> Iterator[MongooseNode]:
    n = xmpp_node_with(
        tmp_path_factory.mktemp("limits"), "limits@localhost", test_node.keys_file,
        workers=1, users=("alice", "bob", "carol", "dave"),
        modes=("starttls_required", "starttls"),
        # Longer than any login delay below, so a slow <failure/> is never overtaken
        # by the negotiation step's own deadline.
        state_timeout=10_000,
        general_toml="max_user_sessions = 2\n",
        auth_toml="[auth.failure_delay]\nbase_ms = 300\nmax_ms = 5000\n"
                  "max_per_connection = 3\n")
    yield n
    n.kill()


@pytest.fixture(scope="module")
def ping_node(tmp_path_factory: pytest.TempPathFactory,
              test_node: TestNode) -> Iterator[MongooseNode]:
    n = xmpp_node_with(
        tmp_path_factory.mktemp("pings"), "pings@localhost", test_node.keys_file,
        users=("alice", "bob"),
        modules_toml="[modules.mod_disco]\n[modules.mod_ping]\nsend_pings = true\n"
                     "ping_interval = 1\nping_req_timeout = 1\ntimeout_action = \"kill\"\n")
    yield n
    n.kill()


@pytest.fixture
def raws() -> Iterator[list[RawClient]]:
    """Raw sockets a test opens; closed after it whatever happens."""
    made: list[RawClient] = []
    yield made
    for raw in made:
        raw.close()


def login(port: int, loop: ClientLoop, clients: list[Client], jid: str, *,
          presence: bool = True, password: str = PASSWORD) -> Client:
    client = Client(loop, jid, password, port=port)
    clients.append(client)
    return client.connect(presence=presence)


def raw_session(raws: list[RawClient], port: int, user: str, resource: str) -> tuple[
        RawClient, str]:
    raw, jid = raw_login(port, user, resource)
    raws.append(raw)
    return raw, jid


# -- reading what the server sent ----------------------------------------------------------


def parse_stanzas(data: bytes) -> list[Any]:
    """The top-level elements in ``data`` (stanzas written into an open stream)."""
    text = data.strip()
    if not text:
        return []
    root = etree.fromstring(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/"
        b"streams'>" + text + b"</stream:stream>")
    return [child for child in root if isinstance(child.tag, str)]


def read_stanza(raw: RawClient, pattern: bytes, timeout: float = 10.0) -> list[Any]:
    """Read until ``pattern`` has arrived in a complete stanza; return every stanza read
    (the server writes whole stanzas, so one read can hold several)."""
    return complete_stanzas(raw, raw.read_until(pattern, timeout), timeout)


def complete_stanzas(raw: RawClient, data: bytes, timeout: float = 10.0) -> list[Any]:
    """The stanzas in ``data``, once the last one has arrived whole."""
    while True:
        try:
            return parse_stanzas(data)
        except etree.XMLSyntaxError:  # the rest of the last stanza is on its way
            data += raw.read_until(rb"\S", timeout)


def stream_error_condition(data: bytes) -> str:
    """The condition of the ``<stream:error>`` in ``data``."""
    match = re.search(rb"<stream:error>\s*<([a-z-]+)\s+xmlns=['\"]" + STREAMS.encode(), data)
    assert match is not None, f"no stream error in {data!r}"
    return match.group(1).decode()


def stanza_error(stanza: Any) -> tuple[str, str]:
    """(error type, condition) of an error stanza."""
    assert stanza.get("type") == "error", etree.tostring(stanza)
    error = stanza.find(f"{{{CLIENT}}}error")
    assert error is not None, etree.tostring(stanza)
    conditions = [etree.QName(c).localname for c in error
                  if isinstance(c.tag, str) and etree.QName(c).namespace == STANZAS
                  and etree.QName(c).localname != "text"]
    assert len(conditions) == 1, etree.tostring(stanza)
    return error.get("type", ""), conditions[0]


def ping_iq(iq_id: str, to: str = DOMAIN) -> str:
    return f"<iq type='get' id='{iq_id}' to='{to}'><ping xmlns='{PING}'/></iq>"


def sasl_payload(data: bytes, tag: str) -> bytes:
    """The decoded payload of the SASL element ``tag`` (challenge, success) in ``data``."""
    match = re.search(rf"<{tag}[^>]*>([^<]*)</{tag}>".encode(), data)
    assert match is not None, f"no <{tag}> in {data!r}"
    return base64.b64decode(match.group(1))


def mechanisms(features: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb"<mechanism>([^<]+)</mechanism>", features)]


# -- 1. SCRAM-*-PLUS with tls-exporter ---------------------------------------------------


class ScramPlusClient:
    """The client side of SCRAM-*-PLUS (RFC 5802 §3, §6) with the tls-exporter channel
    binding of RFC 9266, by hand: slixmpp and scramp know only tls-unique and
    tls-server-end-point."""

    def __init__(self, mechanism: str, user: str, password: str, cb_data: bytes) -> None:
        self.digest = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256",
                       "SCRAM-SHA-512": "sha512"}[mechanism.removesuffix("-PLUS")]
        self.password = password.encode()
        self.gs2 = "p=tls-exporter,,"
        self.cb_data = cb_data
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.bare = f"n={user},r={self.nonce}"
        self.auth_message = b""
        self.salted = b""

    def first(self) -> bytes:
        return (self.gs2 + self.bare).encode()

    def final(self, server_first: bytes) -> bytes:
        fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
        assert fields["r"].startswith(self.nonce), "the server's nonce must extend ours"
        self.salted = hashlib.pbkdf2_hmac(self.digest, self.password,
                                          base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.digest(self.salted, b"Client Key", self.digest)
        stored_key = hashlib.new(self.digest, client_key).digest()
        binding = base64.b64encode(self.gs2.encode() + self.cb_data).decode()
        without_proof = f"c={binding},r={fields['r']}"
        self.auth_message = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, self.auth_message, self.digest)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def server_signature_ok(self, server_final: bytes) -> bool:
        server_key = hmac.digest(self.salted, b"Server Key", self.digest)
        expected = hmac.digest(server_key, self.auth_message, self.digest)
        return server_final == b"v=" + base64.b64encode(expected)


def starttls_session(port: int, raws: list[RawClient]) -> tuple[RawClient, bytes]:
    """A raw client after STARTTLS and the stream restart; the features it got then."""
    raw = RawClient(port)
    raws.append(raw)
    raw.open_stream()
    raw.starttls()
    return raw, raw.open_stream()


def scram_plus(raw: RawClient, mechanism: str, user: str, cb_data: bytes, *,
               password: str = PASSWORD) -> tuple[bytes, ScramPlusClient]:
    """Run a SCRAM-*-PLUS exchange on ``raw``; the server's last SASL element."""
    client = ScramPlusClient(mechanism, user, password, cb_data)
    raw.send(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>"
             f"{base64.b64encode(client.first()).decode()}</auth>")
    reply = raw.read_until(rb"</challenge>|</failure>|<failure[^>]*/>")
    if b"<challenge" not in reply:
        return reply, client
    final = client.final(sasl_payload(reply, "challenge"))
    raw.send(f"<response xmlns='{SASL}'>{base64.b64encode(final).decode()}</response>")
    return raw.read_until(rb"</success>|</failure>|<failure[^>]*/>"), client


@pytest.mark.parametrize("mechanism", PLUS_MECHANISMS)
def test_scram_plus_with_tls_exporter_logs_in_and_binds(node, raws, mechanism):
    """After STARTTLS every SCRAM-*-PLUS is advertised; an exchange bound to this very
    connection's tls-exporter value (RFC 9266) succeeds, the server proves it knows the
    password (its signature checks out), and resource binding then works."""
    raw, features = starttls_session(node.c2s_port, raws)
    offered = mechanisms(features)
    for plus in PLUS_MECHANISMS:
        assert plus in offered, features
    assert isinstance(raw.sock, ssl.SSLSocket)
    exporter = tls.tls_exporter(raw.sock)
    assert exporter is not None and len(exporter) == 32
    reply, client = scram_plus(raw, mechanism, "alice", exporter)
    assert b"<success" in reply, reply
    assert client.server_signature_ok(sasl_payload(reply, "success"))
    features = raw.open_stream()
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in features
    resource = f"plus-{mechanism.lower()}"
    raw.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
             f"<resource>{resource}</resource></bind></iq>")
    [result] = read_stanza(raw, rb"</iq>")
    assert (result.get("type"), result.get("id")) == ("result", "bind1")
    assert result.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") == \
        f"alice@{DOMAIN}/{resource}"
    raw.send(ping_iq("after-plus"))
    [pong] = read_stanza(raw, rb"after-plus")
    assert (pong.get("type"), pong.get("id")) == ("result", "after-plus")


def test_scram_plus_over_direct_tls(node, raws):
    """On the direct TLS port (XEP-0368) the -PLUS mechanisms are offered from the first
    features, and SCRAM-SHA-512-PLUS bound to that connection's tls-exporter logs in."""
    raw = RawClient(node.tls_port)
    raws.append(raw)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["xmpp-client"])
    raw.sock = context.wrap_socket(raw.sock, server_hostname=DOMAIN)
    offered = mechanisms(raw.open_stream())
    for plus in PLUS_MECHANISMS:
        assert plus in offered, offered
    exporter = tls.tls_exporter(raw.sock)
    assert exporter is not None
    reply, client = scram_plus(raw, "SCRAM-SHA-512-PLUS", "carol", exporter)
    assert b"<success" in reply, reply
    assert client.server_signature_ok(sasl_payload(reply, "success"))


@pytest.mark.parametrize("mechanism", PLUS_MECHANISMS)
def test_scram_plus_with_another_connections_binding_is_refused(node, raws, mechanism):
    """Channel binding data that is not this connection's (here: another TLS
    connection's tls-exporter value, as a man in the middle relaying the exchange would
    have) fails with <not-authorized/>, even with the right password."""
    raw, _ = starttls_session(node.c2s_port, raws)
    other, _ = starttls_session(node.c2s_port, raws)
    theirs = tls.tls_exporter(other.sock)
    assert theirs is not None and theirs != tls.tls_exporter(raw.sock)
    reply, _ = scram_plus(raw, mechanism, "bob", theirs)
    assert b"<success" not in reply
    assert re.search(rb"<failure xmlns=['\"]" + SASL.encode() + rb"['\"]>\s*<not-authorized",
                     reply), reply


def test_scram_plus_with_garbage_binding_data_is_refused(node, raws):
    """Random bytes as the channel binding data: <not-authorized/>."""
    raw, _ = starttls_session(node.c2s_port, raws)
    reply, _ = scram_plus(raw, "SCRAM-SHA-256-PLUS", "bob", secrets.token_bytes(32))
    assert b"<not-authorized" in reply and b"<success" not in reply, reply


def test_starttls_listener_offers_no_plain_and_no_plus_before_tls(limits_node, raws):
    """On a listener with tls.mode = "starttls", the features before TLS offer STARTTLS
    (not required) and SCRAM, but neither PLAIN (it would send the password in clear)
    nor -PLUS (there is no channel to bind to); a PLAIN <auth> there is refused. After
    STARTTLS, PLAIN and the -PLUS mechanisms are offered."""
    raw = RawClient(limits_node.starttls_port)
    raws.append(raw)
    features = raw.open_stream()
    assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'" in features
    assert b"<required" not in features
    before = mechanisms(features)
    assert "SCRAM-SHA-256" in before, features
    assert "PLAIN" not in before
    assert not [m for m in before if m.endswith("-PLUS")]
    credentials = base64.b64encode(f"\0carol\0{PASSWORD}".encode()).decode()
    raw.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{credentials}</auth>")
    reply = raw.read_until(rb"</failure>|<failure[^>]*/>|<success")
    assert b"<success" not in reply
    assert re.search(rb"<(invalid-mechanism|encryption-required)/>", reply), reply
    raw.starttls()
    after = mechanisms(raw.open_stream())
    assert "PLAIN" in after
    for plus in PLUS_MECHANISMS:
        assert plus in after


# -- 2. max_user_sessions ----------------------------------------------------------------


def test_a_session_beyond_max_user_sessions_is_refused(limits_node, loop, clients, raws):
    """With max_user_sessions = 2, binding a third resource gets an iq error
    resource-constraint (type wait) and no session; the first two stay online and keep
    getting their messages."""
    port = limits_node.c2s_port
    first = login(port, loop, clients, f"dave@{DOMAIN}/one")
    second = login(port, loop, clients, f"dave@{DOMAIN}/two")
    raw, _ = raw_authenticate(port, "dave")
    raws.append(raw)
    raw.send("<iq type='set' id='bind3'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
             "<resource>three</resource></bind></iq>")
    [refusal] = read_stanza(raw, rb"bind3")
    assert refusal.get("id") == "bind3"
    assert stanza_error(refusal) == ("wait", "resource-constraint")
    assert refusal.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") is None
    sender = login(port, loop, clients, f"carol@{DOMAIN}/sender")
    sender.send_message(f"dave@{DOMAIN}/one", "to one")
    sender.send_message(f"dave@{DOMAIN}/two", "to two")
    wait_until(lambda: first.bodies() == ["to one"] and second.bodies() == ["to two"],
               what=lambda: f"{first.bodies()} {second.bodies()}")
    assert not first.disconnected.is_set() and not second.disconnected.is_set()
    assert first.stream_errors == [] and second.stream_errors == []


# -- 3. failed-login slow-down -------------------------------------------------------------


def timed_plain_failure(raw: RawClient, user: str) -> tuple[float, bytes]:
    """Send a PLAIN <auth> with a wrong password; (seconds until the <failure>, what
    was read)."""
    credentials = base64.b64encode(f"\0{user}\0not-the-password".encode()).decode()
    began = time.monotonic()
    raw.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{credentials}</auth>")
    data = raw.read_until(rb"</failure>|<failure[^>]*/>", timeout=15)
    return time.monotonic() - began, data


def test_failed_logins_are_answered_later_and_later(limits_node, raws):
    """[auth.failure_delay] base_ms = 300, max_per_connection = 3: on one connection
    each wrong password is answered later than the one before (the second after at
    least ~0.3 s, the third after at least ~0.6 s); the third failure is followed by
    the stream error policy-violation and the close. A new connection from the same
    address is slowed down too: its first failure takes longer than a first failure
    on a fresh address would (base_ms doubled at least once)."""
    raw, _ = starttls_session(limits_node.c2s_port, raws)
    delays = []
    for attempt in range(3):
        delay, data = timed_plain_failure(raw, "alice")
        assert b"<not-authorized/>" in data, data
        delays.append(delay)
        if attempt < 2:
            assert b"<stream:error>" not in data and not raw.closed
    assert delays[0] < delays[1] < delays[2], delays
    assert delays[1] >= 0.28, delays
    assert delays[2] >= 0.55, delays
    rest = data.split(b"</failure>", 1)[-1] + raw.read_to_close()
    assert stream_error_condition(rest) == "policy-violation"
    again, _ = starttls_session(limits_node.c2s_port, raws)
    delay, data = timed_plain_failure(again, "alice")
    assert b"<not-authorized/>" in data
    assert delay >= 0.55, f"the same address's next failure came after {delay:.3f} s"


# -- 4. server pings -----------------------------------------------------------------------


def test_a_client_that_does_not_answer_pings_is_disconnected(ping_node, raws):
    """With send_pings, an idle session gets <iq type='get'><ping xmlns='urn:xmpp:ping'/>
    from the server; when it does not answer within ping_req_timeout the stream ends
    with connection-timeout (timeout_action = "kill")."""
    raw, jid = raw_session(raws, ping_node.c2s_port, "alice", "silent")
    data = raw.read_until(rb"</iq>", timeout=10)
    stanzas = parse_stanzas(data.split(b"<stream:error>", 1)[0])
    pings = [s for s in stanzas if s.find(f"{{{PING}}}ping") is not None]
    assert pings, data
    ping = pings[0]
    assert etree.QName(ping).localname == "iq" and ping.get("type") == "get"
    assert ping.get("id")
    assert ping.get("to") == jid and ping.get("from") in (None, DOMAIN)
    rest = data + raw.read_to_close(timeout=10)
    assert stream_error_condition(rest) == "connection-timeout"


def test_a_client_that_answers_pings_stays_connected(ping_node, loop, clients):
    """slixmpp answers the server's pings (xep_0199): the session gets a ping each
    interval, outlives several intervals and answer timeouts (each ping a new id), and
    still works afterwards."""
    client = Client(loop, f"bob@{DOMAIN}/answers", PASSWORD, port=ping_node.c2s_port)
    clients.append(client)
    pings: list[str] = []

    def count(stanza: Any) -> Any:
        if stanza.name == "iq" and stanza["type"] == "get" and \
                stanza.xml.find(f"{{{PING}}}ping") is not None:
            pings.append(stanza["id"])
        return stanza

    async def add_filter() -> None:
        client.xmpp.add_filter("in", count)

    loop.run(add_filter())
    client.connect()
    wait_until(lambda: len(pings) >= 3 or client.disconnected.is_set(), timeout=15,
               what=lambda: f"three server pings, got {pings}")
    assert not client.disconnected.is_set(), (client.stream_errors, client.events)
    assert len(set(pings)) == len(pings)

    def ping(xmpp: Any) -> Any:
        iq = xmpp.make_iq_get(ito=DOMAIN)
        iq.enable("ping")
        return iq

    assert client.iq(ping)["type"] == "result"
    assert not client.disconnected.is_set()


# -- 5. whitespace keepalives --------------------------------------------------------------


def test_whitespace_keepalives_between_stanzas_are_harmless(node, raws):
    """Whitespace between stanzas (RFC 6120 §4.6.1 keepalives) is ignored: after b" "
    and b"\\n", alone or in the same packet as a stanza, the session is up and each
    following ping to the server is answered."""
    raw, _ = raw_session(raws, node.c2s_port, "alice", "whitespace")
    raw.send(b" ")
    raw.send(b"\n")
    raw.send(ping_iq("ws1").encode())
    [first] = read_stanza(raw, rb"ws1")
    assert (first.get("type"), first.get("id")) == ("result", "ws1")
    raw.send(b"\n")
    raw.send(b" \n \r\n\t")
    raw.send(b"\n" + ping_iq("ws2").encode() + b" ")
    [second] = read_stanza(raw, rb"ws2")
    assert (second.get("type"), second.get("id")) == ("result", "ws2")
    assert not raw.closed


# -- 6. directed presence ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stream-end", "dropped"])
def test_directed_presence_is_followed_by_unavailable(node, loop, clients, raws, how):
    """alice (available) sends directed presence to bob's full JID: bob gets it from
    alice's full JID. When alice's session ends (she closes the stream, or her
    connection just drops), bob gets unavailable presence from her (RFC 6121 §4.6)."""
    bob = login(node.c2s_port, loop, clients, f"bob@{DOMAIN}/directed-{how}")
    raw, alice_jid = raw_session(raws, node.c2s_port, "alice", f"directed-{how}")
    wait_reachable(raw_headline(raw, bob.jid), bob)
    raw.send("<presence/>")
    raw.send(f"<presence to='{bob.jid}'><status>hi bob</status></presence>")

    def from_alice(kind: str) -> list[Any]:
        return [p for p in list(bob.presences)
                if str(p["from"]) == alice_jid and p["type"] == kind]

    wait_until(lambda: from_alice("available"), what="alice's directed presence at bob")
    assert from_alice("available")[0]["status"] == "hi bob"
    assert not from_alice("unavailable")
    if how == "stream-end":
        raw.send("</stream:stream>")
        raw.read_to_close()
    else:
        raw.close()
    wait_until(lambda: from_alice("unavailable"), what="alice's unavailable at bob")


# -- 7. delivery rules ---------------------------------------------------------------------


def wait_reachable(send: Any, target: Client) -> None:
    """Wait until headlines sent with ``send(body)`` reach ``target``: the session table
    is replicated between workers, and the sender's worker may see a new session (or
    its presence) a moment late. Headlines never bounce; one probe every 0.2 s at most."""
    probes = 0

    def arrived() -> bool:
        return any(b.startswith("probe") for b in target.bodies())

    def reachable() -> bool:
        nonlocal probes
        probes += 1
        send(f"probe{probes}")
        try:
            wait_until(arrived, timeout=0.2)
        except AssertionError:
            return False
        return True

    wait_until(reachable, timeout=10, what=lambda: f"{target.jid} reachable")


def raw_headline(raw: RawClient, to: str) -> Any:
    """A ``send(body)`` for :func:`wait_reachable` from a raw client."""
    return lambda body: raw.send(
        f"<message type='headline' to='{to}'><body>{body}</body></message>")


def test_chat_to_an_offline_resource_goes_to_another_resource(node, loop, clients):
    """A chat message to a full JID whose resource has no session is delivered to the
    user's available resource instead (RFC 6121 §8.5.3.2.1)."""
    home = login(node.c2s_port, loop, clients, f"carol@{DOMAIN}/home")
    sender = login(node.c2s_port, loop, clients, f"dave@{DOMAIN}/sender")
    wait_reachable(lambda body: sender.send_message(f"carol@{DOMAIN}", body, "headline"),
                   home)
    sender.send_message(f"carol@{DOMAIN}/gone", "to a resource that is not there")
    wait_until(lambda: "to a resource that is not there" in home.bodies(),
               what="delivery to carol/home")
    assert not [m for m in sender.messages if m["type"] == "error"]


def test_groupchat_to_an_offline_full_jid_bounces(node, loop, clients, raws):
    """A groupchat message to a full JID without a session is not redirected to another
    resource but comes back as service-unavailable (RFC 6121 §8.5.3.2.1)."""
    home = login(node.c2s_port, loop, clients, f"erin@{DOMAIN}/home")
    raw, _ = raw_session(raws, node.c2s_port, "frank", "groupchat")
    wait_reachable(raw_headline(raw, f"erin@{DOMAIN}"), home)  # a redirect would show
    raw.send(f"<message type='groupchat' id='gc1' to='erin@{DOMAIN}/gone'>"
             "<body>room talk</body></message>")
    [bounce] = read_stanza(raw, rb"gc1")
    assert etree.QName(bounce).localname == "message" and bounce.get("id") == "gc1"
    assert stanza_error(bounce)[1] == "service-unavailable"
    assert bounce.get("from") == f"erin@{DOMAIN}/gone"
    assert "room talk" not in home.bodies()


def test_iq_results_and_errors_to_the_server_get_no_reply(node, raws):
    """An iq of type result or error is a response: the server (or the account, for an
    iq without 'to') must not answer it (RFC 6120 §8.2.3). The ping sent after them is
    answered, and its result is the very next thing the client receives."""
    raw, _ = raw_session(raws, node.c2s_port, "grace", "responses")
    raw.send(f"<iq type='result' id='r1' to='{DOMAIN}'/>")
    raw.send(f"<iq type='error' id='e1' to='{DOMAIN}'><ping xmlns='{PING}'/>"
             f"<error type='cancel'><service-unavailable xmlns='{STANZAS}'/></error></iq>")
    raw.send("<iq type='result' id='r2'/>")
    raw.send(f"<iq type='error' id='e2'><error type='cancel'>"
             f"<feature-not-implemented xmlns='{STANZAS}'/></error></iq>")
    raw.send(f"<iq type='result' id='r3' to='grace@{DOMAIN}'/>")
    raw.send(ping_iq("after-responses"))
    stanzas = read_stanza(raw, rb"after-responses")
    assert [(s.get("type"), s.get("id")) for s in stanzas] == [("result", "after-responses")]


# -- 8. from and to of client stanzas ------------------------------------------------------


def test_a_foreign_from_ends_the_stream_with_invalid_from(node, raws):
    """A stanza whose 'from' is not the session's JID: stream error invalid-from, then
    the close (RFC 6120 §4.9.3.10, §8.1.2.1)."""
    raw, _ = raw_session(raws, node.c2s_port, "heidi", "spoof")
    raw.send(f"<message from='mallory@{DOMAIN}/evil' to='ivan@{DOMAIN}' type='chat'>"
             "<body>it was me</body></message>")
    assert stream_error_condition(raw.read_to_close()) == "invalid-from"


def test_a_from_that_is_the_sessions_jid_in_another_case_is_accepted(node, raws):
    """'from' is compared as a JID, not as a string (RFC 7622 §3: localpart and
    domainpart are case-insensitive after preparation): the session's own JID with
    another case is the session's JID, so the stanza is processed, not refused with
    invalid-from."""
    raw, jid = raw_session(raws, node.c2s_port, "judy", "Case")
    assert jid == f"judy@{DOMAIN}/Case"
    raw.send(f"<iq type='get' id='cased' from='JUDY@{DOMAIN.upper()}/Case' to='{DOMAIN}'>"
             f"<ping xmlns='{PING}'/></iq>")
    data = raw.read_until(rb"cased|</stream:stream>")
    assert b"<stream:error>" not in data, data
    [reply] = complete_stanzas(raw, data)
    assert (reply.get("type"), reply.get("id")) == ("result", "cased")


@pytest.mark.parametrize("bad_to", ["a@b@c", "@x", f"oscar@{DOMAIN}/", "x y@localhost"])
def test_a_malformed_to_gets_jid_malformed_and_the_session_stays(node, raws, bad_to):
    """A 'to' that is not a JID: the stanza comes back as an error jid-malformed (type
    modify) with its id, and the session goes on (the next ping is answered)."""
    resource = "malformed-" + hashlib.sha1(bad_to.encode()).hexdigest()[:8]
    raw, jid = raw_session(raws, node.c2s_port, "peggy", resource)
    raw.send(f"<message type='chat' id='m1' to='{bad_to}'><body>x</body></message>")
    [message_error] = read_stanza(raw, rb"m1")
    assert etree.QName(message_error).localname == "message"
    assert message_error.get("id") == "m1"
    assert stanza_error(message_error) == ("modify", "jid-malformed")
    assert message_error.get("to") in (None, jid)
    raw.send(f"<iq type='get' id='i1' to='{bad_to}'><ping xmlns='{PING}'/></iq>")
    [iq_error] = read_stanza(raw, rb"i1")
    assert etree.QName(iq_error).localname == "iq" and iq_error.get("id") == "i1"
    assert stanza_error(iq_error) == ("modify", "jid-malformed")
    raw.send(ping_iq("still-here"))
    [pong] = read_stanza(raw, rb"still-here")
    assert (pong.get("type"), pong.get("id")) == ("result", "still-here")


# -- 9. accounts registered from the command line -----------------------------------------


def test_an_account_registered_with_the_cli_can_log_in(node, loop, clients):
    """`mongoose account register USER@localhost PASSWORD -c CONFIG`, run in the node's
    directory against its config while it runs, makes an account the node accepts at
    once."""
    result = subprocess.run(
        [sys.executable, "-m", "mongoose", "account", "register", f"Newcomer@{DOMAIN}",
         "fresh-password", "-c", node.config.name],
        cwd=node.dir, env=dict(os.environ, PYTHONPATH=PYTHONPATH), capture_output=True,
        text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"registered newcomer@{DOMAIN}\n"
    client = login(node.c2s_port, loop, clients, f"newcomer@{DOMAIN}/cli",
                   password="fresh-password")
    assert client.jid == f"newcomer@{DOMAIN}/cli"
    wrong = Client(loop, f"newcomer@{DOMAIN}/wrong", PASSWORD, port=node.c2s_port)
    clients.append(wrong)
    assert wrong.try_connect() in ("failed_auth", "disconnected")


def test_starttls_serves_the_configured_certificate(tmp_path, test_node):
    """tls.certfile/keyfile from the config are what STARTTLS presents (not the
    generated self-signed certificate)."""
    from dist_harness import free_port
    from xmpp_harness import xmpp_node

    cert, key = tls.ensure_certificate(tmp_path / "mine", ["localhost"])
    port = free_port()
    node = xmpp_node(tmp_path, "certs@localhost", test_node.keys_file, users=(), listen_toml=(
        f'[[listen.c2s]]\nport = {port}\nip_address = "127.0.0.1"\n'
        f'tls.certfile = "{cert}"\ntls.keyfile = "{key}"\n'))
    try:
        raw = RawClient(port)
        try:
            raw.open_stream()
            raw.starttls()
            assert isinstance(raw.sock, ssl.SSLSocket)
            served = raw.sock.getpeercert(binary_form=True)
            assert raw.sock.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            raw.close()
    finally:
        node.kill()
    expected = ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert hashlib.sha256(served).digest() == hashlib.sha256(expected).digest()
