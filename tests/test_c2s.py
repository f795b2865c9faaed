"""Client connections end to end: a real node, real slixmpp clients, real TLS.

One node with two workers serves the whole module (starting a node costs seconds); each
test uses its own users or resources so tests do not see each other's traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode
from helpers import wait_until
from xmpp_client import Client, ClientLoop
from xmpp_harness import DOMAIN, PASSWORD, RawClient, xmpp_node

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    users = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan")
    n = xmpp_node(tmp_path_factory.mktemp("c2s"), "c2s@localhost", test_node.keys_file,
                  users=users)
    yield n
    n.kill()


def login(node: MongooseNode, loop: ClientLoop, clients: list[Client], jid: str, *,
          mechanism: str | None = None, password: str = PASSWORD, presence: bool = True,
          direct_tls: bool = False) -> Client:
    port = node.tls_port if direct_tls else node.c2s_port  # type: ignore[attr-defined]
    client = Client(loop, jid, password, port=port, mechanism=mechanism,
                    direct_tls=direct_tls)
    clients.append(client)
    return client.connect(presence=presence)


def worker_of(node: MongooseNode, jid: str) -> int:
    return node.wait_for("c2s_session_open", jid=jid)["worker"]


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512",
                                       "PLAIN"])
def test_login_with_each_mechanism_over_starttls(node, loop, clients, mechanism):
    """slixmpp logs in with each SASL mechanism after STARTTLS and gets a bound JID."""
    client = login(node, loop, clients, f"alice@{DOMAIN}/{mechanism}", mechanism=mechanism)
    assert client.jid == f"alice@{DOMAIN}/{mechanism}"


def test_login_over_direct_tls(node, loop, clients):
    """The XEP-0368 port speaks TLS from the first byte."""
    client = login(node, loop, clients, f"bob@{DOMAIN}/direct", direct_tls=True)
    assert client.jid == f"bob@{DOMAIN}/direct"


def test_wrong_password_is_refused(node, loop, clients):
    """A wrong password ends in a SASL failure, not a session."""
    client = Client(loop, f"carol@{DOMAIN}/x", "wrong", port=node.c2s_port)
    clients.append(client)
    assert client.try_connect() in ("failed_auth", "disconnected")
    assert not client.session_started.is_set()


def test_unknown_user_is_refused_like_a_wrong_password(node, loop, clients):
    """An account that does not exist fails the same way as a wrong password."""
    client = Client(loop, f"nobody@{DOMAIN}/x", PASSWORD, port=node.c2s_port)
    clients.append(client)
    assert client.try_connect() in ("failed_auth", "disconnected")


def test_server_generates_a_resource_when_none_is_asked(node, loop, clients):
    """Binding without a resource gets one from the server."""
    client = login(node, loop, clients, f"dave@{DOMAIN}")
    assert client.jid.startswith(f"dave@{DOMAIN}/") and len(client.jid) > len(f"dave@{DOMAIN}/")


def test_tls_is_required_before_authentication(node):
    """Before STARTTLS the features offer only STARTTLS (required), and an <auth> is
    refused with encryption-required."""
    raw = RawClient(node.c2s_port)
    try:
        features = raw.open_stream()
        assert b"<required/>" in features and b"mechanisms" not in features
        raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                 "AGFsaWNlAHNlY3JldC1wYXNzd29yZA==</auth>")
        assert b"encryption-required" in raw.read_until(rb"</failure>")
    finally:
        raw.close()


def test_messages_between_workers_arrive_in_order(node, loop, clients):
    """Two users on different workers exchange 1,000 messages each way, all in order."""
    erin = login(node, loop, clients, f"erin@{DOMAIN}/a")
    erin_worker = worker_of(node, erin.jid)
    for attempt in range(20):
        frank = login(node, loop, clients, f"frank@{DOMAIN}/r{attempt}")
        if worker_of(node, frank.jid) != erin_worker:
            break
        frank.disconnect()
    else:
        pytest.fail("the kernel put every connection on one worker")
    n = 1000
    for i in range(n):
        erin.send_message(frank.jid, f"e{i}")
        frank.send_message(erin.jid, f"f{i}")
    wait_until(lambda: len(frank.messages) >= n and len(erin.messages) >= n, timeout=60,
               what=lambda: f"{len(frank.messages)} and {len(erin.messages)} of {n}")
    assert frank.bodies() == [f"e{i}" for i in range(n)]
    assert erin.bodies() == [f"f{i}" for i in range(n)]


def test_a_message_to_the_bare_jid_reaches_the_highest_priority(node, loop, clients):
    """A message to a bare JID goes to the resource with the highest priority."""
    low = login(node, loop, clients, f"grace@{DOMAIN}/low", presence=False)
    high = login(node, loop, clients, f"grace@{DOMAIN}/high", presence=False)
    loop.call(lambda: low.xmpp.send_presence(ppriority=1))
    loop.call(lambda: high.xmpp.send_presence(ppriority=5))
    sender = login(node, loop, clients, f"heidi@{DOMAIN}/s")
    # Both presences are in once each resource has seen the other's.
    wait_until(lambda: any(str(p["from"]) == high.jid for p in low.presences),
               what="grace/high's presence at grace/low")
    wait_until(lambda: any(str(p["from"]) == low.jid for p in high.presences),
               what="grace/low's presence at grace/high")
    sender.send_message(f"grace@{DOMAIN}", "to the bare JID")
    wait_until(lambda: high.bodies() == ["to the bare JID"], what="delivery to grace/high")
    assert low.bodies() == []


def test_a_second_login_with_the_same_resource_replaces_the_first(node, loop, clients):
    """The first session gets a conflict stream error; the second one is online."""
    first = login(node, loop, clients, f"ivan@{DOMAIN}/same")
    second = login(node, loop, clients, f"ivan@{DOMAIN}/same")
    wait_until(first.disconnected.is_set, what="the first session closed")
    assert "conflict" in first.stream_errors
    assert second.session_started.is_set() and not second.disconnected.is_set()


def test_iq_to_an_offline_resource_gets_service_unavailable(node, loop, clients):
    """An iq to a full JID with no session comes back as service-unavailable."""
    alice = login(node, loop, clients, f"alice@{DOMAIN}/iq")

    def ping(xmpp: Any) -> Any:
        iq = xmpp.make_iq_get(ito=f"bob@{DOMAIN}/offline")
        iq.enable("ping")
        return iq

    reply = alice.iq(ping)
    assert reply["type"] == "error"
    assert reply["error"]["condition"] == "service-unavailable"


def test_a_message_to_an_offline_user_bounces(node, loop, clients):
    """With nobody online and no offline storage, a chat message bounces."""
    alice = login(node, loop, clients, f"alice@{DOMAIN}/bounce")
    alice.send_message(f"carol@{DOMAIN}", "anyone?")
    wait_until(lambda: any(m["type"] == "error" for m in alice.messages), what="the bounce")
    error = next(m for m in alice.messages if m["type"] == "error")
    assert error["error"]["condition"] == "service-unavailable"


def test_server_answers_disco_ping_version_and_time(node, loop, clients):
    """disco#info, ping, software version and entity time of the server itself."""
    alice = login(node, loop, clients, f"alice@{DOMAIN}/features")
    async def ask(future: Any) -> Any:
        return await future

    info = alice.loop.run(ask(alice.xmpp["xep_0030"].get_info(jid=DOMAIN)))
    features = info["disco_info"]["features"]
    assert "urn:xmpp:ping" in features and "jabber:iq:version" in features
    assert "urn:xmpp:time" in features
    version = alice.loop.run(ask(alice.xmpp["xep_0092"].get_version(DOMAIN)))
    assert version["software_version"]["name"] == "mongoose"

    def ping(xmpp: Any) -> Any:
        iq = xmpp.make_iq_get(ito=DOMAIN)
        iq.enable("ping")
        return iq

    assert alice.iq(ping)["type"] == "result"

    def entity_time(xmpp: Any) -> Any:
        iq = xmpp.make_iq_get(ito=DOMAIN)
        iq.append(_element("<time xmlns='urn:xmpp:time'/>"))
        return iq

    reply = alice.iq(entity_time)
    assert reply["type"] == "result"
    assert "<utc>" in str(reply)


def test_disco_items_of_an_account_list_its_available_resources(node, loop, clients):
    """disco#items of a bare JID: the user's available resources, for the user only."""
    one = login(node, loop, clients, f"carol@{DOMAIN}/items-one")
    two = login(node, loop, clients, f"carol@{DOMAIN}/items-two")
    other = login(node, loop, clients, f"alice@{DOMAIN}/items")

    async def ask(future: Any) -> Any:
        return await future

    def items() -> list[str]:
        reply = one.loop.run(ask(one.xmpp["xep_0030"].get_items(jid=f"carol@{DOMAIN}")))
        return sorted(str(item[0]) for item in reply["disco_items"]["items"])

    # Sessions on another worker reach this one's replica of the table a moment late.
    wait_until(lambda: items() == sorted([one.jid, two.jid]), what="both resources listed")

    def refused(xmpp: Any) -> Any:
        iq = xmpp.make_iq_get(ito=f"carol@{DOMAIN}")
        iq.append(_element("<query xmlns='http://jabber.org/protocol/disco#items'/>"))
        return iq

    reply = other.iq(refused)
    assert reply["type"] == "error"
    assert reply["error"]["condition"] == "service-unavailable"


def test_an_unknown_server_iq_gets_service_unavailable(node, loop, clients):
    """An iq to the server in a namespace nobody handles: service-unavailable."""
    alice = login(node, loop, clients, f"alice@{DOMAIN}/unknown")

    def unknown(xmpp: Any) -> Any:
        iq = xmpp.make_iq_get(ito=DOMAIN)
        iq.append(_element("<query xmlns='urn:example:nothing'/>"))
        return iq

    reply = alice.iq(unknown)
    assert reply["type"] == "error"
    assert reply["error"]["condition"] == "service-unavailable"


def test_presence_reaches_the_users_other_resources(node, loop, clients):
    """Available presence of one resource reaches the user's other resource, and
    unavailable presence follows when it disconnects."""
    one = login(node, loop, clients, f"carol@{DOMAIN}/one")
    two = login(node, loop, clients, f"carol@{DOMAIN}/two")
    wait_until(lambda: any(str(p["from"]) == two.jid for p in one.presences),
               what="two's presence at one")
    two.disconnect()
    wait_until(lambda: any(str(p["from"]) == two.jid and p["type"] == "unavailable"
                           for p in one.presences), what="two's unavailable presence at one")


def _element(xml: str) -> Any:
    from xml.etree import ElementTree

    return ElementTree.fromstring(xml)



def test_a_crashing_session_ends_only_its_own_stream(node, loop, clients):
    """A session that crashes sends internal-server-error; another session goes on."""
    victim = login(node, loop, clients, f"dave@{DOMAIN}/victim")
    other = login(node, loop, clients, f"erin@{DOMAIN}/bystander")
    victim.send_raw("<iq type='set' id='boom'><crash xmlns='urn:mongoose:test'/></iq>")
    wait_until(victim.disconnected.is_set, what="the crashed session's stream closed")
    assert "internal-server-error" in victim.stream_errors
    node.wait_for("actor_crash")
    sender = login(node, loop, clients, f"frank@{DOMAIN}/after-crash")
    sender.send_message(other.jid, "still here")
    wait_until(lambda: other.bodies() == ["still here"], what="the bystander still served")
