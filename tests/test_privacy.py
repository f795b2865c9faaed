"""XEP-0016 Privacy Lists (mongoose/modules/mod_privacy.py) end to end with real slixmpp
clients on one node with two workers.

Subscription and group items read the roster: the tests write roster items straight
into the node's store (the backend mod_roster uses) before the user logs in.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dist_harness import MongooseNode, TestNode
from helpers import wait_until
from im_helpers import (
    CLIENT,
    PRIVACY,
    ImClient,
    assert_no_crashes,
    error_condition,
    login,
    wait_reachable,
)
from lxml import etree
from xmpp_harness import DOMAIN, xmpp_node

from mongoose.modules.mod_privacy import (
    IQ,
    MESSAGE,
    OTHER,
    PRESENCE_IN,
    PRESENCE_OUT,
    compile_rules,
    decide,
    item_element,
    parse_items,
)
from mongoose.storage.backends.privacy import PrivacyItem
from mongoose.storage.backends.roster import RosterItem, RosterStore
from mongoose.storage.sqlite import SqliteDatabase

pytestmark = pytest.mark.timeout(120)

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "oscar")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    n = xmpp_node(tmp_path_factory.mktemp("privacy"), "privacy@localhost", test_node.keys_file,
                  users=USERS, extra_toml="[modules.mod_privacy]\n")
    yield n
    n.kill()
    assert_no_crashes(n)


def set_list(client: ImClient, name: str, items: str) -> etree._Element:
    return client.query(f"<iq type='set'><query xmlns='{PRIVACY}'><list name='{name}'>"
                        f"{items}</list></query></iq>")


def privacy(client: ImClient, body: str, kind: str = "set") -> etree._Element:
    return client.query(f"<iq type='{kind}'><query xmlns='{PRIVACY}'>{body}</query></iq>")


def ok(answer: etree._Element) -> None:
    assert answer.get("type") == "result", etree.tostring(answer)


def add_roster(node: MongooseNode, user: str, *items: RosterItem) -> None:
    db = SqliteDatabase(node.dir / "data" / "mongoose.db")
    try:
        rosters = RosterStore(db)
        for item in items:
            rosters.upsert_item(user, DOMAIN, item)
    finally:
        db.close()


# -- rules, without a server --------------------------------------------------------------


def test_jid_items_match_the_four_forms_of_xep_0016():
    """user@domain/resource matches that resource only, user@domain any resource,
    domain/resource that address only, domain the domain and everything at or under it."""
    rules = compile_rules([
        PrivacyItem(1, "deny", "jid", "a@x.lit/phone"),
        PrivacyItem(2, "deny", "jid", "b@x.lit"),
        PrivacyItem(3, "deny", "jid", "y.lit/bot"),
        PrivacyItem(4, "block", "jid", "z.lit"),
    ])
    denied = ["a@x.lit/phone", "b@x.lit", "b@x.lit/any", "y.lit/bot", "z.lit", "c@z.lit/r",
              "muc.z.lit", "z.lit/r"]
    allowed = ["a@x.lit", "a@x.lit/desk", "c@x.lit", "y.lit", "c@y.lit/bot", "notz.lit"]
    assert [decide(rules, MESSAGE, jid, None) for jid in denied] == [
        "deny", "deny", "deny", "deny", "block", "block", "block", "block"]
    assert [decide(rules, MESSAGE, jid, None) for jid in allowed] == [None] * len(allowed)


def test_first_matching_item_in_order_decides_by_kind():
    """Items apply in 'order' whatever their order in the list; an item with kinds
    covers only those (presence-in/out notifications; other stanzas only by items with
    no kind); no match allows."""
    rules = compile_rules([
        PrivacyItem(9, "deny"),
        PrivacyItem(2, "allow", "jid", "friend@x.lit", match_message=True),
        PrivacyItem(1, "deny", "jid", "friend@x.lit", match_presence_out=True),
    ])
    assert decide(rules, MESSAGE, "friend@x.lit/r", None) is None
    assert decide(rules, PRESENCE_OUT, "friend@x.lit", None) == "deny"
    assert decide(rules, IQ, "friend@x.lit/r", None) == "deny"  # falls through to 9
    assert decide(compile_rules([PrivacyItem(1, "deny", match_presence_in=True)]),
                  OTHER, "x.lit", None) is None  # a subscription request: not presence-in
    assert decide((), MESSAGE, "x.lit", None) is None


def test_subscription_and_group_items_read_the_roster():
    """A contact not on the roster has subscription 'none' and no group."""
    roster = {"a@x.lit": ("both", frozenset({"work"})), "b@x.lit": ("from", frozenset())}
    rules = compile_rules([PrivacyItem(1, "deny", "group", "work"),
                           PrivacyItem(2, "deny", "subscription", "none"),
                           PrivacyItem(3, "allow")])
    assert decide(rules, PRESENCE_IN, "a@x.lit/r", roster) == "deny"
    assert decide(rules, PRESENCE_IN, "b@x.lit/r", roster) is None
    assert decide(rules, PRESENCE_IN, "c@x.lit/r", roster) == "deny"
    assert decide(rules, PRESENCE_IN, "c@x.lit/r", None) == "deny"


def test_list_items_parse_and_serialize_both_ways():
    """A client's items become store items (JIDs prepared) and come back the same; the
    blocking list's 'block' shows as 'deny'."""
    xml = (f"<list xmlns='{PRIVACY}' name='l'><item type='jid' value='Tybalt@Example.COM' "
           "action='deny' order='3'><message/><presence-in/></item>"
           "<item action='allow' order='1'/></list>")
    items = parse_items(etree.fromstring(xml))
    assert items == [
        PrivacyItem(3, "deny", "jid", "tybalt@example.com", match_message=True,
                    match_presence_in=True),
        PrivacyItem(1, "allow")]
    assert [parse_items(etree.fromstring(
        f"<list xmlns='{PRIVACY}'>{etree.tostring(item_element(i)).decode()}</list>"))[0]
        for i in items] == items
    assert item_element(PrivacyItem(1, "block", "jid", "x.lit")).get("action") == "deny"


# -- end to end ----------------------------------------------------------------------------


def test_default_list_denies_a_jid_both_ways(node, loop, clients):
    """A default list with a jid item that denies everything: the contact's messages
    get service-unavailable and are not delivered, the user's to it get not-acceptable
    (no <blocked/>: that is for XEP-0191's list); everyone else passes."""
    alice = login(loop, clients, f"alice@{DOMAIN}/r", node.c2s_port)
    bob = login(loop, clients, f"bob@{DOMAIN}/r", node.c2s_port)
    carol = login(loop, clients, f"carol@{DOMAIN}/r", node.c2s_port)
    for sender in (bob, carol):
        wait_reachable(sender, alice)
    ok(set_list(alice, "nobob", f"<item type='jid' value='Bob@{DOMAIN}' action='deny' "
                               "order='1'/><item action='allow' order='2'/>"))
    ok(privacy(alice, "<default name='nobob'/>"))

    bob.send_message(alice.jid, "from bob")
    carol.send_message(alice.jid, "from carol")
    wait_until(lambda: bob.errors_for("from bob"), what="bob's error")
    assert error_condition(bob.errors_for("from bob")[0]) == "service-unavailable"
    wait_until(lambda: alice.bodies_from(f"carol@{DOMAIN}") == ["from carol"])
    alice.send_message(bob.jid, "to bob")
    wait_until(lambda: alice.errors_for("to bob"), what="alice's error")
    [error] = alice.errors_for("to bob")
    assert error_condition(error) == "not-acceptable"
    assert error.find(f"{{{CLIENT}}}error/{{urn:xmpp:blocking:errors}}blocked") is None
    assert not alice.bodies_from(f"bob@{DOMAIN}")

    names = privacy(alice, "", kind="get")
    query = names.find(f"{{{PRIVACY}}}query")
    assert [(etree.QName(c).localname, c.get("name")) for c in query] == [
        ("default", "nobob"), ("list", "nobob")]
    got = privacy(alice, "<list name='nobob'/>", kind="get")
    items = got.findall(f"{{{PRIVACY}}}query/{{{PRIVACY}}}list/{{{PRIVACY}}}item")
    assert [(i.get("type"), i.get("value"), i.get("action"), i.get("order")) for i in items] == [
        ("jid", f"bob@{DOMAIN}", "deny", "1"), (None, None, "allow", "2")]


def test_kind_items_and_subscription_and_group_items(node, loop, clients):
    """Items limited to <message/> or <presence-in/> block only that kind, inbound;
    subscription and group items match by the roster (a contact not on it has
    subscription 'none')."""
    add_roster(node, "dave",
               RosterItem(f"erin@{DOMAIN}", subscription="both", groups=("friends",)),
               RosterItem(f"frank@{DOMAIN}", subscription="to", groups=("work",)))
    dave = login(loop, clients, f"dave@{DOMAIN}/r", node.c2s_port)
    erin = login(loop, clients, f"erin@{DOMAIN}/r", node.c2s_port)
    frank = login(loop, clients, f"frank@{DOMAIN}/r", node.c2s_port)
    grace = login(loop, clients, f"grace@{DOMAIN}/r", node.c2s_port)
    for sender in (erin, frank, grace):
        wait_reachable(sender, dave)
    ok(set_list(dave, "mixed",
                "<item type='subscription' value='none' action='deny' order='1'><message/>"
                "</item><item type='group' value='work' action='deny' order='2'>"
                "<presence-in/></item>"
                f"<item type='jid' value='erin@{DOMAIN}' action='deny' order='3'><iq/></item>"))
    ok(privacy(dave, "<active name='mixed'/>"))

    grace.send_message(dave.jid, "stranger")  # subscription none: denied
    frank.send_message(dave.jid, "colleague")  # group work: only presence denied
    frank.presence(to=dave.jid)
    erin.presence(to=dave.jid)
    erin.send_message(dave.jid, "friend")
    wait_until(lambda: grace.errors_for("stranger"), what="the stranger's error")
    wait_until(lambda: set(dave.bodies_from(f"frank@{DOMAIN}")) | set(
        dave.bodies_from(f"erin@{DOMAIN}")) == {"colleague", "friend"})
    wait_until(lambda: dave.presences_from(erin.jid), what="erin's presence")
    version = erin.query(f"<iq type='get' to='{dave.jid}'><query xmlns='jabber:iq:version'/>"
                         "</iq>")
    assert error_condition(version) == "service-unavailable"
    frank.send_message(dave.jid, "after presence")  # ordered behind frank's presence
    wait_until(lambda: "after presence" in dave.bodies_from(f"frank@{DOMAIN}"))
    assert not dave.presences_from(frank.jid)
    assert not dave.bodies_from(f"grace@{DOMAIN}")
    dave.send_message(grace.jid, "outbound is not a message item's business")
    wait_until(lambda: grace.bodies_from(f"dave@{DOMAIN}"), what="dave's message to grace")


def test_active_list_applies_to_its_session_only(node, loop, clients):
    """An active list replaces the default for the session that set it; another session
    keeps the default. Removing a list another session uses is a conflict, as is removing
    the default list; an unknown active list is item-not-found and changes nothing."""
    one = login(loop, clients, f"heidi@{DOMAIN}/one", node.c2s_port)
    two = login(loop, clients, f"heidi@{DOMAIN}/two", node.c2s_port)
    ivan = login(loop, clients, f"ivan@{DOMAIN}/r", node.c2s_port)
    wait_reachable(ivan, one)
    wait_reachable(ivan, two)
    ok(set_list(one, "closed", "<item action='deny' order='5'><message/></item>"))
    ok(set_list(one, "open", "<item action='allow' order='1'/>"))
    ok(privacy(one, "<default name='open'/>"))
    ok(privacy(one, "<active name='closed'/>"))
    assert error_condition(privacy(one, "<active name='missing'/>")) == "item-not-found"

    ivan.send_message(one.jid, "to one")
    ivan.send_message(two.jid, "to two")
    wait_until(lambda: ivan.errors_for("to one"), what="error from one")
    wait_until(lambda: two.bodies_from(f"ivan@{DOMAIN}") == ["to two"])
    assert not one.bodies_from(f"ivan@{DOMAIN}")
    names = privacy(one, "", kind="get").find(f"{{{PRIVACY}}}query")
    assert names.find(f"{{{PRIVACY}}}active").get("name") == "closed"
    assert privacy(two, "", kind="get").find(f"{{{PRIVACY}}}query/{{{PRIVACY}}}active") is None

    assert error_condition(privacy(two, "<list name='closed'/>")) == "conflict"
    assert error_condition(privacy(two, "<list name='open'/>")) == "conflict"  # the default
    ok(privacy(one, "<active/>"))
    ivan.send_message(one.jid, "open again")
    wait_until(lambda: "open again" in one.bodies_from(f"ivan@{DOMAIN}"))
    ok(privacy(two, "<list name='closed'/>"))
    assert error_condition(privacy(two, "<list name='closed'/>", kind="get")) == "item-not-found"


def test_default_list_applies_from_the_first_stanza_of_a_new_session(node, loop, clients):
    """The default list is read at login and applies to a new session at once: a denied
    contact's messages sent as soon as the session exists never get through."""
    judy = login(loop, clients, f"judy@{DOMAIN}/first", node.c2s_port)
    ok(set_list(judy, "quiet", f"<item type='jid' value='mallory@{DOMAIN}' action='deny' "
                               "order='1'/>"))
    ok(privacy(judy, "<default name='quiet'/>"))
    judy.disconnect()
    mallory = login(loop, clients, f"mallory@{DOMAIN}/r", node.c2s_port)
    oscar = login(loop, clients, f"oscar@{DOMAIN}/r", node.c2s_port)
    again = login(loop, clients, f"judy@{DOMAIN}/again", node.c2s_port)
    wait_reachable(oscar, again)
    for n in range(20):
        mallory.send_message(again.jid, f"spam{n}")
    wait_until(lambda: len([m for m in mallory.stanzas if m.get("type") == "error"]) == 20,
               what="an error for each of mallory's messages")
    oscar.send_message(again.jid, "hello")
    wait_until(lambda: "hello" in again.bodies_from(f"oscar@{DOMAIN}"))
    assert not again.bodies_from(f"mallory@{DOMAIN}")


def test_edits_are_pushed_and_bad_requests_refused(node, loop, clients):
    """Creating, editing and removing a list pushes its name to every session of the
    user; a denied presence-out item sends unavailable presence to a contact that had
    ours; malformed lists get bad-request or jid-malformed."""
    one = login(loop, clients, f"carol@{DOMAIN}/one", node.c2s_port)
    two = login(loop, clients, f"carol@{DOMAIN}/two", node.c2s_port)
    bob = login(loop, clients, f"bob@{DOMAIN}/pushes", node.c2s_port)
    wait_reachable(bob, one)
    wait_reachable(one, bob)
    one.presence(to=bob.jid)
    wait_until(lambda: bob.presences_from(one.jid), what="directed presence at bob")
    ok(set_list(one, "hide", f"<item type='jid' value='bob@{DOMAIN}' action='deny' "
                             "order='1'><presence-out/></item>"))
    ok(privacy(one, "<default name='hide'/>"))
    wait_until(lambda: [p.get("type") for p in bob.presences_from(one.jid)][-1:] == [
        "unavailable"], what="unavailable presence at bob")
    bob.send_message(one.jid, "messages still pass")
    wait_until(lambda: "messages still pass" in one.bodies_from(f"bob@{DOMAIN}"))
    ok(set_list(one, "other", "<item action='allow' order='1'/>"))
    ok(privacy(one, "<default name='other'/>"))
    ok(privacy(one, "<list name='hide'/>"))

    def names(client: ImClient) -> list[str]:
        return [q.find(f"{{{PRIVACY}}}list").get("name")
                for q in (iq.find(f"{{{PRIVACY}}}query")
                          for iq in client.iq_sets(f"{{{PRIVACY}}}query"))]

    wait_until(lambda: names(one) == ["hide", "other", "hide"] and names(two) == names(one),
               what=lambda: f"pushes {names(one)} {names(two)}")
    for bad in ("<item action='maybe' order='1'/>", "<item action='deny'/>",
                "<item action='deny' order='1'/><item action='allow' order='1'/>",
                "<item type='subscription' value='sometimes' action='deny' order='1'/>",
                "<item action='deny' order='1'><video/></item>"):
        assert error_condition(set_list(one, "bad", bad)) == "bad-request", bad
    assert error_condition(set_list(one, "bad", "<item type='jid' value='a@b@c' "
                                                "action='deny' order='1'/>")) == "jid-malformed"
    assert error_condition(privacy(one, "<list name='a'/><list name='b'/>",
                                   kind="get")) == "bad-request"
    assert error_condition(privacy(one, "<default name='missing'/>")) == "item-not-found"


def test_modules_declare_xeps_features_and_events():
    """mod_privacy and mod_blocking declare their XEPs and disco features, and register
    their instrumentation events with the host_type label."""
    from mongoose import instrument
    from mongoose.modules import mod_blocking, mod_privacy

    assert (mod_privacy.XEPS, mod_privacy.FEATURES) == (("0016",), ("jabber:iq:privacy",))
    assert (mod_blocking.XEPS, mod_blocking.FEATURES) == (("0191",), ("urn:xmpp:blocking",))
    mod_privacy.register_events()
    mod_blocking.register_events()
    expected = {
        "mod_privacy_get": {"count"},
        "mod_privacy_set": {"count", "active_count", "default_count"},
        "mod_privacy_push_item": {"count"},
        "mod_privacy_check_packet": {"count", "denied_count", "blocked_count"},
        "mod_blocking_get": {"count"},
        "mod_blocking_set": {"block_count", "unblock_count"},
    }
    for name, metrics in expected.items():
        spec = instrument.spec(name)
        assert tuple(spec.labels) == ("host_type",) and set(spec.metrics) == metrics, name
