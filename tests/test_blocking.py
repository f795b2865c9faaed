"""XEP-0191 Blocking Command (mongoose/modules/mod_blocking.py, on mod_privacy's engine)
end to end with real slixmpp clients.

The blocker's sessions live on node A of a two-node cluster and the blocked contact on
node B, so the filtering is done where each side's session is, never by reading the
other node's database (each node has its own embedded store). Pushes are checked across
the two workers of one node, where the block list is one list in one store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode
from helpers import wait_until
from im_helpers import (
    BLOCKING,
    CLIENT,
    PRIVACY,
    ImClient,
    assert_no_crashes,
    error_condition,
    login,
    two_nodes,
    wait_reachable,
)
from lxml import etree
from xmpp_harness import DOMAIN, xmpp_node

from mongoose.storage.backends.roster import RosterItem

pytestmark = pytest.mark.timeout(120)

USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
MODULES = "[modules.mod_privacy]\n[modules.mod_blocking]\n"
BLOCKED = "{urn:xmpp:blocking:errors}blocked"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            test_node: TestNode) -> Iterator[tuple[MongooseNode, MongooseNode]]:
    a, b = two_nodes(tmp_path_factory.mktemp("blocking"), test_node.keys_file, USERS, MODULES)
    yield a, b
    a.kill()
    b.kill()
    assert_no_crashes(a, b)


def blocklist(client: ImClient) -> list[str]:
    answer = client.query(f"<iq type='get'><blocklist xmlns='{BLOCKING}'/></iq>")
    assert answer.get("type") == "result", etree.tostring(answer)
    return [item.get("jid") for item in answer.iter(f"{{{BLOCKING}}}item")]


def command(client: ImClient, name: str, *jids: str) -> etree._Element:
    items = "".join(f"<item jid='{jid}'/>" for jid in jids)
    return client.query(f"<iq type='set'><{name} xmlns='{BLOCKING}'>{items}</{name}></iq>")


def pushed(client: ImClient, name: str) -> list[list[str]]:
    """The items of each <block/> or <unblock/> push the client got, in order."""
    return [[item.get("jid") for item in iq.iter(f"{{{BLOCKING}}}item")]
            for iq in client.iq_sets(f"{{{BLOCKING}}}{name}")]


def test_blocking_stops_messages_iq_and_presence_both_ways(cluster, loop, clients):
    """Once alice blocks bob: bob's messages and iq get service-unavailable and never
    reach her, his presence is dropped, he gets unavailable presence from her; what she
    sends him gets not-acceptable with <blocked/>. Unblocked, both ways work again and he
    gets her presence back."""
    a, b = cluster
    alice = login(loop, clients, f"alice@{DOMAIN}/home", a.c2s_port, plugins=("xep_0191",))
    bob = login(loop, clients, f"bob@{DOMAIN}/pda", b.c2s_port)
    wait_reachable(bob, alice)
    wait_reachable(alice, bob)
    alice.presence(to=bob.jid)
    bob.presence(to=alice.jid)
    wait_until(lambda: bob.presences_from(alice.jid) and alice.presences_from(bob.jid),
               what="directed presence both ways")
    assert blocklist(alice) == []
    for client in (alice, bob):
        client.stanzas.clear()

    assert command(alice, "block", f"bob@{DOMAIN}").get("type") == "result"
    assert blocklist(alice) == [f"bob@{DOMAIN}"]
    wait_until(lambda: [p.get("type") for p in bob.presences_from(alice.jid)] == [
        "unavailable"], what="unavailable presence at bob")

    bob.presence(to=alice.jid)  # dropped silently, before the message behind it
    bob.send_message(alice.jid, "let me in")
    bob.send_message(f"alice@{DOMAIN}", "let me in, bare")
    wait_until(lambda: bob.errors_for("let me in") and bob.errors_for("let me in, bare"),
               what="errors for bob's messages")
    assert [error_condition(e) for e in bob.errors_for("let me in")] == ["service-unavailable"]
    version = bob.query(f"<iq type='get' to='{alice.jid}'>"
                        "<query xmlns='jabber:iq:version'/></iq>")
    assert error_condition(version) == "service-unavailable"
    assert not alice.bodies_from(f"bob@{DOMAIN}")
    assert not alice.presences_from(bob.jid)
    assert not [p for p in bob.presences_from(alice.jid) if p.get("type") != "unavailable"]

    alice.send_message(bob.jid, "you are blocked")
    alice.presence(to=bob.jid)
    wait_until(lambda: alice.errors_for("you are blocked"), what="error for alice's message")
    [error] = alice.errors_for("you are blocked")
    assert error_condition(error) == "not-acceptable"
    assert error.find(f"{{{CLIENT}}}error/{BLOCKED}") is not None
    assert error.get("from") == bob.jid
    wait_until(lambda: [p for p in alice.presences_from(bob.jid) if p.get("type") == "error"],
               what="error for alice's directed presence")

    assert command(alice, "unblock", f"bob@{DOMAIN}").get("type") == "result"
    wait_until(lambda: [p for p in bob.presences_from(alice.jid) if p.get("type") is None],
               what="alice's presence again at bob")
    alice.send_message(bob.jid, "welcome back")
    bob.send_message(alice.jid, "thanks")
    wait_until(lambda: "thanks" in alice.bodies_from(f"bob@{DOMAIN}"), what="bob to alice")
    wait_until(lambda: "welcome back" in bob.bodies_from(f"alice@{DOMAIN}"))
    # Nothing blocked was delivered late: the paths are ordered, and these came after.
    assert alice.bodies_from(f"bob@{DOMAIN}") == ["thanks"]
    assert bob.bodies_from(f"alice@{DOMAIN}") == ["welcome back"]


def two_workers(node: MongooseNode, loop: Any, clients: list[Any], user: str
                ) -> tuple[ImClient, ImClient]:
    """Two sessions of ``user`` on ``node``, on different workers."""
    first = login(loop, clients, f"{user}@{DOMAIN}/w0", node.c2s_port, plugins=("xep_0191",))
    worker = node.wait_for("c2s_session_open", jid=first.jid)["worker"]
    for attempt in range(30):
        second = login(loop, clients, f"{user}@{DOMAIN}/w{attempt + 1}", node.c2s_port,
                       plugins=("xep_0191",))
        if node.wait_for("c2s_session_open", jid=second.jid)["worker"] != worker:
            return first, second
        second.disconnect()
    pytest.fail("the kernel put every connection on one worker")


def test_block_and_unblock_are_pushed_to_the_resources_that_asked(cluster, loop, clients):
    """block, unblock of one JID and unblock of all are pushed to every resource of the
    user that asked for the block list, on any worker, and not to the others; bad
    commands get bad-request or jid-malformed."""
    a, _b = cluster
    one, two = two_workers(a, loop, clients, "carol")
    silent = login(loop, clients, f"carol@{DOMAIN}/silent", a.c2s_port, plugins=("xep_0191",))
    assert blocklist(one) == [] and blocklist(two) == []

    assert command(one, "block", f"dave@{DOMAIN}", f"erin@{DOMAIN}/phone").get(
        "type") == "result"
    expected = [[f"dave@{DOMAIN}", f"erin@{DOMAIN}/phone"]]
    wait_until(lambda: pushed(one, "block") == expected and pushed(two, "block") == expected,
               what=lambda: f"block pushes: {pushed(one, 'block')} {pushed(two, 'block')}")
    assert blocklist(two) == [f"dave@{DOMAIN}", f"erin@{DOMAIN}/phone"]
    assert command(two, "unblock", f"dave@{DOMAIN}").get("type") == "result"
    wait_until(lambda: pushed(one, "unblock") == [[f"dave@{DOMAIN}"]]
               and pushed(two, "unblock") == [[f"dave@{DOMAIN}"]], what="unblock pushes")
    assert command(one, "unblock").get("type") == "result"
    wait_until(lambda: pushed(one, "unblock")[-1:] == [[]] and pushed(two, "unblock")[-1:] == [
        []], what="unblock-all pushes")
    assert blocklist(one) == []

    # A privacy list push goes to every session by the same way, after the ones above.
    answer = one.query(f"<iq type='set'><query xmlns='{PRIVACY}'><list name='l'>"
                       "<item action='allow' order='1'/></list></query></iq>")
    assert answer.get("type") == "result"
    wait_until(lambda: silent.iq_sets(f"{{{PRIVACY}}}query"), what="privacy push at silent")
    assert not silent.iq_sets(f"{{{BLOCKING}}}block")
    assert not silent.iq_sets(f"{{{BLOCKING}}}unblock")

    assert error_condition(command(one, "block")) == "bad-request"
    assert error_condition(command(one, "block", "not a@jid@")) == "jid-malformed"
    bad_get = one.query(f"<iq type='get'><block xmlns='{BLOCKING}'/></iq>")
    assert error_condition(bad_get) == "bad-request"
    other = one.query(f"<iq type='get' to='dave@{DOMAIN}'><blocklist xmlns='{BLOCKING}'/></iq>")
    assert error_condition(other) in ("forbidden", "service-unavailable")


@pytest.fixture(scope="module")
def im_node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[
        MongooseNode]:
    """One node with the other IM modules blocking works with: rosters, presence
    subscriptions and offline messages."""
    node = xmpp_node(tmp_path_factory.mktemp("blocking_im"), "blockim@localhost",
                     test_node.keys_file, users=USERS,
                     extra_toml="[modules.mod_roster]\n[modules.mod_presence]\n"
                                "[modules.mod_offline]\n[modules.mod_blocking]\n")
    yield node
    node.kill()
    assert_no_crashes(node)


def rosters(node: MongooseNode) -> Any:
    """The node's roster store (the backend mod_roster uses), for a with-block."""
    import contextlib

    from mongoose.storage.backends.roster import RosterStore
    from mongoose.storage.sqlite import SqliteDatabase

    @contextlib.contextmanager
    def opened() -> Iterator[RosterStore]:
        db = SqliteDatabase(node.dir / "data" / "mongoose.db")
        try:
            yield RosterStore(db)
        finally:
            db.close()

    return opened()


def test_blocked_contact_messages_bounce_while_the_user_is_offline(im_node, loop, clients):
    """With no session of the blocker, her default list is read from the database at
    routing: a blocked contact's message is bounced with service-unavailable and not
    stored, another contact's is stored by mod_offline and delivered at her next login."""
    frank = login(loop, clients, f"frank@{DOMAIN}/r", im_node.c2s_port, plugins=("xep_0191",))
    assert command(frank, "block", f"dave@{DOMAIN}").get("type") == "result"
    frank.disconnect()
    dave = login(loop, clients, f"dave@{DOMAIN}/r", im_node.c2s_port)
    erin = login(loop, clients, f"erin@{DOMAIN}/r", im_node.c2s_port)
    dave.send_message(f"frank@{DOMAIN}", "while you were away")
    erin.send_message(f"frank@{DOMAIN}", "see you later")
    erin.send_message(f"frank@{DOMAIN}", "and in order")
    wait_until(lambda: dave.errors_for("while you were away"), what="dave's bounce")
    [error] = dave.errors_for("while you were away")
    assert error_condition(error) == "service-unavailable"
    info = dave.query(f"<iq type='get' to='{DOMAIN}'><query "
                      "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert BLOCKING in {f.get("var") for f in info.iter(
        "{http://jabber.org/protocol/disco#info}feature")}

    back = login(loop, clients, f"frank@{DOMAIN}/back", im_node.c2s_port)
    wait_until(lambda: back.bodies_from(f"erin@{DOMAIN}") == ["see you later", "and in order"],
               what=lambda: f"offline messages: {back.bodies_from(f'erin@{DOMAIN}')}")
    assert not erin.errors_for("see you later")
    assert not back.bodies_from(f"dave@{DOMAIN}")


def test_a_blocked_contacts_subscription_request_never_reaches_the_roster(im_node, loop,
                                                                          clients):
    """A subscription request from a blocked contact is dropped before mod_presence
    records it in the roster (privacy lists come first, XEP-0016 §2.4), while another
    contact's request reaches the user."""
    alice = login(loop, clients, f"alice@{DOMAIN}/r", im_node.c2s_port, plugins=("xep_0191",))
    bob = login(loop, clients, f"bob@{DOMAIN}/r", im_node.c2s_port)
    carol = login(loop, clients, f"carol@{DOMAIN}/r", im_node.c2s_port)
    assert command(alice, "block", f"bob@{DOMAIN}").get("type") == "result"
    bob.send_raw(f"<presence to='alice@{DOMAIN}' type='subscribe'/>")
    bob.send_message(f"alice@{DOMAIN}", "behind the request")  # the router holds it behind
    carol.send_raw(f"<presence to='alice@{DOMAIN}' type='subscribe'/>")
    wait_until(lambda: [p for p in alice.presences_from(f"carol@{DOMAIN}")
                        if p.get("type") == "subscribe"], what="carol's request")
    wait_until(lambda: bob.errors_for("behind the request"), what="bob's error")
    assert not alice.presences_from(f"bob@{DOMAIN}")
    with rosters(im_node) as store:
        contacts = {item.jid for item in store.get_roster("alice", DOMAIN).items}
    assert contacts == {f"carol@{DOMAIN}"}


def test_blocking_hides_presence_broadcasts_from_a_subscribed_contact(im_node, loop, clients):
    """Contacts with a mutual subscription: when carol blocks dave he gets her
    unavailable presence and none of her later broadcasts, and she none of his; when she
    unblocks him he gets her current presence."""
    with rosters(im_node) as store:
        store.upsert_item("carol", DOMAIN, RosterItem(f"dave@{DOMAIN}", subscription="both"))
        store.upsert_item("dave", DOMAIN, RosterItem(f"carol@{DOMAIN}", subscription="both"))
    carol = login(loop, clients, f"carol@{DOMAIN}/bcast", im_node.c2s_port,
                  plugins=("xep_0191",))
    dave = login(loop, clients, f"dave@{DOMAIN}/bcast", im_node.c2s_port)
    wait_until(lambda: dave.presences_from(carol.jid), what="carol's presence at dave")
    dave.presence()  # carol's session may have come up after dave's first broadcast
    wait_until(lambda: carol.presences_from(dave.jid), what="dave's presence at carol")
    assert command(carol, "block", f"dave@{DOMAIN}").get("type") == "result"
    wait_until(lambda: [p.get("type") for p in dave.presences_from(carol.jid)][-1:] == [
        "unavailable"], what="carol unavailable at dave")
    seen_by_carol = len(carol.presences_from(dave.jid))
    carol.loop.call(lambda: carol.xmpp.send_presence(pstatus="busy"))
    dave.loop.call(lambda: dave.xmpp.send_presence(pstatus="dave busy"))
    dave.send_message(f"carol@{DOMAIN}", "behind dave's presence")
    wait_until(lambda: dave.errors_for("behind dave's presence"), what="dave's error")
    assert len(carol.presences_from(dave.jid)) == seen_by_carol

    assert command(carol, "unblock", f"dave@{DOMAIN}").get("type") == "result"
    wait_until(lambda: [p.findtext(f"{{{CLIENT}}}status") for p in
                        dave.presences_from(carol.jid)][-1:] == ["busy"],
               what="carol's current presence at dave")
    assert [p.findtext(f"{{{CLIENT}}}status") for p in dave.presences_from(carol.jid)].count(
        "busy") == 1
