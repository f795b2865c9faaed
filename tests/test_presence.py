"""Presence subscriptions and presence broadcast (mod_presence, RFC 6121 §3-§4) on a real
node with two workers, with real slixmpp clients and raw sessions.

Covered: two users subscribing to each other from scratch and seeing each other's
presence; a subscription request to an offline user delivered at its next initial
presence; probes answered with the last presence of every available resource; later
presence and unavailable presence reaching subscribers only; denial, cancellation and
pre-approval; unavailable presence to contacts when a client's connection is cut, when
its session actor is killed, and when its worker process is killed (kill -9).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode
from helpers import wait_until
from presence_harness import (
    RawSession,
    error_condition,
    local,
    pg_cluster,
    presence_from,
    push_item,
    reach,
    roster_push,
)
from test_c2s_cluster import _worker_os_pid
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, xmpp_node

pytestmark = pytest.mark.timeout(90)

MODULES = "[modules.mod_roster]\nversioning = true\n[modules.mod_presence]\n"
USERS = tuple(f"u{i}" for i in range(40))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    n = xmpp_node(tmp_path_factory.mktemp("presence"), "presence@localhost",
                  test_node.keys_file, users=USERS, extra_toml=MODULES)
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
          presence: str | None = "<presence/>") -> RawSession:
    session = RawSession(node.c2s_port, user, resource)
    sessions.append(session)
    if presence is not None:
        session.send(presence)
    return session


def client(node: MongooseNode, loop: Any, clients: list[Client], user: str,
           resource: str = "slix") -> Client:
    """A slixmpp client that answers nothing by itself (no auto-authorize or subscribe):
    the test says what it does."""
    made = Client(loop, f"{user}@{DOMAIN}/{resource}", PASSWORD, port=node.c2s_port)
    made.xmpp.auto_authorize = None
    made.xmpp.auto_subscribe = False
    clients.append(made)
    return made


def available_to(*pairs: tuple[RawSession, RawSession]) -> None:
    """Wait until each (sender, target) pair can reach the target's bare JID: the
    target's available presence has reached the sender's worker's session table (a
    subscription request routed before that waits for the target's next login)."""
    for sender, target in pairs:
        reach(sender, target, to=target.bare)


def subscribe_both_ways(a: RawSession, b: RawSession) -> None:
    """a and b subscribe to each other, each approving the other's request."""
    available_to((a, b), (b, a))
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    b.wait(presence_from(a.bare, "subscribe"), what="a's request")
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    a.wait(presence_from(b.bare, "subscribed"), what="b's approval")
    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    a.wait(presence_from(b.bare, "subscribe"), what="b's request")
    a.send(f"<presence type='subscribed' to='{b.bare}'/>")
    b.wait(presence_from(a.bare, "subscribed"), what="a's approval")


def get_roster(loop: Any, c: Client) -> None:
    """Ask for the roster (so that the client gets pushes)."""
    async def go() -> None:
        await c.xmpp.get_roster()
    loop.run(go())


def slix_presences(c: Client, sender: str, kind: str = "available") -> list[Any]:
    return [p for p in list(c.presences) if str(p["from"]).startswith(sender)
            and p["type"] == kind]


# -- subscribing ---------------------------------------------------------------------------


def test_two_users_subscribe_to_each_other_and_see_each_others_presence(node, loop, clients):
    """Two slixmpp clients with empty rosters subscribe to each other (each request
    approved by the other); each roster ends with 'both' and each sees the other's
    presence, then the other's unavailable presence when it leaves."""
    a_user, b_user = users(2)
    alice = client(node, loop, clients, a_user).connect()
    bob = client(node, loop, clients, b_user).connect()
    a_bare, b_bare = f"{a_user}@{DOMAIN}", f"{b_user}@{DOMAIN}"
    get_roster(loop, alice)
    get_roster(loop, bob)

    loop.call(lambda: alice.xmpp.send_presence(pto=b_bare, ptype="subscribe"))
    wait_until(lambda: slix_presences(bob, a_bare, "subscribe"), timeout=10,
               what="alice's request at bob")
    loop.call(lambda: bob.xmpp.send_presence(pto=a_bare, ptype="subscribed"))
    loop.call(lambda: bob.xmpp.send_presence(pto=a_bare, ptype="subscribe"))
    wait_until(lambda: slix_presences(alice, b_bare, "subscribe"), timeout=10,
               what="bob's request at alice")
    loop.call(lambda: alice.xmpp.send_presence(pto=b_bare, ptype="subscribed"))

    def subscription(c: Client, contact: str) -> str:
        roster = c.xmpp.client_roster
        return roster[contact]["subscription"] if contact in roster else ""

    wait_until(lambda: subscription(alice, b_bare) == "both"
               and subscription(bob, a_bare) == "both", timeout=10,
               what=lambda: f"both ways: {subscription(alice, b_bare)} "
                            f"{subscription(bob, a_bare)}")
    wait_until(lambda: slix_presences(alice, bob.jid), timeout=10,
               what="bob's presence at alice")
    wait_until(lambda: slix_presences(bob, alice.jid), timeout=10,
               what="alice's presence at bob")
    bob.disconnect()
    wait_until(lambda: slix_presences(alice, bob.jid, "unavailable"), timeout=10,
               what="bob's unavailable presence at alice")


def test_a_request_to_an_offline_user_is_delivered_at_its_next_login(node, sessions):
    """A subscription request (with its status text) to a user with no session waits in
    the server and reaches the user's resource when it sends initial presence; after
    approval the requester gets the approval, a push, and the contact's presence."""
    a_user, b_user = users(2)
    a = login(node, sessions, a_user)
    b_bare = f"{b_user}@{DOMAIN}"
    a.iq("get", "<query xmlns='jabber:iq:roster'/>")
    a.send(f"<presence type='subscribe' to='{b_bare}'><status>it is me</status></presence>")
    push = a.wait(roster_push(b_bare), what="the pending-out push")
    assert push_item(push).get("ask") == "subscribe"
    b = login(node, sessions, b_user, presence=None)
    assert b.quiet(presence_from(a.bare, "subscribe"), 0.3)  # not before initial presence
    b.send("<presence/>")
    request = b.wait(presence_from(a.bare, "subscribe"), what="the stored request")
    assert request.findtext("{jabber:client}status") == "it is me"
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    a.wait(presence_from(b_bare, "subscribed"), what="the approval")
    item = push_item(a.wait(roster_push(b_bare), what="the 'to' push"))
    assert (item.get("subscription"), item.get("ask")) == ("to", None)
    a.wait(presence_from(b.jid), what="b's presence after approving")


def test_probes_get_the_presence_of_every_available_resource(node, sessions):
    """When a subscriber comes online, it gets the last presence of each of the
    contact's available resources (answers to its probes), not of unavailable ones."""
    a_user, b_user = users(2)
    a = login(node, sessions, a_user)
    b1 = login(node, sessions, b_user, "one")
    subscribe_both_ways(a, b1)
    b2 = login(node, sessions, b_user, "two",
               presence="<presence><show>away</show><status>two</status></presence>")
    login(node, sessions, b_user, "silent", presence=None)  # bound, never available
    b1.wait(presence_from(b2.jid), what="b2 online (seen by b1)")
    a.close()
    later = login(node, sessions, a_user, "later")
    first = later.wait(presence_from(b1.jid), what="b1's presence")
    second = later.wait(presence_from(b2.jid), what="b2's presence")
    assert first.get("to") == later.jid and second.get("to") == later.jid
    assert second.findtext("{jabber:client}status") == "two"
    assert later.quiet(presence_from(f"{b_user}@{DOMAIN}/silent"), 0.3)


def test_presence_updates_reach_subscribers_only(node, sessions):
    """Later presence goes to the contacts subscribed to the user ('from'), not to a
    contact the user is merely subscribed to ('to')."""
    a_user, b_user, c_user = users(3)
    a = login(node, sessions, a_user)
    b = login(node, sessions, b_user)
    c = login(node, sessions, c_user)
    available_to((a, b), (b, a), (a, c), (c, a))
    # b subscribes to a (a: from b); a subscribes to c (a: to c).
    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    a.wait(presence_from(b.bare, "subscribe"))
    a.send(f"<presence type='subscribed' to='{b.bare}'/>")
    b.wait(presence_from(a.jid), what="a's presence after approval")
    a.send(f"<presence type='subscribe' to='{c.bare}'/>")
    c.wait(presence_from(a.bare, "subscribe"))
    c.send(f"<presence type='subscribed' to='{a.bare}'/>")
    a.wait(presence_from(c.jid), what="c's presence after approval")
    a.send("<presence><status>busy now</status></presence>")
    update = b.wait(lambda s: presence_from(a.jid)(s) and s.findtext(
        "{jabber:client}status") == "busy now", what="a's update at b")
    assert update.get("to") == b.bare
    a.send("<presence type='unavailable'><status>bye</status></presence>")
    b.wait(presence_from(a.jid, "unavailable"), what="a's unavailable at b")
    assert c.quiet(lambda s: presence_from(a.jid)(s) or presence_from(a.jid, "unavailable")(s),
                   0.3)


def test_denying_a_request_and_cancelling_a_subscription(node, sessions):
    """unsubscribed denies a pending request (the requester's ask goes away); later,
    unsubscribed cancels an existing subscription: the former subscriber gets it, its
    roster says 'none', and it gets unavailable presence from the contact."""
    a_user, b_user = users(2)
    a = login(node, sessions, a_user)
    b = login(node, sessions, b_user)
    available_to((a, b), (b, a))
    a.iq("get", "<query xmlns='jabber:iq:roster'/>")
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    b.wait(presence_from(a.bare, "subscribe"))
    b.send(f"<presence type='unsubscribed' to='{a.bare}'/>")
    a.wait(presence_from(b.bare, "unsubscribed"), what="the denial")
    first = push_item(a.wait(roster_push(b.bare), what="the pending-out push"))
    assert (first.get("subscription"), first.get("ask")) == ("none", "subscribe")
    item = push_item(a.wait(roster_push(b.bare), what="the push without ask"))
    assert (item.get("subscription"), item.get("ask")) == ("none", None)
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    b.wait(presence_from(a.bare, "subscribe"))
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    a.wait(presence_from(b.jid), what="b's presence")
    b.send(f"<presence type='unsubscribed' to='{a.bare}'/>")
    a.wait(presence_from(b.bare, "unsubscribed"), what="the cancellation")
    a.wait(presence_from(b.jid, "unavailable"), what="b's unavailable after cancelling")
    for state in (("none", "subscribe"), ("to", None), ("none", None)):  # in this order
        item = push_item(a.wait(roster_push(b.bare), what=f"the {state} push"))
        assert (item.get("subscription"), item.get("ask")) == state


def test_a_pre_approved_request_is_approved_by_the_server(node, sessions):
    """subscribed sent before any request is a pre-approval (RFC 6121 §3.4): the item
    shows approved='true'; the contact's later request is answered 'subscribed' by the
    server without reaching the user, and the contact gets the user's presence."""
    a_user, b_user = users(2)
    a = login(node, sessions, a_user)
    b = login(node, sessions, b_user)
    available_to((a, b), (b, a))
    a.iq("get", "<query xmlns='jabber:iq:roster'/>")
    a.send(f"<presence type='subscribed' to='{b.bare}'/>")
    item = push_item(a.wait(roster_push(b.bare), what="the pre-approval push"))
    assert (item.get("subscription"), item.get("approved")) == ("none", "true")
    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    b.wait(presence_from(a.bare, "subscribed"), what="the server's approval")
    b.wait(presence_from(a.jid), what="a's presence")
    item = push_item(a.wait(lambda s: roster_push(b.bare)(s) and push_item(s).get(
        "subscription") == "from", what="the 'from' push"))
    assert item.get("approved") is None
    assert a.quiet(presence_from(b.bare, "subscribe"), 0.3)


def test_a_request_to_no_account_is_refused(node, sessions):
    """A subscription request to a user that does not exist is answered unsubscribed
    (RFC 6121 §8.5.1)."""
    [a_user] = users(1)
    a = login(node, sessions, a_user)
    a.send(f"<presence type='subscribe' to='nobody-here@{DOMAIN}'/>")
    a.wait(presence_from(f"nobody-here@{DOMAIN}", "unsubscribed"), what="the refusal")


def test_a_request_beyond_the_roster_limit_gets_an_error(tmp_path, test_node):
    """With max_roster_size = 1, a subscription to a second contact gets the client a
    presence error (not-allowed) and is not sent."""
    node = xmpp_node(tmp_path, "limit@localhost", test_node.keys_file,
                     users=("x", "y", "z"), workers=1,
                     extra_toml="[modules.mod_roster]\nmax_roster_size = 1\n"
                                "[modules.mod_presence]\n")
    made: list[RawSession] = []
    try:
        x = login(node, made, "x")
        z = login(node, made, "z")
        x.send(f"<presence type='subscribe' to='y@{DOMAIN}'/>")
        x.send(f"<presence type='subscribe' to='z@{DOMAIN}'/>")
        error = x.wait(lambda s: local(s) == "presence" and s.get("type") == "error",
                       what="the error")
        assert error_condition(error) == "not-allowed" and error.get("from") == z.bare
        assert z.quiet(presence_from("x@localhost", "subscribe"), 0.3)
    finally:
        for session in made:
            session.close()
        node.kill()


# -- unavailable presence however a session ends --------------------------------------------


def subscribed_pair(node: MongooseNode, sessions: list[RawSession]) -> tuple[
        RawSession, RawSession]:
    """(watcher, watched): watcher is subscribed to watched and has its presence."""
    w_user, v_user = users(2)
    watcher = login(node, sessions, w_user)
    watched = login(node, sessions, v_user)
    subscribe_both_ways(watcher, watched)
    watcher.wait(presence_from(watched.jid), what="watched online at watcher")
    return watcher, watched


def test_unavailable_reaches_contacts_when_the_connection_is_cut(node, sessions):
    """A client whose TCP connection drops without </stream:stream>: its contacts get
    unavailable presence from it."""
    watcher, watched = subscribed_pair(node, sessions)
    watched.close(cut=True)
    watcher.wait(presence_from(watched.jid, "unavailable"), timeout=15,
                 what="unavailable after the cut")


def test_unavailable_reaches_contacts_when_the_session_actor_is_killed(node, sessions):
    """A session actor killed outright from the shell (an untrappable exit: no on_stop,
    only its release()): its contacts get unavailable presence from it."""
    import subprocess
    import sys

    from dist_harness import PYTHONPATH

    watcher, watched = subscribed_pair(node, sessions)
    code = f"kill(sessions({watched.jid!r})[0]['pid'])"
    done = subprocess.run(
        [sys.executable, "-m", "mongoose", "shell", "-c", str(node.config), "-e", code],
        capture_output=True, text=True, timeout=60, cwd=str(node.dir),
        env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert done.returncode == 0, done.stderr
    watcher.wait(presence_from(watched.jid, "unavailable"), timeout=15,
                 what="unavailable after the kill")


def test_unavailable_reaches_contacts_when_the_worker_is_killed(node, sessions):
    """kill -9 of the worker holding a session: one process of the node tells the
    session's subscribers, and the user's other resources, that it is unavailable."""
    watcher_user, watched_user = users(2)
    watched = other = None
    for attempt in range(30):
        candidate = login(node, sessions, watched_user, f"w{attempt}")
        worker = node.wait_for("c2s_session_open", jid=candidate.jid)["worker"]
        if watched is None:
            watched, watched_worker = candidate, worker
            continue
        if worker != watched_worker:
            other = candidate
            break
        candidate.close()
    assert watched is not None and other is not None, "every connection went to one worker"
    for attempt in range(30):
        watcher = login(node, sessions, watcher_user, f"w{attempt}")
        if node.wait_for("c2s_session_open", jid=watcher.jid)["worker"] != watched_worker:
            break
        watcher.close()
    else:
        pytest.fail("the kernel put every connection on one worker")
    subscribe_both_ways(watcher, watched)
    watcher.wait(presence_from(watched.jid), what="watched online")
    reach(watcher, watched)
    other.wait(presence_from(watched.jid), what="watched online at its other resource")
    os.kill(_worker_os_pid(node, watched_worker), 9)
    watcher.wait(presence_from(watched.jid, "unavailable"), timeout=20,
                 what="unavailable after the worker died")
    other.wait(presence_from(watched.jid, "unavailable"), timeout=20,
               what="unavailable at the user's other resource")
    node.wait_for("worker_up", worker=watched_worker, timeout=30)


# -- across a cluster -----------------------------------------------------------------------


def test_contacts_on_two_nodes_and_the_loss_of_one(tmp_path, test_node, pg_server):
    """Users on two nodes of a cluster (rosters in one PostgreSQL database) subscribe to
    each other and see each other's presence; when node B is killed, the user on node A
    gets unavailable presence from the user who was on B (a process of A tells it)."""
    made: list[RawSession] = []
    with pg_cluster(tmp_path, test_node.keys_file, pg_server, ("ann", "ben"), MODULES,
                    "p") as (a_node, b_node):
        try:
            ann = login(a_node, made, "ann")
            ben = login(b_node, made, "ben")
            subscribe_both_ways(ann, ben)
            ann.wait(presence_from(ben.jid), what="ben's presence at ann")
            ben.wait(presence_from(ann.jid), what="ann's presence at ben")
            b_node.kill()
            ann.wait(presence_from(ben.jid, "unavailable"), timeout=30,
                     what="ben's unavailable once node B is gone")
        finally:
            for session in made:
                session.close()
