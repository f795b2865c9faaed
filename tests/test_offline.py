"""Offline messages (mod_offline, XEP-0160) end to end: a real node with two workers, real
slixmpp clients.

Messages to a user with no available resource are stored in the node's SQLite file; the
tests read the count there (the test's own connection to that file) to know when the
writes are done, instead of sleeping. One node serves the module; each test has its own
users.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import slixmpp.plugins.xep_0203  # noqa: F401 - imported on the main thread (see conftest)
from dist_harness import MongooseNode, TestNode
from helpers import wait_until
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from xmpp_client import Client, ClientLoop
from xmpp_harness import DOMAIN, PASSWORD, xmpp_node

from mongoose.storage.backends.offline import OfflineStore
from mongoose.storage.sqlite import SqliteDatabase

pytestmark = pytest.mark.timeout(120)

DELAY = "{urn:xmpp:delay}delay"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
         "judy", "mallory", "niaj", "olivia", "peggy")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    n = xmpp_node(tmp_path_factory.mktemp("offline"), "offline@localhost", test_node.keys_file,
                  users=USERS, extra_toml=(
                      "[modules.mod_offline]\nmax_user_offline_messages = 100\n"
                      '[instrumentation.log]\nlevel = "info"\n'))
    yield n
    n.kill()


@pytest.fixture(scope="module")
def offline(node: MongooseNode) -> Iterator[OfflineStore]:
    """The offline store of the node's SQLite file, read by the test."""
    db = SqliteDatabase(node.dir / "data" / "mongoose.db")
    yield OfflineStore(db)
    db.close()


def login(node: MongooseNode, loop: ClientLoop, clients: list[Client], jid: str, *,
          presence: bool = True, priority: int | None = None) -> Client:
    client = Client(loop, jid, PASSWORD, port=node.c2s_port)  # type: ignore[attr-defined]
    client.errors: list[Any] = []  # type: ignore[misc]
    client.all_messages: list[Any] = []  # type: ignore[misc]  # with a body or not
    loop.call(client.xmpp.add_event_handler, "message_error", client.errors.append)
    loop.call(client.xmpp.register_handler, Callback(
        "every message", MatchXPath("{jabber:client}message"), client.all_messages.append))
    clients.append(client)
    client.connect(presence=False)
    if presence:
        if priority is None:
            loop.call(client.xmpp.send_presence)
        else:
            loop.call(lambda: client.xmpp.send_presence(ppriority=priority))
    return client


def stored(offline: OfflineStore, user: str) -> int:
    return offline.count(user, DOMAIN)


def error_condition(message: Any) -> str:
    return message["error"]["condition"]


def test_messages_to_an_offline_user_arrive_at_login_in_order_with_delay(
        node, offline, loop, clients):
    """100 messages sent while the user is offline are stored, then delivered at its
    login in the order sent, each with a XEP-0203 delay from the server, and removed."""
    sender = login(node, loop, clients, f"bob@{DOMAIN}/s")
    n = 100
    for i in range(n):
        sender.send_message(f"alice@{DOMAIN}", f"m{i}")
    wait_until(lambda: stored(offline, "alice") == n, timeout=30,
               what=lambda: f"{stored(offline, 'alice')} of {n} stored")
    before = datetime.datetime.now(datetime.UTC)
    alice = login(node, loop, clients, f"alice@{DOMAIN}/phone")
    wait_until(lambda: len(alice.messages) >= n, timeout=30,
               what=lambda: f"{len(alice.messages)} of {n} delivered")
    assert alice.bodies() == [f"m{i}" for i in range(n)]
    stamps = []
    for message in alice.messages:
        delay = message.xml.find(DELAY)
        assert delay is not None and delay.get("from") == DOMAIN
        assert delay.text == "Offline Storage"
        stamps.append(datetime.datetime.fromisoformat(delay.get("stamp").replace("Z", "+00:00")))
        assert str(message["from"]) == sender.jid
    assert stamps == sorted(stamps) and stamps[-1] <= before
    assert stored(offline, "alice") == 0
    node.wait_for("mod_offline_delivered", host_type=DOMAIN, count=n)
    assert sender.errors == []


def test_a_user_with_a_full_queue_bounces_further_messages(node, offline, loop, clients):
    """With max_user_offline_messages = 100, the 101st message on is refused with
    resource-constraint to its sender; the first 100 are delivered."""
    sender = login(node, loop, clients, f"dave@{DOMAIN}/s")
    for i in range(103):
        sender.send_message(f"carol@{DOMAIN}", f"c{i}")
    wait_until(lambda: len(sender.errors) >= 3, timeout=30,
               what=lambda: f"{len(sender.errors)} errors")
    assert [error_condition(e) for e in sender.errors] == ["resource-constraint"] * 3
    assert [e["error"]["type"] for e in sender.errors] == ["wait"] * 3
    assert sorted(e.xml.findtext("{jabber:client}body") for e in sender.errors) == [
        "c100", "c101", "c102"]
    assert stored(offline, "carol") == 100
    carol = login(node, loop, clients, f"carol@{DOMAIN}/r")
    wait_until(lambda: len(carol.messages) >= 100, timeout=30)
    assert carol.bodies() == [f"c{i}" for i in range(100)]


def test_only_storable_messages_are_kept(node, offline, loop, clients):
    """Headline, groupchat and chat-state-only messages are not stored, nor one with a
    no-store hint (its sender gets service-unavailable); a <store/> hint keeps even a
    headline."""
    sender = login(node, loop, clients, f"frank@{DOMAIN}/s")
    to = f"erin@{DOMAIN}"
    sender.send_raw(f"<message to='{to}' type='headline' id='h'><body>news</body></message>")
    sender.send_raw(f"<message to='{to}' type='groupchat' id='g'><body>room</body></message>")
    sender.send_raw(f"<message to='{to}' type='chat' id='cs'><composing "
                    "xmlns='http://jabber.org/protocol/chatstates'/></message>")
    sender.send_raw(f"<message to='{to}' type='chat' id='ns'><body>secret</body>"
                    "<no-store xmlns='urn:xmpp:hints'/></message>")
    sender.send_raw(f"<message to='{to}' type='headline' id='hs'><body>kept news</body>"
                    "<store xmlns='urn:xmpp:hints'/></message>")
    sender.send_raw(f"<message to='{to}' id='n'><subject>no body</subject></message>")
    sender.send_message(to, "last")
    wait_until(lambda: stored(offline, "erin") == 3, timeout=30,
               what=lambda: f"{stored(offline, 'erin')} stored")
    wait_until(lambda: any(e["id"] == "ns" for e in sender.errors),
               what="the no-store message bounced")
    bounced = {e["id"]: error_condition(e) for e in sender.errors}
    # A groupchat message to a bare JID is the router's to answer (RFC 6121 §8.5.2).
    bounced.pop("g", None)
    assert bounced == {"ns": "service-unavailable"}
    erin = login(node, loop, clients, f"erin@{DOMAIN}/r")
    wait_until(lambda: len(erin.all_messages) >= 3, timeout=30,
               what=lambda: f"{[m['id'] for m in erin.all_messages]} delivered")
    assert [(m["id"], m["type"]) for m in erin.all_messages][:2] == [("hs", "headline"),
                                                                     ("n", "normal")]
    assert erin.all_messages[2]["body"] == "last"
    node.wait_for("mod_offline_dropped", host_type=DOMAIN, reason="not_storable", count=1)


def test_messages_to_an_unknown_user_bounce(node, loop, clients):
    """A message to a user that has no account gets service-unavailable, not storage."""
    sender = login(node, loop, clients, f"grace@{DOMAIN}/s")
    sender.send_raw(f"<message to='nobody@{DOMAIN}' type='chat' id='x'><body>hi</body>"
                    "</message>")
    wait_until(lambda: sender.errors, what="the bounce")
    assert [(e["id"], error_condition(e)) for e in sender.errors] == [
        ("x", "service-unavailable")]


def test_a_negative_priority_login_leaves_messages_stored(node, offline, loop, clients):
    """A session that comes online with a negative priority gets no offline messages
    (XEP-0160 §2); the next one with a non-negative priority gets them."""
    sender = login(node, loop, clients, f"heidi@{DOMAIN}/s")
    sender.send_message(f"ivan@{DOMAIN}", "waiting")
    wait_until(lambda: stored(offline, "ivan") == 1)
    shy = login(node, loop, clients, f"ivan@{DOMAIN}/shy", priority=-1)
    wait_until(lambda: any(str(p["from"]) == shy.jid for p in shy.presences),
               what="its own presence back")
    assert stored(offline, "ivan") == 1 and shy.messages == []
    other = login(node, loop, clients, f"ivan@{DOMAIN}/other")
    wait_until(lambda: other.bodies() == ["waiting"])
    assert stored(offline, "ivan") == 0 and shy.messages == []


def test_raising_a_negative_priority_delivers_the_stored_messages(node, offline, loop,
                                                                   clients):
    """A session online with a negative priority gets the stored messages once it sends
    presence with a priority of zero or more (and not before)."""
    sender = login(node, loop, clients, f"heidi@{DOMAIN}/raise")
    sender.send_message(f"olivia@{DOMAIN}", "kept until you are reachable")
    wait_until(lambda: stored(offline, "olivia") == 1)
    shy = login(node, loop, clients, f"olivia@{DOMAIN}/shy", priority=-1)
    wait_until(lambda: any(str(p["from"]) == shy.jid for p in shy.presences),
               what="its own presence back")
    assert stored(offline, "olivia") == 1 and shy.messages == []
    shy.send_raw("<presence><priority>0</priority></presence>")
    wait_until(lambda: shy.bodies() == ["kept until you are reachable"],
               what="the stored message after the priority went up")
    assert stored(offline, "olivia") == 0


def test_a_chat_message_to_a_resource_that_has_gone_is_stored(node, offline, loop, clients):
    """A chat message to the full JID of a session that has ended goes to the bare JID
    (RFC 6121 §8.5.3.2.1) and, with no other session, into storage, not back to its
    sender as an error."""
    judy = login(node, loop, clients, f"judy@{DOMAIN}/gone")
    judy_worker = node.wait_for("c2s_session_open", jid=judy.jid)["worker"]
    # The sender on judy's worker: its router reads the replica of the session table
    # that judy's session updates itself when it ends (other workers learn a moment
    # later, and a message routed to a session that has just died is lost).
    for attempt in range(20):
        sender = login(node, loop, clients, f"mallory@{DOMAIN}/s{attempt}")
        if node.wait_for("c2s_session_open", jid=sender.jid)["worker"] == judy_worker:
            break
        sender.disconnect()
    else:
        pytest.fail("the kernel put every connection on the other worker")
    judy.disconnect()
    sender.send_message(judy.jid, "after you left")
    wait_until(lambda: stored(offline, "judy") == 1)
    assert sender.errors == []


def test_the_server_announces_msgoffline(node, loop, clients):
    """disco#info of the server lists the msgoffline feature (XEP-0160 §4)."""
    client = login(node, loop, clients, f"niaj@{DOMAIN}/d")
    info = client.iq(_disco_info)
    features = {f.get("var") for f in info.xml.iter(
        "{http://jabber.org/protocol/disco#info}feature")}
    assert "msgoffline" in features


def _disco_info(xmpp: Any) -> Any:
    iq = xmpp.Iq(stype="get", sto=DOMAIN)
    iq.append(ET.fromstring("<query xmlns='http://jabber.org/protocol/disco#info'/>"))
    return iq
