"""Rosters (mod_roster, RFC 6121 §2) and roster versioning (XEP-0237) on a real node with
two workers, through raw sessions; the subscription state tables (RFC 6121 Appendix A)
as unit tests of mod_roster's pure functions.

Covered: get, set and remove with pushes to every interested resource (and none to a
resource that never asked for the roster), names and groups, the errors of §2.3.3 (and
the roster size limit), versioning (the current version gets an empty result, an older
one only the changes as pushes, an unknown one the whole roster), the stream features,
the pushes and cancellations of removing a subscribed contact, and the module's events
on /metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode, free_port
from helpers import wait_until
from lxml import etree
from presence_harness import (
    ROSTER,
    RawSession,
    error_condition,
    items_of,
    local,
    presence_from,
    push_item,
    reach,
    roster_push,
)
from test_c2s_instrument import scrape, value
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, raw_authenticate, xmpp_node

from mongoose.modules import mod_roster
from mongoose.storage.backends.roster import REMOVE, RosterItem

pytestmark = pytest.mark.timeout(90)

USERS = tuple(f"r{i}" for i in range(30))
MAX_ROSTER = 4
GET = f"<query xmlns='{ROSTER}'/>"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    port = free_port()
    n = xmpp_node(
        tmp_path_factory.mktemp("roster"), "roster@localhost", test_node.keys_file,
        users=USERS,
        extra_toml=(f"[modules.mod_roster]\nversioning = true\nmax_roster_size = {MAX_ROSTER}\n"
                    f"[modules.mod_presence]\n[instrumentation.prometheus]\nport = {port}\n"))
    n.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    yield n
    n.kill()


_free_users = iter(USERS)


def users(n: int) -> list[str]:
    """``n`` users no other test of this module uses (their rosters start empty)."""
    return [next(_free_users) for _ in range(n)]


@pytest.fixture
def sessions() -> Iterator[list[RawSession]]:
    made: list[RawSession] = []
    yield made
    for session in made:
        session.close()


def login(node: MongooseNode, sessions: list[RawSession], user: str, resource: str = "r", *,
          presence: bool = True) -> RawSession:
    session = RawSession(node.c2s_port, user, resource)
    sessions.append(session)
    if presence:
        session.send("<presence/>")
    return session


def item_xml(jid: str, name: str | None = None, groups: tuple[str, ...] = (), **attrs: str) -> str:
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    named = f" name='{name}'" if name is not None else ""
    inner = "".join(f"<group>{g}</group>" for g in groups)
    return f"<item jid='{jid}'{named}{extra}>{inner}</item>"


def roster_set(session: RawSession, *items: str) -> Any:
    return session.iq("set", f"<query xmlns='{ROSTER}'>{''.join(items)}</query>")


def groups_of(item: Any) -> list[str]:
    return sorted(g.text for g in item.iterfind(f"{{{ROSTER}}}group"))


def query_of(stanza: Any) -> Any:
    return stanza.find(f"{{{ROSTER}}}query")


# -- get, set, remove, pushes --------------------------------------------------------------


def test_get_set_and_remove_with_pushes_to_every_interested_resource(node, sessions):
    """Two resources ask for the roster, a third never does. A set (name, groups) is
    pushed to both interested resources -- to the one that set it before its result --
    and to no other; a get returns it; a second set replaces name and groups; a remove
    pushes subscription='remove' and empties the roster."""
    [user] = users(1)
    one = login(node, sessions, user, "one")
    two = login(node, sessions, user, "two")
    silent = login(node, sessions, user, "silent")
    for session in (one, two):
        result = session.iq("get", GET)
        assert result.get("type") == "result" and items_of(result) == {}
    contact = f"juliet@{DOMAIN}"
    result = roster_set(one, item_xml(contact, "Juliet", ("Friends", "Verona")))
    assert result.get("type") == "result"
    pushes_first = one.received[:]  # the push was read before the result
    assert any(roster_push(contact)(s) for s in pushes_first), "push before the result"
    for session in (one, two):
        item = push_item(session.wait(roster_push(contact), what="the set's push"))
        assert (item.get("name"), item.get("subscription")) == ("Juliet", "none")
        assert groups_of(item) == ["Friends", "Verona"]
    got = items_of(two.iq("get", GET))
    assert set(got) == {contact} and groups_of(got[contact]) == ["Friends", "Verona"]

    roster_set(two, item_xml(contact, "Jules", ("Capulet",)))
    for session in (one, two):
        item = push_item(session.wait(roster_push(contact), what="the update's push"))
        assert (item.get("name"), groups_of(item)) == ("Jules", ["Capulet"])

    result = roster_set(one, item_xml(contact, subscription="remove"))
    assert result.get("type") == "result"
    for session in (one, two):
        item = push_item(session.wait(roster_push(contact), what="the removal's push"))
        assert item.get("subscription") == "remove"
    assert items_of(one.iq("get", GET)) == {}
    assert silent.quiet(roster_push(), 0.3), "a resource that never asked got a push"


def test_interested_sessions_on_both_workers_get_the_push(node, sessions):
    """Interested resources on both workers get the push: the change travels to each
    session by its pid, wherever it lives."""
    [user] = users(1)
    by_worker: dict[int, RawSession] = {}
    for attempt in range(30):
        session = login(node, sessions, user, f"w{attempt}")
        worker = node.wait_for("c2s_session_open", jid=session.jid)["worker"]
        by_worker.setdefault(worker, session)
        if len(by_worker) == 2:
            break
    else:
        pytest.fail("every connection went to one worker")
    for session in by_worker.values():
        session.iq("get", GET)
    first, second = by_worker.values()
    roster_set(first, item_xml(f"romeo@{DOMAIN}", "Romeo"))
    for session in (first, second):
        item = push_item(session.wait(roster_push(f"romeo@{DOMAIN}"), what="the push"))
        assert item.get("name") == "Romeo"


def test_slixmpp_resources_keep_their_rosters_in_step(node, loop, clients):
    """Two slixmpp resources of one user: an item one adds, renames and removes shows
    up, changes and goes in the other's roster (slixmpp applies the pushes)."""
    [user] = users(1)
    one, two = (Client(loop, f"{user}@{DOMAIN}/{r}", PASSWORD, port=node.c2s_port)
                for r in ("one", "two"))
    clients.extend((one, two))
    for c in (one, two):
        c.connect()

    def run(make: Any) -> Any:
        async def go() -> Any:
            return await make()
        return loop.run(go())

    for c in (one, two):
        run(c.xmpp.get_roster)
    contact = f"mercutio@{DOMAIN}"
    run(lambda: one.xmpp.update_roster(contact, name="Mercutio", groups=["Friends"]))
    roster = two.xmpp.client_roster
    wait_until(lambda: contact in roster and roster[contact]["name"] == "Mercutio",
               timeout=10, what="the item at the other resource")
    assert roster[contact]["groups"] == ["Friends"]
    run(lambda: one.xmpp.update_roster(contact, name="Merc", groups=[]))
    wait_until(lambda: roster[contact]["name"] == "Merc" and roster[contact]["groups"] == [],
               timeout=10, what="the renamed item")
    run(lambda: one.xmpp.del_roster_item(contact))
    wait_until(lambda: contact not in two.xmpp.client_roster, timeout=10,
               what="the item gone at the other resource")


@pytest.mark.parametrize("items,condition", [
    ((item_xml("a@localhost"), item_xml("b@localhost")), "bad-request"),
    ((), "bad-request"),
    ((item_xml("@@bad"),), "bad-request"),
    ((item_xml("SELF"),), "not-allowed"),
    ((item_xml("a@localhost", groups=("",)),), "not-acceptable"),
    ((item_xml("a@localhost", groups=("x" * 1024,)),), "not-acceptable"),
    ((item_xml("a@localhost", name="n" * 1024),), "not-acceptable"),
    ((item_xml("a@localhost", groups=("g", "g")),), "bad-request"),
    ((item_xml("nobody@localhost", subscription="remove"),), "item-not-found"),
], ids=["two-items", "no-item", "bad-jid", "own-jid", "empty-group", "long-group",
        "long-name", "duplicate-group", "remove-unknown"])
def test_roster_set_errors(node, sessions, items, condition):
    """The error cases of RFC 6121 §2.3.3, each answered with its condition; the roster
    is unchanged."""
    [user] = users(1)
    session = login(node, sessions, user)
    items = tuple(i.replace("SELF", session.bare) for i in items)
    answer = roster_set(session, *items)
    assert error_condition(answer) == condition, etree.tostring(answer)
    assert items_of(session.iq("get", GET)) == {}


def test_a_roster_beyond_max_roster_size_is_refused(node, sessions):
    """max_roster_size contacts are accepted; one more gets not-allowed (RFC 6121
    §2.3.3's condition for a roster over the server's limit); changing an existing one
    still works."""
    [user] = users(1)
    session = login(node, sessions, user)
    for i in range(MAX_ROSTER):
        assert roster_set(session, item_xml(f"c{i}@localhost")).get("type") == "result"
    answer = roster_set(session, item_xml("one-too-many@localhost"))
    assert error_condition(answer) == "not-allowed"
    assert roster_set(session, item_xml("c0@localhost", "renamed")).get("type") == "result"
    assert len(items_of(session.iq("get", GET))) == MAX_ROSTER


def test_the_roster_of_another_user_is_not_served(node, sessions):
    """A roster get addressed to another user's bare JID is not that user's roster: the
    server answers service-unavailable."""
    a_user, b_user = users(2)
    a = login(node, sessions, a_user)
    answer = a.iq("get", GET, to=f"{b_user}@{DOMAIN}")
    assert error_condition(answer) == "service-unavailable"


def test_a_requester_not_on_the_roster_is_hidden_until_answered(node, sessions):
    """A subscription request from someone not on the roster is not a roster item (no
    push, not in a get), as in MongooseIM; approving it makes it one ('from')."""
    a_user, b_user = users(2)
    a = login(node, sessions, a_user)
    b = login(node, sessions, b_user)
    reach(a, b, to=b.bare)
    b.iq("get", GET)
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    b.wait(presence_from(a.bare, "subscribe"), what="the request")
    assert items_of(b.iq("get", GET)) == {}
    assert b.quiet(roster_push(a.bare), 0.2)
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    item = push_item(b.wait(roster_push(a.bare), what="the 'from' push"))
    assert item.get("subscription") == "from"
    assert set(items_of(b.iq("get", GET))) == {a.bare}


def test_removing_a_contact_cancels_the_subscriptions_both_ways(node, sessions):
    """Removing a contact with a 'both' subscription sends it unsubscribe and
    unsubscribed (RFC 6121 §2.5.2): its roster item goes to 'none', and it gets
    unavailable presence from the user."""
    a_user, b_user = users(2)
    a = login(node, sessions, a_user)
    b = login(node, sessions, b_user)
    reach(a, b, to=b.bare)
    reach(b, a, to=a.bare)
    for x, y in ((a, b), (b, a)):
        x.send(f"<presence type='subscribe' to='{y.bare}'/>")
        y.wait(presence_from(x.bare, "subscribe"))
        y.send(f"<presence type='subscribed' to='{x.bare}'/>")
        x.wait(presence_from(y.bare, "subscribed"))
    b.wait(presence_from(a.jid), what="a's presence")
    b.iq("get", GET)
    roster_set(a, item_xml(b.bare, subscription="remove"))
    b.wait(presence_from(a.bare, "unsubscribe"), what="the unsubscribe")
    b.wait(presence_from(a.bare, "unsubscribed"), what="the unsubscribed")
    b.wait(presence_from(a.jid, "unavailable"), what="a's unavailable")
    wait_until(lambda: items_of(b.iq("get", GET)).get(a.bare) is not None and items_of(
        b.iq("get", GET))[a.bare].get("subscription") == "none", timeout=10,
        what="b's item for a at 'none'")


# -- versioning -----------------------------------------------------------------------------


def test_versioning_sends_only_the_changes(node, sessions):
    """XEP-0237: a get with ver='' gets the whole roster and its version; with the
    current version, an empty result; with an older one, an empty result then one push
    per contact changed since, in order, the last carrying the current version (a
    removed contact as subscription='remove'); with an unknown version, the whole
    roster."""
    [user] = users(1)
    session = login(node, sessions, user)
    full = session.iq("get", f"<query xmlns='{ROSTER}' ver=''/>")
    assert query_of(full).get("ver") == "" and items_of(full) == {}
    versions = []
    for name in ("a", "b", "c"):
        roster_set(session, item_xml(f"{name}@localhost", name.upper()))
        push = session.wait(roster_push(f"{name}@localhost"))
        versions.append(query_of(push).get("ver"))
    assert versions == sorted(versions) and all(versions)

    current = session.iq("get", f"<query xmlns='{ROSTER}' ver='{versions[-1]}'/>")
    assert current.get("type") == "result" and query_of(current) is None
    assert session.quiet(roster_push(), 0.3)

    roster_set(session, item_xml("a@localhost", "Alpha"))
    roster_set(session, item_xml("b@localhost", subscription="remove"))
    latest = [query_of(session.wait(roster_push(j))).get("ver")
              for j in ("a@localhost", "b@localhost")][-1]
    diff = session.iq("get", f"<query xmlns='{ROSTER}' ver='{versions[0]}'/>")
    assert diff.get("type") == "result" and query_of(diff) is None
    pushes = [session.wait(roster_push(), what="a change") for _ in range(3)]
    got = [(push_item(p).get("jid"), push_item(p).get("subscription"),
            push_item(p).get("name")) for p in pushes]
    assert got == [("c@localhost", "none", "C"), ("a@localhost", "none", "Alpha"),
                   ("b@localhost", "remove", None)]
    assert query_of(pushes[-1]).get("ver") == latest
    assert session.quiet(roster_push(), 0.3)

    unknown = session.iq("get", f"<query xmlns='{ROSTER}' ver='not-one-of-ours'/>")
    assert query_of(unknown).get("ver") == latest
    assert set(items_of(unknown)) == {"a@localhost", "c@localhost"}


def test_stream_features_announce_versioning_and_pre_approval(node):
    """After login the stream features include roster versioning (XEP-0237) and
    subscription pre-approval (RFC 6121 §3.4)."""
    raw, features = raw_authenticate(node.c2s_port, USERS[-1])
    try:
        assert b"urn:xmpp:features:rosterver" in features
        assert b"urn:xmpp:features:pre-approval" in features
    finally:
        raw.close()


def test_roster_events_on_the_metrics_page(node, sessions):
    """mod_roster_get/set/push and mod_presence_subscription count on /metrics."""
    [user] = users(1)

    def count(name: str, metric: str = "count") -> float:
        return value(scrape(node), f"{name}_{metric}_total", host_type=DOMAIN) or 0

    wait_until(lambda: value(scrape(node), "mod_roster_get_count_total", host_type=DOMAIN)
               is not None, timeout=30, what="the series on /metrics")
    before = {name: count(name) for name in mod_roster.EVENTS}
    subscribes = count("mod_presence_subscription", "subscribe")
    session = login(node, sessions, user)
    session.iq("get", GET)
    roster_set(session, item_xml("m@localhost"))
    session.wait(roster_push("m@localhost"))
    session.send("<presence type='subscribe' to='m@localhost'/>")
    session.wait(roster_push("m@localhost"))
    wait_until(lambda: all(count(name) >= before[name] + n for name, n in (
        ("mod_roster_get", 1), ("mod_roster_set", 1), ("mod_roster_push", 2))) and count(
        "mod_presence_subscription", "subscribe") >= subscribes + 1, timeout=30,
        what="the events counted")


# -- subscription states (RFC 6121 Appendix A), as pure functions ---------------------------

J = "contact@localhost"
# State names of RFC 6121 Appendix A: (subscription, ask) of the item; "-" no item.
STATES = {
    "-": None,
    "None": RosterItem(J),
    "None+PendingOut": RosterItem(J, ask="out"),
    "None+PendingIn": RosterItem(J, ask="in", name="kept"),
    "None+PendingOut+In": RosterItem(J, ask="both"),
    "To": RosterItem(J, subscription="to"),
    "To+PendingIn": RosterItem(J, subscription="to", ask="in"),
    "From": RosterItem(J, subscription="from"),
    "From+PendingOut": RosterItem(J, subscription="from", ask="out"),
    "Both": RosterItem(J, subscription="both"),
}
SAME = "same"

# A.2: what the user's server does with a subscription stanza the user sends.
OUTBOUND = {
    "subscribe": {"-": "None+PendingOut", "None": "None+PendingOut",
                  "None+PendingOut": SAME, "None+PendingIn": "None+PendingOut+In",
                  "None+PendingOut+In": SAME, "To": SAME, "To+PendingIn": SAME,
                  "From": "From+PendingOut", "From+PendingOut": SAME, "Both": SAME},
    "unsubscribe": {"-": SAME, "None": SAME, "None+PendingOut": "None",
                    "None+PendingIn": SAME, "None+PendingOut+In": "None+PendingIn",
                    "To": "None", "To+PendingIn": "None+PendingIn", "From": SAME,
                    "From+PendingOut": "From", "Both": "From"},
    "subscribed": {"None+PendingIn": "From", "None+PendingOut+In": "From+PendingOut",
                   "To+PendingIn": "Both", "From": SAME, "From+PendingOut": SAME,
                   "Both": SAME},
    "unsubscribed": {"-": SAME, "None": SAME, "None+PendingOut": SAME,
                     "None+PendingIn": "None", "None+PendingOut+In": "None+PendingOut",
                     "To": SAME, "To+PendingIn": "To", "From": "None",
                     "From+PendingOut": "None+PendingOut", "Both": "To"},
}
# A.3: what the contact's server does with one it receives (from the contact here).
INBOUND = {
    "subscribe": {"-": "None+PendingIn", "None": "None+PendingIn",
                  "None+PendingOut": "None+PendingOut+In", "None+PendingIn": SAME,
                  "None+PendingOut+In": SAME, "To": "To+PendingIn", "To+PendingIn": SAME,
                  "From": SAME, "From+PendingOut": SAME, "Both": SAME},
    "subscribed": {"-": SAME, "None": SAME, "None+PendingOut": "To", "None+PendingIn": SAME,
                   "None+PendingOut+In": "To+PendingIn", "To": SAME, "To+PendingIn": SAME,
                   "From": SAME, "From+PendingOut": "Both", "Both": SAME},
    "unsubscribe": {"-": SAME, "None": SAME, "None+PendingOut": SAME,
                    "None+PendingIn": "None", "None+PendingOut+In": "None+PendingOut",
                    "To": SAME, "To+PendingIn": "To", "From": "None",
                    "From+PendingOut": "None+PendingOut", "Both": "To"},
    "unsubscribed": {"-": SAME, "None": SAME, "None+PendingOut": "None",
                     "None+PendingIn": SAME, "None+PendingOut+In": "None+PendingIn",
                     "To": "None", "To+PendingIn": "None+PendingIn", "From": SAME,
                     "From+PendingOut": "From", "Both": "From"},
}


def _state_of(item: RosterItem | None) -> str:
    if item is None:
        return "-"
    for name, state in STATES.items():
        if state is not None and (state.subscription, state.ask) == (
                item.subscription, item.ask):
            return name
    raise AssertionError(item)


@pytest.mark.parametrize("direction,kind,before", [
    (direction, kind, before)
    for direction, table in (("out", OUTBOUND), ("in", INBOUND))
    for kind, rows in table.items() for before in rows])
def test_subscription_state_tables(direction, kind, before):
    """Each row of RFC 6121 A.2 (outbound) and A.3 (inbound): the state after the
    stanza, or no change."""
    old = STATES[before]
    expected = (OUTBOUND if direction == "out" else INBOUND)[kind][before]
    if direction == "out":
        new = mod_roster.outbound(kind, old, J)
    else:
        new = mod_roster.inbound(kind, old, J)
    if expected == SAME:
        assert new is None, new
        return
    assert new is not None and new is not REMOVE, (before, kind, new)
    assert _state_of(new) == expected
    assert new.name == (old.name if old is not None else "")


def test_pre_approval_states():
    """RFC 6121 §3.4: subscribed with no request pending pre-approves (None, None +
    Pending Out, To; a new item if need be); the contact's request is then approved at
    once (From, or Both from To); unsubscribed withdraws a pre-approval."""
    for before in ("-", "None", "None+PendingOut", "To"):
        new = mod_roster.outbound("subscribed", STATES[before], J)
        assert new is not None and new.approved, before
        assert (new.subscription, new.ask) == (
            (STATES[before] or RosterItem(J)).subscription,
            (STATES[before] or RosterItem(J)).ask)
        approved = mod_roster.inbound("subscribe", new, J)
        assert approved.subscription == ("both" if before == "To" else "from")
        assert not approved.approved and approved.ask in ("none", "out")
    withdrawn = mod_roster.outbound("unsubscribed", RosterItem(J, approved=True), J)
    assert withdrawn == RosterItem(J)


def test_a_denied_request_from_a_stranger_leaves_nothing():
    """A request from someone not on the roster (a hidden item) that is denied, or
    cancelled by the requester, leaves no item behind."""
    request = mod_roster.inbound("subscribe", None, J, "hi")
    assert request.ask == "in" and request.ask_message == "hi"
    assert not mod_roster.visible(request)
    assert mod_roster.outbound("unsubscribed", request, J) is REMOVE
    assert mod_roster.inbound("unsubscribe", request, J) is REMOVE


def test_items_as_xml():
    """Pushed and listed items carry name, subscription, ask='subscribe' for pending out,
    approved='true', groups; a removal is subscription='remove'."""
    item = RosterItem(J, "Name", "from", "out", ("b", "a"), approved=True)
    el = mod_roster.item_element(item, J)
    assert dict(el.attrib) == {"jid": J, "name": "Name", "subscription": "from",
                               "ask": "subscribe", "approved": "true"}
    assert [g.text for g in el] == ["a", "b"]
    assert dict(mod_roster.item_element(None, J).attrib) == {"jid": J,
                                                           "subscription": "remove"}
    assert local(el) == "item"
