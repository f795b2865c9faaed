"""XEP-0280 Message Carbons (mongoose/modules/mod_carboncopy.py) end to end: real slixmpp
clients on a two-node cluster, so that a user's resources live in different processes
and the carbons table is read from replicas.

alice has three resources: ``one`` and ``three`` on node A, ``two`` on node B; ``one``
and ``two`` enable carbons, ``three`` does not. Her contact (bob, carol, ...) is on B.
Absence of a copy is checked behind a later copy that travels the same way (copies from
one session to another keep their order), never by waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode
from helpers import wait_until
from im_helpers import (
    CARBONS,
    CLIENT,
    ImClient,
    assert_no_crashes,
    error_condition,
    login,
    two_nodes,
    wait_reachable,
)
from xmpp_harness import DOMAIN

pytestmark = pytest.mark.timeout(120)

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
MODULES = "[modules.mod_carboncopy]\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            test_node: TestNode) -> Iterator[tuple[MongooseNode, MongooseNode]]:
    a, b = two_nodes(tmp_path_factory.mktemp("carbons"), test_node.keys_file, USERS, MODULES)
    yield a, b
    a.kill()
    b.kill()
    assert_no_crashes(a, b)


def enable(client: ImClient, on: bool = True) -> None:
    answer = client.query(f"<iq type='set'><{'enable' if on else 'disable'} "
                          f"xmlns='{CARBONS}'/></iq>")
    assert answer.get("type") == "result", answer


def three_resources(cluster: Any, loop: Any, clients: list[Any], user: str, contact: str,
                    ) -> tuple[ImClient, ImClient, ImClient, ImClient]:
    """``user`` as one (A), two (B), three (A), carbons on one and two; ``contact`` on B.
    Returns once each resource gets the contact's messages and each copy-enabled
    resource gets copies of messages to the other (the tables have replicated)."""
    a, b = cluster
    one = login(loop, clients, f"{user}@{DOMAIN}/one", a.c2s_port)
    two = login(loop, clients, f"{user}@{DOMAIN}/two", b.c2s_port)
    three = login(loop, clients, f"{user}@{DOMAIN}/three", a.c2s_port)
    peer = login(loop, clients, f"{contact}@{DOMAIN}/r", b.c2s_port)
    enable(one)
    enable(two)
    for resource in (one, two, three):
        wait_reachable(peer, resource)
    probes = iter(range(1_000_000))

    def copied(to: ImClient, copy_at: ImClient) -> Any:
        def check() -> bool:
            peer.send_message(to.jid, f"sync{next(probes)}")
            try:
                wait_until(lambda: any(b.startswith("sync") for b in
                                       copy_at.carbon_bodies("received")), timeout=0.3)
            except AssertionError:
                return False
            return True
        return check

    wait_until(copied(one, two), timeout=20, what="copies at two")
    wait_until(copied(two, one), timeout=20, what="copies at one")
    for client in (one, two, three, peer):
        client.stanzas.clear()
    return one, two, three, peer


def test_received_and_sent_copies_go_to_enabled_resources_only(cluster, loop, clients):
    """A chat message to one resource is copied in <received/> to the other enabled
    resource, not to the disabled one nor back to its recipient; a message a resource
    sends is copied in <sent/> to the enabled resources but the sender."""
    one, two, three, bob = three_resources(cluster, loop, clients, "alice", "bob")
    alice = f"alice@{DOMAIN}"
    bob.send_message(one.jid, "hello one")
    wait_until(lambda: "hello one" in two.carbon_bodies("received"), what="received copy")
    [copy] = two.carbons("received")
    assert (copy.get("from"), copy.get("to"), copy.get("type")) == (bob.jid, one.jid, "chat")
    wrapper = two.messages_where(lambda s: s.find(f"{{{CARBONS}}}received") is not None)[0]
    assert (wrapper.get("from"), wrapper.get("to")) == (alice, two.jid)
    assert one.bodies_from(f"bob@{DOMAIN}") == ["hello one"]
    assert not one.carbons("received")

    three.send_message(bob.jid, "from three")
    wait_until(lambda: "from three" in one.carbon_bodies("sent")
               and "from three" in two.carbon_bodies("sent"), what="sent copies")
    [sent] = one.carbons("sent")
    assert (sent.get("from"), sent.get("to")) == (three.jid, bob.jid)
    one.send_message(bob.jid, "from one")
    wait_until(lambda: "from one" in two.carbon_bodies("sent"), what="sent copy at two")
    wait_until(lambda: bob.bodies_from(alice) == ["from three", "from one"])
    # three has carbons off; one does not get a copy of what it sent itself.
    bob.send_message(two.jid, "last")
    wait_until(lambda: "last" in one.carbon_bodies("received"), what="copy behind the rest")
    assert not three.carbons("received") and not three.carbons("sent")
    assert one.carbon_bodies("sent") == ["from three"]


def test_private_and_no_copy_messages_are_not_copied(cluster, loop, clients):
    """<private xmlns='urn:xmpp:carbons:2'/> (both ways) and <no-copy
    xmlns='urn:xmpp:hints'/> keep a message from being copied; headlines are never
    copied."""
    one, two, _three, carol = three_resources(cluster, loop, clients, "dave", "carol")
    carol.send_raw(f"<message to='{one.jid}' type='chat'><body>secret in</body>"
                   f"<private xmlns='{CARBONS}'/></message>")
    carol.send_raw(f"<message to='{one.jid}' type='chat'><body>hinted in</body>"
                   f"<no-copy xmlns='urn:xmpp:hints'/></message>")
    carol.send_message(one.jid, "headline in", mtype="headline")
    carol.send_message(one.jid, "plain in")
    wait_until(lambda: "plain in" in two.carbon_bodies("received"), what="the plain copy")
    assert two.carbon_bodies("received") == ["plain in"]
    assert set(one.bodies_from(f"carol@{DOMAIN}")) == {
        "secret in", "hinted in", "headline in", "plain in"}

    two.send_raw(f"<message to='{carol.jid}' type='chat'><body>secret out</body>"
                 f"<private xmlns='{CARBONS}'/></message>")
    two.send_message(carol.jid, "plain out")
    wait_until(lambda: "plain out" in one.carbon_bodies("sent"), what="the plain sent copy")
    assert one.carbon_bodies("sent") == ["plain out"]
    wait_until(lambda: carol.bodies_from(f"dave@{DOMAIN}") == ["secret out", "plain out"])


def test_bare_jid_message_is_not_copied_to_the_resources_that_got_it(cluster, loop, clients):
    """A message to the bare JID goes to every resource of the top priority: none of them
    gets a copy as well; when only one resource has the top priority, each other enabled
    resource gets exactly one copy."""
    one, two, three, erin = three_resources(cluster, loop, clients, "frank", "erin")
    frank = f"frank@{DOMAIN}"
    erin.send_message(frank, "to all")
    wait_until(lambda: all("to all" in c.bodies_from(f"erin@{DOMAIN}")
                           for c in (one, two, three)), what="the original at each")
    erin.send_message(one.jid, "after")
    wait_until(lambda: "after" in two.carbon_bodies("received"), what="a later copy")
    assert two.carbon_bodies("received") == ["after"]
    assert not one.carbons("received")

    three.presence(priority=5)
    wait_reachable(erin, three, to=frank)  # erin's node sees the new priority
    erin.send_message(frank, "to three")
    wait_until(lambda: "to three" in one.carbon_bodies("received")
               and "to three" in two.carbon_bodies("received"), what="copies of it")
    erin.send_message(two.jid, "sentinel")
    wait_until(lambda: "sentinel" in one.carbon_bodies("received"), what="sentinel copy")
    assert one.carbon_bodies("received").count("to three") == 1
    assert two.carbon_bodies("received").count("to three") == 1
    assert "to three" not in one.bodies_from(f"erin@{DOMAIN}")


def test_disable_stops_copies_and_errors_follow_the_xep(cluster, loop, clients):
    """After disable a resource gets no more copies; enable with type get is a
    bad-request; enabling another user's carbons is not-allowed; the feature is in the
    server's disco#info."""
    one, two, _three, grace = three_resources(cluster, loop, clients, "heidi", "grace")
    enable(two, on=False)
    enable(two, on=False)  # a second disable is no error (§8.1)
    grace.send_message(one.jid, "after disable")
    wait_until(lambda: "after disable" in one.bodies_from(f"grace@{DOMAIN}"))
    one.send_message(grace.jid, "sent after disable")
    wait_until(lambda: "sent after disable" in grace.bodies_from(f"heidi@{DOMAIN}"))
    enable(one)  # already on: a result again
    grace.send_message(f"heidi@{DOMAIN}/three", "to three")
    wait_until(lambda: "to three" in one.carbon_bodies("received"), what="copy at one")
    assert not two.carbons("received") and not two.carbons("sent")

    get = one.query(f"<iq type='get'><enable xmlns='{CARBONS}'/></iq>")
    assert error_condition(get) == "bad-request"
    other = grace.query(f"<iq type='set' to='heidi@{DOMAIN}'><enable xmlns='{CARBONS}'/></iq>")
    assert error_condition(other) == "not-allowed"
    info = one.query(f"<iq type='get' to='{DOMAIN}'><query "
                     "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    features = {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert CARBONS in features
    assert info.tag == f"{{{CLIENT}}}iq"


def test_module_declares_xep_feature_and_events():
    """mod_carboncopy declares XEP-0280 and its disco feature, and registers its
    instrumentation events with the host_type label."""
    from mongoose import instrument
    from mongoose.modules import mod_carboncopy

    assert (mod_carboncopy.XEPS, mod_carboncopy.FEATURES) == (("0280",), (CARBONS,))
    mod_carboncopy.register_events()
    assert set(instrument.spec("mod_carboncopy_iq").metrics) == {"enable_count",
                                                                 "disable_count"}
    assert set(instrument.spec("mod_carboncopy_copy").metrics) == {"sent_count",
                                                                   "received_count"}
    assert tuple(instrument.spec("mod_carboncopy_copy").labels) == ("host_type",)
